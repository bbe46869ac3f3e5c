"""`pocketlm data` as a user runs it: real processes, the tiny model as the teacher, real
files; bad input is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_clean_error, run_cli
from tests.services.data.corpus import CLEAN

FAST = ("--max-tokens", "8", "--parallel", "2", "--threads", "1")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def teacher(tiny_gguf):
    proc = run_cli("import", str(tiny_gguf), "--name", "tiny-teacher")
    assert proc.returncode == 0, proc.stderr_text
    return "tiny-teacher"


def test_curate_prints_a_table_and_writes_the_report(tmp_path):
    rows = [{"id": i, "text": t} for i, t in enumerate(CLEAN)] + [{"id": "d", "text": CLEAN[0]}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    proc = run_cli("data", "curate", str(src), "--out", str(out), "--report", str(report))
    assert proc.returncode == 0, proc.stderr_text
    assert "exact_duplicate" in proc.stdout_text and "kept" in proc.stdout_text
    d = json.loads(report.read_text())
    assert (d["read"], d["kept"], d["dropped"]) == (9, 8, {"exact_duplicate": 1})
    assert d["examples"]["exact_duplicate"][0]["id"] == "d"
    assert "calibration.txt" in " ".join(d["decontamination"]["files"])
    assert len(out.read_text().splitlines()) == 8


def test_curate_json_and_skip(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"body": CLEAN[0]}, {"body": CLEAN[0]}])
    proc = run_cli(
        "data", "curate", str(src), "--out", str(tmp_path / "o.jsonl"), "--field", "body",
        "--skip", "exact,near,contamination", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    d = json.loads(proc.stdout_text)
    assert d["kept"] == 2 and d["settings"]["skipped"] == ["contamination", "exact", "near"]


@pytest.mark.parametrize(
    ("content", "extra", "needles"),
    [
        (None, (), ("does not exist",)),
        ("hello\n", (), ("not JSONL",)),
        ('{"body": "x"}\n', (), ("'text' field", "--field")),
        ('{"text": "x"}\n', ("--skip", "vibes"), ("unknown stage",)),
        ('{"text": "x"}\n', ("--decontaminate", "/no/such/eval.jsonl"), ("evaluation file",)),
        ('{"text": "x"}\n', ("--near-threshold", "0.99"), ("--num-perm",)),
    ],
)
def test_curate_bad_input_is_one_line(tmp_path, content, extra, needles):
    src = tmp_path / "in.jsonl"
    if content is not None:
        src.write_text(content)
    proc = run_cli("data", "curate", str(src), "--out", str(tmp_path / "o.jsonl"), *extra)
    assert_clean_error(proc, *needles, code=2)


def test_synth_writes_then_resumes(tmp_path, teacher):
    out = tmp_path / "t.jsonl"
    args = ("data", "synth", "--teacher", teacher, "--out", str(out), *FAST)
    proc = run_cli(*args, "--n", "3")
    assert proc.returncode == 0, proc.stderr_text
    assert "3 records written" in proc.stderr_text and "format: " in proc.stderr_text
    assert_clean_error(run_cli(*args, "--n", "5"), "--resume", code=2)
    proc = run_cli(*args, "--n", "5", "--resume")
    assert proc.returncode == 0, proc.stderr_text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5] and "3 already there" in proc.stderr_text
    assert {r["teacher"] for r in rows} == {teacher}


def test_synth_bad_settings_name_the_flag(tmp_path):
    proc = run_cli("data", "synth", "--teacher", "t", "--out", str(tmp_path / "o"), "--n", "0")
    assert_clean_error(proc, "--n 0", code=2)
    proc = run_cli("data", "synth", "--teacher", "t", "--out", str(tmp_path / "o"), "--labels", "a")
    assert_clean_error(proc, "--labels", "--task", code=2)


def test_synth_task_mode(tmp_path, teacher):
    out = tmp_path / "t.jsonl"
    proc = run_cli(
        "data", "synth", "--teacher", teacher, "--out", str(out), "--n", "4",
        "--task", "Is the review positive?", "--labels", "yes,no", *FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == ["yes", "no"] * 2


def test_label_with_a_store_teacher_and_a_refused_remote_one(tmp_path, teacher):
    src = write_jsonl(tmp_path / "mine.jsonl", [{"text": t} for t in CLEAN[:3]])
    out = tmp_path / "l.jsonl"
    proc = run_cli(
        "data", "label", str(src), "--teacher", teacher, "--task", "classify", "--labels",
        "a,b", "--out", str(out), "--threads", "1", "--ctx", "512",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == list(CLEAN[:3])
    tiers = tmp_path / "tiers.toml"
    tiers.write_text('[[tier]]\nname = "cloud"\nurl = "https://api.example.com/v1"\nmodel = "m"\n')
    proc = run_cli(
        "data", "label", str(src), "--teacher", "cloud", "--tiers", str(tiers), "--task",
        "classify", "--labels", "a,b", "--out", str(tmp_path / "x.jsonl"),
    )  # fmt: skip
    assert_clean_error(proc, "remote", "--teacher", code=2)
    proc = run_cli("data", "label", str(src), "--teacher", teacher, "--task", "extract",
                   "--out", str(tmp_path / "y.jsonl"))  # fmt: skip
    assert_clean_error(proc, "--schema", code=2)


def test_help_lists_the_verbs():
    proc = run_cli("data", "--help")
    assert proc.returncode == 0
    for verb in ("synth", "curate", "label"):
        assert verb in proc.stdout_text


def local_and_ray_runs(tmp_path, monkeypatch, *args):
    """The records of the command ``args`` run locally and on a local 2-worker Ray."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "home").mkdir()  # Ray writes its token under ~/.ray
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert run_cli(*args, "--out", str(local)).returncode == 0
    proc = run_cli(
        *args, "--out", str(on_ray), "--ray", "--ray-workers", "2",
        env={"HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    assert "on Ray: 2 workers" in proc.stderr_text
    return [[json.loads(line) for line in p.read_text().splitlines()] for p in (local, on_ray)]


def test_synth_on_ray_writes_the_records_of_a_local_run(tmp_path, tiny_gguf, monkeypatch):
    args = ("data", "synth", "--teacher", str(tiny_gguf), "--n", "5", *FAST)
    a, b = local_and_ray_runs(tmp_path, monkeypatch, *args)
    drop = ("text", "finish")  # the same seeds; batches of other shapes may round otherwise
    assert [{k: v for k, v in r.items() if k not in drop} for r in b] == [
        {k: v for k, v in r.items() if k not in drop} for r in a
    ]


def test_label_on_ray_writes_the_records_of_a_local_run(tmp_path, teacher, monkeypatch):
    src = write_jsonl(tmp_path / "mine.jsonl", [{"id": i, "text": t} for i, t in enumerate(CLEAN)])
    args = ("data", "label", str(src), "--teacher", teacher, "--task", "classify", "--labels",
            "a,b,c", "--threads", "1", "--ctx", "512")  # fmt: skip
    a, b = local_and_ray_runs(tmp_path, monkeypatch, *args)
    assert len(a) == len(CLEAN) and [r["id"] for r in b] == [r["id"] for r in a]
    assert [(r["label"], r["teacher"], r["instruction"]) for r in b] == [
        (r["label"], r["teacher"], r["instruction"]) for r in a
    ]
    for x, y in zip(a, b):  # scored in other batches: the same to rounding
        assert all(abs(x["probs"][k] - y["probs"][k]) < 1e-3 for k in x["probs"])
