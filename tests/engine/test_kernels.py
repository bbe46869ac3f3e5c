"""pocketlm's patches to llama.cpp (scripts/engine-patches/), checked in the engine it built.

0001: Q4_1 weights times a batch of two or more tokens go through pocketlm's tiled kernel
(llamafile_sgemm); a single token still goes through llama.cpp's ggml_vec_dot_q4_1_q8_1. The
same tokens must get the same logits both ways, whether the batch is one prompt or one
token of each of several sequences decoding together (what the server does every step).
The counts (23-token prompt, 5 sequences) leave partial tiles at the edges: the kernel
works on 4 x 4 tiles.

0002: Q6_K weights times a batch of two or more tokens go through pocketlm's kernel (one
weight row against up to 8 columns) instead of a vec_dot per column (2-7 tokens) or
llama.cpp's tiled K-quant path (8 and more); it does the vec_dot's arithmetic, so the same
checks hold
on a tiny Q6_K-only model, and one token of each of 8 sequences decoded together gets
exactly (bit for bit) the logits each gets alone.

0003: repacked Q4_K weights: the batched gemm does the one-token gemv's float operations
(one multiply-add per super block), so the same bit-for-bit check holds on a Q4_K model.

0004: attention's F16 dot products: one token (ggml_vec_dot_f16) gets the arithmetic of
llamafile's F16 kernel, which does batches; after a long prompt a batch of one sequence's
tokens gets bit-identical logits to the same tokens one at a time.

0007: with AVX-512 VNNI one Q4_K kernel takes every step size (up to 8 token rows a pass,
the gemm's groups of 4 and the rows left over together); 0008 prefetches weights and
changes no arithmetic. Both keep the checks above bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import llama_cpp as ll
import numpy as np
import pytest

from tests.tinymodel import quantized_tiny_gguf, write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]
PATCHES = sorted((ROOT / "scripts" / "engine-patches").glob("*.patch"))


class Engine:
    """One model, one context with a KV buffer per sequence (as the server), 2 threads,
    flash attention off (pocketlm's default)."""

    def __init__(self, path: Path, n_seq: int = 8):
        self.model = ll.llama_model_load_from_file(
            str(path).encode(), ll.llama_model_default_params()
        )
        assert self.model, path
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        cp = ll.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 256 * n_seq, 256, 256, n_seq
        cp.kv_unified, cp.n_threads, cp.n_threads_batch = False, 2, 2
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED  # pocketlm's default
        self.ctx = ll.llama_init_from_model(self.model, cp)
        self.batch = ll.llama_batch_init(256, 0, 1)

    def decode(self, items: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """One llama_decode of (token, position, sequence) items; the logits of each."""
        b = self.batch
        for i, (tok, pos, seq) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = tok, pos, 1, seq, 1
        b.n_tokens = len(items)
        assert ll.llama_decode(self.ctx, b) == 0
        return [
            np.ctypeslib.as_array(
                ll.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)
            ).copy()
            for i in range(len(items))
        ]

    def close(self) -> None:
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)


def assert_same_logits(
    batched: list[np.ndarray], single: list[np.ndarray], exact: bool = False
) -> None:
    if exact:  # bit for bit
        for i, (a, b) in enumerate(zip(batched, single)):
            assert np.array_equal(a, b), f"token {i}: max |difference| {np.abs(a - b).max()}"
    scale = max(float(np.abs(x).max()) for x in single)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(batched, single))
    assert worst <= 1e-4 * scale, f"max |logit difference| {worst} (logits up to {scale})"
    assert [int(a.argmax()) for a in batched] == [int(b.argmax()) for b in single]


def tokens(n: int, seed: int, n_vocab: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, min(n_vocab, 20000), n)]


