"""The store directory: manifests, blobs and the scratch space pulls write into.

Layout under the store root (``pocketlm.config.home()``)::

    manifests/<name>.json      one per model
    blobs/sha256-<hex>.gguf    model files pocketlm owns (pulled or derived)
    tmp/<scratch>/             one per pull or quantization in progress, same filesystem
                               as blobs/; its .owner.lock is locked while its owner lives
    locks/                     one lock file per model name, held while it is pulled

Everything becomes visible through ``os.replace`` of a complete file, so a
reader never sees half a model, and a killed pull leaves only scratch behind,
which the next operation that writes to the store sweeps away.

Only store names (``valid_name``) are looked up: a path, or text no file can be
named (too long, NUL, lone surrogates), is an unknown model, never an OSError.
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
from pocketlm.store.manifest import Manifest
from pocketlm.store.names import check_name, name_problem, shown, valid_name

__all__ = ["Store", "valid_name", "write_atomic"]

SCRATCH_LOCK = ".owner.lock"  # in each scratch directory, flock()ed by its owner
STALE_TMP_SECONDS = 24 * 3600  # for scratch without a lock: being made, or an older pocketlm's


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else config.home()

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / f"sha256-{sha256}.gguf"

    def _manifest_path(self, name: str) -> Path:
        return self.manifests_dir / (quote(name, safe="") + ".json")

    # -- reading -------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.manifests_dir.is_dir():
            return []
        names = (unquote(p.name[: -len(".json")]) for p in self.manifests_dir.glob("*.json"))
        return sorted(n for n in names if valid_name(n))  # a hand-made file is not a model

    def list(self) -> list[Manifest]:
        return [self.get(n) for n in self.names()]

    def find(self, name: str) -> Manifest | None:
        """The manifest of ``name``, or None (also for anything that is not a valid name)."""
        if not valid_name(name):
            return None
        path = self._manifest_path(name)
        return Manifest.read(path) if path.is_file() else None

    def get(self, name: str) -> Manifest:
        problem = name_problem(name)
        if problem is not None:  # a path, or text no file is named: nothing to look at
            hint = f"{problem}; `pocketlm list` shows the models"
            raise ModelNotFoundError(f"'{shown(name)}' is not a model name", hint)
        manifest = self.find(name)
        if manifest is None:
            known_catalog = catalog.entries(self.root)
            if name in known_catalog:
                raise ModelNotFoundError(
                    f"model '{name}' is not pulled yet", f"run: pocketlm pull {name}"
                )
            known = set(self.names()) | set(known_catalog)
            raise ModelNotFoundError(f"unknown model '{name}'", catalog.suggest(name, known))
        return manifest

    # -- writing -------------------------------------------------------------

    def _prepare(self) -> None:
        """Before every write: the directories exist, and scratch whose owner died is gone."""
        for d in (self.manifests_dir, self.blobs_dir, self.tmp_dir, self.root / "locks"):
            d.mkdir(parents=True, exist_ok=True)
        self.sweep_scratch()

    def put(self, manifest: Manifest) -> Manifest:
        """Write (or replace) a manifest atomically."""
        check_name(manifest.name)
        self._prepare()
        write_atomic(self._manifest_path(manifest.name), manifest.to_json().encode())
        return manifest

    def remove(self, name: str) -> Manifest:
        """Delete a model: its manifest, and its blob unless imported or still referenced."""
        manifest = self.get(name)
        self._prepare()
        self._manifest_path(name).unlink()
        if not manifest.imported and not any(m.path == manifest.path for m in self.list()):
            Path(manifest.path).unlink(missing_ok=True)
        return manifest

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A scratch directory on the store's filesystem, removed whatever happens.

        Its lock stays held until the ``with`` block ends: a process killed with no chance
        to clean up (SIGKILL, OOM killer, power loss) releases it, so the next operation
        that writes to the store knows that the directory is nobody's and removes it."""
        self._prepare()
        path = Path(tempfile.mkdtemp(prefix="scratch-", dir=self.tmp_dir))
        fd = None
        try:
            fd = _lock_scratch(path)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            if fd is not None:
                os.close(fd)

    def sweep_scratch(self) -> None:
        """Remove every scratch directory whose owner is gone (its lock is free)."""
        with contextlib.suppress(OSError):
            for entry in list(self.tmp_dir.iterdir()):
                with contextlib.suppress(OSError):  # BlockingIOError: the owner is alive
                    _remove_if_abandoned(entry)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold an exclusive lock on ``name`` (two pulls of one model wait for each other)."""
        check_name(name)
        self._prepare()
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
        self._prepare()
        dst = self.blob_path(sha256)
        os.replace(src, dst)
        return dst

    def check_writable(self) -> None:
        try:
            self._prepare()
        except OSError as e:
            raise PocketError(
                f"cannot write to the model store {self.root} ({e.strerror})",
                f"set {config.HOME_ENV} to a writable directory",
            ) from None


def _lock_scratch(path: Path) -> int:
    """Lock a new scratch directory; return the descriptor that holds the lock.

    The lock file gets its final name only once locked: a sweep never finds it free
    between its creation and the lock."""
    fd, tmp = tempfile.mkstemp(prefix=".new-lock-", dir=path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        os.rename(tmp, path / SCRATCH_LOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_if_abandoned(entry: Path) -> None:
    """Remove a scratch entry whose lock is free (flock: its owner died, or let go), holding
    the lock meanwhile. One without a lock (a directory being made this instant, or an older
    pocketlm's) goes once it is a day old. A live owner's lock raises BlockingIOError.

    flock, not fcntl locks: another scratch in this very process conflicts too."""
    try:
        fd = os.open(entry / SCRATCH_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        if entry.lstat().st_mtime < time.time() - STALE_TMP_SECONDS:
            _remove(entry)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _remove(entry)
    finally:
        os.close(fd)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


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
