"""`pocketlm task --ray`: records spread over Ray workers give a local run's results, and
Ray is needed (and imported) only by a run that asks for it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, assert_clean_error, pulled, run_cli

LABELS = "positive,negative,neutral"
# Reviews the small model labels with a wide margin (0.3 or more between its top two labels),
# so that the scoring's run-to-run noise (below) cannot turn a label over.
REVIEWS = [
    "I loved this product, it works perfectly!",
    "Terrible. Broke after one day.",
    "Absolutely fantastic service and fast delivery.",
    "Worst purchase I have ever made.",
    "Five stars, would buy again!",
    "Customer support never answered my emails.",
    "My kids love it and use it every day.",
    "Wonderful gift, my mother was delighted.",
    "Horrible smell and it leaks everywhere.",
    "Perfect fit and very comfortable.",
    "Complete waste of money.",
    "I am very happy with this purchase.",
]
# A record's label probabilities depend on which records are scored in the same llama.cpp
# batch, local runs included: two local runs of these reviews (1 thread) differed by up to
# 0.03, by 0.044 with --parallel 8 and 1, and a Ray run from a local one by 0.03 (three
# tries): not 1e-3, since the scorer's log-probabilities change with the size and make-up of
# its batches by far more than rounding. Labels and token counts agree.
PROB_TOL = 0.1


def _write_reviews(path, texts) -> None:
    path.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )


def _summary(stderr: str) -> dict:
    """The --json summary, which follows the progress lines on stderr."""
    return json.loads(stderr[stderr.index("{") :])


def _ray_processes() -> set[int]:
    """Ray's processes on this machine: its servers and workers, living ones only."""
    import psutil

    found = set()
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        name, cmd = p.info["name"] or "", " ".join(p.info["cmdline"] or [])
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if name in ("gcs_server", "raylet") or name.startswith("ray::") or "/ray/" in cmd:
            found.add(p.pid)
    return found


def _listening(pids) -> list[str]:
    """The addresses that the processes ``pids`` listen on."""
    import psutil

    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):  # one that ended meanwhile
            conns = psutil.Process(pid).net_connections("inet")
            found += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _assert_none_left(before: set[int]) -> None:
    deadline = time.monotonic() + 15
    while (left := _ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left running: {sorted(left)}"


@pytest.fixture
def ray_env(monkeypatch, tmp_path) -> dict[str, str]:
    """The environment of a run with --ray: no cluster to join (it starts one of this
    machine), and a home of its own for the token Ray writes (~/.ray)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home")}


@pytest.mark.parametrize("verb", ["logs", "security"])
def test_whole_file_tasks_are_refused(tmp_path, verb):
    log = tmp_path / "app.log"
    log.write_text("Jan  1 00:00:01 host sshd[1]: Accepted password for bob from 10.0.0.1\n")
    proc = run_cli("task", verb, str(log), "--ray")
    assert_clean_error(proc, "runs on one machine", "without --ray", code=2)


def test_without_ray_installed_it_says_how_to_install(tmp_path):
    data = tmp_path / "in.jsonl"
    _write_reviews(data, REVIEWS[:2])
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if not installed: importing it fails\n"
        "from pocketlm.cli import main\n"
        f"sys.exit(main(['task', 'classify', {str(data)!r}, '--labels', 'a,b', '--ray']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    proc.stdout_text, proc.stderr_text = proc.stdout.decode(), proc.stderr.decode()
    assert_clean_error(proc, "pip install 'pocketlm[ray]'", code=2)


def test_a_local_run_imports_no_ray(tmp_path, tiny_gguf):
    data, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_reviews(data, REVIEWS[:2])
    argv = ["task", "classify", str(data), "--labels", "a,b", "--model", str(tiny_gguf)]
    code = (
        "import sys\n"
        "import pocketlm.cli.task\n"
        "from pocketlm.cli import main\n"
        f"rc = main({[*argv, '--out', str(out)]!r})\n"
        "print(rc, 'ray' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.stdout.split() == ["0", "False"], proc.stderr
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.slow
def test_ray_run_gives_the_local_results(tmp_path, ray_env):
    model = pulled("smollm2-135m-instruct")
    data = tmp_path / "reviews.jsonl"
    _write_reviews(data, REVIEWS)
    # A Ray worker runs 1 thread; the local run too, since the thread count changes the
    # floating-point sums (as much as the batches do)
    args = ["task", "classify", str(data), "--labels", LABELS, "--model", str(model)]
    args += ["--threads", "1", "--json"]
    local_proc = run_cli(*args, "--out", str(tmp_path / "local.jsonl"))
    assert local_proc.returncode == 0, local_proc.stderr_text
    before = _ray_processes()
    on_ray_args = ["--out", str(tmp_path / "ray.jsonl"), "--ray", "--ray-workers", "2"]
    ray_proc = run_cli(*args, *on_ray_args, env=ray_env)
    assert ray_proc.returncode == 0, ray_proc.stderr_text
    _assert_none_left(before)

    local = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    on_ray = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["id"] for r in on_ray] == [r["id"] for r in local] == [f"r{i}" for i in range(12)]
    assert [r["label"] for r in on_ray] == [r["label"] for r in local]
    for a, b in zip(local, on_ray):
        assert b["probs"].keys() == a["probs"].keys()
        assert all(abs(b["probs"][k] - p) <= PROB_TOL for k, p in a["probs"].items()), (a, b)
    s_local, s_ray = _summary(local_proc.stderr_text), _summary(ray_proc.stderr_text)
    assert s_ray["records"] == 12 and s_ray["failed"] == 0
    assert s_ray["counts"] == s_local["counts"]
    assert s_ray["model"] == s_local["model"]
    assert s_ray["prompt_tokens"] == s_local["prompt_tokens"] > 0  # the workers' counts, summed
    assert "on Ray: 2 workers, 1 thread each" in ray_proc.stderr_text


@pytest.mark.slow
def test_local_cluster_is_on_loopback_and_ctrl_c_stops_it(tmp_path, ray_env):
    model = pulled("smollm2-135m-instruct")
    data, out = tmp_path / "many.jsonl", tmp_path / "out.jsonl"
    _write_reviews(data, REVIEWS * 40)
    before = _ray_processes()
    # Ctrl-C in a terminal signals the whole foreground process group: Ray's processes too
    cmd = [sys.executable, "-m", "pocketlm", "task", "classify", str(data), "--labels", LABELS]
    cmd += ["--model", str(model), "--out", str(out), "--ray"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, cwd=REPO, start_new_session=True, env={**os.environ, **ray_env}
    )
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and out.stat().st_size) and proc.poll() is None:
            assert time.monotonic() < deadline, "no result written in 90 s"
            time.sleep(0.2)
        listening = _listening({proc.pid} | (_ray_processes() - before))
        assert listening and set(listening) <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("interrupted"), err
    _assert_none_left(before)
    # whole lines, in input order: what --resume continues
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert 0 < len(ids) < len(REVIEWS) * 40
    assert ids == [f"r{i}" for i in range(len(ids))]
