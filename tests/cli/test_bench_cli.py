"""`pocketlm bench` as a user runs it: table, JSON, output files, chart, bad input."""

from __future__ import annotations

import json

import pytest

from pocketlm.services.results import ResultsDB
from tests.conftest import assert_clean_error, run_cli
from tests.tinymodel import write_tiny_gguf

QUICK = ("--repeat", "2", "--prompt-lengths", "16,32", "--decode-tokens", "8", "--threads", "1")


@pytest.fixture(scope="module")
def second_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("q8") / "small-q8.gguf", seed=3, qtype="Q8_0")


def test_table_shows_each_figure_and_the_warm_cache_note(tiny_gguf):
    proc = run_cli("bench", str(tiny_gguf), *QUICK)
    assert proc.returncode == 0, proc.stderr_text
    out = proc.stdout_text
    for needle in (
        "tiny.gguf",
        "load ms",
        "prefill tok/s @16",
        "first token ms @32",
        "decode tok/s",
        "decode bound tok/s",
        "share of bound",
        "peak RSS MiB",
        "of 2 runs",
        "warm-cache",
    ):
        assert needle in out, out
    assert "Traceback" not in proc.stderr_text


def test_json_out_and_chart_for_two_models(tiny_gguf, second_gguf, tmp_path):
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = run_cli(
        "bench",
        str(tiny_gguf),
        str(second_gguf),
        *QUICK,
        "--json",
        "--out",
        str(out),
        "--chart",
        str(chart),
    )
    assert proc.returncode == 0, proc.stderr_text
    data = json.loads(proc.stdout_text)
    assert json.loads(out.read_text()) == data
    assert [m["model"] for m in data["models"]] == ["tiny.gguf", "small-q8.gguf"]
    for m in data["models"]:
        assert m["runs"] == 2 and m["prompt_lengths"] == [16, 32]
        assert len(m["decode"]["tok_per_s"]["values"]) == 2
        assert m["bound"]["decode_tok_per_s"] > 0
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert chart.stat().st_size > 20_000
    assert len(ResultsDB().query(kind="bench", task="speed")) == 2


@pytest.mark.parametrize(
    "args, needles, code",
    [
        (["smollm2-135m"], ["unknown model", "smollm2-135m-instruct"], 1),
        (["{tiny}", "--repeat", "0"], ["--repeat"], 2),
        (["{tiny}", "--prompt-lengths", "0"], ["--prompt-lengths"], 2),
        (["{tiny}", "--prompt-lengths", "12,abc"], ["--prompt-lengths"], 2),
        (["{tiny}", "--decode-tokens", "-1"], ["--decode-tokens"], 2),
        (["{tiny}", "--chart", "out.svg"], ["--chart", ".png"], 2),
        (["{tiny}", "--out", "/no/such/folder/x.json"], ["--out", "does not exist"], 2),
    ],
)
def test_bad_input_is_a_one_line_error(tiny_gguf, args, needles, code):
    proc = run_cli("bench", *(a.format(tiny=tiny_gguf) for a in args))
    assert_clean_error(proc, *needles, code=code)


def test_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("just some notes")
    assert_clean_error(run_cli("bench", str(bad)), "not a GGUF file")
    assert ResultsDB().query(kind="bench") == []
