"""Where pocketlm keeps things, and the defaults users can override.

One environment variable per location, read when asked for (never cached at
import time) so that tests and tools can point a process at another store.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "POCKETLM_HOME"
DEFAULT_MODEL_ENV = "POCKETLM_MODEL"
SMALL_MODEL = "smollm2-135m-instruct"  # the smallest chat model: tests, examples, hints


def home() -> Path:
    """The store root: ``$POCKETLM_HOME`` or ``~/.pocketlm``."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".pocketlm"


def default_model() -> str:
    """The model used when none is named: ``$POCKETLM_MODEL``, ``model`` in the store's
    config.toml, or the largest model this machine runs well (pocketlm.services.ladder)."""
    from pocketlm.services import ladder  # not at import: ladder imports the store, and config

    return ladder.default_model().name


CACHE_ENV = "POCKETLM_CACHE"


def cache_dir() -> Path:
    """Machine-local facts pocketlm measured (engine probes, memory bandwidth)."""
    value = os.environ.get(CACHE_ENV)
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pocketlm"
