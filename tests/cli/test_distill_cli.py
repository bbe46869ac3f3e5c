"""`pocketlm distill` as a user runs it: tiny teacher and student, real engine and PyTorch."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("torch")

from tests.conftest import assert_clean_error, run_cli  # noqa: E402
from tests.tinymodel import write_tiny_gguf  # noqa: E402

WORDS = "the cat sat on the mat and the dog is in the house hello world".split()


@pytest.fixture
def models(tmp_path):
    for name, layers, seed in (("tteacher", 4, 3), ("tstudent", 2, 4)):
        path = write_tiny_gguf(tmp_path / f"{name}.gguf", n_layer=layers, seed=seed)
        assert run_cli("import", str(path), "--name", name).returncode == 0
    data = tmp_path / "d.jsonl"
    rng = random.Random(0)
    data.write_text(
        "".join(
            json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(40))}) + "\n"
            for _ in range(40)
        )
    )
    return data


def test_distill_prints_what_it_did_and_the_model_runs_quantizes_and_packages(models, tmp_path):
    args = ["--teacher", "tteacher", "--student", "tstudent", "--data", str(models)]
    proc = run_cli("distill", *args, "--seq-len", "64", "--batch-tokens", "256", "--lr", "3e-3")
    assert proc.returncode == 0, proc.stderr_text
    out = proc.stdout_text
    assert "tstudent-distilled:" in out and "logits distillation" in out
    assert "held-out divergence to the teacher" in out and "% lower" in out
    assert "Traceback" not in proc.stderr_text
    show = run_cli("show", "tstudent-distilled", "--json")
    manifest = json.loads(show.stdout_text)
    assert manifest["teacher"] == "tteacher" and manifest["parent"] == "tstudent"
    assert manifest["recipe"]["method"] == "distill"
    proc = run_cli("run", "tstudent-distilled", "--max-tokens", "3", "Hello")
    assert proc.returncode == 0, proc.stderr_text
    # like any store model: calibrated quantization, then wheels for a private index
    proc = run_cli(
        "quantize", "tstudent-distilled", "--type", "Q4_0", "--calibrate", "--name", "tq"
    )
    assert proc.returncode == 0, proc.stderr_text
    proc = run_cli("package", "tq", "--out", str(tmp_path / "wheels"))
    assert proc.returncode == 0, proc.stderr_text
    assert "tq" in (tmp_path / "wheels" / "catalog.toml").read_text()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--student", "tteacher", "--teacher", "tstudent"], "larger than the teacher"),
        (["--student", "tstudent", "--teacher", "nosuch"], "nosuch"),
        (["--student", "tstudent", "--teacher", "tteacher", "--top-k", "0"], "--top-k"),
        (["--student", "tstudent", "--teacher", "tteacher", "--resume"], "no checkpoint"),
        (["--student", "tstudent", "--teacher", "tteacher", "--name", "a/b"], "name"),
    ],
)
def test_bad_runs_are_one_line_errors(models, extra, needle):
    proc = run_cli("distill", "--data", str(models), *extra)
    assert_clean_error(proc, needle)


def test_a_missing_data_file_is_a_one_line_error(models, tmp_path):
    args = ["--student", "tstudent", "--teacher", "tteacher"]
    proc = run_cli("distill", *args, "--data", str(tmp_path / "none.jsonl"))
    assert_clean_error(proc, "does not exist")


def test_balance_says_how_it_drew_the_labels(models, tmp_path):
    data = tmp_path / "labelled.jsonl"
    rows = [("cat", 12), ("dog", 4), ("house", 3)]
    data.write_text(
        "".join(
            json.dumps(
                {"instruction": "Name the animal.", "text": f"a {label} {i}", "label": label}
            )
            + "\n"
            for label, n in rows
            for i in range(n)
        )
    )
    args = ["--teacher", "tteacher", "--student", "tstudent", "--data", str(data)]
    proc = run_cli("distill", *args, "--balance", "--held-out", "0", "--seq-len", "64")
    assert proc.returncode == 0, proc.stderr_text
    assert "balanced 3 answers" in proc.stderr_text
    assert "cat 12 -> 4" in proc.stderr_text and "house 3 -> 4" in proc.stderr_text
    recipe = json.loads(run_cli("show", "tstudent-distilled", "--json").stdout_text)["recipe"]
    assert recipe["balance"] is True
