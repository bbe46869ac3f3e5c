"""The tiny models load and run in the real engine, and compute what a reference computes.

The parity test runs a NumPy llama forward pass over the weights read back with gguf-py
and compares its logits with llama.cpp's: it checks that write_tiny_gguf lays tensors
out the way llama.cpp reads them.
"""

from __future__ import annotations

import gguf
import jinja2
import llama_cpp
import numpy as np
import pytest

from tests.tinymodel import (
    BOS_ID,
    CHATML_TEMPLATE,
    EOS_ID,
    QTYPES,
    bpe_vocab,
    write_tiny_gguf,
)

GGML_TYPE_F32 = 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {q: write_tiny_gguf(root / f"tiny-{q}.gguf", qtype=q) for q in QTYPES}


def load(path, **kwargs) -> llama_cpp.Llama:
    # One thread: ggml's threads spin, and a busy 2-core machine makes two of them crawl.
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, **kwargs
    )


@pytest.fixture(scope="module")
def llm(tiny) -> llama_cpp.Llama:
    return load(tiny["F32"])


def test_merges_make_words_single_tokens(llm):
    ids = llm.tokenize(b"Hello world, the cat", add_bos=False)
    assert [llm.detokenize([i]).decode() for i in ids] == ["Hello", " world", ",", " the", " cat"]


def test_special_tokens(llm):
    assert (llm.token_bos(), llm.token_eos(), llm.n_vocab()) == (
        BOS_ID,
        EOS_ID,
        len(bpe_vocab()[0]),
    )
    ids = llm.tokenize(b"<|im_start|>user\nhi<|im_end|>", add_bos=False, special=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    plain = llm.tokenize(b"<|im_start|>", add_bos=False, special=False)
    assert BOS_ID not in plain and len(plain) > 1


@pytest.mark.parametrize(
    "text", ["Hello world, the cat", "  two  spaces\n\nnew lines\ttab", "héllo wörld ✓ 日本 🙂", ""]
)
def test_tokenize_round_trips(llm, text):
    ids = llm.tokenize(text.encode(), add_bos=False)
    assert llm.detokenize(ids).decode() == text


def test_chat_template_in_metadata_renders_chatml(llm):
    assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
    messages = [{"role": "user", "content": "Hi"}]
    text = jinja2.Template(CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("qtype", QTYPES)
def test_greedy_generation_is_deterministic_text(tiny, qtype):
    llm = load(tiny[qtype])
    prompt = llm.tokenize(b"Once upon a time", add_bos=False)

    def greedy(n: int) -> list[int]:
        llm.reset()
        out = []
        for token in llm.generate(prompt, temp=0.0):
            out.append(token)
            if len(out) == n:
                return out

    tokens = greedy(12)
    assert tokens == greedy(12)
    assert len(set(tokens)) > 3  # wanders instead of repeating one token
    text = llm.detokenize(tokens).decode()
    assert text.strip() and text.isprintable()


def test_same_seed_same_bytes(tmp_path):
    a = write_tiny_gguf(tmp_path / "a.gguf", qtype="Q4_0", seed=7).read_bytes()
    b = write_tiny_gguf(tmp_path / "b.gguf", qtype="Q4_0", seed=7).read_bytes()
    c = write_tiny_gguf(tmp_path / "c.gguf", qtype="Q4_0", seed=8).read_bytes()
    assert a == b != c


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Q4_0"):
        write_tiny_gguf(tmp_path / "x.gguf", qtype="Q5_K")
    with pytest.raises(ValueError, match="multiples of 32"):
        write_tiny_gguf(tmp_path / "x.gguf", qtype="Q8_0", n_embd=48, n_head=4)


# --- parity with a NumPy reference ------------------------------------------------------


def read_weights(path) -> dict[str, np.ndarray]:
    """name -> float64 array in NumPy order ([out, in] for matrices)."""
    weights = {}
    for t in gguf.GGUFReader(path).tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        weights[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        weights[t.name] = weights[t.name].reshape(shape)
    return weights


def rms_norm(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, base=10000.0):
    """llama.cpp's "normal" RoPE: rotate pairs (2i, 2i+1). x: [T, heads, head_dim]."""
    t, _, d = x.shape
    theta = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)  # [T, d/2]
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def reference_logits(w, ids, n_layer=2, n_head=4, n_head_kv=2) -> np.ndarray:
    """A llama forward pass. Returns logits: [T, vocab]."""
    x = w["token_embd.weight"][ids]  # [T, n_embd]
    t, n_embd = x.shape
    hd, group = n_embd // n_head, n_head // n_head_kv
    causal = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(n_layer):
        p = f"blk.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(t, n_head, hd))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(t, n_head_kv, hd)).repeat(group, 1)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, n_head_kv, hd).repeat(group, 1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal  # [heads, T, T]
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v).reshape(t, n_embd)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    return rms_norm(x, w["output_norm.weight"]) @ w["output.weight"].T


# Max |error| / max |logit|. F32 matches closely once the KV cache is F32 too; F16 and
# the quantized types also round the activations inside llama.cpp's matmuls.
TOLERANCE = {"F32": 1e-5, "F16": 1e-2, "Q8_0": 0.1, "Q4_0": 0.1, "Q4_1": 0.1}


@pytest.mark.parametrize("qtype", QTYPES)
def test_logits_match_numpy_reference(tiny, qtype):
    llm = load(tiny[qtype], logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    ids = llm.tokenize(b"Hello world, the cat sat on the mat.", add_bos=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    want = reference_logits(read_weights(tiny[qtype]), ids)
    assert np.abs(got - want).max() <= TOLERANCE[qtype] * np.abs(want).max()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
