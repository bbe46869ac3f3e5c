"""Quantizing tiny real models into the store: manifests, quality reports, failures."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest

from pocketlm.errors import EngineError, ModelNotFoundError, PocketError, UsageError
from pocketlm.progress import NullProgress
from pocketlm.services.quantize import quantize as q
from pocketlm.services.results import ResultsDB
from pocketlm.store.gguf_check import inspect_gguf
from pocketlm.store.pull import sha256_file
from pocketlm.store.store import Store
from tests.services.quantize.conftest import FAST, import_wide

pytestmark = pytest.mark.usefixtures("no_probe")

TYPES = ("Q8_0", "Q4_0", "Q4_K_M", "Q2_K")


@pytest.fixture(scope="module")
def store(tmp_path_factory, wide_gguf) -> Store:
    store = Store(tmp_path_factory.mktemp("quantize-store"))
    import_wide(wide_gguf, store)
    return store


@pytest.fixture(scope="module")
def made(store) -> dict[str, q.Quantized]:
    """The wide model quantized to each of TYPES (Q4_0 with a decode-speed run)."""
    out = {}
    for t in TYPES:
        params = FAST | {"decode_tokens": 16} if t == "Q4_0" else FAST
        out[t] = q.quantize("wide", t, params=params, threads=1, store=store)
    return out


def test_each_type_is_a_store_model_with_parent_type_and_real_bpw(made, store):
    for t, done in made.items():
        m = store.get(f"wide-{t.lower()}")
        assert m == done.manifest
        info = inspect_gguf(m.path)
        assert (m.parent, m.quantization, info.file_type) == ("wide", t, t)
        assert m.bits_per_weight == pytest.approx(info.bits_per_weight, abs=1e-3)
        assert m.size_bytes == os.path.getsize(m.path) and m.sha256 == sha256_file(
            m.file(), NullProgress(), ""
        )
        assert m.path.startswith(str(store.blobs_dir)) and not m.imported
        assert m.requantized is False and m.calibration is None
        assert m.quality["kld_mean"] == done.quality.kld_mean and m.quality["type"] == t
    assert not list((store.root / "tmp").iterdir())  # scratch cleaned up


def test_kl_divergence_grows_as_bits_shrink(made):
    kld = {t: d.quality.kld_mean for t, d in made.items()}
    assert 0 < kld["Q8_0"] < kld["Q4_0"] < kld["Q2_K"], kld
    assert kld["Q4_K_M"] < kld["Q2_K"], kld
    top1 = {t: d.quality.top1_agreement for t, d in made.items()}
    assert top1["Q8_0"] > top1["Q2_K"], top1
    size = {t: d.quality.size_bytes for t, d in made.items()}
    assert size["Q8_0"] > size["Q4_K_M"] > size["Q4_0"] > size["Q2_K"], size


def test_report_fields(made):
    r = made["Q4_0"].to_dict()
    for key in (
        "type",
        "size_bytes",
        "bpw",
        "kld_mean",
        "top1_agreement",
        "ppl",
        "ppl_delta",
        "name",
        "parent",
        "reference",
        "requantized",
        "decode_tps",
        "seconds",
    ):
        assert key in r, key
    assert r["ppl_delta"] == pytest.approx(r["ppl"] - r["ppl_ref"])
    assert r["reference"] == "wide" and r["eval_text"] == "calibration.txt"
    assert r["tokens"] >= FAST["eval_tokens"] - 4 and r["window"] == FAST["window"]
    assert r["decode_tps"] > 0 and made["Q8_0"].quality.decode_tps is None
    assert 0 <= r["top1_agreement"] <= 1 and r["bpw"] < 5


def test_each_quantization_is_in_the_results_database(made, store):
    rows = {r.id: r for r in ResultsDB(store.root / "results.db").query(kind="quantize")}
    for t, done in made.items():
        row = rows[done.result_id]
        assert (row.model, row.quantization) == (f"wide-{t.lower()}", t)
        assert row.task == "calibration.txt"
        assert row.metrics["kld_mean"] == done.quality.kld_mean
        assert row.settings["parent"] == "wide" and row.settings["eval_tokens"] == 512


def test_a_quantized_parent_is_requantized_and_any_model_can_be_the_reference(made, store):
    done = q.quantize(
        "wide-q8_0",
        "Q4_0",
        name="wide-q8-q4",
        reference="wide",
        params=FAST,
        threads=1,
        store=store,
        record=False,
    )
    m = store.get("wide-q8-q4")
    assert m.parent == "wide-q8_0" and m.requantized is True and done.quality.reference == "wide"
    assert done.quality.kld_mean >= made["Q4_0"].quality.kld_mean * 0.5


def test_estimates_match_the_files_written(made, store):
    source = q.open_source("wide", store, NullProgress())
    est = q.estimate_sizes(source, [q.types.get(t) for t in TYPES])
    for t, done in made.items():
        assert est[t].error is None
        assert est[t].size_bytes == pytest.approx(done.quality.size_bytes, rel=0.01), t


# -- bad input and failures ------------------------------------------------------------


def test_unknown_type_and_model(store):
    with pytest.raises(UsageError, match="Q4_K_M"):
        q.quantize("wide", "Q4_Z", store=store)
    with pytest.raises(ModelNotFoundError, match="wide"):
        q.quantize("wido", "Q4_0", store=store)


def test_types_that_need_an_importance_matrix_are_refused_up_front(store):
    with pytest.raises(UsageError, match="importance matrix.*calibrate=True"):
        q.quantize("wide", "IQ2_XS", store=store)


def test_calibration_goes_through_its_hook(store, monkeypatch):
    calls = []

    def calibrated(src, dst, qtype, text, progress):  # llama.cpp's default, for the test
        calls.append((src, qtype, text))
        q.run_child({"src": src, "dst": dst, "types": [qtype], "threads": 1, "dry_run": False})

    monkeypatch.setattr(q, "_calibrated", lambda: calibrated)
    cal = q.Calibration("notes.txt", "some text")
    done = q.quantize(
        "wide",
        "Q4_0",
        name="wide-cal",
        calibrate=cal,
        params=FAST,
        threads=1,
        store=store,
        record=False,
    )
    assert calls == [(str(store.get("wide").path), "Q4_0", "some text")]
    assert done.manifest.calibration == "notes.txt" and done.calibration == "notes.txt"


def test_calibration_missing_is_a_one_line_error(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketlm.services.quantize.calibrated", None)
    cal = q.Calibration("calibration.txt", "some text")
    with pytest.raises(PocketError, match="calibrated quantization is not available"):
        q.quantize("wide", "Q4_0", name="calibrated", calibrate=cal, store=store)
    assert store.find("calibrated") is None


def test_taken_name_and_too_little_disk(made, store, monkeypatch):
    with pytest.raises(PocketError, match="already exists.*name="):
        q.quantize("wide", "Q8_0", store=store)
    monkeypatch.setattr(q.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
    with pytest.raises(PocketError, match="not enough disk space"):
        q.quantize("wide", "Q5_0", store=store)


def _only_the_parent_left(store: Store, before: set[str]) -> None:
    assert set(store.names()) == before
    assert {p.name for p in store.blobs_dir.iterdir()} == {
        os.path.basename(store.get(n).path) for n in before if not store.get(n).imported
    }
    assert not list((store.root / "tmp").iterdir())


class _Interrupt:
    """A progress that raises KeyboardInterrupt (Ctrl-C) when a task named `at` advances."""

    def __init__(self, at: str):
        self.at = at

    def task(self, description, total, unit="bytes"):
        at = self.at

        class Task:
            def update(self, completed, total=None):
                if description.startswith(at):
                    raise KeyboardInterrupt

            advance = update

        return Task()

    def note(self, message):
        pass

    def close(self):
        pass


def test_interrupted_while_llama_cpp_quantizes(tmp_path, wide_gguf):
    """Ctrl-C while the child writes: it is killed, the scratch space removed."""
    store = Store(tmp_path / "store")
    import_wide(wide_gguf, store)
    with pytest.raises(KeyboardInterrupt):
        q.quantize(
            "wide", "Q4_0", params=FAST, threads=1, store=store, progress=_Interrupt("quantizing")
        )
    _only_the_parent_left(store, {"wide"})


def test_interrupted_between_blob_and_manifest(tmp_path, wide_gguf, monkeypatch):
    """The latest point: the blob is in place, the manifest not yet written."""
    store = Store(tmp_path / "store")
    import_wide(wide_gguf, store)

    def put(manifest):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "put", put)
    with pytest.raises(KeyboardInterrupt):
        q.quantize("wide", "Q4_0", params=FAST, threads=1, store=store)
    _only_the_parent_left(store, {"wide"})


def test_a_crash_in_llama_cpp_is_an_error_not_the_end(tmp_path, wide_gguf, monkeypatch):
    store = Store(tmp_path / "store")
    import_wide(wide_gguf, store)
    monkeypatch.setattr(q, "CHILD", [sys.executable, "-c", "import os; os.abort()"])
    with pytest.raises(EngineError, match="crashed.*SIGABRT"):
        q.quantize("wide", "Q4_0", params=FAST, threads=1, store=store)
    _only_the_parent_left(store, {"wide"})


@pytest.mark.slow
def test_the_default_model_to_q4_0_stays_close_to_its_parent(default_model, isolated_store):
    """SmolLM2-135M comes as Q4_1: Q4_0 rounds its weights a second time, onto another grid.
    Measured here (4088 tokens, one thread): mean KLD 0.271, top-1 71.8%, perplexity 18.98 ->
    22.43; the bounds leave room for other CPUs' kernels."""
    from pocketlm.store.pull import import_file

    store = Store(isolated_store)
    import_file(default_model, name="smollm2-135m-instruct", store=store)
    done = q.quantize(
        "smollm2-135m-instruct", "Q4_0", params={"decode_tokens": 16}, threads=1, store=store
    )
    r, m = done.quality, done.manifest
    assert 0.01 < r.kld_mean < 0.35 and r.top1_agreement > 0.65, r
    assert r.tokens > 4000 and 0 < r.ppl_delta < 0.3 * r.ppl_ref and r.decode_tps > 0
    assert (m.name, m.parent, m.quantization) == (
        "smollm2-135m-instruct-q4_0",
        "smollm2-135m-instruct",
        "Q4_0",
    )
    assert m.requantized is True and 85e6 < m.size_bytes < 95e6 and 5.2 < m.bits_per_weight < 5.5


def test_records_text_reads_each_kind_of_training_record(tmp_path):
    from pocketlm.services.quantize.report import load_text

    rows = [
        {"prompt": "Say hi.", "completion": "Hi!"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"instruction": "Label it.", "text": "the printer is jammed", "label": "hardware"},
        {"text": "plain prose"},
        {"messages": "not a list"},
        ["not", "an", "object"],
    ]
    path = tmp_path / "mixed.JSONL"  # the suffix in any case
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n{broken\n")
    label, text = load_text(path)
    assert label == "mixed.JSONL"
    parts = ["Say hi.\nHi!", "2+2?\n4", "the printer is jammed\nhardware", "plain prose"]
    assert text == "\n\n".join(parts)
    with pytest.raises(UsageError, match="does not exist"):
        load_text(tmp_path / "none.jsonl")
