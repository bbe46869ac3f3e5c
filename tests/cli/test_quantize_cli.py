"""`pocketlm quantize` from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from pocketlm.cli import main as cli_main
from pocketlm.services.quantize import types
from pocketlm.store.store import Store
from tests.conftest import REPO, assert_clean_error, run_cli
from tests.services.quantize.conftest import WIDE
from tests.tinymodel import write_tiny_gguf

FAST = ("--threads", "1", "--eval-tokens", "256", "--window", "128")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("wide") / "wide.gguf", seed=7, **WIDE)


@pytest.fixture(autouse=True)
def no_probe(monkeypatch):
    monkeypatch.setenv("POCKETLM_EXTRA_BUFTS", "0")  # no probe child per new file


def cli(capsys, *args: str) -> SimpleNamespace:
    """`pocketlm ARGS` in this process (fast: for errors), as run_cli reports it."""
    try:
        code = cli_main(list(args))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout_text=out.out, stderr_text=out.err)


def test_list_shows_every_type_with_its_nominal_bits(capsys):
    proc = cli(capsys, "quantize", "--list")
    assert proc.returncode == 0
    lines = proc.stdout_text.splitlines()
    for name, qt in types.TYPES.items():
        assert any(ln.split()[:2] == [name, f"{qt.bpw:.2f}"] for ln in lines), name
    rows = json.loads(cli(capsys, "quantize", "--list", "--json").stdout_text)
    assert [r["type"] for r in rows] == list(types.TYPES)
    assert {r["type"] for r in rows if r["needs_imatrix"]} >= {"IQ2_XXS", "IQ1_S"}


def test_list_for_a_model_gives_each_type_its_size(capsys, wide):
    rows = json.loads(cli(capsys, "quantize", str(wide), "--list", "--json").stdout_text)
    sizes = {r["type"]: r["size_bytes"] for r in rows}
    assert sizes["F32"] > sizes["Q8_0"] > sizes["Q4_0"] > sizes["Q2_K"] > 0


def test_json_report(wide):
    proc = run_cli(
        "quantize", str(wide), "--type", "q4_k_m", "--json", *FAST, "--decode-tokens", "8"
    )
    assert proc.returncode == 0, proc.stderr_text
    r = json.loads(proc.stdout_text)
    assert (r["name"], r["reference"], r["type"]) == ("wide-q4_k_m", "wide", "Q4_K_M")
    assert r["parent"] == str(wide)  # a file, not a store model: its path
    assert r["requantized"] is False and r["decode_tps"] > 0 and r["seconds"] > 0
    assert r["size_bytes"] == os.path.getsize(r["path"]) and 4 < r["bpw"] < 6
    assert r["kld_mean"] > 0 and 0 < r["top1_agreement"] <= 1
    assert r["ppl_delta"] == pytest.approx(r["ppl"] - r["ppl_ref"])
    m = Store().get("wide-q4_k_m")
    assert m.quality["kld_mean"] == r["kld_mean"] and m.parent == str(wide)
    history = run_cli("eval", "--history", "--json")
    assert any(
        row["kind"] == "quantize" and row["model"] == "wide-q4_k_m"
        for row in json.loads(history.stdout_text)
    )


def test_bad_input_is_one_line(capsys, wide, tmp_path):
    def error(*args, needles=(), code=None):
        return assert_clean_error(cli(capsys, "quantize", *args), *needles, code=code)

    line = error(str(wide), "--type", "Q4_Z", needles=("unknown quantization type",), code=2)
    assert "Q4_K_M" in line and "IQ2_XXS" in line  # the valid ones are listed
    error("smolm2-135m-instruct", "--type", "Q4_0", needles=("unknown model", "smollm2"))
    error(str(wide), "--budget", "60XB", needles=("invalid size", "60MB"), code=2)
    error(str(wide), needles=("--type", "--budget"), code=2)
    error(needles=("name the model",), code=2)
    error(str(wide), "--type", "Q4_0", "--budget", "1MB", code=2)  # one or the other
    error(str(wide), "--type", "Q4_0", "--chart", "x.png", needles=("--chart",), code=2)
    error(str(wide), "--budget", "1MB", "--chart", str(tmp_path / "x.jpg"), needles=(".png",))
    error(str(wide), "--type", "IQ2_XS", needles=("importance matrix", "--calibrate"), code=2)
    error(str(wide), "--type", "Q4_0", "--eval-tokens", "0", needles=("--eval-tokens",))
    error(
        str(wide),
        "--type",
        "Q4_0",
        "--eval-text",
        str(tmp_path / "no.txt"),
        needles=("does not exist",),
    )
    line = error(str(wide), "--budget", "100KB", needles=("no quantization type fits",))
    assert "the smallest is" in line and "raise --budget" in line
    assert Store().names() == []


def test_ctrl_c_leaves_nothing_in_the_store(tmp_path):
    """SIGINT while the child process quantizes: exit 130, no model, no blob, no scratch."""
    model = write_tiny_gguf(tmp_path / "deep.gguf", n_layer=4, **(WIDE | {"n_ff": 1024}))
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketlm", "quantize", str(model), "--type", "IQ3_S", *FAST],
        env=dict(os.environ, POCKETLM_HOME=str(home)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(home.glob("tmp/*/model.gguf")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
    store = Store(home)
    assert store.names() == [] and not list(store.blobs_dir.iterdir())
    assert not list((home / "tmp").iterdir())


def test_calibrate_on_a_jsonl_training_set(tmp_path, wide):
    """--calibrate DATA.jsonl: the importance matrix comes from the training records' text
    (a record's input and answer), not from the JSON around them."""
    records = [
        {
            "instruction": "Sort it.",
            "text": f"ticket {i}: the printer is out of paper",
            "label": "it",
        }
        for i in range(40)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    proc = run_cli(
        "quantize", str(wide), "--type", "Q4_0", "--calibrate", str(data), "--json", *FAST,
        "--decode-tokens", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr_text
    r = json.loads(proc.stdout_text)
    m = Store().get(r["name"])
    assert m.calibration == "train.jsonl"
    import gguf

    from pocketlm.engine.llama import Model
    from pocketlm.services.quantize.report import records_text

    text = records_text(data)
    assert text.startswith("ticket 0: the printer is out of paper\nit\n\nticket 1:")
    assert "{" not in text and "Sort it." not in text
    vocab = Model(str(wide), vocab_only=True)
    n_tokens = len(vocab.tokenize(text, add_special=False))
    vocab.close()
    fields = gguf.GGUFReader(m.path).fields
    assert fields["pocketlm.quantize.calibration.tokens"].contents() == n_tokens

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": 1}\nnot json\n')
    proc = run_cli("quantize", str(wide), "--type", "Q4_0", "--calibrate", str(empty), *FAST)
    line = assert_clean_error(proc, "empty.jsonl has no training records", "2 lines skipped")
    assert "messages" in line
