"""`pocketlm prune` from the command line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pocketlm.cli import main as cli_main
from pocketlm.store.gguf_check import inspect_gguf
from pocketlm.store.store import Store
from tests.conftest import assert_clean_error, run_cli
from tests.tinymodel import TINY_QWEN2, write_tiny_gguf

pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def no_probe(monkeypatch):
    monkeypatch.setenv("POCKETLM_EXTRA_BUFTS", "0")  # no probe child per new file


@pytest.fixture
def quiet(tmp_path):
    """A 4-layer qwen2 whose block 1 hardly changes the hidden state."""
    return write_tiny_gguf(tmp_path / "quiet.gguf", n_layer=4, quiet_layers=(1,), **TINY_QWEN2)


def cli(capsys, *args: str) -> SimpleNamespace:
    """`pocketlm ARGS` in this process (fast: for errors), as run_cli reports it."""
    try:
        code = cli_main(list(args))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout_text=out.out, stderr_text=out.err)


def test_prune_keeps_the_important_layers_and_the_result_runs(capsys, quiet):
    proc = run_cli("prune", str(quiet), "--layers", "3", "--json", "--tokens", "256")
    assert proc.returncode == 0, proc.stderr_text
    r = json.loads(proc.stdout_text)
    assert (r["name"], r["kept"], r["dropped"]) == ("quiet-L3", [0, 2, 3], [1])
    assert r["scores"][1] == min(r["scores"]) and r["tokens"] == 256
    m = Store().get("quiet-L3")
    assert m.parent == str(quiet.resolve()) and m.source.startswith("derived:prune:")
    assert m.recipe["layers_kept"] == [0, 2, 3] and m.recipe["calibration_tokens"] == 256
    assert inspect_gguf(m.path).n_layer == 3 and m.quantization == "F16"
    ran = run_cli("run", "quiet-L3", "Hello world", "--max-tokens", "4", "--raw")
    assert ran.returncode == 0, ran.stderr_text
    assert ran.stdout_text.strip()
    fast = ("--threads", "1", "--eval-tokens", "128", "--window", "64", "--decode-tokens", "4")
    q = cli(capsys, "quantize", "quiet-L3", "--type", "Q8_0", "--json", *fast)
    assert q.returncode == 0, q.stderr_text
    assert Store().get("quiet-L3-q8_0").parent == "quiet-L3"


def test_text_report_and_width(capsys, quiet):
    proc = cli(capsys, "prune", str(quiet), "--ffn", "64", "--name", "narrow", "--tokens", "64")
    assert proc.returncode == 0, proc.stderr_text
    out = proc.stdout_text
    assert "LAYER" in out and "narrow: 4 of 4 layers (dropped none), FFN 128 -> 64" in out
    m = Store().get("narrow")
    assert m.recipe["ffn"] == 64 and m.recipe["layers_kept"] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (("--layers", "4"), "has 4 layers", 2),
        (("--layers", "0"), "has 4 layers", 2),
        ((), "say what to prune: --layers N, --ffn N", 2),
        (("--layers", "2", "--name", "bad/name"), "invalid model name", 2),
    ],
)
def test_bad_input_is_a_one_line_error(capsys, quiet, args, needle, code):
    proc = cli(capsys, "prune", str(quiet), *args)
    line = assert_clean_error(proc, needle, code=code)
    assert line.startswith("error:")
    assert Store().names() == []


def test_too_wide_ffn_is_refused_once_the_width_is_known(capsys, quiet):
    # the header check (GGUFInfo) has no FFN width: it is read from the loaded model
    proc = cli(capsys, "prune", str(quiet), "--ffn", "500")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr_text
    last = proc.stderr_text.strip().splitlines()[-1]
    assert last.startswith("error: invalid --ffn 500") and "128 wide" in last
    assert Store().names() == []


def test_unknown_model_and_architecture(capsys, tmp_path):
    assert_clean_error(cli(capsys, "prune", "no-such-model", "--layers", "1"), "unknown model")
    phi = write_tiny_gguf(tmp_path / "phi.gguf", arch="phi3")
    assert_clean_error(
        cli(capsys, "prune", str(phi), "--layers", "1"), "phi3", "llama and qwen2", code=2
    )


def test_a_taken_name_is_refused_before_any_work(capsys, quiet, tmp_path):
    from pocketlm.store.pull import import_file

    import_file(write_tiny_gguf(tmp_path / "other.gguf"), name="quiet-L2")
    proc = cli(capsys, "prune", str(quiet), "--layers", "2")
    assert_clean_error(proc, "already exists")
