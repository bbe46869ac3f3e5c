"""Needle in a haystack on tiny real models (recall ~0: shapes, grids, determinism, files),
and one slow run on the real default model, where recall must be above zero."""

from __future__ import annotations

import random
import re
import struct

import pytest

from pocketlm.errors import UsageError
from pocketlm.services import charts
from pocketlm.services.evaluate import needle as nd
from pocketlm.services.results import ResultsDB
from pocketlm.services.runtime import LoadedModel
from tests.tinymodel import write_tiny_gguf

SMALL = {"lengths": [256, 384], "depths": [0.0, 0.5, 1.0], "record": False}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("needle") / "tiny.gguf", seed=3, n_ctx=2048)
    with LoadedModel(str(path), ctx=1024, threads=1) as m:
        yield m


def comparable(report: nd.NeedleReport) -> dict:
    d = report.to_dict()
    del d["seconds"], d["result_id"]
    return d


def test_default_lengths_double_up_to_what_the_context_holds():
    assert nd.default_lengths(4072) == [256, 512, 1024, 2048, 4072]
    assert nd.default_lengths(1024) == [256, 512, 1024]
    assert nd.default_lengths(200) == [200]
    assert nd.default_lengths(4072, quick=True) == [256, 512, 1024]


def test_default_run_covers_the_grid_with_dense_edges(model):
    report = nd.run_needle(model, record=False)
    assert model.n_ctx == 1024
    assert report.lengths == [256, 512, nd.max_length(model)] and report.lengths[-1] < 1024
    assert report.depths == list(nd.DEFAULT_DEPTHS)
    assert {0.0, 0.01, 0.02, 0.98, 0.99, 1.0} <= set(report.depths)
    assert len(report.recall) == 3 and all(len(row) == 13 for row in report.recall)
    assert all(0.0 <= r <= 1.0 for row in report.recall for r in row)
    assert len(report.samples) == 3 * 13
    for s in report.samples:
        assert s.length - 80 <= s.prompt_tokens <= s.length + 2, s
        assert s.prompt_tokens + nd.MAX_ANSWER_TOKENS <= model.n_ctx
    assert report.prompt_format == "chat" and report.haystack == "generated"
    # depths run from the end to the start, so the text before each needle was cached
    assert report.evaluated_tokens < 0.7 * report.prompt_tokens
    assert report.to_dict()["recall"] == report.recall


def test_quick_defaults_are_smaller(model):
    report = nd.run_needle(model, quick=True, record=False)
    assert report.lengths == [256, 512, nd.max_length(model)]  # the context caps it first
    assert report.depths == list(nd.QUICK_DEPTHS)


def test_same_seed_same_report_and_another_seed_other_needles(model):
    a = nd.run_needle(model, seed=5, trials=2, **SMALL)
    b = nd.run_needle(model, seed=5, trials=2, **SMALL)
    c = nd.run_needle(model, seed=6, trials=2, **SMALL)
    assert comparable(a) == comparable(b)
    assert {s.answer for s in a.samples} != {s.answer for s in c.samples}
    assert len({s.answer for s in a.samples}) == 2  # one needle per trial


def test_generated_haystack_holds_neither_the_answer_nor_digits(model):
    prompts = list(nd.needle_prompts(model, [256, 512], [0.0, 0.5, 1.0], trials=3, seed=1))
    assert len(prompts) == 3 * 2 * 3
    for p in prompts:
        assert p.context.count(p.needle.fact) == 1
        filler = p.context.replace(p.needle.fact, "")
        assert p.needle.answer not in filler
        assert not re.search(r"\d", filler) and "secret" not in filler.lower()


def test_needle_sits_at_its_depth(model):
    by_depth = {p.depth: p for p in nd.needle_prompts(model, [512], [0.0, 0.5, 1.0])}
    fact = by_depth[0.0].needle.fact
    assert by_depth[0.0].context.startswith(fact)
    assert by_depth[1.0].context.endswith(fact)
    middle = by_depth[0.5].context
    assert 0.3 < middle.index(fact) / len(middle) < 0.7
    # one haystack for all depths: the filler around the needle is the same text
    assert middle.replace(fact + " ", "") == by_depth[0.0].context.replace(fact + " ", "")


