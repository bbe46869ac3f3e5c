"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path


def default_model_path(name: str = "smollm2-135m-instruct") -> Path:
    """A catalog model's GGUF (the test default: the 135M), pulled into the store first if
    needed (with a progress bar)."""
    subprocess.run(
        [sys.executable, "-m", "pocketlm", "pull", name], check=True, stdout=subprocess.DEVNULL
    )
    from pocketlm.store.store import Store

    return Path(Store().get(name).path)


TASK_DATA = Path(__file__).resolve().parent / "data" / "tasks"  # the tasks' labelled files


def same_field(got, want) -> bool:
    """An extracted field against the expected one: case and runs of spaces ignored, an
    empty string as null."""
    norm = lambda x: None if x in (None, "") else " ".join(str(x).split()).lower()  # noqa: E731
    return norm(got) == norm(want)


def jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"{median(xs):7.1f}  (min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})"


def threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# -- servers and HTTP clients (serve_*.py) -----------------------------------------------------


def machine_load() -> str:
    """The load average, to tell a quiet machine from a busy one next to the figures."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat)."""
    import time

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(limit: float = 600, busy: float = 0.1) -> float:
    """Wait (up to ``limit`` s) until other processes leave the CPUs idle, so that a
    measurement does not share them; returns the seconds waited."""
    import time

    start = time.monotonic()
    while time.monotonic() - start < limit and cpu_busy() > busy:
        time.sleep(4)
    return time.monotonic() - start


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Server:
    """A server process for a benchmark: started, waited for until ``ready_path`` answers 200,
    stopped (SIGTERM, then SIGKILL) on exit. Its output goes to ``log`` (a file path).
    ``memory_limit`` (bytes of address space, the soft RLIMIT_AS) makes a runaway allocation
    a MemoryError in the server instead of a machine that swaps or an OOM kill elsewhere."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        *,
        env: dict | None = None,
        log: str | os.PathLike = os.devnull,
        ready_path: str = "/v1/models",
        start_timeout: float = 120.0,
        memory_limit: int | None = None,
    ):
        self.argv, self.port, self.env, self.log = argv, port, env, log
        self.ready_path, self.start_timeout = ready_path, start_timeout
        self.memory_limit = memory_limit
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        import signal
        import time

        import httpx

        # a benchmark stopped with SIGTERM still stops its servers (the with-blocks unwind)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

        out = open(self.log, "ab")  # the child keeps its own copy of the descriptor
        self.proc = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            preexec_fn=self._limit_memory if self.memory_limit else None,
        )
        out.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited ({self.proc.returncode}): see {self.log}\n"
                    f"  {' '.join(self.argv)}"
                )
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"server not ready after {self.start_timeout:.0f} s: see {self.log}")

    def _limit_memory(self) -> None:
        """In the child, before exec: the soft limit only, so that the server may still set
        lower ones for its own children."""
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, hard))

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid


def pocketlm_serve(model: str, port: int, *extra: str) -> list[str]:
    """argv of `pocketlm serve` preloading ``model`` (a store name or a GGUF path)."""
    return [
        sys.executable,
        "-m",
        "pocketlm",
        "serve",
        "--port",
        str(port),
        "--preload",
        model,
        *extra,
    ]


def sse_data(line: str) -> str | None:
    """The payload of an SSE ``data:`` line, or None for other lines (comments, blank)."""
    if line.startswith("data:"):
        return line[5:].strip()
    return None


def scrape(url: str) -> dict[str, float]:
    """A pocketlm server's /metrics as {name{labels}: value}."""
    import httpx

    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def count_tokens(model_path: str | os.PathLike, text: str) -> int:
    """Tokens in ``text`` (no special tokens added) by the model's own tokenizer."""
    import ctypes

    import llama_cpp as ll

    quiet = ll.llama_log_callback(lambda *a: None)
    ll.llama_log_set(quiet, ctypes.c_void_p(0))
    mp = ll.llama_model_default_params()
    mp.vocab_only = True
    model = ll.llama_model_load_from_file(str(model_path).encode(), mp)
    try:
        vocab = ll.llama_model_get_vocab(model)
        data = text.encode()
        buf = (ll.llama_token * (len(data) + 8))()
        return ll.llama_tokenize(vocab, data, len(data), buf, len(buf), False, False)
    finally:
        ll.llama_model_free(model)
