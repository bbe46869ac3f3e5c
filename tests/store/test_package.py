"""`pocketlm package`: store models as wheels, a simple index and a catalog entry; pulled
back through a real HTTP index by the real CLI."""

from __future__ import annotations

import base64
import csv
import fcntl
import functools
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from pocketlm.cli import main as cli_main
from pocketlm.errors import PocketError
from pocketlm.store import package as pkg
from pocketlm.store.catalog import load as load_catalog
from pocketlm.store.pull import import_file
from pocketlm.store.store import Store
from tests.conftest import assert_clean_error, run_cli
from tests.tinymodel import write_tiny_gguf

MB = 10**6


@pytest.fixture(scope="module")
def wide_gguf(tmp_path_factory) -> Path:
    """5.8 MB: six parts at the smallest chunk size (the tiny model is under 1 MB)."""
    path = tmp_path_factory.mktemp("wide") / "wide.gguf"
    return write_tiny_gguf(path, seed=7, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)


@pytest.fixture
def tiny(tiny_gguf):
    return import_file(tiny_gguf, name="tiny").manifest


@pytest.fixture
def wide(wide_gguf):
    return import_file(wide_gguf, name="acme-support").manifest


def cli(capsys, *args: str) -> SimpleNamespace:
    """`pocketlm ARGS` in this process (fast), as run_cli reports it."""
    try:
        code = cli_main(list(args))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout_text=out.out, stderr_text=out.err)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def catalog(out: Path) -> dict:
    (model,) = tomllib.loads((out / "catalog.toml").read_text(encoding="utf-8"))["model"]
    return model


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# -- the wheels -------------------------------------------------------------------------


