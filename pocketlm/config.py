"""Where pocketlm keeps things, and the defaults users can override.

One environment variable per location, read when asked for (never cached at
import time) so that tests and tools can point a process at another store.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "POCKETLM_HOME"
DEFAULT_MODEL_ENV = "POCKETLM_MODEL"
DEFAULT_MODEL = "smollm2-135m-instruct"


def home() -> Path:
    """The store root: ``$POCKETLM_HOME`` or ``~/.pocketlm``."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".pocketlm"


def default_model() -> str:
    return os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL


CACHE_ENV = "POCKETLM_CACHE"


def cache_dir() -> Path:
    """Machine-local facts pocketlm measured (engine probes, memory bandwidth)."""
    value = os.environ.get(CACHE_ENV)
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pocketlm"
