"""Will a model run on this machine? Memory at a context size, and a decode-speed estimate.

Memory = weights (the GGUF's tensor data, memory-mapped) + KV cache (K and V
in f16 for every layer, head and position) + a compute buffer. Decode speed is
bounded by memory bandwidth: each new token reads every weight once, plus the
KV cache filled so far.

The sizes come from the GGUF file, or, for a catalog model not pulled yet, from the shape
its catalog entry records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pocketlm.errors import PocketError, UsageError, option
from pocketlm.params import context_size
from pocketlm.services import machine
from pocketlm.store.catalog import CatalogEntry, Shape
from pocketlm.store.gguf_check import GGUFInfo

KV_BYTES_PER_VALUE = 2  # f16, llama.cpp's default KV cache type
HEADROOM = 0.9  # leave 10% of available memory to everything else


@dataclass(frozen=True)
class FitReport:
    model: str
    ctx: int
    context_length: int | None
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    total_bytes: int
    ram_total_bytes: int
    ram_available_bytes: int
    fits: bool
    bandwidth_bytes_per_s: float
    decode_tps_empty: float  # bound at an empty context
    decode_tps_full: float  # bound with the whole context in the KV cache
    source: str = "file"  # where the sizes come from: "file" (the GGUF) or "catalog" (its entry)

    def to_dict(self) -> dict:
        return asdict(self)


def kv_bytes_per_token(info: GGUFInfo | Shape) -> int:
    if not (info.n_layer and info.n_head_kv and info.head_dim_k):
        return 0
    per_head = info.head_dim_k + (info.head_dim_v or info.head_dim_k)
    return info.n_layer * info.n_head_kv * per_head * KV_BYTES_PER_VALUE


def compute_bytes(info: GGUFInfo | Shape, n_batch: int = 512) -> int:
    """llama.cpp's compute buffer on CPU: logits plus activations for one batch (an estimate)."""
    n_embd, n_vocab = info.n_embd or 0, info.vocab_size or 0
    return n_batch * (n_vocab + 12 * n_embd) * 4


def fit(name: str, info: GGUFInfo, ctx: int | None = None) -> FitReport:
    """Memory and decode-speed bound of the model ``info`` describes, at ``ctx`` tokens of
    context (default: the context it would get, see params.context_size)."""
    return _fit(name, info, info.tensor_data_bytes, ctx, source="file")


def fit_catalog(entry: CatalogEntry, ctx: int | None = None) -> FitReport:
    """``fit`` for a catalog model, from the shape its entry records (no file is read)."""
    shape = entry.shape
    if shape is None or not shape.tensor_data_bytes:
        raise PocketError(
            f"the catalog entry of '{entry.name}' records no model shapes",
            f"pull it first, then check it: pocketlm pull {entry.name} && pocketlm fit "
            f"{entry.name}",
        )
    return _fit(entry.name, shape, shape.tensor_data_bytes, ctx, source="catalog")


def _fit(
    name: str, info: GGUFInfo | Shape, weights: int, ctx: int | None, source: str
) -> FitReport:
    if ctx is not None and ctx < 16:
        raise UsageError(f"invalid {option('ctx', ctx)}: must be at least 16")
    n_ctx = context_size(ctx, info.context_length)
    kv = kv_bytes_per_token(info) * n_ctx
    compute = compute_bytes(info)
    total_ram, available = machine.ram()
    bandwidth = machine.memory_bandwidth()
    return FitReport(
        model=name,
        ctx=n_ctx,
        context_length=info.context_length,
        weights_bytes=weights,
        kv_bytes=kv,
        compute_bytes=compute,
        total_bytes=weights + kv + compute,
        ram_total_bytes=total_ram,
        ram_available_bytes=available,
        fits=weights + kv + compute <= available * HEADROOM,
        bandwidth_bytes_per_s=bandwidth,
        decode_tps_empty=bandwidth / max(weights, 1),
        decode_tps_full=bandwidth / max(weights + kv, 1),
        source=source,
    )
