"""Calibrated quantization: block formats bit-exact against gguf-py and llama.cpp, importance
and GPTQ lowering the errors they aim at, activation statistics matching a NumPy forward of
the first layer, and calibrated files that llama.cpp loads, runs, and sizes like its own."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

from pocketlm.engine.llama import Model
from pocketlm.errors import EngineError, UsageError
from pocketlm.services.quantize import calibrated, kquants
from pocketlm.services.quantize.activations import collect_activations
from pocketlm.services.runtime import LoadedModel
from tests.tinymodel import write_tiny_gguf

FORMATS = list(kquants.FORMATS.values())
TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world, the cat sat on the mat. "
    "What is the capital of France? The capital of France is Paris. Two plus two is four. "
    "Once upon a time there was a cat that lived in a house with a dog, and they played. "
) * 12


def random_blocks(fmt: kquants.Format, nb: int, rng) -> kquants.Blocks:
    """Blocks with every field drawn over its whole range (d, dmin normal fp16 values)."""
    d = rng.uniform(1e-3, 1, nb).astype(np.float16)
    dmin = rng.uniform(1e-3, 1, nb).astype(np.float16) if fmt.has_min else np.zeros(nb, np.float16)
    sc = rng.integers(fmt.sc_min, fmt.sc_max + 1, (nb, fmt.n_sub)).astype(np.int16)
    mn = rng.integers(0, fmt.mn_max + 1, (nb, fmt.n_sub)).astype(np.int16)
    q = rng.integers(0, fmt.qmax + 1, (nb, fmt.block)).astype(np.uint8)
    return kquants.Blocks(d, dmin, sc, mn, q)


def weighted_error(fmt, x, raw, weights) -> float:
    values = kquants.dequantize(fmt, kquants.unpack(fmt, raw)).reshape(x.shape)
    return float((weights * (x - values) ** 2).sum())


# --- block formats ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_packed_blocks_read_back_as_gguf_py_reads_them(fmt):
    b = random_blocks(fmt, 64, np.random.default_rng(0))
    raw = kquants.pack(fmt, b)
    assert raw.shape == (64, fmt.type_size)
    theirs = gguf.quants.dequantize(raw.reshape(1, -1), fmt.ggml_type).reshape(64, fmt.block)
    assert np.array_equal(theirs, kquants.dequantize(fmt, b))
    back = kquants.unpack(fmt, raw)
    for field in ("d", "dmin", "sc", "mn", "q"):
        assert np.array_equal(getattr(back, field), getattr(b, field)), field


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_llama_cpp_blocks_unpack_and_pack_to_the_same_bytes(fmt):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 512)) * rng.uniform(0.01, 2, (4, 1))).astype(np.float32)
    for importance in (None, rng.uniform(0, 1, 512) ** 4):
        raw = kquants.ggml_quantize(fmt, x, importance)
        assert np.array_equal(kquants.pack(fmt, kquants.unpack(fmt, raw)), raw)
        theirs = gguf.quants.dequantize(raw.reshape(4, -1), fmt.ggml_type).reshape(-1, fmt.block)
        assert np.array_equal(theirs, kquants.dequantize(fmt, kquants.unpack(fmt, raw)))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_codes_for_picks_the_nearest_grid_point(fmt):
    rng = np.random.default_rng(2)
    b = random_blocks(fmt, 16, rng)
    s, m = b.scales()
    x = rng.standard_normal((16, fmt.n_sub, fmt.sub)).astype(np.float32) * s.max()
    q = kquants.codes_for(fmt, x, s, m).astype(np.float32)
    grid = s[..., None, None] * (np.arange(fmt.qmax + 1) - fmt.zero) - m[..., None, None]
    best = np.abs(x[..., None] - grid).min(axis=-1)  # [16, n_sub, sub]
    chosen = np.abs(x - (s[..., None] * (q - fmt.zero) - m[..., None]))
    assert np.allclose(chosen, best, atol=1e-6 * float(np.abs(x).max()))


# --- what the methods minimise ----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_importance_lowers_the_weighted_error(fmt):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 512)).astype(np.float32)
    importance = np.exp(rng.normal(0, 2, 512)).astype(np.float32)  # a few columns dominate
    plain = weighted_error(fmt, x, kquants.ggml_quantize(fmt, x), importance)
    aware = weighted_error(fmt, x, kquants.ggml_quantize(fmt, x, importance), importance)
    assert aware < 0.9 * plain


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_gptq_lowers_the_output_error(fmt):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((48, 512)).astype(np.float32)
    # correlated inputs with a few strong columns, like a transformer's activations
    x = rng.standard_normal((2048, 64)) @ rng.standard_normal((64, 512))
    x *= np.exp(rng.normal(0, 1, 512))
    h = (x.T @ x / len(x)).astype(np.float32)
    imp = np.diag(h).copy()
    default = calibrated.output_error(fmt, w, kquants.ggml_quantize(fmt, w), h)
    aware = calibrated.output_error(fmt, w, kquants.ggml_quantize(fmt, w, imp), h)
    u = calibrated.inverse_hessian_factor(h)
    gptq = calibrated.output_error(fmt, w, calibrated.gptq_quantize(fmt, w, u, imp), h)
    assert gptq < 0.7 * aware < 0.7 * default


# --- activations ------------------------------------------------------------------


def test_activation_statistics_match_a_numpy_forward_of_the_first_layer(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", n_embd=256, n_ff=512, seed=5)
    reader = gguf.GGUFReader(path)
    names = calibrated._matrices(reader)
    model = Model(str(path), use_extra_bufts=False)
    try:
        tokens = model.tokenize(TEXT, add_special=False)
        stats = collect_activations(model, TEXT, names, chunk=128, with_hessian=True)
    finally:
        model.close()
    assert set(stats) == set(names)  # every matrix, output.weight too
    assert stats["blk.0.attn_q.weight"] is stats["blk.0.attn_v.weight"]  # one shared input
    assert stats["blk.1.ffn_gate.weight"] is stats["blk.1.ffn_up.weight"]
    assert stats["blk.0.ffn_down.weight"].sum_sq.shape == (512,)
    # blk.0's attention input is the RMS-normed token embedding (norm weights are ones)
    emb = {t.name: t for t in reader.tensors}["token_embd.weight"]
    x = np.asarray(emb.data, np.float32).reshape(-1, 256)[tokens]
    x = x / np.sqrt((x**2).mean(axis=1, keepdims=True) + 1e-5)
    st = stats["blk.0.attn_q.weight"]
    assert st.tokens == len(tokens)
    assert np.allclose(st.importance, (x**2).mean(axis=0), rtol=1e-4)
    assert np.allclose(st.hessian, x.T @ x / len(x), atol=1e-4)


# --- files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    return write_tiny_gguf(
        tmp_path_factory.mktemp("cal") / "tiny-f32.gguf", n_embd=256, n_ff=512, seed=6
    )


@pytest.mark.parametrize("qtype", ["Q4_0", "Q2_K"])
def test_calibrated_file_runs_and_has_the_default_layout(tiny_f32, tmp_path, qtype):
    default, ours = tmp_path / "default.gguf", tmp_path / "calibrated.gguf"
    calibrated._llama_quantize(tiny_f32, default, calibrated.FILE_TYPES[qtype], 1, {})
    summary = calibrated.quantize_calibrated(tiny_f32, ours, qtype, TEXT)
    a, b = gguf.GGUFReader(default), gguf.GGUFReader(ours)
    layout = lambda r: [(t.name, t.tensor_type, tuple(t.shape), t.n_bytes) for t in r.tensors]  # noqa: E731
    assert layout(a) == layout(b)
    assert 0 < ours.stat().st_size - default.stat().st_size < 512  # the metadata keys
    assert b.fields["pocketlm.quantize.method"].contents() == "calibrated-gptq"
    vocab = Model(str(tiny_f32), vocab_only=True)
    n_tokens = len(vocab.tokenize(TEXT, add_special=False))
    vocab.close()
    assert b.fields["pocketlm.quantize.calibration.tokens"].contents() == n_tokens
    candidates = {
        t.name
        for t in a.tensors
        if t.tensor_type.name in calibrated.GPTQ_TYPES and t.name != "token_embd.weight"
    }
    assert {t["name"] for t in summary["tensors"]} == candidates
    assert summary["method"] == "calibrated-gptq" and summary["tensors_gptq"] >= 1
    err = summary["output_error"]
    assert err["calibrated"] <= err["imatrix"] < err["default"]
    with LoadedModel(str(ours), ctx=128) as m:
        out = m.generate("the cat", raw=True, max_tokens=8, seed=1)
    assert out.stats.completion_tokens == 8


def test_types_llama_cpp_refuses_without_an_importance_matrix_work(tiny_f32, tmp_path):
    with pytest.raises(EngineError):
        calibrated._llama_quantize(
            tiny_f32, tmp_path / "plain.gguf", calibrated.FILE_TYPES["IQ2_XXS"], 1, {}
        )
    path = tmp_path / "iq2.gguf"
    summary = calibrated.quantize_calibrated(tiny_f32, path, "IQ2_XXS", TEXT, gptq=False)
    assert summary["method"] == "calibrated-imatrix" and summary["tensors_gptq"] == 0
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert "IQ2_XXS" in types
    with LoadedModel(str(path), ctx=128) as m:
        assert m.generate("the cat", raw=True, max_tokens=4, seed=1).stats.completion_tokens == 4


def test_hessian_budget_keeps_the_narrow_inputs(tiny_f32):
    reader = gguf.GGUFReader(tiny_f32)
    names = calibrated._matrices(reader)
    assert calibrated._hessian_set(reader, names, 1 << 30) == set(names)
    narrow = {n for n in names if "ffn_down" not in n}  # 256 inputs; ffn_down has 512
    assert calibrated._hessian_set(reader, names, len(narrow) * 4 * 256**2) == narrow
    assert calibrated._hessian_set(reader, names, 1000) == set()


def test_unsupported_type_and_empty_text_are_usage_errors(tiny_f32, tmp_path):
    with pytest.raises(UsageError, match="Q4_0"):
        calibrated.quantize_calibrated(tiny_f32, tmp_path / "x.gguf", "Q9_9", TEXT)
    with pytest.raises(UsageError, match="empty"):
        calibrated.quantize_calibrated(tiny_f32, tmp_path / "x.gguf", "Q4_0", "  ")


# --- the real model ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~3 minutes on 2 busy cores: calibration, GPTQ of 210 tensors, KLD
def test_calibrated_q4_0_beats_the_default_on_the_real_model(default_model, tmp_path):
    """KL divergence against the source model, on text the calibration did not see."""
    from pathlib import Path

    from pocketlm.services.evaluate.perplexity import run_perplexity

    repo = Path(__file__).resolve().parents[3]
    calib = (repo / "README.md").read_text()
    held_out = (repo / "docs" / "engine.md").read_text()
    default, ours = tmp_path / "default.gguf", tmp_path / "calibrated.gguf"
    calibrated._llama_quantize(default_model, default, calibrated.FILE_TYPES["Q4_0"], 2, {})
    calibrated.quantize_calibrated(default_model, ours, "Q4_0", calib, threads=2)
    assert ours.stat().st_size - default.stat().st_size < 512
    ref = Model(str(default_model))
    kld = {}
    for path in (default, ours):
        m = Model(str(path))
        kld[path] = run_perplexity(
            m, held_out, window=256, reference=ref, threads=2, max_tokens=768
        ).kld_mean
        m.close()
    ref.close()
    assert math.isfinite(kld[ours]) and kld[ours] < 0.85 * kld[default], kld