def test_haystack_file_is_used_and_its_numbers_avoided(model, tmp_path):
    taken = nd.make_needle(random.Random("needle/0/0")).answer  # what seed 0 would pick
    text = f"Zebras graze on the wide plain. The ferry left at {taken} sharp! Owls hoot? " * 40
    path = tmp_path / "hay.txt"
    path.write_text(text, encoding="utf-8")
    prompts = list(nd.needle_prompts(model, [256], [0.5], haystack=path, seed=0))
    assert "Zebras graze on the wide plain." in prompts[0].context
    assert prompts[0].needle.answer != taken and prompts[0].needle.answer not in text
    report = nd.run_needle(model, lengths=[256], depths=[0.5], haystack=path, record=False)
    assert report.haystack == str(path.resolve())


def test_haystack_file_errors_are_usage_errors(model, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        nd.run_needle(model, lengths=[256], haystack=tmp_path / "missing.txt", record=False)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UsageError, match="no text"):
        nd.run_needle(model, lengths=[256], haystack=tmp_path / "empty.txt", record=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lengths": [5000]}, "ctx="),  # the Python spelling: run_needle is Python
        ({"lengths": [20]}, "too short"),
        ({"depths": [1.5]}, "invalid depth"),
        ({"trials": 0}, "invalid trials"),
        ({"lengths": []}, "no context lengths"),
        ({"depths": []}, "no needle depths"),
    ],
)
def test_bad_grids_are_usage_errors(model, kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        nd.run_needle(model, record=False, **kwargs)


def test_edges_and_middle_as_defined():
    depths = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
    recall = [[1.0, 0.5, 0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.5, 1.0]]
    edges, middle = nd.edges_and_middle(depths, recall)
    assert edges == pytest.approx((1 + 0.5 + 1 + 0 + 1 + 1 + 0.5 + 1) / 8)
    assert middle == pytest.approx((0 + 1 + 0 + 0) / 4)
    assert nd.edges_and_middle([0.0, 1.0], [[1.0, 0.0]]) == (0.5, None)
    assert nd.edges_and_middle([0.5], [[1.0]]) == (None, 1.0)


def test_report_edges_and_middle_come_from_its_grid(model):
    report = nd.run_needle(model, **SMALL)
    assert (report.edges_recall, report.middle_recall) == nd.edges_and_middle(
        report.depths, report.recall
    )
    assert report.mean_recall == sum(map(sum, report.recall)) / 6
    assert report.start_recall == (report.recall[0][0] + report.recall[1][0]) / 2  # depth 0
    assert report.end_recall == (report.recall[0][2] + report.recall[1][2]) / 2  # depth 1


def test_answer_found_in_output():
    n = nd.Needle("blue door", "4827")
    assert n.found_in("The code is 4827.") and n.found_in("4,827") and n.found_in("48 27")
    assert not n.found_in("482") and not n.found_in("4 8 2")


def test_heatmap_is_a_png(model, tmp_path):
    report = nd.run_needle(model, **SMALL)
    path = charts.needle_heatmap(report, tmp_path / "out" / "needle.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 200 and height >= 150 and len(data) > 5000


def test_run_is_recorded_in_the_results_db(model):
    report = nd.run_needle(model, lengths=[256], depths=[0.0, 1.0], record=True)
    rows = ResultsDB().query(kind="needle")
    assert [r.id for r in rows] == [report.result_id]
    assert rows[0].metrics["recall"] == report.recall
    assert rows[0].settings["lengths"] == [256] and rows[0].task == "needle"


def test_progress_counts_the_prompt_tokens(model):
    class Recorder:
        def task(self, description, total, unit="bytes"):
            self.total, self.unit, self.done = total, unit, 0
            return self

        def advance(self, n):
            self.done += n

    progress = Recorder()
    nd.run_needle(model, progress=progress, **SMALL)
    assert progress.unit == "tokens" and progress.done == progress.total == 3 * (256 + 384)


def test_model_without_template_gets_a_raw_prompt(tmp_path):
    path = write_tiny_gguf(tmp_path / "base.gguf", seed=4, chat_template=None)
    with LoadedModel(str(path), ctx=512, threads=1) as base:
        report = nd.run_needle(base, lengths=[256], depths=[0.5], record=False)
    assert report.prompt_format == "raw" and len(report.samples) == 1


@pytest.mark.slow
def test_real_model_recalls_a_code_in_short_contexts(default_model):
    with LoadedModel(str(default_model), ctx=2048, threads=1) as m:
        report = nd.run_needle(m, lengths=[256, 512], depths=nd.QUICK_DEPTHS, record=False)
    print(
        f"\nrecall {report.recall}, edges {report.edges_recall}, middle "
        f"{report.middle_recall}, {report.seconds:.0f} s"
    )
    assert report.mean_recall > 0
