"""A store model as wheels that a private package index can serve (``pocketlm package``).

The model file is cut into chunks; each chunk becomes one wheel, ``<prefix>-part<N>``,
holding ``<module>/data/part<NN>.bin``. The wheels are what ``pocketlm pull`` downloads
(``pip download``), so any index pip can use serves them: PyPI-compatible servers,
Artifactory, Nexus, devpi, or a plain directory. Next to them go a PEP 503 "simple" index
(``simple/``: ``python -m http.server --directory DIR`` serves a working index) and
``catalog.toml``, the entry that pulls the model back by name.

Wheels are reproducible: fixed timestamps and permissions, entries in a fixed order
(payload sorted, then METADATA, WHEEL, RECORD), chunks stored uncompressed (GGUF data
does not compress). The same model, options and pocketlm give the same bytes.

Everything is written into a partial directory inside DIR and moved into place once the
model's bytes have been checked against its manifest: an interrupted or failed run leaves
no wheel that looks complete, and ``catalog.toml`` is moved last.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import html
import math
import os
import re
import shutil
import stat
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from packaging.utils import InvalidName, canonicalize_name
from packaging.version import InvalidVersion, Version

from pocketlm.errors import PocketError, UsageError, option
from pocketlm.progress import NullProgress, Progress, Task
from pocketlm.store.catalog import CatalogEntry, Shape
from pocketlm.store.gguf_check import GGUFInfo, inspect_gguf
from pocketlm.store.manifest import Manifest
from pocketlm.store.names import check_name, shown, valid_name
from pocketlm.store.store import Store

DEFAULT_CHUNK = 50 * 10**6  # under PyPI's default 100 MB file limit, as most indexes'
MIN_CHUNK = 10**6
DEFAULT_VERSION = "1.0.0"
CATALOG_FILE = "catalog.toml"
INDEX_DIR = "simple"
PARTIAL_PREFIX = ".pocketlm-partial-"  # a run in progress (or killed): never served as output
BLOCK = 1 << 20
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a ZIP file can record
WHEEL_TAG = "py3-none-any"
_INDEX_URL = re.compile(r"(https?|file)://\S+")  # as the catalog checks it


@dataclass(frozen=True)
class Part:
    """One chunk of the model file and the wheel that carries it."""

    project: str  # normalized distribution name, "acme-support-135m-part1"
    version: str  # normalized PEP 440 version
    member: str  # the chunk inside the wheel, "acme_support_135m_part1/data/part01.bin"
    length: int  # of the chunk; the chunks follow each other in the model's file

    @property
    def module(self) -> str:
        return self.member.split("/", 1)[0]

    @property
    def dist_info(self) -> str:
        return f"{self.module}-{self.version}.dist-info"

    @property
    def wheel(self) -> str:
        return f"{self.module}-{self.version}-{WHEEL_TAG}.whl"

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclass(frozen=True)
class Packaged:
    """What ``package`` wrote."""

    name: str  # the catalog name the entry carries
    out: Path
    catalog: Path
    index: Path  # the simple index directory
    wheels: tuple[Path, ...]
    size_bytes: int
    sha256: str
    seconds: float


def package(
    model: str,
    out: str | os.PathLike,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    name: str | None = None,
    package_prefix: str | None = None,
    version: str = DEFAULT_VERSION,
    index_url: str | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
) -> Packaged:
    """Write ``model`` (a store name) as wheels, a simple index and ``catalog.toml`` into
    ``out``. Options are checked before any work; the model's file must still be the one
    its manifest describes (size and sha256), or nothing is written."""
    started = time.monotonic()
    store = store or Store()
    progress = progress or NullProgress()
    chunk_size = check_chunk_size(chunk_size)
    version = check_version(version)
    if index_url is not None:
        check_index_url(index_url)
    manifest = store.get(model)
    name = check_name(name or manifest.name)
    prefix = project_prefix(name, package_prefix)
    source = source_file(manifest)
    info = inspect_gguf(source)
    parts = plan(prefix, version, manifest.size_bytes, chunk_size)
    out = Path(out).expanduser().absolute()
    with claim(out, name) as stale:
        with partial_dir(out) as tmp:
            with open(source, "rb") as src:
                task = progress.task(f"packaging {name}", manifest.size_bytes)
                sha, wheel_hashes = write_wheels(src, parts, tmp, name, manifest, task)
            if sha != manifest.sha256:
                raise changed(manifest, f"its sha256 is now {sha[:12]}..., not {manifest.sha256}")
            write_index(tmp / INDEX_DIR, parts, wheel_hashes)
            entry = catalog_entry(manifest, info, name, parts, index_url)
            (tmp / CATALOG_FILE).write_text(catalog_toml(entry), encoding="utf-8")
            commit(tmp, out, parts, stale)
    return Packaged(
        name=name,
        out=out,
        catalog=out / CATALOG_FILE,
        index=out / INDEX_DIR,
        wheels=tuple(out / p.wheel for p in parts),
        size_bytes=manifest.size_bytes,
        sha256=sha,
        seconds=time.monotonic() - started,
    )


# -- options ----------------------------------------------------------------------------


def check_chunk_size(size: int) -> int:
    if size < MIN_CHUNK:
        raise UsageError(
            f"invalid {option('chunk_size')}: {size} bytes is under the minimum of 1 MB",
            "give e.g. 50MB, 100MiB or 1GB",
        )
    return size


def check_version(text: str) -> str:
    """``text`` as a normalized PEP 440 version ("1.0.0", "2.1rc1")."""
    try:
        return str(Version(text))
    except InvalidVersion:
        raise UsageError(
            f"invalid {option('version')} '{shown(text)}': not a PEP 440 version",
            "give e.g. 1.0.0, 2.1 or 1.0.0rc1",
        ) from None


def check_index_url(url: str) -> str:
    if not _INDEX_URL.fullmatch(url):
        raise UsageError(
            f"invalid {option('index_url')} '{shown(url)}': not an http(s) or file URL",
            "give the index's simple API, e.g. http://host:8000/simple/",
        )
    return url


def project_prefix(name: str, given: str | None) -> str:
    """The distribution name prefix: ``given`` or one made from the model's name, as a
    normalized project name (PEP 503: lowercase, runs of ``-_.`` as one ``-``)."""
    if given is None:
        cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
        return canonicalize_name(cleaned or "model")
    try:
        return canonicalize_name(given, validate=True)
    except InvalidName:
        raise UsageError(
            f"invalid {option('package_prefix')} '{shown(given)}': not a Python project name",
            "use letters, digits and . _ - (starting and ending with a letter or digit)",
        ) from None


# -- the model's file -------------------------------------------------------------------


def source_file(manifest: Manifest) -> Path:
    """The model's file, if it is still there at the size its manifest records."""
    path = manifest.file()
    try:
        st = path.stat()
    except OSError as e:
        raise changed(manifest, f"its file {path} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise changed(manifest, f"{path} is not a regular file")
    if st.st_size != manifest.size_bytes:
        raise changed(
            manifest, f"{path} has {st.st_size} bytes, the manifest says {manifest.size_bytes}"
        )
    return path


def changed(manifest: Manifest, what: str) -> PocketError:
    if manifest.imported:
        fix = (
            f"if the file is right now, register it again: pocketlm rm {manifest.name} && "
            f"pocketlm import '{manifest.path}' --name {manifest.name}"
        )
    else:
        fix = f"remove it (pocketlm rm {manifest.name}) and pull or make it again"
    return PocketError(
        f"model '{manifest.name}' is not the file it was stored as: {what}; nothing was written",
        fix,
    )


# -- the output directory ---------------------------------------------------------------


@contextlib.contextmanager
def claim(out: Path, name: str) -> Iterator[set[str]]:
    """Hold ``out`` (created if need be) for one run; yield the wheels a previous package
    of ``name`` left there. Anything else in a non-empty ``out`` is refused. A directory
    made here and left empty (a failed run) is removed again."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option('out', shown(str(out)))} exists and is not a directory")
    stale = previous_wheels(out, name) if out.is_dir() else set()
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise PocketError(f"cannot write to {shown(str(out))} ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PocketError(
                f"another `pocketlm package` is writing to {shown(str(out))}",
                f"wait for it, or choose another {option('out')}",
            ) from None
        for leftover in out.glob(PARTIAL_PREFIX + "*"):  # a killed run's; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        yield stale
    finally:
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: nothing was written


def previous_wheels(out: Path, name: str) -> set[str]:
    """The wheel file names of a previous package of ``name`` in ``out``; an empty set
    for an empty directory. Any other content is a UsageError."""
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(PARTIAL_PREFIX))
    if not entries:
        return set()
    flag = option("out", shown(str(out)))
    try:
        models = tomllib.loads((out / CATALOG_FILE).read_text(encoding="utf-8"))["model"]
        previous = [m["name"] for m in models]
        packages = [p for m in models for p in m["packages"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"{flag} is not empty and holds no package output ({len(entries)} entries, "
            f"e.g. '{shown(entries[0])}')",
            "choose a new or empty directory",
        ) from None
    if previous != [name]:
        raise UsageError(
            f"{flag} holds the package of {', '.join(map(repr, previous))}, not '{name}'",
            "choose another directory",
        )
    wheels = set()
    for requirement in packages:
        project, _, version = str(requirement).partition("==")
        wheels.add(f"{project.replace('-', '_')}-{version}-{WHEEL_TAG}.whl")
    return wheels


@contextlib.contextmanager
def partial_dir(out: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=out))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(tmp: Path, out: Path, parts: list[Part], stale: set[str]) -> None:
    """Move the finished output into ``out``; ``catalog.toml`` last, so that it is there
    only when all it names is."""
    for part in parts:
        os.replace(tmp / part.wheel, out / part.wheel)
    for wheel in stale - {p.wheel for p in parts}:
        (out / wheel).unlink(missing_ok=True)
    if (out / INDEX_DIR).exists():
        os.replace(out / INDEX_DIR, tmp / "old-index")  # removed with tmp
    os.replace(tmp / INDEX_DIR, out / INDEX_DIR)
    os.replace(tmp / CATALOG_FILE, out / CATALOG_FILE)


# -- wheels -----------------------------------------------------------------------------


def plan(prefix: str, version: str, size: int, chunk_size: int) -> list[Part]:
    """The parts a ``size``-byte file is cut into, at most ``chunk_size`` bytes each."""
    count = max(1, math.ceil(size / chunk_size))
    width = max(2, len(str(count)))
    parts = []
    for i in range(count):
        project = f"{prefix}-part{i + 1}"
        module = project.replace("-", "_")
        member = f"{module}/data/part{i + 1:0{width}d}.bin"
        parts.append(Part(project, version, member, min(chunk_size, size - i * chunk_size)))
    return parts


def write_wheels(
    src: BinaryIO, parts: list[Part], dest: Path, name: str, manifest: Manifest, task: Task
) -> tuple[str, dict[str, str]]:
    """Write one wheel per part into ``dest`` from ``src``, read once from its start.
    Returns the sha256 of all that was read and each wheel file's sha256 (by file name)."""
    whole = hashlib.sha256()
    wheel_hashes = {}
    for i, part in enumerate(parts, 1):
        summary = f"{name}: GGUF model file for pocketlm, part {i} of {len(parts)}"
        path = dest / part.wheel
        try:
            write_wheel(path, part, src, summary, manifest.license or "unknown", whole, task)
        except EOFError:
            raise changed(manifest, "it shrank while it was read") from None
        wheel_hashes[part.wheel] = sha256_of(path)
    if src.read(1):
        raise changed(manifest, "it grew while it was read")
    return whole.hexdigest(), wheel_hashes


def write_wheel(
    path: Path, part: Part, src: BinaryIO, summary: str, license: str, whole, task: Task
) -> None:
    """One PEP 427 wheel: the package's ``__init__.py``, the chunk, METADATA, WHEEL, RECORD."""
    init = f'"""{summary}."""\n'.encode()
    info = part.dist_info
    record: list[str] = []
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, "w") as zf:
            _add(zf, record, f"{part.module}/__init__.py", init)
            digest = _add_stream(zf, part.member, src, part.length, whole, task)
            record.append(f"{part.member},sha256={_b64(digest)},{part.length}")
            _add(zf, record, f"{info}/METADATA", _metadata(part, summary, license))
            _add(zf, record, f"{info}/WHEEL", _wheel_file())
            record.append(f"{info}/RECORD,,")
            _add(zf, None, f"{info}/RECORD", ("\n".join(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _zipinfo(arcname: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # unix, wherever it was written
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size  # sizes the header: ZIP64 only for chunks that need it
    return info


def _add(zf: zipfile.ZipFile, record: list[str] | None, arcname: str, data: bytes) -> None:
    zf.writestr(_zipinfo(arcname, len(data)), data)
    if record is not None:
        record.append(f"{arcname},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}")


def _add_stream(
    zf: zipfile.ZipFile, arcname: str, src: BinaryIO, length: int, whole, task: Task
) -> bytes:
    """Copy ``length`` bytes of ``src`` into the wheel in blocks; return their sha256."""
    digest = hashlib.sha256()
    with zf.open(_zipinfo(arcname, length), "w") as dst:
        left = length
        while left:
            block = src.read(min(BLOCK, left))
            if not block:
                raise EOFError
            dst.write(block)
            digest.update(block)
            whole.update(block)
            task.advance(len(block))
            left -= len(block)
    return digest.digest()


def _metadata(part: Part, summary: str, license: str) -> bytes:
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {part.project}\n"
        f"Version: {part.version}\n"
        f"Summary: {summary}\n"
        f"License: {' '.join(license.split()) or 'unknown'}\n"
    ).encode()


def _wheel_file() -> bytes:
    return (
        f"Wheel-Version: 1.0\nGenerator: pocketlm package\nRoot-Is-Purelib: true\n"
        f"Tag: {WHEEL_TAG}\n"
    ).encode()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


# -- the simple index -------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html>
  <head>
    <meta name="pypi:repository-version" content="1.0">
    <title>{title}</title>
  </head>
  <body>
    <h1>{title}</h1>
{links}
  </body>
</html>
"""


def write_index(index: Path, parts: list[Part], wheel_hashes: dict[str, str]) -> None:
    """A PEP 503 simple index: ``index/index.html`` and one page per project, linking
    to the wheels two levels up (the index sits next to them)."""
    projects = []
    for part in parts:
        (index / part.project).mkdir(parents=True)
        href = f"../../{part.wheel}#sha256={wheel_hashes[part.wheel]}"
        (index / part.project / "index.html").write_text(
            _page(f"Links for {part.project}", [(href, part.wheel)]), encoding="utf-8"
        )
        projects.append((f"{part.project}/", part.project))
    (index / "index.html").write_text(_page("Simple index", projects), encoding="utf-8")


def _page(title: str, links: list[tuple[str, str]]) -> str:
    lines = "\n".join(
        f'    <a href="{html.escape(href)}">{html.escape(text)}</a><br>' for href, text in links
    )
    return _PAGE.format(title=html.escape(title), links=lines)


# -- catalog.toml -----------------------------------------------------------------------


def catalog_entry(
    manifest: Manifest, info: GGUFInfo, name: str, parts: list[Part], index_url: str | None
) -> CatalogEntry:
    """The entry that pulls the model back, with its shapes (so that `pocketlm fit` answers
    before the pull); the catalog's own rules check it."""
    parent = manifest.parent if valid_name(manifest.parent) else None  # a path: not elsewhere
    try:
        shape = Shape.of(info)
    except ValueError:  # a size the catalog cannot hold: fit reads the file once pulled
        shape = None
    return CatalogEntry(
        name=name,
        description=manifest.description or name,
        packages=tuple(p.requirement for p in parts),
        members=tuple(p.member for p in parts),
        sha256=manifest.sha256,
        size_bytes=manifest.size_bytes,
        license=manifest.license or "unknown",
        chat=manifest.chat,
        index_url=index_url,
        parent=parent,
        shape=shape,
    )


def catalog_toml(entry: CatalogEntry) -> str:
    """``entry`` as a catalog file; keys without a value are left out."""
    table = entry.to_dict()
    del table["origin"]
    lines = [
        "# Written by `pocketlm package`. Pull with: POCKETLM_CATALOG=<this file> "
        f"pocketlm pull {entry.name}",
        "[[model]]",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v not in (None, "")]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped; a lone
    surrogate (undecodable text from a GGUF header) becomes U+FFFD."""
    out = []
    for c in text:
        if c in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
