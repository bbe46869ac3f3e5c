"""Activation statistics of a model's weight matrices, collected by llama.cpp itself.

llama.cpp's scheduler calls an eval callback for every graph node it is asked about
(``cb_eval`` in the context parameters, what llama.cpp's imatrix tool uses). We ask about
each matrix multiplication whose weight is a tensor we will quantize and read its input
activations as they are computed, so the statistics come from the very forward pass that
runs the model (any architecture llama.cpp runs), with no second implementation.

For a weight W [out, in] and its inputs x [tokens, in]:

- ``importance`` = mean over tokens of x_j**2, one value per input column (llama.cpp's
  imatrix): how much an error in column j of W moves the output;
- ``hessian`` = X^T X / tokens [in, in] (optional, for GPTQ): the output error of a weight
  error E is tr(E H E^T).

Weights that read the same input (attn_q/k/v; ffn_gate/up) share one accumulator.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass, field

import llama_cpp as ll
import numpy as np

from pocketlm.engine.llama import Model, last_log_error
from pocketlm.errors import EngineError, UsageError
from pocketlm.progress import NullProgress, Progress

GGML_TYPE_F32 = 0
_MAX_DIMS, _MAX_SRC, _MAX_OP_PARAMS, _MAX_NAME = 4, 10, 64, 64


class _GgmlTensor(ctypes.Structure):
    """struct ggml_tensor of the llama.cpp pinned by pyproject (ggml/include/ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * _MAX_DIMS),
        ("nb", ctypes.c_size_t * _MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * _MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * _MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _op_code(name: str) -> int:
    """The enum value of a ggml op, looked up by its name in the loaded ggml library."""
    from llama_cpp._ggml import libggml

    op_name = libggml.ggml_op_name
    op_name.argtypes, op_name.restype = [ctypes.c_int], ctypes.c_char_p
    for code in range(128):
        if op_name(code) == name.encode():
            return code
    raise EngineError(f"ggml has no op named {name}")


@dataclass
class ActivationStats:
    """Input statistics of one weight matrix (shared by weights that read the same input)."""

    sum_sq: np.ndarray  # [in] float64: sum over tokens of x**2
    xtx: np.ndarray | None  # [in, in] float32: sum over tokens of x x^T, or None
    tokens: int = 0

    @property
    def importance(self) -> np.ndarray:
        return self.sum_sq / max(self.tokens, 1)

    @property
    def hessian(self) -> np.ndarray | None:
        return None if self.xtx is None else self.xtx / max(self.tokens, 1)


@dataclass
class Collector:
    """State of one collection: the callback's view of the graph, decode by decode."""

    wanted: set[str]
    with_hessian: set[str]  # the weights whose input also gets X^T X
    stats: dict[str, ActivationStats] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # weight -> weight whose input it shares
    _seen: dict[int, str] = field(default_factory=dict)  # src1 node address -> first weight
    _mul_mat: int = field(default_factory=lambda: _op_code("MUL_MAT"))
    error: str | None = None

    def new_graph(self) -> None:
        self._seen.clear()

    def __call__(self, node_ptr: int, ask: bool, _user) -> bool:
        # ask=True: "do you want this node?"; ask=False: it is computed, go on (True)?
        if self.error:
            return not ask
        try:
            return self._on_node(node_ptr, ask)
        except Exception as exc:  # must not cross into C: noted, raised after llama_decode
            self.error = f"{type(exc).__name__}: {exc}"
            return not ask

    def _on_node(self, node_ptr: int, ask: bool) -> bool:
        node = _GgmlTensor.from_address(node_ptr)
        if node.op != self._mul_mat or not node.src[0] or not node.src[1]:
            return not ask  # not interested; when not asking, go on computing
        weight = _GgmlTensor.from_address(node.src[0]).name.decode()
        if weight not in self.wanted:
            return not ask
        if ask:
            return True
        src1 = node.src[1]
        first = self._seen.setdefault(src1, weight)
        known = self.owner.setdefault(weight, first)
        if known != first:
            raise EngineError(f"the inputs of {weight} and {known} stopped being shared")
        if first == weight:
            self._accumulate(weight, _activations(_GgmlTensor.from_address(src1)))
        return True

    def _accumulate(self, weight: str, x: np.ndarray) -> None:
        # x: [tokens, in] float32
        st = self.stats.get(weight)
        if st is None:
            n = x.shape[1]
            xtx = np.zeros((n, n), np.float32) if weight in self.with_hessian else None
            st = self.stats[weight] = ActivationStats(np.zeros(n), xtx)
        st.sum_sq += np.einsum("ti,ti->i", x, x, dtype=np.float64)
        if st.xtx is not None:
            st.xtx += x.T @ x
        st.tokens += x.shape[0]


def _activations(t: _GgmlTensor) -> np.ndarray:
    """A copy of an F32 activation tensor as [rows, ne0] float32, whatever its strides."""
    if t.type != GGML_TYPE_F32 or not t.data:
        raise EngineError(f"activation tensor {t.name.decode()} is not F32 in host memory")
    ne, nb = [int(v) for v in t.ne], [int(v) for v in t.nb]
    span = sum((n - 1) * s for n, s in zip(ne, nb, strict=True)) + 4
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * span).from_address(t.data))
    # bytes viewed as [ne3, ne2, ne1, ne0, 4], copied contiguous, read as float32
    view = np.lib.stride_tricks.as_strided(raw, shape=(*ne[::-1], 4), strides=(*nb[::-1], 1))
    return np.ascontiguousarray(view).view(np.float32).reshape(-1, ne[0])


