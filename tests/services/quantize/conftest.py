"""Tiny models that llama.cpp quantizes for real: 256 wide, so K- and I-quants apply
without falling back to 32-block types."""

from __future__ import annotations

from pathlib import Path

import pytest

from pocketlm.store.store import Store
from tests.tinymodel import write_tiny_gguf

WIDE = {"n_embd": 256, "n_ff": 512, "n_head": 4, "n_head_kv": 2}
# Fast settings: one thread (a shared 2-core machine), a short text, no speed run.
FAST = {"eval_tokens": 512, "window": 256, "decode_tokens": 0}


@pytest.fixture(scope="module")
def no_probe():
    """No engine probe (a child process per new file) for the many files a test module
    makes: extra buffer types off, which runs on every CPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POCKETLM_EXTRA_BUFTS", "0")
        yield


@pytest.fixture(scope="session")
def wide_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("wide") / "wide.gguf", seed=7, **WIDE)


def import_wide(wide_gguf: Path, store: Store, name: str = "wide") -> str:
    from pocketlm.store.pull import import_file

    return import_file(wide_gguf, name=name, store=store).manifest.name
