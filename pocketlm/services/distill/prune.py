"""Prune a model into a smaller student: whole blocks (depth) and FFN channels (width), the
ones that matter least on calibration text, as Minitron and ShortGPT measure them.

Depth: a block's importance is ShortGPT's Block Influence, 1 - cos(hidden state in, hidden
state out) averaged over the calibration tokens: a block that hardly turns the residual
stream does little. The least important blocks are dropped individually, not as one
contiguous run: one forward pass scores every block, and in the models measured by ShortGPT
and Minitron the low scores gather in the later-middle blocks anyway, so the choice mostly
coincides with the best contiguous run without a pass per candidate run.

Width: an FFN channel's importance is the mean magnitude of its activation (the input of
``down_proj``: act(gate(x)) * up(x)) over the calibration tokens, Minitron's activation-based
estimate; every block keeps its N most important channels. Both are measured in the same
pass, on the unpruned model. Attention heads are not pruned (grouped-query attention ties
query heads to shared key/value heads).

A pruned model has lost quality: it is a student to distil into (pocketlm distill), not a
model to use as is.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketlm.errors import UsageError, option
from pocketlm.progress import NullProgress, Progress
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

DEPTH_METHOD = "block influence (ShortGPT): mean 1 - cos(hidden in, hidden out); lowest dropped"
WIDTH_METHOD = "mean |activation| of each FFN channel (Minitron); highest kept in every block"
MIN_TOKENS = 16  # calibration tokens below which the scores mean little


@dataclass
class Importance:
    """What the calibration pass measured, per block."""

    blocks: list[float]  # Block Influence of each block (higher: more important)
    channels: list[torch.Tensor]  # [n_ff] mean |activation| of each FFN channel, per block
    tokens: int


@dataclass
class Pruned:
    """A pruned model kept in the store, and how it was chosen."""

    manifest: Manifest
    parent: str
    kept: list[int]  # the parent's block indices, in order
    scores: list[float]
    ffn_before: int
    ffn: int
    calibration: str
    tokens: int
    seconds: float
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped(self) -> list[int]:
        return [i for i in range(len(self.scores)) if i not in self.kept]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "parent": self.parent,
            "layers_before": len(self.scores),
            "layers": len(self.kept),
            "kept": self.kept,
            "dropped": self.dropped,
            "scores": self.scores,
            "ffn_before": self.ffn_before,
            "ffn": self.ffn,
            "calibration": self.calibration,
            "tokens": self.tokens,
            "size_bytes": self.manifest.size_bytes,
            "parameter_count": self.manifest.parameter_count,
            "quantization": self.manifest.quantization,
            "path": self.manifest.path,
            "seconds": self.seconds,
        }


# -- the service ------------------------------------------------------------------------


def prune(
    ref: str,
    *,
    layers: int | None = None,
    ffn: int | None = None,
    name: str | None = None,
    calibration: str | Path | None = None,
    max_tokens: int = 2048,
    window: int = 512,
    dtype: str = "F16",
    store: Store | None = None,
    progress: Progress | None = None,
) -> Pruned:
    """Prune ``ref`` (store name or GGUF path) to ``layers`` blocks and/or ``ffn`` channels
    per block, measured on ``calibration`` (default: the shipped calibration text, its first
    ``max_tokens`` tokens in windows of ``window``), into the store as ``name`` (default
    ``<parent>-L<layers>``, ``-ffn<ffn>``)."""
    from pocketlm.services.distill import gguf_io
    from pocketlm.services.quantize.quantize import check_free_name
    from pocketlm.services.quantize.report import load_text
    from pocketlm.store.gguf_check import inspect_gguf
    from pocketlm.store.pull import default_name as file_stem
    from pocketlm.store.refs import resolve

    started = time.perf_counter()
    store, progress = store or Store(), progress or NullProgress()
    if layers is None and ffn is None:
        raise UsageError(f"say what to prune: {option('layers')} N, {option('ffn')} N, or both")
    if max_tokens < MIN_TOKENS or window < 2:
        raise UsageError(f"measure on at least {MIN_TOKENS} tokens, in windows of 2 or more")
    gguf_io.check_dtype(dtype)
    m = resolve(ref, store, pull_missing=True, progress=progress)
    info = inspect_gguf(m.path)
    parent_name = m.manifest.name if m.manifest else file_stem(m.path)
    gguf_io.check_architecture(info.architecture, parent_name)
    check_layers(layers, info.n_layer or 0, parent_name)
    name = check_free_name(store, name or default_name(parent_name, layers, ffn))
    label, text = load_text(calibration)
    tokens = calibration_tokens(m.path, text, max_tokens, label)

    model = gguf_io.load_torch(m.manifest or m.path, progress=progress)
    ffn_before = int(model.config.intermediate_size)
    check_ffn(ffn, ffn_before, parent_name)
    importance = measure_importance(model, tokens, window, progress, label)
    kept = choose_layers(importance.blocks, layers or len(importance.blocks))
    if ffn is not None:
        shrink_ffn(model, importance.channels, ffn)
    drop_layers(model, kept)
    recipe = {
        "method": "prune",
        "depth": DEPTH_METHOD,
        "layers_before": len(importance.blocks),
        "layers_kept": kept,
        "layer_scores": [round(s, 6) for s in importance.blocks],
        "width": WIDTH_METHOD if ffn is not None else None,
        "ffn_before": ffn_before,
        "ffn": ffn or ffn_before,
        "calibration": label,
        "calibration_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "calibration_tokens": importance.tokens,
        "window": window,
        "dtype": dtype,
    }
    manifest = gguf_io.save_to_store(
        store,
        model,
        parent=m.manifest or m.path,
        name=name,
        recipe=recipe,
        method="prune",
        dtype=dtype,
        description=f"{parent_name} pruned to {len(kept)} of {len(importance.blocks)} layers"
        + (f", {ffn} of {ffn_before} FFN channels" if ffn else ""),
        progress=progress,
    )
    return Pruned(
        manifest,
        manifest.parent or parent_name,
        kept,
        importance.blocks,
        ffn_before,
        ffn or ffn_before,
        label,
        importance.tokens,
        time.perf_counter() - started,
        recipe,
    )


def default_name(parent: str, layers: int | None, ffn: int | None) -> str:
    return parent + (f"-L{layers}" if layers else "") + (f"-ffn{ffn}" if ffn else "")


def check_layers(layers: int | None, n_layer: int, model: str) -> None:
    if layers is not None and not 1 <= layers < n_layer:
        raise UsageError(
            f"invalid {option('layers', layers)}: {model} has {n_layer} layers; keep "
            f"between 1 and {n_layer - 1} of them"
        )


def check_ffn(ffn: int | None, n_ff: int, model: str) -> None:
    if ffn is not None and not 1 <= ffn < n_ff:
        raise UsageError(
            f"invalid {option('ffn', ffn)}: {model}'s feed-forward layers are {n_ff} wide; "
            f"keep between 1 and {n_ff - 1} channels"
        )


def calibration_tokens(path: Path, text: str, max_tokens: int, label: str) -> list[int]:
    """The first ``max_tokens`` tokens of ``text``, tokenized by llama.cpp as the model is."""
    from pocketlm.engine.llama import Model

    vocab = Model(str(path), vocab_only=True)
    try:
        tokens = vocab.tokenize(text, add_special=True)[:max_tokens]
    finally:
        vocab.close()
    if len(tokens) < MIN_TOKENS:
        raise UsageError(
            f"the calibration text {label} is too short: {len(tokens)} tokens, "
            f"at least {MIN_TOKENS} are needed"
        )
    return tokens


# -- measuring --------------------------------------------------------------------------


def measure_importance(
    model: PreTrainedModel,
    tokens: list[int],
    window: int,
    progress: Progress | None = None,
    label: str = "calibration text",
) -> Importance:
    """Score every block and FFN channel of ``model`` on ``tokens``, ``window`` at a time."""
    import torch

    progress = progress or NullProgress()
    blocks = model.model.layers
    influence = [torch.zeros((), dtype=torch.float64) for _ in blocks]
    channels = [torch.zeros(b.mlp.down_proj.in_features, dtype=torch.float64) for b in blocks]

    def block_hook(i: int):
        def hook(_module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            influence[i] += (1 - cos).sum().double()  # cos: [batch, tokens]

        return hook

    def channel_hook(i: int):
        def hook(_module, args):
            channels[i] += args[0].float().abs().sum(dim=(0, 1)).double()  # [batch, tokens, n_ff]

        return hook

    handles = []
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_hook(block_hook(i), with_kwargs=True))
        handles.append(b.mlp.down_proj.register_forward_pre_hook(channel_hook(i)))
    task = progress.task(f"measuring importance on {label}", len(tokens), unit="tokens")
    try:
        with torch.no_grad():
            for at in range(0, len(tokens), window):
                chunk = tokens[at : at + window]
                model.model(input_ids=torch.tensor([chunk]), use_cache=False)  # no lm_head
                task.advance(len(chunk))
    finally:
        for h in handles:
            h.remove()
    n = len(tokens)
    return Importance([float(s) / n for s in influence], [(c / n).float() for c in channels], n)


def choose_layers(scores: list[float], keep: int) -> list[int]:
    """Indices of the ``keep`` highest-scoring blocks, in model order."""
    ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    return sorted(ranked[:keep])


# -- cutting ----------------------------------------------------------------------------


def drop_layers(model: PreTrainedModel, keep: list[int]) -> None:
    """Keep only the blocks ``keep`` (indices into the current ones), in place."""
    import torch

    config = model.config
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
    for new, block in enumerate(model.model.layers):
        block.self_attn.layer_idx = new  # the KV cache slot
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):  # qwen2: one attention type per layer
        config.layer_types = [config.layer_types[i] for i in keep]


def shrink_ffn(model: PreTrainedModel, channels: list[torch.Tensor], n: int) -> None:
    """Keep the ``n`` most important FFN channels of every block, in place."""
    import torch

    for block, scores in zip(model.model.layers, channels, strict=True):
        idx = torch.topk(scores, n).indices.sort().values
        mlp = block.mlp
        for lin in (mlp.gate_proj, mlp.up_proj):  # channels are their output rows
            lin.weight = torch.nn.Parameter(lin.weight.data[idx].clone())
            if lin.bias is not None:
                lin.bias = torch.nn.Parameter(lin.bias.data[idx].clone())
            lin.out_features = n
        mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight.data[:, idx].clone())
        mlp.down_proj.in_features = n
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = n
    model.config.intermediate_size = n
