"""What a user typed, as a model: the one resolver of model references.

A reference is a store name, a catalog name (pulled first, where the caller allows it), or a
GGUF file's path (where the caller allows paths: the CLI and the Python API, never an HTTP
request). Every interface and service resolves through ``resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pocketlm.errors import ModelNotFoundError
from pocketlm.progress import NullProgress, Progress
from pocketlm.store import catalog
from pocketlm.store.manifest import Manifest
from pocketlm.store.names import NAME_RULES, shown, valid_name
from pocketlm.store.pull import looks_like_path, pull, user_path
from pocketlm.store.store import Store


@dataclass(frozen=True)
class ModelRef:
    name: str  # the store name, or the file's name for a path
    path: Path
    manifest: Manifest | None  # None: a file outside the store


def resolve(
    ref: str,
    store: Store | None = None,
    *,
    paths: bool = True,
    pull_missing: bool = False,
    progress: Progress | None = None,
) -> ModelRef:
    """``ref`` as a model file. ``paths``: a GGUF path is accepted (else only names are, and
    anything else is unknown: a request must not reach files). ``pull_missing``: a catalog
    model not in the store yet is pulled (with ``progress``). Errors are one-line: an unknown
    name lists the close ones, a catalog model not pulled names the command."""
    store = store or Store()
    if paths and looks_like_path(ref):
        path = user_path(ref)
        return ModelRef(path.name, path, None)
    if not valid_name(ref):
        hint = NAME_RULES
        if looks_like_path(ref):
            hint = (
                "requests name models by store name: import the file on the server's "
                "machine (pocketlm import PATH --name NAME) and ask for NAME"
            )
        raise ModelNotFoundError(f"unknown model '{shown(ref)}'", hint)
    manifest = store.find(ref)
    if manifest is None:
        if pull_missing and ref in catalog.entries(store.root):
            manifest = pull(ref, store=store, progress=progress or NullProgress()).manifest
        else:
            manifest = store.get(ref)  # raises: unknown (close names) or not pulled (the command)
    return ModelRef(manifest.name, Path(manifest.path), manifest)
