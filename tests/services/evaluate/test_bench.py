"""The speed benchmark on tiny real models: figures, capping, the chart, the results DB."""

from __future__ import annotations

import pytest

from pocketlm.errors import EngineError, InvalidModelError, ModelNotFoundError, UsageError
from pocketlm.params import validate
from pocketlm.services import charts
from pocketlm.services.evaluate import bench as b
from pocketlm.services.evaluate import speed
from pocketlm.services.results import ResultsDB
from tests.tinymodel import write_tiny_gguf

# One thread: on a shared 2-core machine a 2-thread llama.cpp pool stalls whenever another
# process holds a core, and these tests check structure, not speed.
FAST = {"repeat": 2, "prompt_lengths": (16, 64, 4096), "decode_tokens": 16}
LOAD = {"threads": 1}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tiny_gguf, tmp_path_factory):
    other = write_tiny_gguf(tmp_path_factory.mktemp("q8") / "tiny-q8.gguf", seed=2, qtype="Q8_0")
    return b.bench([str(tiny_gguf), str(other)], FAST, LOAD, record=False)


def figures(tree, path=""):
    """Every {min, median, max} dict in a nested dict, with its path."""
    if isinstance(tree, dict):
        if {"min", "median", "max"} <= tree.keys():
            yield path, tree
        for key, value in tree.items():
            yield from figures(value, f"{path}.{key}")


def test_every_figure_has_min_le_median_le_max_over_the_runs(report):
    data = report.to_dict()
    for model in data["models"]:
        found = dict(figures(model))
        assert {".load_s", ".decode.tok_per_s", ".peak_rss_bytes", ".bound.share"} <= set(found)
        assert ".prefill.64.ttft_s" in found
        for path, fig in found.items():
            assert fig["min"] <= fig["median"] <= fig["max"], path
            assert len(fig["values"]) == FAST["repeat"], path
            assert fig["min"] > 0, path
        assert model["runs"] == FAST["repeat"]
        assert model["peak_rss_bytes"]["min"] >= model["base_rss_bytes"]["max"]


def test_prompt_lengths_are_capped_to_the_context(report):
    for m in report.models:
        assert m.n_ctx == 512  # the tiny model's own context
        assert m.prompt_lengths == (16, 64, 512)
        assert m.decode_tokens == FAST["decode_tokens"]


def test_bound_is_bandwidth_over_bytes_per_token(report):
    m = report.models[0]
    assert m.bytes_per_token > m.tensor_data_bytes  # weights plus some KV cache
    assert m.decode_bound_tps == pytest.approx(m.bandwidth_bytes_per_s / m.bytes_per_token)
    assert m.share_of_bound.median == pytest.approx(m.decode_tps.median / m.decode_bound_tps)


def test_chart_compares_two_models_in_a_png(report, tmp_path):
    from PIL import Image

    path = charts.bench_chart(report, tmp_path / "chart.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 20_000
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= 800 and img.height >= 400


def test_small_context_caps_decode_and_prompts(tiny_gguf):
    r = b.bench(
        [str(tiny_gguf)],
        {"repeat": 1, "prompt_lengths": "8,100", "decode_tokens": 500},
        {"threads": 1, "ctx": 64},
        record=False,
    )
    m = r.models[0]
    assert m.n_ctx == 64
    assert m.prompt_lengths == (8, 64)
    assert m.decode_tokens == 64 - speed.DECODE_PROMPT_TOKENS


def test_results_db_row_for_a_store_model(tiny_gguf):
    from pocketlm.store.pull import import_file

    manifest = import_file(tiny_gguf, name="tiny-bench").manifest
    params = {"repeat": 1, "prompt_lengths": (16,), "decode_tokens": 8}
    r = b.bench(["tiny-bench"], params, LOAD)
    rows = ResultsDB().query(kind="bench", model="tiny-bench")
    assert [row.id for row in rows] == [r.models[0].result_id]
    row = rows[0]
    assert row.task == "speed"
    assert row.model_sha256 == manifest.sha256
    assert row.quantization == "F32"
    assert row.settings["threads"] == 1 and row.settings["repeat"] == 1
    assert row.settings["prompt_lengths"] == [16]
    assert row.metrics["decode"]["tok_per_s"]["median"] > 0
    assert "cpu" in row.machine


@pytest.mark.parametrize(
    "values, field",
    [
        ({"prompt_lengths": "0"}, "prompt_lengths"),
        ({"prompt_lengths": "128,x"}, "prompt_lengths"),
        ({"prompt_lengths": ""}, "prompt_lengths"),
        ({"repeat": 0}, "repeat"),
        ({"decode_tokens": 0}, "decode_tokens"),
    ],
)
def test_invalid_params_are_usage_errors(values, field):
    with pytest.raises(UsageError, match=field):
        validate(b.BenchParams, values)


def test_prompt_lengths_parse_sorted_and_unique():
    assert validate(b.BenchParams, {"prompt_lengths": "512, 128,512"}).prompt_lengths == (128, 512)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        b.bench(["smollm2-135m"], record=False)


def test_a_file_that_is_not_gguf_is_rejected_before_any_run(tmp_path, tiny_gguf):
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model")
    with pytest.raises(InvalidModelError, match="not a GGUF file"):
        b.bench([str(tiny_gguf), str(bad)], record=False)
    assert ResultsDB().query(kind="bench") == []


def test_a_failing_run_is_an_engine_error(tmp_path):
    job = {
        "path": str(tmp_path / "gone.gguf"),
        "extra_bufts": False,
        "n_ctx": 64,
        "n_threads": 1,
        "n_batch": 64,
        "flash_attn": False,
        "prompt_lengths": [8],
        "decode_tokens": 4,
    }
    with pytest.raises(EngineError, match="could not load"):
        b._run_child(job, lambda n: None)


@pytest.mark.slow
def test_real_model_speed_is_plausible(default_model):
    r = b.bench(
        [str(default_model)],
        {"repeat": 2, "prompt_lengths": (128,), "decode_tokens": 64},
        LOAD,
        record=False,
    )
    m = r.models[0]
    assert 5 <= m.decode_tps.median <= 1000
    assert 0.05 <= m.share_of_bound.median <= 1.5
    assert m.prefill_tps[128].median > m.decode_tps.median  # batched evaluation is faster
    assert 0 < m.load_s.median < 30
    assert m.peak_rss_bytes.median > m.tensor_data_bytes / 2  # the weights are resident
