"""What a hostile or unlucky caller leaves the store with: scratch of killed processes is
swept (a live owner's never), odd model references are one-line errors, and error
messages never quote what a file holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.errors import ModelNotFoundError, PocketError, UsageError
from pocketlm.progress import NullProgress
from pocketlm.store.gguf_check import inspect_gguf
from pocketlm.store.manifest import Manifest
from pocketlm.store.pull import import_file, pull
from pocketlm.store.store import SCRATCH_LOCK, Store, valid_name
from tests.conftest import REPO
from tests.store.wheels import make_wheel
from tests.tinymodel import write_tiny_gguf

# -- scratch: owned by a live process, swept once it is dead -----------------------------

HOLD_SCRATCH = """
import sys
from pocketlm.store.store import Store
with Store().scratch() as scratch:
    (scratch / "model.gguf").write_bytes(bytes(1 << 20))
    print(scratch, flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process
"""

# Runs `pocketlm pull`, `quantize` or `budget` on the Python API with a progress that hangs
# once the model file is being written into scratch (for the test to kill it there).
HANG_IN = """
import json, sys, time
from pocketlm.store.store import Store

class Hang:
    def __init__(self, on):
        self.on = on  # the call made while the model file is written
    def task(self, *args, **kwargs):
        return self
    def advance(self, *args):
        self.hang("advance")
    def update(self, *args):
        self.hang("update")
    def hang(self, call):
        if call == self.on:
            print(json.dumps([str(p) for p in Store().root.joinpath("tmp").iterdir()]), flush=True)
            time.sleep(600)
    def note(self, message):
        pass
    def close(self):
        pass

kind, arg = sys.argv[1], json.loads(sys.argv[2])
if kind == "pull":
    from pocketlm.store import catalog
    from pocketlm.store.pull import pull
    catalog.BUILT_INS += (catalog.CatalogEntry(**arg),)
    pull("hung", progress=Hang("advance"))
elif kind == "quantize":
    from pocketlm.services.quantize.quantize import quantize
    quantize(arg, "Q8_0", threads=1, progress=Hang("update"))
else:
    from pocketlm.services.quantize.budget import choose
    choose(arg, 10**9, threads=1, progress=Hang("update"))
"""


@contextlib.contextmanager
def child(code: str, *args: str):
    """A Python child in its own process group, killed (with anything it started) at the
    end unless it has exited."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no finally block, no atexit, no chance to clean up."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            f.close()


def a_manifest(name: str = "m") -> Manifest:
    return Manifest(
        name=name,
        path="/nonexistent.gguf",
        source="test",
        sha256="0" * 64,
        size_bytes=1,
        architecture="llama",
        parameter_count=1,
        quantization="F32",
        bits_per_weight=32.0,
    )


def _scratch(store: Store) -> None:
    with store.scratch():
        pass


def _lock(store: Store) -> None:
    with store.lock("m"):
        pass


def _adopt(store: Store) -> None:
    src = store.root.parent / "finished.gguf"
    src.write_bytes(b"done")
    store.adopt_blob(src, "1" * 64)


def _import(store: Store) -> None:
    import_file(write_tiny_gguf(store.root.parent / "tiny.gguf"), store=store)


# The store operations that write: each starts by sweeping dead owners' scratch.
WRITES = {
    "scratch": _scratch,
    "put": lambda store: store.put(a_manifest()),
    "lock": _lock,
    "adopt_blob": _adopt,
    "check_writable": Store.check_writable,
    "import": _import,
}


@pytest.mark.parametrize("write", WRITES)
def test_scratch_of_a_killed_process_goes_at_the_next_write(write):
    with child(HOLD_SCRATCH) as proc:
        scratch = Path(proc.stdout.readline().strip())
        assert (scratch / "model.gguf").is_file()
        kill(proc)
    assert scratch.is_dir()  # nothing cleaned up after SIGKILL...
    WRITES[write](Store())
    assert not scratch.exists()  # ...until the next operation that writes


def test_a_live_owners_scratch_survives_every_write():
    """A concurrent pull in another process: its scratch is never swept."""
    with child(HOLD_SCRATCH) as proc:
        scratch = Path(proc.stdout.readline().strip())
        store = Store()
        for write in WRITES.values():
            write(store)
            assert (scratch / "model.gguf").stat().st_size == 1 << 20
        proc.stdin.close()  # the owner finishes: its scratch goes with it
        assert proc.wait(30) == 0
    assert not scratch.exists()


def test_scratch_of_this_process_survives_its_other_writes():
    """flock, not fcntl locks: a second scratch in the same process (the server pulls two
    models at once) does not take the first one's lock as free."""
    store = Store()
    with store.scratch() as first:
        (first / "part").write_bytes(b"x")
        with store.scratch() as second:
            store.put(a_manifest())
            assert (first / "part").exists() and second.is_dir()
        assert (first / "part").exists() and not second.exists()
    assert list((store.root / "tmp").iterdir()) == []


def test_scratch_holds_only_its_owners_lock():
    with Store().scratch() as scratch:
        assert [p.name for p in scratch.iterdir()] == [SCRATCH_LOCK]


def test_scratch_without_a_lock_goes_only_when_a_day_old():
    """A directory being made this instant, or left by a pocketlm before locks."""
    store = Store()
    store.check_writable()
    young, old = store.root / "tmp" / "pull-young", store.root / "tmp" / "pull-old"
    for d in (young, old):
        d.mkdir()
        (d / "model.gguf").write_bytes(b"half")
    os.utime(old, (1, 1))
    store.put(a_manifest())
    assert young.is_dir() and not old.exists()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local package index: pip finds wheels here and nowhere else."""
    path = tmp_path / "index"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return path


def killed_while_writing(kind: str, arg: object) -> list[Path]:
    """Run ``kind`` in a child, SIGKILL it while it writes into scratch; its scratch."""
    with child(HANG_IN, kind, json.dumps(arg)) as proc:
        line = proc.stdout.readline()
        assert line, f"{kind} ended before it wrote anything"
        scratch = [Path(p) for p in json.loads(line)]
        kill(proc)
    assert scratch and all(p.is_dir() for p in scratch)
    return scratch


def test_scratch_of_a_killed_pull_goes_at_the_next_write(index):
    data = os.urandom(3 << 20)  # never checked: the pull dies while it writes the file
    make_wheel(index, "hung-model-pkg", "1.0", {"hung_model_pkg/m.gguf": data})
    entry = dict(
        name="hung",
        description="-",
        packages=["hung-model-pkg==1.0"],
        members=["hung_model_pkg/m.gguf"],
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        license="MIT",
        homepage="-",
        chat=True,
    )
    scratch = killed_while_writing("pull", entry)
    assert any((p / "model.gguf").exists() for p in scratch)
    Store().check_writable()  # what the next pull or quantize does first
    assert not any(p.exists() for p in scratch)


@pytest.mark.parametrize("kind", ["quantize", "budget"])
def test_scratch_of_a_killed_quantization_goes_at_the_next_write(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETLM_EXTRA_BUFTS", "0")  # no engine probe: not what is tested
    model = write_tiny_gguf(tmp_path / "tiny.gguf", n_embd=256, n_ff=512, seed=2)
    scratch = killed_while_writing(kind, str(model))
    Store().put(a_manifest())
    assert not any(p.exists() for p in scratch)


# -- model references that are not names -------------------------------------------------

LONG = "a" * 300  # over NAME_MAX (255 bytes) as a manifest's file name
ODD_NAMES = {
    "300 bytes": LONG,
    "no such user": "~nosuchuser/x.gguf",
    "NUL": "a\0b",
    "lone surrogate": "a\ud800b",
    "undecodable byte": "a\udcffb",  # how argv carries a byte that is not UTF-8
    "newline": "a\n",
    "path": "../manifests/x",
    "colons": "a" + ":" * 99,  # 100 characters, but 298 bytes as a file name
}


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text.isprintable() and len(text) < 600, text
    return text


@pytest.mark.parametrize("name", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_odd_names_are_not_found_never_os_errors(name):
    store = Store()
    store.put(a_manifest("real"))
    assert not valid_name(name)
    assert store.find(name) is None
    for lookup in (store.get, store.remove):
        with pytest.raises(ModelNotFoundError) as e:
            lookup(name)
        assert "is not a model name" in one_line(e)
    with pytest.raises(UsageError) as e, store.lock(name):
        pass
    one_line(e)
    with pytest.raises(UsageError) as e:
        store.put(a_manifest(name))
    assert "invalid model name" in one_line(e)
    assert store.names() == ["real"]


def test_valid_names():
    for name in ("smollm2-135m-instruct", "a", "m:q4_0", "x+y.1", "A" * 100):
        assert valid_name(name)
    for name in ("", "-a", "a b", "a/b", "A" * 101, "é", None, 3, b"abc"):
        assert not valid_name(name)


def test_a_manifest_file_that_no_name_gives_is_not_listed():
    store = Store()
    store.put(a_manifest("real"))
    (store.manifests_dir / "hand%20made.json").write_text(a_manifest("real").to_json())
    assert store.names() == ["real"] and [m.name for m in store.list()] == ["real"]


ODD_PATHS = {
    "no such user": ("~nosuchuser/x.gguf", UsageError, "no such home directory"),
    "NUL": ("a\0b.gguf", UsageError, "NUL"),
    "lone surrogate": ("a\ud800.gguf", UsageError, "not valid UTF-8"),
    "300 bytes": (LONG + ".gguf", PocketError, "too long"),
    "missing": ("./nowhere.gguf", PocketError, "does not exist"),
}


@pytest.mark.parametrize("path, error, words", ODD_PATHS.values(), ids=ODD_PATHS.keys())
def test_odd_paths_are_one_line_errors(path, error, words):
    from pocketlm.store.refs import resolve

    for call in (import_file, pull):
        with pytest.raises(error) as e:
            call(path)
        assert words in one_line(e)
    if error is UsageError:  # resolve leaves a file it cannot open to the engine's checks
        with pytest.raises(error) as e:
            resolve(path, Store(), progress=NullProgress())
        assert words in one_line(e)


@pytest.mark.parametrize("name", [LONG, "a\0b", "a\ud800b"], ids=["300 bytes", "NUL", "surrogate"])
def test_odd_names_to_run_are_one_line_errors(name):
    from pocketlm.services.runtime import LoadedModel, open_engine_model
    from pocketlm.store.refs import resolve

    Store().put(a_manifest("real"))  # a manifests/ directory to look in
    for call in (
        lambda: resolve(name, Store()),
        lambda: open_engine_model(name),
        lambda: LoadedModel(name),
    ):
        with pytest.raises(ModelNotFoundError) as e:
            call()
        one_line(e)


def test_pulling_an_odd_name_is_one_line():
    with pytest.raises(ModelNotFoundError) as e:
        pull("a\0\x1b[31m")
    assert "\\x00\\x1b[31m" in one_line(e)


# -- error messages never quote a file's bytes --------------------------------------------


NOT_GGUF = [
    b"root:*:19000:0:99999:7:::\n",
    b"\x7fELF\x02\x01\x01" + bytes(20),
    b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
]


@pytest.mark.parametrize("head", NOT_GGUF)
def test_a_file_that_is_not_gguf_is_described_not_quoted(tmp_path, head):
    path = tmp_path / "secret"
    path.write_bytes(head)
    with pytest.raises(PocketError) as e:
        inspect_gguf(path)
    text = one_line(e)
    assert "not a GGUF file" in text and "magic" in text
    for piece in (head[:4], head[:8], repr(head[:8]), head[:4].decode("latin-1")):
        assert str(piece) not in text.replace(str(path), "")


def _gguf_with_key_twice(key: bytes) -> bytes:
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IB", 0, 1)  # a uint8 value
    return struct.pack("<4sIQQ", b"GGUF", 3, 0, 2) + kv + kv


@pytest.mark.parametrize("key", [b"a\nb\x1b[2J", "é\u202e".encode(), b"k" * 100_000])
def test_strings_from_a_gguf_file_are_escaped_and_cut_short(tmp_path, key):
    path = tmp_path / "m.gguf"
    path.write_bytes(_gguf_with_key_twice(key))
    with pytest.raises(PocketError) as e:
        inspect_gguf(path)
    assert "appears twice" in one_line(e) or "characters)" in str(e.value)