def test_a_wheel_installs_with_pip_and_its_record_verifies(tiny, tiny_gguf, tmp_path):
    done = pkg.package("tiny", tmp_path / "out")
    (wheel,) = done.wheels
    assert parse_wheel_filename(wheel.name)[:2] == ("tiny-part1", Version("1.0.0"))
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target"]
        + [str(target), str(wheel), "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PIP_CONFIG_FILE=os.devnull),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "tiny_part1/data/part01.bin").read_bytes() == tiny_gguf.read_bytes()
    info = target / "tiny_part1-1.0.0.dist-info"
    rows = list(csv.reader((info / "RECORD").open()))
    checked = 0
    for path, digest, size in rows:
        if digest and not path.startswith(".."):  # pip adds its own files; bin/ scripts: none
            data = (target / path).read_bytes()
            assert (record_hash(data), str(len(data))) == (digest, size), path
            checked += 1
    assert checked >= 4  # __init__.py, the chunk, METADATA, WHEEL
    meta = (info / "METADATA").read_text()
    assert "Name: tiny-part1\nVersion: 1.0.0\n" in meta
    assert "Summary: tiny: GGUF model file for pocketlm, part 1 of 1\n" in meta
    assert "License: apache-2.0\n" in meta
    assert "Tag: py3-none-any\n" in (info / "WHEEL").read_text()


def test_wheel_layout_is_stored_fixed_and_ordered(wide, tmp_path):
    done = pkg.package("acme-support", tmp_path / "out", chunk_size=2 * MB)
    with zipfile.ZipFile(done.wheels[0]) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == [
        "acme_support_part1/__init__.py",
        "acme_support_part1/data/part01.bin",
        "acme_support_part1-1.0.0.dist-info/METADATA",
        "acme_support_part1-1.0.0.dist-info/WHEEL",
        "acme_support_part1-1.0.0.dist-info/RECORD",
    ]
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


@pytest.mark.parametrize(
    ("chunk", "sizes"),
    [
        (1 * MB, [MB] * 5 + [817_216]),
        (2 * MB, [2 * MB, 2 * MB, 1_817_216]),
        (2**21, [2**21, 2**21, 5_817_216 - 2**22]),
        (100 * MB, [5_817_216]),
    ],
)
def test_chunks_concatenate_to_the_model(wide, wide_gguf, tmp_path, chunk, sizes):
    out = tmp_path / "out"
    done = pkg.package("acme-support", out, chunk_size=chunk)
    entry = catalog(out)
    n = len(sizes)
    assert entry["packages"] == [f"acme-support-part{i}==1.0.0" for i in range(1, n + 1)]
    assert entry["members"] == [
        f"acme_support_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1)
    ]
    chunks = []
    for wheel, member in zip(done.wheels, entry["members"], strict=True):
        with zipfile.ZipFile(wheel) as zf:
            chunks.append(zf.read(member))
            assert f"part {len(chunks)} of {n}" in zf.read(zf.namelist()[2]).decode()
    assert [len(c) for c in chunks] == sizes
    assert b"".join(chunks) == wide_gguf.read_bytes()
    assert sorted(p.name for p in out.glob("*.whl")) == sorted(w.name for w in done.wheels)


def test_catalog_entry_carries_the_manifest_and_the_shapes(wide, wide_gguf, tmp_path):
    store = Store()
    store.put(
        wide.model_copy(
            update={"parent": "acme-base", "description": 'Acme "support" bot\nv2', "chat": False}
        )
    )
    out = tmp_path / "out"
    pkg.package(
        "acme-support",
        out,
        name="acme-support-135m",
        package_prefix="Acme.Support__Model",
        version="2.1",
        index_url="http://models.internal:8000/simple/",
    )
    entry = catalog(out)
    assert entry["name"] == "acme-support-135m"
    assert entry["description"] == 'Acme "support" bot\nv2'
    assert entry["packages"][0] == "acme-support-model-part1==2.1"
    assert entry["members"][0] == "acme_support_model_part1/data/part01.bin"
    assert entry["sha256"] == hashlib.sha256(wide_gguf.read_bytes()).hexdigest()
    assert entry["size_bytes"] == wide_gguf.stat().st_size
    assert (entry["license"], entry["chat"], entry["parent"]) == ("apache-2.0", False, "acme-base")
    assert entry["index_url"] == "http://models.internal:8000/simple/"
    assert "homepage" not in entry  # optional and unknown: left out
    shapes = {k: entry[k] for k in ("architecture", "quantization", "n_layer", "n_embd")}
    assert shapes == {"architecture": "llama", "quantization": "F32", "n_layer": 2, "n_embd": 256}
    assert entry["parameters"] == wide.parameter_count
    assert entry["head_dim_k"] == 64 and entry["vocab_size"] == 527
    assert entry["tensor_data_bytes"] > 0.99 * entry["size_bytes"]
    (loaded,) = load_catalog(out / "catalog.toml")  # what `pocketlm pull` reads
    assert (loaded.name, loaded.parent, loaded.index_url) == (
        "acme-support-135m",
        "acme-base",
        "http://models.internal:8000/simple/",
    )
    assert loaded.shape is not None and loaded.shape.n_embd == 256


def test_a_parent_given_by_path_is_left_out(wide, tmp_path):
    Store().put(wide.model_copy(update={"parent": str(tmp_path / "base.gguf"), "license": None}))
    out = tmp_path / "out"
    pkg.package("acme-support", out)
    entry = catalog(out)
    assert "parent" not in entry and "index_url" not in entry
    assert entry["license"] == "unknown"
    load_catalog(out / "catalog.toml")


def test_toml_strings_survive_any_text():
    text = 'q"b\\s\x00\x1f\x7f\t\r\né\U0001f600\ud800'
    parsed = tomllib.loads("x = " + pkg._toml_string(text))["x"]
    assert parsed == text.replace("\ud800", "\ufffd")


def test_simple_index_links_every_wheel_with_its_hash(wide, tmp_path):
    out = tmp_path / "out"
    done = pkg.package("acme-support", out, chunk_size=2 * MB)
    top = (out / "simple/index.html").read_text()
    projects = re.findall(r'<a href="([^"]+)/">', top)
    assert projects == [f"acme-support-part{i}" for i in (1, 2, 3)]
    for project, wheel in zip(projects, done.wheels, strict=True):
        page = (out / "simple" / project / "index.html").read_text()
        (href,) = re.findall(r'<a href="([^"]+)">', page)
        path, _, digest = href.partition("#sha256=")
        assert (out / "simple" / project / path).resolve() == wheel
        assert digest == hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_packaging_twice_gives_identical_bytes(wide, tmp_path):
    pkg.package("acme-support", tmp_path / "a", chunk_size=2 * MB)
    pkg.package("acme-support", tmp_path / "b", chunk_size=2 * MB)
    first = files(tmp_path / "a")
    assert first == files(tmp_path / "b")
    pkg.package("acme-support", tmp_path / "a", chunk_size=2 * MB)  # over its own output
    assert files(tmp_path / "a") == first


def test_a_previous_package_of_the_model_is_replaced(wide, tmp_path, capsys):
    out = tmp_path / "out"
    pkg.package("acme-support", out, chunk_size=1 * MB)
    (out / "README.txt").write_text("ours")
    pkg.package("acme-support", out, chunk_size=2 * MB, version="1.1")
    assert sorted(p.name for p in out.glob("*.whl")) == [
        f"acme_support_part{i}-1.1-py3-none-any.whl" for i in (1, 2, 3)
    ]
    assert sorted(p.name for p in (out / "simple").iterdir()) == [
        "acme-support-part1",
        "acme-support-part2",
        "acme-support-part3",
        "index.html",
    ]
    assert (out / "README.txt").read_text() == "ours"  # not ours to delete
    assert not list(out.glob(".pocketlm-partial-*"))


# -- refusals: one line, nothing written ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--chunk-size", "500KB"], ["--chunk-size", "minimum of 1 MB"]),
        (["--chunk-size", "lots"], ["invalid --chunk-size 'lots'"]),
        (["--chunk-size=-5MB"], ["invalid --chunk-size '-5MB'"]),
        (["--version", "1.x"], ["invalid --version '1.x'", "PEP 440"]),
        (["--package-prefix", "acme-"], ["invalid --package-prefix 'acme-'"]),
        (["--package-prefix", "acme support"], ["--package-prefix"]),
        (["--index-url", "ftp://host/simple/"], ["invalid --index-url"]),
        (["--name", "../etc"], ["invalid model name"]),
    ],
)
def test_bad_options_are_one_line_errors(tiny, tmp_path, capsys, args, needles):
    out = tmp_path / "out"
    proc = cli(capsys, "package", "tiny", "--out", str(out), *args)
    assert_clean_error(proc, *needles, code=2)
    assert not out.exists()