def check_engine(path: Path, exact: bool = False) -> None:
    eng = Engine(path, n_seq=9)
    try:
        # one prompt of 23 tokens as one batch (sequence 0) and one token at a time (sequence 1)
        prompt = tokens(23, 0, eng.n_vocab)
        batched = eng.decode([(t, i, 0) for i, t in enumerate(prompt)])
        single = [eng.decode([(t, i, 1)])[0] for i, t in enumerate(prompt)]
        assert_same_logits(batched, single, exact)
        # 2, 5, 6 and 7 sequences with prompts of their own, then one token of each: together,
        # and alone (2: 0005's two-row pass; 5: a group of 4 and one row; 6: 4 and 0005's 2;
        # with 0007 each is one pass of the VNNI kernel, 7 its largest mix: 4 + 3)
        mem = ll.llama_get_memory(eng.ctx)
        for n in (2, 5, 6, 7):
            for s in range(2, 9):
                ll.llama_memory_seq_rm(mem, s, -1, -1)
            prompts = [tokens(7 + s, 10 * n + s, eng.n_vocab) for s in range(n)]
            nxt = tokens(n, 99 + n, eng.n_vocab)
            assert_same_logits(*together_and_alone(eng, prompts, nxt, 2), exact)
    finally:
        eng.close()


