"""Models between GGUF and PyTorch: a store model loaded into transformers, a torch model
written back as a GGUF that llama.cpp runs, and that file kept in the store.

Loading goes through transformers' own GGUF reader (``from_pretrained(folder, gguf_file=)``),
which dequantizes every tensor to float and, for llama, undoes the row permutation llama.cpp's
converter applies to Q and K (llama.cpp rotates adjacent pairs, transformers the two halves of
each head). qwen2 is converted without that permutation (llama.cpp runs it with NEOX rope),
so only llama's Q and K are permuted back on export. Only the weights come from transformers:
pocketlm tokenizes with llama.cpp, and everything the file says besides the weights and the
shapes (vocabulary, chat template, rope settings, context length, special tokens) is copied
from the parent GGUF on export.

Export writes every tensor of the torch model under llama.cpp's name, matrices as F16 (or F32,
BF16), norms and biases as F32 as llama.cpp's converter does; a model whose output layer is
its embedding (Qwen2.5, SmolLM2) gets no ``output.weight``. The shapes in the header
(layers, widths, head counts) come from the torch config, so a pruned model describes itself.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketlm.errors import PocketError, UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.store.gguf_check import GGUFInfo, inspect_gguf
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

ARCHITECTURES = ("llama", "qwen2")  # the ladder's; transformers' model_type has the same name
DTYPES = ("F16", "F32", "BF16")  # what export writes the matrices as
METHODS = ("distill", "prune")  # what save_to_store records in the source

# Loading holds the float32 weights plus copies of tensors while they are converted (numpy,
# then torch): peak RSS 3.9 GB, ~1.55x the fp32 size, measured on Qwen2.5-Coder 0.5B.
LOAD_MEMORY_FACTOR = 2.0
LOAD_MEMORY_MARGIN = 512 * 2**20  # the interpreter, torch and transformers themselves

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {  # transformers' name in a decoder layer -> llama.cpp's in a block
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")

# Parent keys not copied: the writer's own, what the shapes or the new tensors replace,
# and what described the parent's quantization.
_DROPPED_KEYS = re.compile(
    r"GGUF\..*|general\.(architecture|file_type|quantization_version|size_label)|split\..*"
    r"|quantize\..*"
)
_HPARAMS = (  # key suffix after "<arch>." -> transformers config attribute
    ("block_count", "num_hidden_layers"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
)


# -- loading ----------------------------------------------------------------------------


def check_architecture(architecture: str, what: str) -> None:
    if architecture not in ARCHITECTURES:
        raise UsageError(
            f"{what} is a {architecture} model: PyTorch training and pruning support "
            f"{' and '.join(ARCHITECTURES)} (the Qwen2.5 ladder, SmolLM2)",
            "choose a model of one of those architectures (pocketlm list)",
        )


def check_memory(info: GGUFInfo, what: str) -> None:
    """Refuse to load a model in float32 that the free memory cannot hold (one line)."""
    import psutil

    need = int(info.parameter_count * 4 * LOAD_MEMORY_FACTOR) + LOAD_MEMORY_MARGIN
    available = psutil.virtual_memory().available
    if available < need:
        raise PocketError(
            f"not enough memory to load {what} in PyTorch: it needs about {need / 1e9:.1f} GB "
            f"({info.parameter_count / 1e6:.0f}M parameters in float32), "
            f"{available / 1e9:.1f} GB is available",
            "close other programs, or choose a smaller model",
        )


def load_torch(
    model: str | os.PathLike | Manifest,
    dtype: torch.dtype | None = None,
    *,
    progress: Progress | None = None,
) -> PreTrainedModel:
    """A store model (its manifest) or GGUF file as a transformers model in ``dtype``
    (default float32), in eval mode, on the CPU. Offline: nothing is downloaded.

    The file is checked first (pocketlm's GGUF check, the architecture, the free memory);
    whatever transformers cannot read is a one-line PocketError."""
    import torch

    path = model.file() if isinstance(model, Manifest) else Path(model)
    info = inspect_gguf(path)
    check_architecture(info.architecture, path.name)
    check_memory(info, path.name)
    from transformers import AutoModelForCausalLM, GgufConfig

    with _quiet_transformers(progress or NullProgress(), path.name):
        try:
            loaded = AutoModelForCausalLM.from_pretrained(
                str(path.parent),
                gguf_file=path.name,
                dtype=dtype or torch.float32,
                local_files_only=True,  # never the network, whatever HF_HUB_OFFLINE says
                # unpack every weight: packed blocks are not trainable, and keeping them would
                # fetch a kernel from the hub
                quantization_config=GgufConfig(dequantize=True),
            )
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PocketError(
                f"transformers could not load {path.name}: {first}",
                f"PyTorch loading supports {' and '.join(ARCHITECTURES)} GGUF models",
            ) from None
    quantizer = getattr(loaded, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain tensors now: a dense, trainable model
        quantizer.remove_quantization_config(loaded)
    return loaded.eval()


@contextlib.contextmanager
def _quiet_transformers(progress: Progress, what: str) -> Iterator[None]:
    """No transformers log lines or tqdm bars while loading: its per-tensor loop reports to
    ``progress`` instead (transformers' GGUF reader calls tqdm.auto directly)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging

    def tensors(items, desc=None, **_):
        task = progress.task(f"loading {what}", len(items), unit="tensors")
        for item in items:
            yield item
            task.advance(1)

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    saved = getattr(gguf_utils, "tqdm", None)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if saved is not None:
        gguf_utils.tqdm = tensors
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
        if saved is not None:
            gguf_utils.tqdm = saved


def architecture_of(model: PreTrainedModel) -> str:
    arch = model.config.model_type
    check_architecture(arch, type(model).__name__)
    return arch


# -- export -----------------------------------------------------------------------------


def gguf_tensors(model: PreTrainedModel) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) for every weight to write, in the model's order.

    A tied output layer (the embedding's own parameter) is left out: llama.cpp then uses
    the embedding, as transformers does."""
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    out = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        out.append((gguf_name(name), tensor))
    return out


def gguf_name(name: str) -> str:
    """transformers' parameter name -> llama.cpp's tensor name."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise PocketError(f"cannot export the tensor {name}: llama.cpp has no place for it")


def _permute_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' Q/K rows (rotating head halves) -> llama.cpp's llama layout (rotating
    adjacent pairs): LlamaModel.permute of llama.cpp's convert_hf_to_gguf.py, the inverse of
    transformers' LlamaTensorProcessor._reverse_permute_weights. Rows: [n_head * head_dim]."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _ggml_type(name: str, ndim: int, dtype: str):
    import gguf

    if ndim == 1:  # norms and biases: F32, as llama.cpp's converter writes them
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType[dtype]


def _tensor_data(name: str, tensor: torch.Tensor, arch: str, config, qtype) -> np.ndarray:
    """One tensor as the bytes to write (numpy, [out, in]: GGUF stores the dims reversed)."""
    import gguf
    import torch

    data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    if arch == "llama" and re.search(r"\.attn_[qk]\.", name):
        heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
        data = _permute_for_rope(data, heads)
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data)
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)  # BF16: uint8 bytes


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UsageError(f"unknown export type {dtype!r}", f"choose one of {', '.join(DTYPES)}")
    return dtype