def test_out_is_required(capsys):
    assert_clean_error(cli(capsys, "package", "tiny"), "--out", code=2)


def test_unknown_model_is_the_stores_usual_error(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    proc = cli(capsys, "package", "tinyy", "--out", str(out))
    assert_clean_error(proc, "unknown model 'tinyy'", "did you mean 'tiny'")
    assert not out.exists()


def test_non_empty_out_is_refused_unless_it_holds_this_models_package(tiny, wide, tmp_path, capsys):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("keep me")
    proc = cli(capsys, "package", "tiny", "--out", str(stray))
    assert_clean_error(proc, "is not empty", "notes.txt", code=2)
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]

    other = tmp_path / "other"
    pkg.package("acme-support", other)
    before = files(other)
    proc = cli(capsys, "package", "tiny", "--out", str(other))
    assert_clean_error(proc, "holds the package of 'acme-support'", code=2)
    assert files(other) == before

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_clean_error(cli(capsys, "package", "tiny", "--out", str(a_file)), "not a directory")


def test_a_file_changed_since_import_is_refused_and_nothing_written(tiny_gguf, tmp_path, capsys):
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    import_file(copy, name="tiny")
    out = tmp_path / "out"

    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: found by the sha256, after reading it
    copy.write_bytes(bytes(data))
    proc = cli(capsys, "package", "tiny", "--out", str(out))
    assert proc.returncode == 1
    err = proc.stderr_text.strip().splitlines()
    assert err[-1].startswith("error: model 'tiny' is not the file it was stored as: its sha256")
    assert "nothing was written" in err[-1] and "pocketlm import" in err[-1]
    assert "Traceback" not in proc.stderr_text
    assert not out.exists()

    copy.write_bytes(bytes(data[:-10]))
    proc = cli(capsys, "package", "tiny", "--out", str(out))
    assert_clean_error(proc, "is not the file it was stored as", "manifest says")
    copy.unlink()
    proc = cli(capsys, "package", "tiny", "--out", str(out))
    assert_clean_error(proc, "cannot be read", "pocketlm rm tiny")
    assert not out.exists()


