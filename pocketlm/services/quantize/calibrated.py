"""Calibrated quantization: importance-aware scales and GPTQ error compensation.

llama.cpp's default quantizer rounds every weight as if all mattered equally. Here the model
first runs over calibration text (activations.py) to learn, for each weight matrix W [out, in],
how strongly each input column is driven (``importance``: the diagonal of H = X^T X / n, what
llama.cpp calls an importance matrix) and how the columns co-vary (the Hessian H). Then:

1. llama.cpp writes the file (``llama_model_quantize``) with the importance matrix, so every
   tensor of every type gets llama.cpp's importance-weighted scale search. The tensor types
   are the default quantizer's (LAYOUT_PINS), so the file has the default's size;
2. every tensor stored in a block format of kquants.FORMATS (Q4_0, Q2_K, Q3_K, Q4_K) is
   quantized again from the source weights with GPTQ (Frantar et al., 2022): columns are
   rounded in order and each column's rounding error is spread over the columns not yet
   quantized, through the inverse Hessian (shrunk halfway to its diagonal: HESSIAN_SHRINK),
   so that X W^T (what the model computes) moves as little as possible. The grid of each
   block (fp16 scale, integer sub-block scales and mins) comes from llama.cpp's
   importance-weighted search on the weights as GPTQ has updated them so far. The new bytes
   replace llama.cpp's in place (same type, same size) where they lower the output error
   on the calibration data.

The method is recorded in the file's metadata (``pocketlm.quantize.*``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import llama_cpp as ll
import numpy as np

from pocketlm.engine.llama import Model, init_backend, last_log_error
from pocketlm.errors import EngineError, UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.quantize import kquants
from pocketlm.services.quantize.activations import ActivationStats, collect_activations

# llama.cpp's quantized file types, by the names its quantize tool uses.
FILE_TYPES: dict[str, int] = {
    name: getattr(ll, f"LLAMA_FTYPE_MOSTLY_{name}")
    for name in (
        "Q4_0",
        "Q4_1",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q2_K",
        "Q2_K_S",
        "Q3_K_S",
        "Q3_K_M",
        "Q3_K_L",
        "Q4_K_S",
        "Q4_K_M",
        "Q5_K_S",
        "Q5_K_M",
        "Q6_K",
        "IQ1_S",
        "IQ1_M",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ2_S",
        "IQ2_M",
        "IQ3_XXS",
        "IQ3_XS",
        "IQ3_S",
        "IQ3_M",
        "IQ4_NL",
        "IQ4_XS",
        "TQ1_0",
        "TQ2_0",
    )
}
SUPPORTED_CALIBRATED_TYPES: tuple[str, ...] = tuple(FILE_TYPES)
GPTQ_TYPES: tuple[str, ...] = tuple(kquants.FORMATS)  # tensor types GPTQ writes

# With an importance matrix llama.cpp stores the first eighth of ffn_down as Q4_1 / Q5_1 in
# a Q4_0 / Q5_0 file (llama-quant.cpp); pinned here so the file keeps the default's layout.
# (It also changes a few tensors of IQ3_XXS, IQ4_NL and IQ4_XS files: left to llama.cpp.)
LAYOUT_PINS: dict[str, dict[str, str]] = {
    "Q4_0": {"ffn_down": "Q4_0"},
    "Q5_0": {"ffn_down": "Q5_0"},
}

HESSIAN_BUDGET = 2 << 30  # bytes of float32 Hessians kept while collecting
CALIBRATION_TOKENS = 16384  # the most calibration tokens read
GPTQ_DAMP = 0.01  # fraction of the mean diagonal added to H: keeps the inverse well-posed
# GPTQ uses (1 - s) H + s diag(H): the off-diagonal correlations of a few thousand tokens of
# one text do not all hold on other text. On SmolLM2 Q4_0, calibrated on the shipped text and
# measured on other text, mean KLD was 0.172 with s = 0 (worse than no GPTQ: 0.157), 0.098,
# 0.096, 0.097, 0.098, 0.107 with s = 0.2, 0.35, 0.5, 0.65, 0.8.
HESSIAN_SHRINK = 0.5


@dataclass(frozen=True)
class TensorResult:
    """Relative output errors tr(E H E^T) / tr(W H W^T) of one tensor on the calibration data."""

    name: str
    qtype: str
    default: float  # llama.cpp without importance
    imatrix: float  # llama.cpp with the importance matrix
    gptq: float
    kept_gptq: bool  # GPTQ's bytes are in the file (they had the lowest error)


# --- quantizers -------------------------------------------------------------------


def _importance(stats: ActivationStats) -> np.ndarray:
    """Per-column weights for the grid search; a floor keeps columns the calibration text
    never drove from being treated as free."""
    imp = stats.importance.astype(np.float32)
    return imp + 1e-3 * float(imp.mean() or 1.0)


def inverse_hessian_factor(
    h: np.ndarray, damp: float = GPTQ_DAMP, shrink: float = HESSIAN_SHRINK
) -> np.ndarray:
    """U, upper triangular with U^T U = (H' + damp * mean(diag H) * I)^-1 ([n, n] float32),
    where H' = (1 - shrink) H + shrink diag(H)."""
    diag = np.diag(h).astype(np.float64)
    h = (1 - shrink) * h.astype(np.float64)
    h[np.diag_indices_from(h)] = diag
    dead = diag <= 0
    h[dead, dead] = 1.0  # a column never driven: any value is as good, keep it uncoupled
    mean = float(diag[~dead].mean()) if (~dead).any() else 1.0
    for _ in range(6):
        try:
            damped = h + damp * mean * np.eye(len(h))
            return np.linalg.cholesky(np.linalg.inv(damped)).T.astype(np.float32)
        except np.linalg.LinAlgError:
            damp *= 10
    raise EngineError("the calibration Hessian is not positive definite even with damping")


def gptq_quantize(
    fmt: kquants.Format, w: np.ndarray, u: np.ndarray, importance: np.ndarray
) -> np.ndarray:
    """GPTQ on w [rows, n] with per-block grids from the importance-weighted search; u is
    ``inverse_hessian_factor(H)`` (weights that share an input share it).

    Blocks of ``fmt.block`` columns are processed in order. For each block the grid of every
    row is chosen from the current (error-compensated) weights, then its columns are rounded
    one at a time, each column's error spread over the block's later columns, and the block's
    errors over all later columns. Returns the tensor's bytes [rows * n / block, type_size].
    """
    rows, n = w.shape
    w = np.array(w, np.float32)  # updated in place
    per_row = n // fmt.block
    out = np.empty((rows, per_row, fmt.type_size), np.uint8)
    for g in range(per_row):
        g0, g1 = g * fmt.block, (g + 1) * fmt.block
        blocks = kquants.unpack(fmt, kquants.ggml_quantize(fmt, w[:, g0:g1], importance[g0:g1]))
        scale, minimum = blocks.scales()  # [rows, n_sub]
        err = np.empty((rows, fmt.block), np.float32)
        for j in range(g0, g1):
            sub = (j - g0) // fmt.sub
            s, m = scale[:, sub], minimum[:, sub]
            col = w[:, j]
            q = kquants.codes_for(fmt, col[:, None, None], s[:, None], m[:, None])[:, 0, 0]
            value = s * (q.astype(np.float32) - fmt.zero) - (m if fmt.has_min else 0.0)
            blocks.q[:, j - g0] = q
            err[:, j - g0] = e = (col - value) / u[j, j]
            w[:, j + 1 : g1] -= np.outer(e, u[j, j + 1 : g1])
        w[:, g1:] -= err @ u[g0:g1, g1:]
        out[:, g] = kquants.pack(fmt, blocks)
    return out.reshape(-1, fmt.type_size)


def output_error(fmt: kquants.Format, w: np.ndarray, raw: np.ndarray, h: np.ndarray) -> float:
    """tr(E H E^T) / tr(W H W^T) for E = w - dequantized raw: the relative squared error of
    the layer's output on the calibration activations."""
    e = w - kquants.dequantize(fmt, kquants.unpack(fmt, raw)).reshape(w.shape)
    return _quadratic(e, h) / max(_quadratic(w, h), 1e-30)


def _quadratic(x: np.ndarray, h: np.ndarray) -> float:
    """tr(X H X^T), accumulated in float64."""
    return float(((x @ h).astype(np.float64) * x).sum())


# --- the file ---------------------------------------------------------------------


def _llama_quantize(
    src: Path,
    dst: Path,
    ftype: int,
    threads: int,
    metadata: dict[str, object],
    overrides: dict[str, str] | None = None,
    imatrix: dict[str, np.ndarray] | None = None,
) -> None:
    """llama.cpp's quantizer: ``metadata`` written into the file as extra keys, tensors whose
    names match a regex of ``overrides`` forced to its type, and ``imatrix`` (tensor name ->
    importance per input column) used for the scale search as llama-quantize --imatrix does."""
    init_backend()
    params = ll.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    params.allow_requantize = True
    kv = (ll.llama_model_kv_override * (len(metadata) + 1))()  # zeroed: the last one ends it
    for item, (key, value) in zip(kv, metadata.items(), strict=False):
        item.key = key.encode()
        if isinstance(value, int):
            item.tag, item.value.val_i64 = ll.LLAMA_KV_OVERRIDE_TYPE_INT, value
        else:
            item.tag, item.value.val_str = ll.LLAMA_KV_OVERRIDE_TYPE_STR, str(value).encode()[:127]
    params.kv_overrides = kv
    keep: list = []  # what the C arrays point into must outlive the call
    if overrides:
        tt = (ll.llama_model_tensor_override * (len(overrides) + 1))()
        for item, (pattern, qtype) in zip(tt, overrides.items(), strict=False):
            keep.append(pattern.encode())
            item.pattern, item.type = keep[-1], int(kquants.QT[qtype])
        params.tt_overrides = tt
    if imatrix:
        im = (ll.llama_model_imatrix_data * (len(imatrix) + 1))()
        for item, (name, values) in zip(im, imatrix.items(), strict=False):
            keep.append((name.encode(), np.ascontiguousarray(values, np.float32)))
            item.name = keep[-1][0]
            item.data = keep[-1][1].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            item.size = keep[-1][1].size
        params.imatrix = im
    rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EngineError(f"llama.cpp could not quantize {src.name}: {last_log_error()}")


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """NumPy's BLAS held to one thread. Its default, a spinning thread per core, collapses
    when the cores are busy (llama.cpp, other processes): on 2 shared cores a 576x576
    inverse and Cholesky took 2.7 s with 2 threads and 0.08 s with one."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the `calibrate` extra is not installed: same result, maybe slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _matrix(t: gguf.ReaderTensor) -> np.ndarray:
    """A 2-D tensor's values as float32 [rows, cols] (GGUF's shape is [cols, rows])."""
    cols, rows = (int(v) for v in t.shape[:2])
    if t.tensor_type == kquants.QT.F32:
        return np.asarray(t.data, np.float32).reshape(rows, cols)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(rows, cols)


def _matrices(reader: gguf.GGUFReader) -> list[str]:
    """Names of the 2-D tensors a forward pass multiplies by (not the token embedding)."""
    return [
        t.name
        for t in reader.tensors
        if len(t.shape) == 2 and t.shape[1] > 1 and t.name != "token_embd.weight"
    ]


def _hessian_set(reader: gguf.GGUFReader, names: list[str], budget: int) -> set[str]:
    """The matrices that get a Hessian: those whose input width is at most the largest width
    for which all of them fit in ``budget`` bytes (weights sharing an input share the width)."""
    width = {t.name: int(t.shape[0]) for t in reader.tensors}
    chosen: set[str] = set()
    for limit in sorted({width[n] for n in names}):
        within = {n for n in names if width[n] <= limit}
        if sum(4 * width[n] ** 2 for n in within) > budget:
            break
        chosen = within
    return chosen


def calibrate(
    src: Path,
    calibration_text: str,
    progress: Progress | None = None,
    *,
    threads: int = 1,
    gptq: bool = True,
    max_tokens: int = CALIBRATION_TOKENS,
    hessian_budget: int = HESSIAN_BUDGET,
) -> dict[str, ActivationStats]:
    """Activation statistics of every matrix of ``src`` on ``calibration_text`` (with Hessians
    for GPTQ within ``hessian_budget`` bytes)."""
    reader = gguf.GGUFReader(src)
    names = _matrices(reader)
    with_hessian = _hessian_set(reader, names, hessian_budget) if gptq else set()
    model = Model(str(src), use_extra_bufts=False)
    try:
        with _one_blas_thread():
            return collect_activations(
                model,
                calibration_text,
                names,
                max_tokens=max_tokens,
                with_hessian=with_hessian,
                threads=threads,
                progress=progress,
            )
    finally:
        model.close()


def quantize_calibrated(
    src: Path,
    dst: Path,
    qtype: str,
    calibration_text: str,
    progress: Progress | None = None,
    *,
    threads: int = 1,
    gptq: bool = True,
    max_tokens: int = CALIBRATION_TOKENS,
    hessian_budget: int = HESSIAN_BUDGET,
    overrides: dict[str, str] | None = None,
    activations: dict[str, ActivationStats] | None = None,
) -> dict:
    """Write ``src`` quantized to the llama.cpp file type ``qtype`` at ``dst``, importance-aware
    (and with GPTQ, unless ``gptq`` is False) from activations on ``calibration_text``.

    ``overrides`` (regex of tensor names -> tensor type) goes to llama.cpp's choice of types;
    ``activations`` (from ``calibrate``) saves running the model again for another type.
    Returns a summary: method, type, tokens, tensors per treatment, output errors, seconds.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    src, dst, qtype = Path(src), Path(dst), qtype.strip().upper()
    if qtype not in FILE_TYPES:
        raise UsageError(
            f"calibrated quantization does not support {qtype}",
            f"use one of {', '.join(SUPPORTED_CALIBRATED_TYPES)}",
        )
    if not calibration_text.strip():
        raise UsageError("the calibration text is empty")
    reader = gguf.GGUFReader(src)
    if activations is None:
        activations = calibrate(
            src,
            calibration_text,
            progress,
            threads=threads,
            gptq=gptq,
            max_tokens=max_tokens,
            hessian_budget=hessian_budget,
        )
    use_gptq = gptq and any(s.xtx is not None for s in activations.values())
    n_tokens = max((s.tokens for s in activations.values()), default=0)
    metadata = {
        "pocketlm.quantize.method": "calibrated-gptq" if use_gptq else "calibrated-imatrix",
        "pocketlm.quantize.calibration.tokens": n_tokens,
        "pocketlm.quantize.calibration.sha256": hashlib.sha256(
            calibration_text.encode()
        ).hexdigest(),
    }
    pins = dict(overrides or {})
    for pattern, ttype in LAYOUT_PINS.get(qtype, {}).items():
        pins.setdefault(pattern, ttype)
    importance = {name: _importance(st) for name, st in activations.items()}
    progress.note(f"quantizing to {qtype} with llama.cpp and the importance matrix")
    _llama_quantize(src, dst, FILE_TYPES[qtype], threads, metadata, pins, importance)
    results: list[TensorResult] = []
    if use_gptq:
        with _one_blas_thread():
            results = _gptq_in_place(reader, dst, activations, progress)
    return _summary(qtype, metadata, n_tokens, len(importance), results, started)


