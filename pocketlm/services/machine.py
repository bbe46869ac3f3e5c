"""Facts about this machine that pocketlm measures once: memory bandwidth, RAM, cores."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from pocketlm import config

BANDWIDTH_BYTES = 256 * 2**20


def memory_bandwidth(refresh: bool = False) -> float:
    """Read bandwidth in bytes/s (all physical cores reading at once), measured and cached.

    Plain decoding reads every weight once per token, so this bounds decode speed.
    """
    from pocketlm.engine.probe import _cpu_signature

    path = config.cache_dir() / "bandwidth.json"
    key = hashlib.sha256(_cpu_signature().encode()).hexdigest()[:16]
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("cpu") == key:
                return float(cached["read_bytes_per_s"])
        except (OSError, ValueError, KeyError):
            pass
    value = _measure_read_bandwidth()
    from pocketlm.store.store import write_atomic

    write_atomic(path, json.dumps({"cpu": key, "read_bytes_per_s": value}).encode())
    return value


def _measure_read_bandwidth() -> float:
    import numpy as np

    threads = default_threads()
    chunks = [np.ones(BANDWIDTH_BYTES // 8 // threads) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, chunks))  # warm-up: pages faulted in, caches cold after
        best = 0.0
        for _ in range(5):
            t = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = max(best, BANDWIDTH_BYTES / (time.perf_counter() - t))
    return best


def default_threads() -> int:
    """Physical cores: llama.cpp decodes no faster on hyper-threads, often slower."""
    return cores()[0]


def ram() -> tuple[int, int]:
    """(total, available) bytes of RAM."""
    import psutil

    vm = psutil.virtual_memory()
    return vm.total, vm.available


def cores() -> tuple[int, int]:
    import psutil

    return psutil.cpu_count(logical=False) or 1, os.cpu_count() or 1
