"""The code's form is checked with the tests (so CI checks it): ruff's lint rules and its
formatter, over the package, the tests, the benchmarks and the scripts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

TREES = ("pocketlm", "tests", "benchmarks", "scripts")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *TREES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
