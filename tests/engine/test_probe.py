"""A llama.cpp crash on this CPU must not take the Python process down.

The crash is real: the probe child dies of SIGSEGV (a NULL read through ctypes) when asked
to use extra buffer types, the way a default native build dies on this machine's AMX.
"""

from __future__ import annotations

import sys

import pytest

from pocketlm.engine import probe
from pocketlm.errors import EngineError
from pocketlm.services.runtime import LoadedModel

SEGFAULT = "import ctypes; ctypes.string_at(0)"


def crashing_child(crash_when: set[bool]):
    real = probe.child_command

    def command(model_path: str, extra_bufts: bool) -> list[str]:
        if extra_bufts in crash_when:
            return [sys.executable, "-c", SEGFAULT]
        return real(model_path, extra_bufts)

    return command


def test_real_probe_passes_on_this_engine(tiny_gguf):
    assert probe._probe(str(tiny_gguf)) is True


def test_crash_with_extra_buffer_types_falls_back_without_them(
    tiny_gguf, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))
    monkeypatch.setattr(probe, "child_command", crashing_child({True}))
    assert probe.extra_bufts_safe(str(tiny_gguf)) is False
    assert "SIGSEGV" in capfd.readouterr().err
    # the model still loads and runs in this process, without extra buffer types
    with LoadedModel(str(tiny_gguf), ctx=128) as m:
        assert m.generate("the cat", raw=True, max_tokens=3, seed=1).stats.completion_tokens >= 1
    # and the verdict is cached: no more children
    monkeypatch.setattr(probe, "child_command", lambda *a: pytest.fail("probed twice"))
    assert probe.extra_bufts_safe(str(tiny_gguf)) is False


def test_crash_either_way_is_a_clear_error(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))
    monkeypatch.setattr(probe, "child_command", crashing_child({True, False}))
    with pytest.raises(EngineError, match="crashes on this CPU.*SIGSEGV.*install"):
        LoadedModel(str(tiny_gguf), ctx=128)


def test_probe_verdict_is_cached_per_file(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))
    assert probe.extra_bufts_safe(str(tiny_gguf)) is True
    monkeypatch.setattr(probe, "child_command", lambda *a: pytest.fail("probed twice"))
    assert probe.extra_bufts_safe(str(tiny_gguf)) is True
