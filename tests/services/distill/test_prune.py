"""Pruning: which blocks and channels the calibration pass keeps, and that the cut model
still exports to a GGUF whose logits in llama.cpp are the torch model's."""

from __future__ import annotations

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.distill import prune as P
from pocketlm.services.distill.gguf_io import export_gguf, load_torch
from pocketlm.store.gguf_check import inspect_gguf
from pocketlm.store.store import Store
from tests.services.distill.test_gguf_io import (
    TOKENS,
    cpp_logits,
    f32_cache,  # noqa: F401  (a fixture)
    rel_diff,
    torch_logits,
)
from tests.tinymodel import TINY_QWEN2, write_tiny_gguf

torch = pytest.importorskip("torch")

CALIBRATION = list(range(3, 500, 3))  # token ids of the tiny vocabulary


@pytest.fixture
def quiet(tmp_path):
    """A 4-layer qwen2 whose block 2 hardly changes the hidden state."""
    return write_tiny_gguf(tmp_path / "quiet.gguf", n_layer=4, quiet_layers=(2,), **TINY_QWEN2)


def test_the_near_identity_block_scores_lowest_and_goes_first(quiet):
    model = load_torch(quiet)
    importance = P.measure_importance(model, CALIBRATION, window=64)
    scores = importance.blocks
    assert importance.tokens == len(CALIBRATION) and len(scores) == 4
    assert min(range(4), key=scores.__getitem__) == 2 and scores[2] < 0.01 < min(scores[:2])
    assert P.choose_layers(scores, 3) == [0, 1, 3]
    assert [c.shape[0] for c in importance.channels] == [128] * 4
    assert all((c >= 0).all() for c in importance.channels)


def test_choose_layers_keeps_the_highest_in_model_order():
    assert P.choose_layers([0.5, 0.1, 0.9, 0.2, 0.3], 3) == [0, 2, 4]
    assert P.choose_layers([0.5, 0.1], 2) == [0, 1]


@pytest.mark.usefixtures("f32_cache")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_pruned_model_exports_with_parity(tmp_path, arch):
    kwargs = TINY_QWEN2 if arch == "qwen2" else {}
    src = write_tiny_gguf(tmp_path / "m.gguf", n_layer=4, n_ff=128, seed=2, **kwargs)
    model = load_torch(src)
    importance = P.measure_importance(model, CALIBRATION, window=100)
    P.shrink_ffn(model, importance.channels, 96)
    P.drop_layers(model, [0, 2, 3])
    out = export_gguf(model, src, tmp_path / "pruned.gguf", dtype="F32")
    info = inspect_gguf(out)
    assert (info.n_layer, model.config.num_hidden_layers, model.config.intermediate_size) == (
        3,
        3,
        96,
    )
    assert rel_diff(cpp_logits(out, TOKENS), torch_logits(model, TOKENS)) < 1e-4


def test_shrink_ffn_keeps_the_most_active_channels(tmp_path):
    model = load_torch(write_tiny_gguf(tmp_path / "m.gguf", n_layer=1))
    mlp = model.model.layers[0].mlp
    scores = torch.zeros(128)
    scores[[5, 70, 9]] = torch.tensor([3.0, 2.0, 1.0])
    gate = mlp.gate_proj.weight.detach().clone()
    down = mlp.down_proj.weight.detach().clone()
    P.shrink_ffn(model, [scores], 2)
    assert torch.equal(mlp.gate_proj.weight, gate[[5, 70]])
    assert torch.equal(mlp.down_proj.weight, down[:, [5, 70]])
    assert mlp.up_proj.weight.shape == (2, 64) and model.config.intermediate_size == 2
    torch_logits(model, TOKENS)  # still runs


def test_prune_service_records_the_recipe(quiet):
    done = P.prune(str(quiet), layers=3, ffn=64, name="small")
    m = Store().get("small")
    assert done.kept == [0, 1, 3] and done.dropped == [2] and m.parent == str(quiet.resolve())
    assert m.source == f"derived:prune:{quiet.resolve()}"
    r = m.recipe
    assert (r["layers_before"], r["layers_kept"], r["ffn_before"], r["ffn"]) == (
        4,
        [0, 1, 3],
        128,
        64,
    )
    assert len(r["layer_scores"]) == 4 and len(r["calibration_sha256"]) == 64
    assert r["calibration"] == "calibration.txt" and r["calibration_tokens"] > 100
    info = inspect_gguf(m.path)
    assert info.n_layer == 3 and info.architecture == "qwen2"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"layers": 4}, "has 4 layers"),
        ({"layers": 0}, "has 4 layers"),
        ({"ffn": 128}, "128 wide"),
        ({}, "say what to prune"),
    ],
)
def test_bad_sizes_are_usage_errors(quiet, kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        P.prune(str(quiet), **kwargs)
    assert Store().names() == []
