"""Will this llama.cpp build run this model on this CPU without crashing the process?

Some CPUs advertise features their kernels or hypervisor do not deliver (AMX
under virtualization is the one seen here: llama.cpp segfaults at the first
decode). A crash in C cannot be caught in Python, so the first time a model
file meets an engine build on a machine, a child process loads it and decodes
a batch and a token: first with llama.cpp's extra buffer types (AMX tiles,
repacked weights), then, if that child dies, without them. The verdict is
cached per (engine build, CPU, file), so later loads pay nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

from pocketlm import config
from pocketlm.errors import EngineError
from pocketlm.store.store import write_atomic

PROBE_TIMEOUT_S = 300
REINSTALL_HINT = "reinstall the engine for this CPU with scripts/install.sh (see docs/engine.md)"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def engine_fingerprint() -> str:
    """Identifies the installed llama.cpp libraries and the CPU they run on."""
    spec = importlib.util.find_spec("llama_cpp")
    parts = [_cpu_signature()]
    if spec and spec.origin:
        for lib in sorted((Path(spec.origin).parent / "lib").glob("*")):
            st = lib.stat()
            parts.append(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_file() -> Path:
    return config.cache_dir() / "engine-probe.json"


def _read_cache() -> dict[str, bool]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def file_key(model_path: str) -> str:
    """What a fact measured of a model file on this machine depends on: the engine build and
    CPU, and the file (path, size, modification time)."""
    st = os.stat(model_path)
    return f"{engine_fingerprint()}:{os.path.realpath(model_path)}:{st.st_size}:{st.st_mtime_ns}"


def extra_bufts_safe(model_path: str) -> bool:
    """True if the model may use extra buffer types; raises EngineError if it cannot run at all."""
    forced = os.environ.get("POCKETLM_EXTRA_BUFTS")
    if forced in ("0", "1"):
        return forced == "1"
    key = file_key(model_path)
    cache = _read_cache()
    if key in cache:
        return cache[key]
    verdict = _probe(model_path)
    cache = _read_cache()
    cache[key] = verdict
    write_atomic(_cache_file(), json.dumps(cache, indent=1).encode())
    return verdict


def _probe(model_path: str) -> bool:
    first, why = _run_child(model_path, extra_bufts=True)
    if first == 0:
        return True
    if first > 0:  # a clean failure (the child printed why): no CPU quirk, a real error
        raise EngineError(f"llama.cpp cannot run {model_path}: {why}")
    second, _ = _run_child(model_path, extra_bufts=False)
    if second == 0:
        print(
            f"pocketlm: llama.cpp crashed on this CPU ({_signal_name(first)}) with its extra "
            "buffer types (AMX / repacked weights); running without them, which is slower. "
            f"To fix: {REINSTALL_HINT}",
            file=sys.stderr,
        )
        return False
    raise EngineError(
        f"llama.cpp crashes on this CPU ({_signal_name(second)}) when running {model_path}",
        REINSTALL_HINT,
    )


def _run_child(model_path: str, *, extra_bufts: bool) -> tuple[int, str]:
    """Run the probe in a child; return its exit code (negative: killed by a signal) and
    the last line it wrote to stderr."""
    try:
        proc = subprocess.run(
            child_command(model_path, extra_bufts),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(
            f"llama.cpp hung for {PROBE_TIMEOUT_S} s running {model_path}", REINSTALL_HINT
        ) from None
    return proc.returncode, (proc.stderr.strip().splitlines() or ["unknown error"])[-1]


def child_command(model_path: str, extra_bufts: bool) -> list[str]:
    return [sys.executable, "-m", "pocketlm.engine.probe", model_path, str(int(extra_bufts))]


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"exit {returncode}"


def _child(model_path: str, extra_bufts: bool) -> None:
    """Load, decode a batch and one token, sample. Crashing here is the point of asking."""
    from pocketlm.engine.llama import Context, Model, Sampler

    model = Model(model_path, use_extra_bufts=extra_bufts)
    ctx = Context(model, n_ctx=128, n_threads=os.cpu_count() or 1, n_batch=64)
    prompt = (model.tokenize("The quick brown fox jumps over the lazy dog. " * 4) * 4)[:48]
    ctx.prefill(prompt or [0] * 8)
    sampler = Sampler.greedy(model.n_vocab)
    ctx.step(sampler.sample(ctx))
    sampler.sample(ctx)


if __name__ == "__main__":
    try:
        _child(sys.argv[1], sys.argv[2] == "1")
    except Exception as e:  # reported to the parent on stderr, as one line
        print(str(e).splitlines()[0] if str(e) else type(e).__name__, file=sys.stderr)
        sys.exit(1)
