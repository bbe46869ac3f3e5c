"""GGUF <-> PyTorch: parity of the exported file in llama.cpp with the torch model, round trips,
and keeping the result in the store.

Tolerances (max |difference| over all logits / max |logit|, measured on these tiny random
models and on Qwen2.5-Coder 0.5B):

- F32 export, llama.cpp with an F32 KV cache: 2-3e-6 (tiny); asserted 1e-4. With the
  runtime's default F16 KV cache the difference is 2-3e-3 on the tiny models (their 30-wide
  logits magnify rounding), 1.3e-3 on Qwen2.5 0.5B: the cache, not the export.
- F16 export: 4-6e-3 (tiny, F16 cache), 1e-3 (Qwen2.5 0.5B; mean KL 2.5e-6, top-1 100%);
  asserted 2e-2 and identical top-1 tokens. BF16: 3-4e-2 (tiny); asserted 0.1, top-1 90%.
- GGUF (F32) -> torch -> GGUF (F32): the same tensors, byte for byte, and the same logits.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import gguf
import numpy as np
import pytest

from pocketlm.errors import PocketError, UsageError
from pocketlm.services.distill.gguf_io import export_gguf, load_torch, save_to_store
from pocketlm.store.gguf_check import inspect_gguf
from pocketlm.store.store import Store
from tests.conftest import shared_store_root
from tests.tinymodel import TINY_QWEN2, write_malformed_gguf, write_tiny_gguf

torch = pytest.importorskip("torch")

TOKENS = list(range(3, 60, 2))  # ids in the tiny vocabulary
ARCHS = {"llama": {}, "qwen2": TINY_QWEN2}


@pytest.fixture(scope="module", params=list(ARCHS))
def tiny(request, tmp_path_factory):
    """(path, torch model) of a tiny F32 model of each architecture."""
    path = tmp_path_factory.mktemp("tiny") / f"{request.param}.gguf"
    write_tiny_gguf(path, seed=3, **ARCHS[request.param])
    return path, load_torch(path)


@pytest.fixture
def f32_cache(monkeypatch):
    """llama.cpp contexts with an F32 KV cache (the runtime's is F16): exact parity."""
    import llama_cpp as ll

    default = ll.llama_context_default_params

    def params():
        p = default()
        p.type_k = p.type_v = int(gguf.GGMLQuantizationType.F32)
        return p

    monkeypatch.setattr(ll, "llama_context_default_params", params)


def cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position: [len(tokens), n_vocab]."""
    import llama_cpp as ll

    from pocketlm.engine.llama import Context, Model

    model = Model(str(path), use_extra_bufts=False)
    ctx = Context(model, n_ctx=256, n_threads=1, n_batch=256)
    try:
        ctx.prefill_all(tokens)
        shape = (len(tokens), model.n_vocab)
        return np.ctypeslib.as_array(ll.llama_get_logits(ctx._ptr), shape=shape).copy()
    finally:
        ctx.close()
        model.close()


def torch_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    ("dtype", "tol", "top1"), [("F32", 1e-4, 1.0), ("F16", 2e-2, 1.0), ("BF16", 1e-1, 0.9)]
)
def test_exported_model_in_llama_cpp_matches_torch(tiny, tmp_path, f32_cache, dtype, tol, top1):
    src, model = tiny
    out = export_gguf(model, src, tmp_path / "out.gguf", dtype=dtype)
    expected, got = torch_logits(model, TOKENS), cpp_logits(out, TOKENS)
    assert rel_diff(got, expected) < tol
    assert (got.argmax(1) == expected.argmax(1)).mean() >= top1
    assert inspect_gguf(out).file_type == dtype


def test_the_runtime_kv_cache_costs_a_little(tiny, tmp_path):
    src, model = tiny
    out = export_gguf(model, src, tmp_path / "out.gguf", dtype="F32")
    assert rel_diff(cpp_logits(out, TOKENS), torch_logits(model, TOKENS)) < 1e-2


def test_round_trip_keeps_tensors_and_metadata(tiny, tmp_path):
    src, model = tiny
    out = export_gguf(model, src, tmp_path / "out.gguf", dtype="F32")
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(out)
    assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
    theirs = {t.name: t for t in b.tensors}
    for t in a.tensors:  # llama: Q and K permuted back exactly as llama.cpp had them
        assert np.array_equal(t.data, theirs[t.name].data), t.name
    same = {k for k in a.fields if not k.startswith("GGUF.")}
    for key in same:
        assert a.fields[key].contents() == b.fields[key].contents(), key
    assert np.array_equal(cpp_logits(src, TOKENS), cpp_logits(out, TOKENS))


def test_a_tied_output_layer_is_not_written(tmp_path):
    src = write_tiny_gguf(tmp_path / "q.gguf", **TINY_QWEN2)
    model = load_torch(src)
    assert model.config.tie_word_embeddings
    names = {t.name for t in gguf.GGUFReader(export_gguf(model, src, tmp_path / "o.gguf")).tensors}
    assert "output.weight" not in names and "blk.0.attn_q.bias" in names


def test_shapes_come_from_the_torch_model(tiny, tmp_path):
    src, model = tiny
    metadata = {"general.name": "renamed", "general.description": "pruned"}
    out = export_gguf(model, src, tmp_path / "o.gguf", metadata=metadata)
    info = inspect_gguf(out)
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv) == (2, 64, 4, 2)
    fields = gguf.GGUFReader(out).fields
    assert fields["general.name"].contents() == "renamed"
    assert fields["general.description"].contents() == "pruned"


def test_unsupported_architecture_is_one_line(tmp_path):
    path = write_tiny_gguf(tmp_path / "p.gguf", arch="phi3")
    with pytest.raises(UsageError, match="support llama and qwen2"):
        load_torch(path)


def test_unreadable_file_is_one_line(tmp_path):
    path = write_malformed_gguf(tmp_path / "bad.gguf", "bad_magic")
    with pytest.raises(PocketError) as e:
        load_torch(path)
    assert "\n" not in str(e.value)


def test_too_little_memory_is_refused_before_loading(tmp_path, monkeypatch):
    import psutil

    path = write_tiny_gguf(tmp_path / "t.gguf")
    fake = psutil.virtual_memory()._replace(available=1000)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    with pytest.raises(PocketError, match="not enough memory"):
        load_torch(path)


def test_loading_never_touches_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = load_torch(write_tiny_gguf(tmp_path / "t.gguf", seed=5))
    assert not getattr(model, "is_quantized", False)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# -- into the store ---------------------------------------------------------------------


def _parent(store: Store, tmp_path: Path):
    from pocketlm.store.pull import import_file

    src = write_tiny_gguf(tmp_path / "parent.gguf", seed=4)
    return import_file(src, name="parent", store=store).manifest


def test_save_to_store_writes_a_model_with_its_provenance(tmp_path):
    store = Store()
    parent = _parent(store, tmp_path)
    model = load_torch(parent)
    recipe = {"method": "distill", "steps": 3}
    m = save_to_store(
        store,
        model,
        parent=parent,
        name="student",
        recipe=recipe,
        teacher="big",
        data_sha256="ab" * 32,
    )
    assert (m.source, m.parent, m.teacher, m.data_sha256) == (
        "derived:distill:parent",
        "parent",
        "big",
        "ab" * 32,
    )
    assert m.recipe == recipe and m.quantization == "F16" and store.get("student") == m
    assert inspect_gguf(m.path).n_layer == 2 and Path(m.path).parent == store.blobs_dir
    assert list(store.tmp_dir.iterdir()) == []
    with pytest.raises(PocketError, match="already exists"):
        save_to_store(store, model, parent=parent, name="student", recipe={})


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    from pocketlm.services.distill import gguf_io

    store = Store()
    parent = _parent(store, tmp_path)
    model = load_torch(parent)
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args)

    real = gguf_io._tensor_data
    monkeypatch.setattr(gguf_io, "_tensor_data", interrupted)
    blobs = set(store.blobs_dir.iterdir())
    with pytest.raises(KeyboardInterrupt):
        save_to_store(store, model, parent=parent, name="half", recipe={})
    assert store.find("half") is None and set(store.blobs_dir.iterdir()) == blobs
    assert list(store.tmp_dir.iterdir()) == []


def test_too_little_disk_is_refused_before_writing(tmp_path, monkeypatch):
    store = Store()
    parent = _parent(store, tmp_path)
    model = load_torch(parent)
    usage = shutil.disk_usage(store.root)._replace(free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage)
    with pytest.raises(PocketError, match="not enough disk space"):
        save_to_store(store, model, parent=parent, name="big", recipe={})
    assert list(store.tmp_dir.iterdir()) == []


# -- the real model ---------------------------------------------------------------------


@pytest.mark.slow
def test_qwen_0_5b_exported_matches_torch(tmp_path):
    """Qwen2.5-Coder 0.5B (Q4_K_M, dequantized by transformers) -> F16 GGUF: llama.cpp's
    logits against torch's on the calibration text (measured: rel 1e-3, KL 2.5e-6, top-1
    100%). Skipped where the shared test store does not hold the model."""
    from pocketlm.engine.llama import Model

    manifest = Store(shared_store_root()).find("qwen2.5-coder-0.5b-instruct")
    if manifest is None:
        pytest.skip("qwen2.5-coder-0.5b-instruct is not in the shared test store")
    from pocketlm.services.quantize.report import default_text_path

    vocab = Model(manifest.path, vocab_only=True)
    tokens = vocab.tokenize(default_text_path().read_text()[:2000])[:96]
    vocab.close()
    model = load_torch(manifest)
    out = export_gguf(model, manifest.path, tmp_path / "q.gguf", dtype="F16")
    expected, got = torch_logits(model, tokens), cpp_logits(out, tokens)
    assert rel_diff(got, expected) < 1e-2
    p_log = torch.log_softmax(torch.from_numpy(expected), -1)
    q_log = torch.log_softmax(torch.from_numpy(got), -1)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1).mean().item()
    assert kl < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.98