def _gptq_in_place(
    reader: gguf.GGUFReader, dst: Path, stats: dict[str, ActivationStats], progress: Progress
) -> list[TensorResult]:
    """GPTQ each block-format tensor of dst that has a Hessian; replace its bytes in place
    where that lowers the output error on the calibration data."""
    source = {t.name: t for t in reader.tensors}
    todo = [
        t
        for t in gguf.GGUFReader(dst).tensors
        if t.tensor_type.name in GPTQ_TYPES and t.name in stats and stats[t.name].xtx is not None
    ]
    task = progress.task("GPTQ", len(todo), unit="tensors")
    factors: dict[int, np.ndarray] = {}  # id(stats) -> inverse Hessian factor, shared by input
    results = []
    data = np.memmap(dst, mode="r+")
    try:
        for t in todo:
            fmt = kquants.get_format(t.tensor_type.name)
            w, st = _matrix(source[t.name]), stats[t.name]
            h = st.hessian
            if id(st) not in factors:
                factors[id(st)] = inverse_hessian_factor(h)
            ours = gptq_quantize(fmt, w, factors[id(st)], _importance(st))
            span = slice(t.data_offset, t.data_offset + t.n_bytes)
            if ours.nbytes != t.n_bytes:
                raise EngineError(f"{t.name}: {ours.nbytes} bytes for a {t.n_bytes}-byte tensor")
            candidates = (kquants.ggml_quantize(fmt, w), np.array(data[span]), ours)
            errors = [output_error(fmt, w, raw, h) for raw in candidates]
            keep = errors[2] < errors[1]
            if keep:
                data[span] = ours.reshape(-1)
            results.append(TensorResult(t.name, fmt.name, *errors, keep))
            task.advance(1)
        data.flush()
    finally:
        del data
    return results


def _summary(
    qtype: str,
    metadata: dict,
    n_tokens: int,
    n_importance: int,
    results: list[TensorResult],
    started: float,
) -> dict:
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {
        "method": metadata["pocketlm.quantize.method"],
        "qtype": qtype,
        "calibration_tokens": n_tokens,
        "tensors_with_importance": n_importance,
        "tensors_gptq": sum(r.kept_gptq for r in results),
        "output_error": {  # mean over the GPTQ candidates, on the calibration data
            "default": mean([r.default for r in results]),
            "imatrix": mean([r.imatrix for r in results]),
            "calibrated": mean([min(r.imatrix, r.gptq) for r in results]),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "tensors": [asdict(r) for r in results],
    }
