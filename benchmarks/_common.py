"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path


def default_model_path() -> Path:
    """The default model's GGUF, pulled into the store first if needed (with a progress bar)."""
    subprocess.run([sys.executable, "-m", "pocketlm", "pull", "smollm2-135m-instruct"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    from pocketlm.store.store import Store

    return Path(Store().get("smollm2-135m-instruct").path)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"{median(xs):7.1f}  (min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})"


def threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