def collect_activations(
    model: Model,
    text: str,
    weights: Iterable[str],
    *,
    chunk: int = 512,
    max_tokens: int | None = None,
    with_hessian: bool | Iterable[str] = False,
    threads: int = 1,
    progress: Progress | None = None,
) -> dict[str, ActivationStats]:
    """Run ``model`` over ``text`` in chunks of ``chunk`` tokens (each from a fresh context,
    as llama.cpp's imatrix tool does) and return the input statistics of each weight in
    ``weights`` (GGUF tensor names) that the forward pass multiplies by; ``with_hessian``:
    for all of them (True) or for these names, also X^T X (for weights that share an input,
    the first one the graph multiplies decides)."""
    progress = progress or NullProgress()
    tokens = model.tokenize(text, add_special=False)
    if max_tokens:
        tokens = tokens[:max_tokens]
    prefix = [model.bos] if model.add_bos and model.bos >= 0 else []
    step = chunk - len(prefix)
    if len(tokens) < 16:
        raise UsageError("the calibration text is too short: it needs at least 16 tokens")
    wanted = set(weights)
    hessian = wanted if with_hessian is True else set(with_hessian or ())
    collector = Collector(wanted, hessian)
    callback = ll.ggml_backend_sched_eval_callback(collector)
    params = ll.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = chunk
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    params.cb_eval = callback
    params.cb_eval_user_data = None
    ctx = ll.llama_init_from_model(model._ptr, params)
    if not ctx:
        raise EngineError(f"llama.cpp could not create a context: {last_log_error()}")
    batch = ll.llama_batch_init(chunk, 0, 1)
    task = progress.task("calibrating", len(tokens), unit="tokens")
    try:
        memory = ll.llama_get_memory(ctx)
        for at in range(0, len(tokens), step):
            part = prefix + tokens[at : at + step]
            if len(part) < 2:
                break
            ll.llama_memory_clear(memory, True)
            for i, tok in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1  # every output: the last layer then sees every token
            batch.n_tokens = len(part)
            collector.new_graph()
            rc = ll.llama_decode(ctx, batch)
            if collector.error:
                raise EngineError(f"collecting activations failed: {collector.error}")
            if rc != 0:
                raise EngineError(f"llama_decode failed (code {rc}): {last_log_error()}")
            task.advance(len(part) - len(prefix))
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
    return {w: collector.stats[o] for w, o in collector.owner.items()}