class Interrupt:
    """A progress whose bar raises KeyboardInterrupt (Ctrl-C) once ``after`` bytes are done."""

    def __init__(self, after: int):
        self.after, self.done = after, 0

    def task(self, description, total, unit="bytes"):
        return self

    def advance(self, n):
        self.done += n
        if self.done > self.after:
            raise KeyboardInterrupt

    def update(self, completed, total=None):
        pass

    def note(self, message):
        pass

    def close(self):
        pass


def test_an_interrupted_run_leaves_no_wheel_and_keeps_the_previous_output(wide, tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        pkg.package("acme-support", fresh, chunk_size=MB, progress=Interrupt(3 * MB))
    assert not fresh.exists()

    out = tmp_path / "out"
    pkg.package("acme-support", out, chunk_size=2 * MB)
    before = files(out)
    with pytest.raises(KeyboardInterrupt):
        pkg.package("acme-support", out, chunk_size=MB, progress=Interrupt(3 * MB))
    assert files(out) == before


def test_a_killed_runs_partial_output_is_swept_and_a_live_run_is_waited_for(wide, tmp_path):
    out = tmp_path / "out"
    killed = out / ".pocketlm-partial-killed"
    killed.mkdir(parents=True)
    (killed / "acme_support_part1-1.0.0-py3-none-any.whl").write_bytes(b"half")
    pkg.package("acme-support", out)  # an empty directory but for a killed run's partial
    assert not killed.exists() and (out / "catalog.toml").exists()

    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a run in progress holds
        with pytest.raises(PocketError, match="another `pocketlm package` is writing"):
            pkg.package("acme-support", out)
    finally:
        os.close(fd)


# -- end to end: package, serve over HTTP, pull by name into an empty store --------------


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        self.server.requests.append(self.path)


@pytest.fixture
def served():
    """Serve a directory over HTTP on 127.0.0.1; yields a function DIR -> (url, requests)."""
    servers = []

    def serve(directory: Path):
        handler = functools.partial(RecordingHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server.requests

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_package_serve_and_pull_by_name_into_an_empty_store(
    wide_gguf, tmp_path, monkeypatch, served
):
    store = Store()
    original = import_file(wide_gguf, name="acme-support-q8").manifest
    original = store.put(  # as a derived model records it
        original.model_copy(update={"parent": "acme-support", "description": "Acme support bot"})
    )
    out = tmp_path / "dist"
    proc = run_cli("package", "acme-support-q8", "--out", str(out), "--chunk-size", "2MB")
    assert proc.returncode == 0, proc.stderr_text
    assert str(out / "catalog.toml") in proc.stdout_text and "http.server" in proc.stdout_text
    assert len(list(out.glob("*.whl"))) == 3

    url, requests = served(out)
    for var in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "elsewhere"
    env = {
        "POCKETLM_HOME": str(empty),
        "POCKETLM_CATALOG": str(out / "catalog.toml"),
        "PIP_INDEX_URL": f"{url}/simple/",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_CONFIG_FILE": os.devnull,
    }
    proc = run_cli("pull", "acme-support-q8", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr_text
    assert "pulled acme-support-q8" in proc.stdout_text

    pulled = Store(empty).get("acme-support-q8")
    assert pulled.sha256 == original.sha256 == hashlib.sha256(wide_gguf.read_bytes()).hexdigest()
    assert Path(pulled.path).read_bytes() == wide_gguf.read_bytes()
    assert not pulled.imported
    fields = (
        "architecture",
        "parameter_count",
        "quantization",
        "size_bytes",
        "chat",
        "license",
        "description",
        "parent",
    )
    assert {f: getattr(pulled, f) for f in fields} == {f: getattr(original, f) for f in fields}
    for i in (1, 2, 3):  # the index pages and the wheels came from this server
        assert f"/simple/acme-support-q8-part{i}/" in requests
        assert f"/acme_support_q8_part{i}-1.0.0-py3-none-any.whl" in requests
