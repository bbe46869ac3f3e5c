"""Memory and disk a distillation run needs, checked before it starts (not an hour in)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from pocketlm.errors import PocketError

GiB = 1024**3
ADAM_BYTES = 4 + 4 + 8  # fp32 weight copy in the checkpoint, gradient, two moments
LORA_SHARE = 0.02  # LoRA adapters of rank 16 on every projection: ~1-2% of the weights


@dataclass
class Need:
    memory: int
    disk: int
    detail: str

    @classmethod
    def of(cls, student, ds, recipe, mode: str) -> Need:
        from pocketlm.services.distill.teacher import cache_bytes
        from pocketlm.services.distill.trainer import MICRO_TOKENS
        from pocketlm.store.gguf_check import inspect_gguf

        info = inspect_gguf(student.path)
        params = student.parameter_count
        trainable = params * (LORA_SHARE if recipe.lora else 1.0)
        weights = 4 * params  # fp32 copy in PyTorch
        optimizer = ADAM_BYTES * trainable
        vocab, layers, width = info.vocab_size or 32000, info.n_layer or 1, info.n_embd or 1024
        # per padded token: ~30 stored activations of the model's width per layer, and the
        # logits, their log-softmax and its gradient over the vocabulary
        activations = MICRO_TOKENS * (30 * width * layers + 3 * vocab) * 4
        memory = int(weights * 1.25 + optimizer + activations)
        teacher = cache_bytes(ds.train + ds.held_out, recipe.top_k) if mode == "logits" else 0
        checkpoint = int(4 * trainable + 8 * trainable)
        export = 2 * params  # F16 GGUF
        disk = int(teacher + checkpoint * 2 + export * 2)  # a checkpoint and its temporary
        detail = (
            f"weights {weights / GiB:.1f} GiB, optimizer {optimizer / GiB:.1f} GiB, "
            f"activations {activations / GiB:.1f} GiB"
        )
        return cls(memory, disk, detail)


def check(need: Need, root: Path) -> None:
    available = psutil.virtual_memory().available
    if need.memory > available:
        raise PocketError(
            f"training this student needs about {need.memory / GiB:.1f} GiB of memory "
            f"({need.detail}); {available / GiB:.1f} GiB is available",
            "use --lora, a smaller --seq-len, or a smaller student",
        )
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if need.disk > free:
        raise PocketError(
            f"this run needs about {need.disk / GiB:.1f} GiB of disk in {root} (teacher "
            f"log-probabilities, checkpoints, the exported model); {free / GiB:.1f} GiB is free",
            "free some space, use --lora (smaller checkpoints) or a smaller --top-k",
        )


def default_threads() -> int:
    """The physical cores this process may use: PyTorch's threads spin like ggml's."""
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        cores = min(cores, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        pass
    return max(1, cores)
