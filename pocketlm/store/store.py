"""The store directory: manifests, blobs and the scratch space pulls write into.

Layout under the store root (``pocketlm.config.home()``)::

    manifests/<name>.json      one per model
    blobs/sha256-<hex>.gguf    model files pocketlm owns (pulled or derived)
    tmp/                       scratch for pulls in progress, same filesystem as blobs/
    locks/                     one lock file per model name, held while it is pulled

Everything becomes visible through ``os.replace`` of a complete file, so a
reader never sees half a model, and a killed pull leaves only scratch behind,
which the next pull sweeps away.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

from pocketlm import config
from pocketlm.errors import ModelNotFoundError, PocketError
from pocketlm.store import catalog
from pocketlm.store.manifest import Manifest, check_name

STALE_TMP_SECONDS = 24 * 3600


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else config.home()

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / f"sha256-{sha256}.gguf"

    def _manifest_path(self, name: str) -> Path:
        return self.manifests_dir / (quote(name, safe="") + ".json")

    # -- reading -------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.manifests_dir.is_dir():
            return []
        return sorted(unquote(p.name[: -len(".json")]) for p in self.manifests_dir.glob("*.json"))

    def list(self) -> list[Manifest]:
        return [self.get(n) for n in self.names()]

    def find(self, name: str) -> Manifest | None:
        path = self._manifest_path(name)
        return Manifest.read(path) if path.is_file() else None

    def get(self, name: str) -> Manifest:
        manifest = self.find(name)
        if manifest is None:
            if name in catalog.CATALOG:
                raise ModelNotFoundError(
                    f"model '{name}' is not pulled yet", f"run: pocketlm pull {name}"
                )
            known = set(self.names()) | set(catalog.CATALOG)
            raise ModelNotFoundError(f"unknown model '{name}'", catalog.suggest(name, known))
        return manifest

    # -- writing -------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        for d in (self.manifests_dir, self.blobs_dir, self.root / "tmp", self.root / "locks"):
            d.mkdir(parents=True, exist_ok=True)

    def put(self, manifest: Manifest) -> Manifest:
        """Write (or replace) a manifest atomically."""
        check_name(manifest.name)
        self._ensure_dirs()
        write_atomic(self._manifest_path(manifest.name), manifest.to_json().encode())
        return manifest

    def remove(self, name: str) -> Manifest:
        """Delete a model: its manifest, and its blob unless imported or still referenced."""
        manifest = self.get(name)
        self._manifest_path(name).unlink()
        if not manifest.imported and not any(m.path == manifest.path for m in self.list()):
            Path(manifest.path).unlink(missing_ok=True)
        return manifest

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A scratch directory on the store's filesystem, removed whatever happens."""
        self._ensure_dirs()
        self._sweep_stale_scratch()
        path = Path(tempfile.mkdtemp(prefix="pull-", dir=self.root / "tmp"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _sweep_stale_scratch(self) -> None:
        # Scratch left by a process that was killed (SIGKILL, power loss).
        # Live pulls hold a lock and touch their files, so only old ones go.
        cutoff = time.time() - STALE_TMP_SECONDS
        for entry in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold an exclusive lock on ``name`` (two pulls of one model wait for each other)."""
        self._ensure_dirs()
        with open(self.root / "locks" / (quote(name, safe="") + ".lock"), "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(
                    f"waiting for another pocketlm process working on '{name}'...", file=sys.stderr
                )
                fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def adopt_blob(self, src: Path, sha256: str) -> Path:
        """Move a complete, verified file from scratch into blobs/ atomically."""
        self._ensure_dirs()
        dst = self.blob_path(sha256)
        os.replace(src, dst)
        return dst

    def check_writable(self) -> None:
        try:
            self._ensure_dirs()
        except OSError as e:
            raise PocketError(
                f"cannot write to the model store {self.root} ({e.strerror})",
                f"set {config.HOME_ENV} to a writable directory",
            ) from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; manifests are not secrets
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
