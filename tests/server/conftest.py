"""A real `pocketlm serve` process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(*args: str, env: dict | None = None, host: str = "127.0.0.1", key: str | None = None):
    """Run `pocketlm serve ARGS` until the block ends; yields its base URL."""
    with serve_process(*args, env=env, host=host, key=key) as (url, _proc):
        yield url


@contextlib.contextmanager
def serve_process(
    *args: str, env: dict | None = None, host: str = "127.0.0.1", key: str | None = None
):
    """As serve(), yielding (base URL, the server's Popen)."""
    port = free_port()
    if key:
        args = (*args, "--api-key", key)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketlm", "serve", "--host", host, "--port", str(port), *args],
        env=dict(os.environ, **(env or {})),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()}")
            try:
                if httpx.get(f"{url}/api/version", headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


@pytest.fixture(scope="module")
def tiny_server(tiny_gguf):
    with serve(
        "--preload", str(tiny_gguf), "--parallel", "4", "--ctx", "1024", "--threads", "1"
    ) as url:
        yield url, "tiny"
