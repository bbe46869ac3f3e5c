"""A teacher for the tests: the tiny random model, imported into the test's store."""

from __future__ import annotations

import pytest


@pytest.fixture
def teacher(tiny_gguf) -> str:
    from pocketlm.store.pull import import_file

    return import_file(tiny_gguf, name="tiny-teacher").manifest.name