def estimate_size(model: PreTrainedModel, parent: GGUFInfo, dtype: str = "F16") -> int:
    """Bytes of the exported file: the parent's header plus the tensors (alignment aside)."""
    import gguf

    total = parent.size_bytes - parent.tensor_data_bytes
    for name, t in gguf_tensors(model):
        qtype = _ggml_type(name, t.dim(), check_dtype(dtype))
        total += t.numel() * gguf.GGML_QUANT_SIZES[qtype][1]
    return total


def export_gguf(
    model: PreTrainedModel,
    parent_gguf: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str = "F16",
    metadata: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``model`` as a GGUF file at ``dst``: its tensors as ``dtype`` (F16, F32, BF16),
    the shapes from its config, everything else from ``parent_gguf``'s key-values, then
    ``metadata`` (GGUF key -> value) over them. Returns ``dst``."""
    import gguf

    progress = progress or NullProgress()
    qdtype = check_dtype(dtype)
    arch = architecture_of(model)
    reader = gguf.GGUFReader(parent_gguf)
    parent_arch = reader.fields["general.architecture"].contents()
    if parent_arch != arch:
        raise UsageError(
            f"the parent {Path(parent_gguf).name} is a {parent_arch} model, the torch model "
            f"{arch}: export needs the GGUF the model was loaded from"
        )
    tensors = [(n, t, _ggml_type(n, t.dim(), qdtype)) for n, t in gguf_tensors(model)]
    sizes = [t.numel() * gguf.GGML_QUANT_SIZES[qtype][1] for _, t, qtype in tensors]
    metadata = metadata or {}
    shapes = _shapes(reader, model.config, arch)
    writer = gguf.GGUFWriter(dst, arch)
    _copy_key_values(reader, writer, skip=set(shapes) | set(metadata))
    writer.add_file_type(_FILE_TYPES[qdtype])
    for key, value in shapes.items():
        writer.add_key_value(key, value, gguf.GGUFValueType.UINT32)
    for key, value in metadata.items():
        _set_key(writer, reader, key, value)
    for (name, t, qtype), size in zip(tensors, sizes, strict=True):
        writer.add_tensor_info(name, tuple(t.shape), np.float32, size, raw_dtype=qtype)
    task = progress.task(f"writing {metadata.get('general.name', Path(dst).name)}", sum(sizes))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (name, t, qtype), size in zip(tensors, sizes, strict=True):
            # one tensor converted at a time: no second copy of the model
            writer.write_tensor_data(_tensor_data(name, t, arch, model.config, qtype))
            task.advance(size)
    finally:
        writer.close()
    return Path(dst)


_FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32}  # llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_BF16


def _copy_key_values(reader, writer, skip: set[str]) -> None:
    for key, field in reader.fields.items():
        if key in skip or _DROPPED_KEYS.fullmatch(key):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)


def _shapes(reader, config, arch: str) -> dict[str, int]:
    """The header keys that follow the torch model's shapes (pruning changes them)."""
    shapes = {f"{arch}.{suffix}": int(getattr(config, attr)) for suffix, attr in _HPARAMS}
    if f"{arch}.vocab_size" in reader.fields:
        shapes[f"{arch}.vocab_size"] = int(config.vocab_size)
    return shapes


def _set_key(writer, reader, key: str, value: Any) -> None:
    """``value`` under ``key``, typed as the parent has it, else by its Python type."""
    import gguf

    t = gguf.GGUFValueType
    if key in reader.fields and len(reader.fields[key].types) == 1:
        vtype = reader.fields[key].types[0]
    elif isinstance(value, bool):
        vtype = t.BOOL
    elif isinstance(value, int):
        vtype = t.UINT32 if value >= 0 else t.INT32
    elif isinstance(value, float):
        vtype = t.FLOAT32
    elif isinstance(value, str):
        vtype = t.STRING
    else:
        raise UsageError(f"metadata {key}: a {type(value).__name__} cannot go in a GGUF key")
    writer.add_key_value(key, value, vtype)


# -- into the store ---------------------------------------------------------------------


def save_to_store(
    store: Store,
    model: PreTrainedModel,
    *,
    parent: Manifest | Path,
    name: str,
    recipe: dict[str, Any],
    teacher: str | None = None,
    data_sha256: str | None = None,
    method: str = "distill",
    dtype: str = "F16",
    description: str | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Export ``model`` (loaded from ``parent``: a store model's manifest, or a GGUF path)
    into the store as ``name`` (matrices as ``dtype``), with source ``derived:<method>:<parent>``
    (method: "distill" or "prune") and the parent, teacher, data hash and recipe in its
    manifest.

    The file is written in the store's scratch space, checked, hashed, then moved into
    blobs/ and its manifest written last: an error or Ctrl-C leaves nothing behind."""
    from pocketlm.services.quantize.quantize import check_disk, check_free_name, keep_derived

    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    progress = progress or NullProgress()
    parent_path = parent.file() if isinstance(parent, Manifest) else Path(parent)
    parent_name = parent.name if isinstance(parent, Manifest) else str(parent_path.resolve())
    parent_info = inspect_gguf(parent_path)
    check_free_name(store, name)
    check_disk(store, estimate_size(model, parent_info, dtype))
    n_params = sum(t.numel() for _, t in gguf_tensors(model))
    metadata = {"general.name": name, "general.size_label": _size_label(n_params)}
    with store.scratch() as scratch:
        file = export_gguf(
            model,
            parent_path,
            scratch / "model.gguf",
            dtype=dtype,
            metadata=metadata,
            progress=progress,
        )
        info = inspect_gguf(file)
        extras = {"teacher": teacher, "data_sha256": data_sha256, "recipe": recipe}
        description = description or f"{parent_name} {_PAST[method]}"
        return keep_derived(
            store,
            file,
            info,
            name=name,
            source=f"derived:{method}:{parent_name}",
            parent=parent_name,
            base=parent if isinstance(parent, Manifest) else None,
            description=description,
            extras=extras,
            progress=progress,
        )


def _size_label(n_params: int) -> str:
    import gguf

    return gguf.size_label(n_params, 0, 0, 0)


_PAST = {"distill": "distilled", "prune": "pruned"}
