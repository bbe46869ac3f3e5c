"""Model references that are neither a store name nor a usable path: every command that
takes one answers with one line on stderr, never a traceback. (NUL cannot be passed in
argv: tests/store/test_store_hardening.py checks it on the Python API.)"""

from __future__ import annotations

import os

import pytest

from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store
from tests.conftest import assert_clean_error, run_cli

LONG = "a" * 300  # over NAME_MAX (255 bytes) as a manifest's file name
ODD_REFS = {
    "300 bytes": LONG,
    "300 bytes, a path": LONG + ".gguf",
    "no such user": "~nosuchuser/x.gguf",
    "not UTF-8": os.fsdecode(b"a\xffb"),  # argv carries it as a lone surrogate
}
COMMANDS = {
    "show": ["show"],
    "rm": ["rm"],
    "pull": ["pull"],
    "import": ["import"],
    "run": ["run"],  # followed by a prompt: the first word must be the model
    "run -m": ["run", "-m"],
}


@pytest.fixture(autouse=True)
def a_store_with_a_model():
    """A store that has a manifests/ directory to look in (an empty one has none)."""
    Store().put(
        Manifest(
            name="real",
            path="/nonexistent.gguf",
            source="test",
            sha256="0" * 64,
            size_bytes=1,
            architecture="llama",
            parameter_count=1,
            quantization="F32",
            bits_per_weight=32.0,
        )
    )


@pytest.mark.parametrize("ref", ODD_REFS.values(), ids=ODD_REFS.keys())
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_odd_model_references_are_one_line_errors(command, ref):
    prompt = ["hello"] if command[0] == "run" else []
    proc = run_cli(*command, ref, *prompt, env={"POCKETLM_OFFLINE": "1"})
    line = assert_clean_error(proc)
    assert line.startswith("error:") and line.isprintable(), line
    assert Store().names() == ["real"]
