"""`pocketlm` as a user runs it: real processes, a tiny real model, real errors."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.conftest import REPO, assert_clean_error, run_cli
from tests.tinymodel import write_tiny_gguf

TINY = ("--ctx", "256", "--threads", "1")  # ggml threads spin: 1 is fastest on a busy box


def test_run_streams_an_answer(tiny_gguf):
    proc = run_cli("run", str(tiny_gguf), "the cat sat", "--max-tokens", "8", "--seed", "1", *TINY)
    assert proc.returncode == 0, proc.stderr_text
    assert proc.stdout_text.strip()
    assert proc.stderr_text == ""


def test_json_reports_text_and_stats(tiny_gguf):
    proc = run_cli(
        "run", str(tiny_gguf), "hello there", "--json", "--max-tokens", "6", "--seed", "2", *TINY
    )
    assert proc.returncode == 0, proc.stderr_text
    out = json.loads(proc.stdout_text)
    assert out["model"] == "tiny.gguf"
    assert isinstance(out["text"], str)
    stats = out["stats"]
    for key in (
        "load_s",
        "ttft_s",
        "prompt_tokens",
        "prefill_tps",
        "completion_tokens",
        "decode_tps",
        "peak_rss_bytes",
    ):
        assert key in stats
    assert stats["prompt_tokens"] > 0 and stats["peak_rss_bytes"] > 0
    assert 1 <= stats["completion_tokens"] <= 6


def test_same_seed_same_output_across_processes(tiny_gguf):
    args = ("run", str(tiny_gguf), "the dog", "--max-tokens", "20", "--seed", "42", *TINY)
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == 0 and a.stdout == b.stdout


def test_piped_stdin_is_the_prompt_or_appended(tiny_gguf):
    base = ("run", str(tiny_gguf), "--json", "--raw", "--max-tokens", "1", *TINY)
    alone = json.loads(run_cli(*base, input="the cat sat on the mat").stdout_text)
    both = json.loads(run_cli(*base, "summarize:", input="the cat sat on the mat").stdout_text)
    prompt_only = json.loads(run_cli(*base, "summarize:").stdout_text)
    assert alone["stats"]["prompt_tokens"] > 1
    assert both["stats"]["prompt_tokens"] > alone["stats"]["prompt_tokens"]
    assert both["stats"]["prompt_tokens"] > prompt_only["stats"]["prompt_tokens"]


def test_raw_skips_the_chat_template(tiny_gguf):
    base = ("run", str(tiny_gguf), "hi", "--json", "--max-tokens", "1", *TINY)
    templated = json.loads(run_cli(*base).stdout_text)["stats"]["prompt_tokens"]
    raw = json.loads(run_cli(*base, "--raw").stdout_text)["stats"]["prompt_tokens"]
    assert raw < templated


def test_context_overflow_fails_with_counts_and_truncate_says_what_was_dropped(tiny_gguf):
    long = "the cat sat on the mat. " * 45
    proc = run_cli("run", str(tiny_gguf), long, "--raw", "--max-tokens", "16", *TINY)
    line = assert_clean_error(proc, "exceeds the context window (256 tokens)", "--ctx")
    assert "+ max tokens (16)" in line
    proc = run_cli(
        "run",
        str(tiny_gguf),
        long,
        "--raw",
        "--max-tokens",
        "16",
        "--truncate",
        "--seed",
        "1",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr_text
    assert "dropped the start" in proc.stderr_text and "256-token context" in proc.stderr_text


def test_pull_path_and_import_register_in_place(tiny_gguf, tmp_path):
    proc = run_cli("import", str(tiny_gguf), "--name", "tiny")
    assert proc.returncode == 0, proc.stderr_text
    assert "not copied" in proc.stdout_text
    again = run_cli("pull", str(tiny_gguf), "--name", "tiny")
    assert again.returncode == 0 and "already" in again.stdout_text
    show = json.loads(run_cli("show", "tiny", "--json").stdout_text)
    assert show["path"] == str(tiny_gguf) and show["imported"] is True
    for field in (
        "name",
        "source",
        "sha256",
        "size_bytes",
        "architecture",
        "parameter_count",
        "quantization",
        "bits_per_weight",
        "context_length",
        "chat_template",
        "license",
        "parent",
    ):
        assert field in show
    assert show["architecture"] == "llama" and show["quantization"] == "F32"
    readable = run_cli("show", "tiny").stdout_text
    assert "sha256" in readable and "<|im_start|>" in readable
    listing = run_cli("list").stdout_text
    assert "tiny" in listing and "imported" in listing
    assert run_cli("run", "tiny", "the cat", "--max-tokens", "2", *TINY).returncode == 0
    rm = run_cli("rm", "tiny")
    assert rm.returncode == 0 and "left in place" in rm.stdout_text
    assert tiny_gguf.exists()
    assert_clean_error(run_cli("show", "tiny"), "unknown model 'tiny'")


def test_fit_reports_memory_and_speed(tiny_gguf):
    proc = run_cli("fit", str(tiny_gguf), "--ctx", "512", "--json")
    assert proc.returncode == 0, proc.stderr_text
    r = json.loads(proc.stdout_text)
    # 2 layers x 2 KV heads x (16 + 16) dims x 2 bytes x 512 tokens
    assert r["kv_bytes"] == 2 * 2 * 32 * 2 * 512
    assert r["fits"] is True and r["weights_bytes"] > 0
    assert r["decode_tps_empty"] > r["decode_tps_full"] > 0
    text = run_cli("fit", str(tiny_gguf)).stdout_text
    assert "fits" in text and "tok/s" in text


# -- bad input: one line, non-zero exit, no traceback ------------------------------------


def test_unknown_model_suggests_close_names():
    proc = run_cli("run", "smollm2-135m-instrct", "hello there")
    assert_clean_error(proc, "unknown model 'smollm2-135m-instrct'", "smollm2-135m-instruct")
    assert_clean_error(run_cli("show", "gemma3-270"), "did you mean", "gemma3-270m")
    assert_clean_error(run_cli("pull", "smollm3"), "unknown model")


def test_missing_file(tmp_path):
    assert_clean_error(run_cli("run", str(tmp_path / "nope.gguf"), "hi"), "does not exist")
    assert_clean_error(run_cli("import", str(tmp_path / "nope.gguf")), "does not exist")


def test_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("just some notes, not a model\n" * 10)
    assert_clean_error(run_cli("run", str(bad), "hi"), "not a gguf file")
    assert_clean_error(run_cli("import", str(bad)), "not a gguf file")


def test_truncated_model_is_rejected_before_the_engine(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    proc = run_cli("run", str(cut), "hi")
    assert_clean_error(proc)
    assert proc.returncode > 0  # an error exit, not a signal


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--temperature", "abc"], "--temperature"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "2"], "--top-p"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--ctx", "4"], "--ctx"),
        (["--threads", "0"], "--threads"),
        (["--seed", "-3"], "--seed"),
        (["--stop", ""], "--stop"),
        (["--bogus"], "--bogus"),
    ],
)
def test_invalid_option_values(tiny_gguf, args, needle):
    proc = run_cli("run", str(tiny_gguf), "hi", *args)
    assert_clean_error(proc, needle, code=2)


def test_empty_prompt(tiny_gguf):
    assert_clean_error(run_cli("run", str(tiny_gguf), ""), "prompt is empty")
    assert_clean_error(run_cli("run", str(tiny_gguf), "   "), "prompt is empty")
    assert_clean_error(run_cli("run", str(tiny_gguf), input="\n\n"), "prompt is empty")


def test_input_that_is_not_utf8(tiny_gguf):
    proc = run_cli("run", str(tiny_gguf), input=b"caf\xe9 \xff\xfe")
    assert_clean_error(proc, "not utf-8")
    import subprocess

    argv_proc = subprocess.run(
        [sys.executable, "-m", "pocketlm", "run", str(tiny_gguf).encode(), b"caf\xe9"],
        capture_output=True,
        input=b"",
        cwd=REPO,
        env=dict(os.environ),
    )
    argv_proc.stdout_text = argv_proc.stdout.decode()
    argv_proc.stderr_text = argv_proc.stderr.decode()
    assert_clean_error(argv_proc, "not valid utf-8")


def test_unknown_command_and_bad_names():
    assert_clean_error(run_cli("frobnicate"), "unknown command", code=2)
    assert_clean_error(run_cli("rm", "nothing-here"), "unknown model")


def test_import_refuses_a_name_taken_by_another_file(tiny_gguf, tmp_path):
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=2)
    assert run_cli("import", str(tiny_gguf), "--name", "m").returncode == 0
    assert_clean_error(run_cli("import", str(other), "--name", "m"), "already exists", "--name")
    assert_clean_error(run_cli("import", str(other), "--name", "bad/name"), "invalid model name")


def test_one_word_close_to_a_model_name_is_a_typo_not_a_prompt():
    assert_clean_error(
        run_cli("run", "smollm2-135m-instrut"), "did you mean", "smollm2-135m-instruct"
    )


def test_output_into_a_closed_pipe_is_not_an_error(tiny_gguf):
    import subprocess

    cmd = (
        f"'{sys.executable}' -m pocketlm run '{tiny_gguf}' 'the cat' --ctx 4096 "
        "--threads 1 | head -c 10 > /dev/null"
    )
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    assert proc.returncode == 0
