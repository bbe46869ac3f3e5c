"""The store directory: manifests in, looked up, listed and removed; blobs kept while a
manifest needs them; atomic writes; scratch and locks. (Scratch of killed processes:
test_store_hardening.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from pocketlm.errors import ModelNotFoundError, PocketError
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import SCRATCH_LOCK, Store, write_atomic
from tests.conftest import REPO


def manifest(name: str, path, **changes) -> Manifest:
    return Manifest(
        name=name,
        path=str(path),
        source="test",
        sha256="0" * 64,
        size_bytes=1,
        architecture="llama",
        parameter_count=1,
        quantization="F32",
        bits_per_weight=32.0,
        **changes,
    )


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def blob(store: Store, hexdigit: str = "a"):
    path = store.blob_path(hexdigit * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


# -- reading and writing manifests ----------------------------------------------------------


def test_an_empty_store_has_no_models_and_no_directories(store):
    assert store.names() == [] and store.list() == [] and store.find("m") is None
    assert not store.root.exists()


def test_put_then_find_and_get(store):
    m = store.put(manifest("m", "/x.gguf"))
    assert store.find("m") == m and store.get("m") == m
    assert (store.manifests_dir / "m.json").is_file()


def test_put_replaces_a_manifest(store):
    store.put(manifest("m", "/x.gguf"))
    store.put(manifest("m", "/y.gguf"))
    assert store.get("m").path == "/y.gguf" and store.names() == ["m"]


def test_names_are_sorted_and_round_trip_through_file_names(store):
    for name in ("b", "a:q4_0", "c+lora"):
        store.put(manifest(name, "/x.gguf"))
    assert store.names() == ["a:q4_0", "b", "c+lora"]
    assert [m.name for m in store.list()] == ["a:q4_0", "b", "c+lora"]
    assert (store.manifests_dir / "a%3Aq4_0.json").is_file()  # ':' is not in the file name


def test_get_of_an_unknown_name_suggests_close_ones(store):
    store.put(manifest("my-model", "/x.gguf"))
    with pytest.raises(ModelNotFoundError) as e:
        store.get("my-modle")
    assert e.value.message == "unknown model 'my-modle'" and "'my-model'" in e.value.hint
    assert e.value.http_status == 404


def test_get_of_a_catalog_model_not_pulled_says_how_to_pull_it(store):
    with pytest.raises(ModelNotFoundError) as e:
        store.get("smollm2-135m-instruct")
    assert "not pulled yet" in e.value.message
    assert e.value.hint == "run: pocketlm pull smollm2-135m-instruct"


def test_get_of_a_broken_manifest_says_which_file(store):
    store.put(manifest("m", "/x.gguf"))
    (store.manifests_dir / "m.json").write_text("{")
    with pytest.raises(PocketError, match="m.json is unreadable"):
        store.get("m")


# -- removing -------------------------------------------------------------------------------


def test_remove_deletes_the_manifest_and_its_blob(store):
    path = blob(store)
    store.put(manifest("m", path))
    assert store.remove("m").name == "m"
    assert store.names() == [] and not path.exists()
    with pytest.raises(ModelNotFoundError):
        store.get("m")


def test_remove_never_deletes_an_imported_file(store, tmp_path):
    users_file = tmp_path / "mine.gguf"
    users_file.write_bytes(b"GGUF")
    store.put(manifest("m", users_file, imported=True))
    store.remove("m")
    assert users_file.read_bytes() == b"GGUF" and store.names() == []


def test_remove_keeps_a_blob_another_manifest_uses(store):
    path = blob(store)
    store.put(manifest("m", path))
    store.put(manifest("m-alias", path))
    store.remove("m")
    assert path.exists() and store.names() == ["m-alias"]
    store.remove("m-alias")
    assert not path.exists()


def test_remove_of_a_model_whose_blob_is_gone_still_removes_it(store):
    store.put(manifest("m", store.blob_path("b" * 64)))
    store.remove("m")
    assert store.names() == []


def test_remove_of_an_unknown_model_raises_and_changes_nothing(store):
    store.put(manifest("m", blob(store)))
    with pytest.raises(ModelNotFoundError):
        store.remove("n")
    assert store.names() == ["m"]


def test_adopt_blob_moves_a_file_under_its_hash(store, tmp_path):
    src = tmp_path / "done.gguf"
    src.write_bytes(b"GGUF")
    dst = store.adopt_blob(src, "c" * 64)
    assert dst == store.blobs_dir / f"sha256-{'c' * 64}.gguf"
    assert dst.read_bytes() == b"GGUF" and not src.exists()


# -- write_atomic ---------------------------------------------------------------------------


def test_write_atomic_writes_and_replaces_leaving_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "f.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["f.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_atomic_that_fails_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.json"]


# -- scratch, locks, writability ------------------------------------------------------------


def test_scratch_is_in_the_store_locked_and_gone_afterwards(store):
    with store.scratch() as scratch:
        assert scratch.parent == store.tmp_dir and (scratch / SCRATCH_LOCK).is_file()
        (scratch / "part.gguf").write_bytes(b"x")
    assert not scratch.exists()


def test_scratch_is_removed_when_its_block_raises(store):
    with pytest.raises(RuntimeError), store.scratch() as scratch:
        raise RuntimeError
    assert not scratch.exists() and list(store.tmp_dir.iterdir()) == []


def test_two_scratches_are_distinct(store):
    with store.scratch() as a, store.scratch() as b:
        assert a != b and a.is_dir() and b.is_dir()


HOLD_LOCK = """
import sys
from pocketlm.store.store import Store
with Store(sys.argv[1]).lock("m"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_lock_makes_a_second_process_wait(store):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store.root)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    waiter = None
    try:
        assert holder.stdout.readline() == "held\n"
        waiter = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(store.root)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        err = waiter.stderr.readline()
        assert "waiting for another pocketlm process working on 'm'" in err
        holder.stdin.close()  # the holder lets go: the waiter gets the lock
        assert waiter.stdout.readline() == "held\n"
        waiter.wait(30)
    finally:
        for proc in (holder, waiter):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_locks_of_other_names_do_not_wait(store):
    with store.lock("a"), store.lock("b"):
        assert {p.name for p in (store.root / "locks").iterdir()} == {"a.lock", "b.lock"}


def test_check_writable_names_the_store_and_the_setting(tmp_path):
    (tmp_path / "file").write_text("")
    store = Store(tmp_path / "file" / "store")
    with pytest.raises(PocketError) as e:
        store.check_writable()
    assert f"cannot write to the model store {store.root}" in e.value.message
    assert "POCKETLM_HOME" in e.value.hint and "\n" not in str(e.value)


def test_store_defaults_to_pocketlm_home(isolated_store):
    assert Store().root == isolated_store