def together_and_alone(
    eng: Engine, prompts: list[list[int]], nxt: list[int], first: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sequences first, first + 1, ... each take its prompt, then one token of each is
    decoded in one step (as the server steps them) and again alone: both logits of each."""
    for s, p in enumerate(prompts):
        eng.decode([(t, i, first + s) for i, t in enumerate(p)])
    together = eng.decode([(nxt[s], len(p), first + s) for s, p in enumerate(prompts)])
    mem = ll.llama_get_memory(eng.ctx)
    alone = []
    for s, p in enumerate(prompts):
        ll.llama_memory_seq_rm(mem, first + s, len(p), -1)  # forget the token decoded together
        alone.append(eng.decode([(nxt[s], len(p), first + s)])[0])
    return together, alone


def test_q4_1_batches_get_the_logits_of_single_tokens_tiny(tmp_path):
    check_engine(write_tiny_gguf(tmp_path / "tiny-q4_1.gguf", qtype="Q4_1", seed=3))


@pytest.mark.slow
def test_q4_1_batches_get_the_logits_of_single_tokens_default_model(default_model):
    check_engine(default_model)  # SmolLM2-135M: Q4_1, 576 wide, 49,152-row output (Q8_0)


# Q6_K: 0002; Q4_K: 0003 and 0005; Q5_0, Q8_0: llamafile's kernel (0006's 512-bit one
# where the CPU has AVX-512) against the one-token vec_dot
QUANTS = ["Q6_K", "Q4_K", "Q5_0", "Q8_0"]


@pytest.mark.parametrize("qtype", QUANTS)
def test_k_quant_batches_get_the_logits_of_single_tokens_tiny(tmp_path, qtype):
    check_engine(quantized_tiny_gguf(tmp_path, qtype), exact=True)  # the stock engine: 0.68, 1.15


@pytest.mark.parametrize("qtype", QUANTS)
def test_k_quant_batches_of_many_sequences_are_bit_identical_to_one_token(tmp_path, qtype):
    """One token of each of 8 sequences in one step (the server's decode step) against
    each token alone: each sequence's attention sees only its own cache, so any difference
    would come from a batched matmul kernel (0002's for Q6_K, 0003's repacked Q4_K gemm
    against its gemv)."""
    eng = Engine(quantized_tiny_gguf(tmp_path, qtype), n_seq=8)
    try:
        prompts = [tokens(5 + s, 20 + s, eng.n_vocab) for s in range(8)]
        together, alone = together_and_alone(eng, prompts, tokens(8, 7, eng.n_vocab), 0)
        for s in range(8):
            assert np.array_equal(together[s], alone[s]), f"sequence {s}"
    finally:
        eng.close()


def check_attention(path: Path) -> None:
    """0004: after a 150-token prompt (attention's F16 dot products long enough to differ),
    8 tokens of one sequence decoded as one batch (llamafile's F16 kernel) get the logits
    the same tokens get one at a time (ggml_vec_dot_f16), bit for bit."""
    eng = Engine(path, n_seq=2)
    try:
        prompt, nxt = tokens(150, 1, eng.n_vocab), tokens(8, 2, eng.n_vocab)
        for s in (0, 1):  # the same prompt, in the same batches: the same cache bits
            for start in range(0, 150, 50):
                eng.decode([(t, start + i, s) for i, t in enumerate(prompt[start : start + 50])])
        batched = eng.decode([(t, 150 + i, 0) for i, t in enumerate(nxt)])
        single = [eng.decode([(t, 150 + i, 1)])[0] for i, t in enumerate(nxt)]
        assert_same_logits(batched, single, exact=True)
    finally:
        eng.close()


@pytest.mark.slow
def test_attention_rounds_a_batch_of_one_sequence_as_single_tokens_default_model(default_model):
    # without 0004 up to 0.56 apart; the tiny models' attention does not show it (tried:
    # 64- and 128-wide heads, Q8_0 weights, 150-token prompts: 0 apart even without it)
    check_attention(default_model)


def test_the_installed_engine_carries_every_patch():
    """The engine in use was built by scripts/install_engine.py with the patches of this
    checkout (it records them next to the package); a stale or foreign build fails here."""
    meta = Path(ll.__file__).parent / "pocketlm-build.json"
    assert meta.exists(), "llama-cpp-python was not installed by scripts/install.sh"
    assert json.loads(meta.read_text())["patches"] == [p.name for p in PATCHES]


def _install_engine():
    spec = importlib.util.spec_from_file_location(
        "install_engine", ROOT / "scripts" / "install_engine.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PATCH = """\
a prose header that is not part of the diff
--- a/src/f.c
+++ b/src/f.c
@@ -2,3 +2,4 @@ int f(void)
 int a;
-int b;
+int b2;
+int c;
 int d;
"""


def test_apply_patch_applies_a_unified_diff(tmp_path):
    eng = _install_engine()
    f = tmp_path / "src" / "f.c"
    f.parent.mkdir()
    f.write_bytes(b"int f(void)\nint a;\nint b;\nint d;\nint e;\r\n\f\n")  # \r, \f kept
    eng.apply_patch(tmp_path, PATCH)
    assert f.read_bytes() == b"int f(void)\nint a;\nint b2;\nint c;\nint d;\nint e;\r\n\f\n"


@pytest.mark.parametrize(
    "content, why",
    [
        ("int a;\nint b;\nint e;\n", "occurs 0 times"),  # the context changed upstream
        ("int a;\nint b;\nint d;\nint a;\nint b;\nint d;\n", "occurs 2 times"),  # ambiguous
    ],
)
def test_apply_patch_refuses_what_it_cannot_place_and_leaves_the_file(tmp_path, content, why):
    eng = _install_engine()
    f = tmp_path / "src" / "f.c"
    f.parent.mkdir()
    f.write_text(content)
    with pytest.raises(eng.PatchError, match=why):
        eng.apply_patch(tmp_path, PATCH)
    assert f.read_text() == content


def test_every_engine_patch_parses_and_targets_the_vendored_llama_cpp(tmp_path):
    eng = _install_engine()
    assert PATCHES, "scripts/engine-patches/ is empty"
    for patch in PATCHES:
        text = patch.read_text()
        assert text.count("\n+++ ") == text.count("\n--- ") >= 1
        with pytest.raises(eng.PatchError, match="is missing"):
            eng.apply_patch(tmp_path, text)  # nothing there: parsing succeeded, then refused
        for line in text.splitlines():
            if line.startswith("+++ "):
                assert line.startswith("+++ b/vendor/llama.cpp/"), line
