"""Tiny random GGUF models that llama.cpp really loads, and broken copies of them.

Tests across pocketlm use these instead of a real model: a 2-layer, 64-wide
llama with a 527-token byte-level BPE vocab (ChatML special tokens as in
SmolLM2) writes in milliseconds and loads and decodes in llama.cpp just as fast.

    path = write_tiny_gguf(tmp_path / "tiny.gguf", qtype="Q8_0")
    bad = write_malformed_gguf(tmp_path / "bad.gguf", "tensor_count")
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

QTYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
TINY_QWEN2 = {"arch": "qwen2", "qkv_bias": True, "tied": True}  # write_tiny_gguf(p, **TINY_QWEN2)
VOCABS = ("bpe", "none")  # "none": no tokenizer at all, for testing the checker

# Token ids as in SmolLM2: the specials come first, then the 256 byte tokens, then merges.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENDOFTEXT_ID, BOS_ID, EOS_ID = 0, 1, 2  # bos <|im_start|>, eos <|im_end|>
N_MERGES = 300  # the corpus runs out after 268: 3 specials + 256 bytes + 268 = 527 tokens

# Training text for the merges: common words of the tests become single tokens with
# their leading space ("Ġthe", "Ġcat", "Ġworld").
_CORPUS = """
Hello world, the cat sat on the mat. Hello world, the cat is on the mat and the dog is
in the house. The cat and the dog like the sun. Hello, how are you? I am fine, thank you.
What is the capital of France? The capital of France is Paris. What is two plus two? Two
plus two is four. Tell me a story about the cat. Once upon a time there was a cat that
lived in a house with a dog. The cat liked to sleep in the sun and the dog liked to run in
the park. One day the cat and the dog went to the park together, and they played all day.
You are a helpful assistant. Answer the question in one short sentence. Write a poem about
the sea. The sea is blue and the sky is blue. The quick brown fox jumps over the lazy dog.
This is a test of the model. The model is small and fast, and it runs on your own machine.
It is not a good model, but it is a real one: it loads, it reads the prompt, and it writes
text one token at a time until it is told to stop. Hello world, hello world, hello world.
"""
# The GPT-2 pre-tokenizer ("gpt-2" in llama.cpp), with Python's \w for \p{L}.
_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")

_GGML_TYPES = {
    "F32": gguf.GGMLQuantizationType.F32,
    "F16": gguf.GGMLQuantizationType.F16,
    "Q8_0": gguf.GGMLQuantizationType.Q8_0,
    "Q4_0": gguf.GGMLQuantizationType.Q4_0,
    "Q4_1": gguf.GGMLQuantizationType.Q4_1,
}
_FILE_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters (space -> "Ġ", newline -> "Ċ")."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return dict(sorted(chars.items()))


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


@functools.cache
def bpe_vocab(n_merges: int = N_MERGES) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens, merges) of a byte-level BPE trained on a few English sentences.

    tokens holds the special tokens, the 256 byte tokens and one token per new merge
    result; merges are "left right" strings in rank order, as llama.cpp reads them.
    """
    b2u = _bytes_to_unicode()
    words = Counter("".join(b2u[b] for b in w.encode()) for w in _PRETOKENIZE.findall(_CORPUS))
    splits = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            s = splits[word]
            for pair in zip(s, s[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the pair: deterministic
        merges.append(best)
        splits = {w: _merge(s, best) for w, s in splits.items()}
    tokens = list(SPECIAL_TOKENS) + list(b2u.values())
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    return tuple(tokens), tuple(f"{a} {b}" for a, b in merges)


def _check_args(n_embd: int, n_head: int, n_head_kv: int, n_ff: int, vocab: str, qtype: str):
    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r} is not one of {', '.join(QTYPES)}")
    if vocab not in VOCABS:
        raise ValueError(f"vocab {vocab!r} is not one of {', '.join(VOCABS)}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be a multiple of n_head, n_head a multiple of n_head_kv")
    block = gguf.GGML_QUANT_SIZES[_GGML_TYPES[qtype]][0]
    if n_embd % block or n_ff % block:
        raise ValueError(f"{qtype} needs n_embd and n_ff to be multiples of {block}")


def _add_tokenizer(w: gguf.GGUFWriter, chat_template: str | None) -> None:
    tokens, merges = bpe_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(list(tokens))
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    w.add_token_types([control if t in SPECIAL_TOKENS else normal for t in tokens])
    w.add_token_merges(list(merges))
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(EOS_ID)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)


def _silent_tokens(tokens: tuple[str, ...]) -> list[int]:
    """Ids of the special tokens and of the bytes that are not printable ASCII or newline."""
    u2b = {c: b for b, c in _bytes_to_unicode().items()}
    shown = {*range(0x20, 0x7F), ord("\n")}
    return [
        i
        for i, t in enumerate(tokens)
        if t in SPECIAL_TOKENS or (len(t) == 1 and u2b.get(t, ord(" ")) not in shown)
    ]


class _Variant(NamedTuple):
    qkv_bias: bool = False
    tied: bool = False
    quiet_layers: tuple[int, ...] = ()


def _add_weights(
    w, rng, qtype: str, tokens, n_layer, n_embd, n_head, n_head_kv, n_ff, variant: _Variant
):
    """Llama-layout tensors; numpy shapes are [out, in] (GGUF stores them reversed).

    The scales are large enough that greedy decoding wanders instead of repeating one
    token. output.weight has zero rows for _silent_tokens: their logit is 0 while about
    half the others are positive, so greedy decoding writes visible text and never ends
    by itself (no EOS): generation runs to max_tokens. ``variant`` adds what qwen2 has
    (q/k/v biases, no output.weight) and near-identity layers; its defaults add nothing.
    """
    ggml_type = _GGML_TYPES[qtype]

    def matrix(
        name: str, rows: int, cols: int, scale: float = 0.3, zero_rows=(), shrink: float = 1.0
    ) -> None:
        data = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        data[list(zero_rows)] = 0.0
        data *= np.float32(shrink)
        if qtype in ("F32", "F16"):
            w.add_tensor(name, gguf.quants.quantize(data, ggml_type))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, ggml_type), raw_dtype=ggml_type)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(n_embd, dtype=np.float32))

    def bias(name: str, size: int) -> None:
        w.add_tensor(name, (rng.standard_normal(size) * 0.3).astype(np.float32))

    n_vocab, n_embd_kv = len(tokens), n_embd // n_head * n_head_kv
    matrix("token_embd.weight", n_vocab, n_embd, scale=1.0)
    if not variant.tied:
        matrix("output.weight", n_vocab, n_embd, scale=1.0, zero_rows=_silent_tokens(tokens))
    norm("output_norm.weight")
    for i in range(n_layer):
        shrink = 1e-3 if i in variant.quiet_layers else 1.0  # what the block adds: ~nothing
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        matrix(f"blk.{i}.attn_k.weight", n_embd_kv, n_embd)
        matrix(f"blk.{i}.attn_v.weight", n_embd_kv, n_embd)
        matrix(f"blk.{i}.attn_output.weight", n_embd, n_embd, shrink=shrink)
        if variant.qkv_bias:
            bias(f"blk.{i}.attn_q.bias", n_embd)
            bias(f"blk.{i}.attn_k.bias", n_embd_kv)
            bias(f"blk.{i}.attn_v.bias", n_embd_kv)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        matrix(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        matrix(f"blk.{i}.ffn_down.weight", n_embd, n_ff, shrink=shrink)


def write_tiny_gguf(
    path: str | os.PathLike,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx: int = 512,
    vocab: str = "bpe",
    seed: int = 0,
    qtype: str = "F32",
    chat_template: str | None = CHATML_TEMPLATE,
    name: str | None = "tiny-test",
    license: str | None = "apache-2.0",
    qkv_bias: bool = False,
    tied: bool = False,
    quiet_layers: tuple[int, ...] = (),
) -> Path:
    """Write a random llama-layout model; the same arguments give the same bytes.

    `arch` only names the architecture in the metadata (tensors follow the llama
    layout): anything but "llama" is for testing the checker, except `**TINY_QWEN2`
    (arch "qwen2" with q/k/v biases and the output tied to the embedding, as in
    Qwen2.5), a model llama.cpp and transformers both run. `quiet_layers`: blocks whose
    output projections are scaled by 1e-3, so that they hardly change the hidden state
    (what depth pruning should drop first). 2-D weights are stored as `qtype`, biases
    and norms as F32.
    """
    _check_args(n_embd, n_head, n_head_kv, n_ff, vocab, qtype)
    path = Path(path)
    w = gguf.GGUFWriter(path, arch)
    if name is not None:
        w.add_name(name)
    if license is not None:
        w.add_license(license)
    w.add_file_type(_FILE_TYPES[qtype])
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    tokens = bpe_vocab()[0]
    if vocab == "bpe":
        _add_tokenizer(w, chat_template)
    w.add_vocab_size(len(tokens))
    rng = np.random.default_rng(seed)
    variant = _Variant(qkv_bias, tied, tuple(quiet_layers))
    _add_weights(w, rng, qtype, tokens, n_layer, n_embd, n_head, n_head_kv, n_ff, variant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- broken files -----------------------------------------------------------------


def truncate_copy(src: str | os.PathLike, dst: str | os.PathLike, n_bytes: int) -> Path:
    """Copy the first n_bytes of src to dst (a download cut short)."""
    with open(src, "rb") as f:
        data = f.read(n_bytes)
    Path(dst).write_bytes(data)
    return Path(dst)


def flip_byte(src: str | os.PathLike, dst: str | os.PathLike, offset: int, mask: int) -> Path:
    """Copy src to dst with the byte at `offset` XORed with `mask` (bit rot)."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))
    return Path(dst)


class _Layout:
    """Byte offsets in a GGUF file, found with gguf-py's reader."""

    def __init__(self, path: Path):
        reader = gguf.GGUFReader(path)
        # per key, where its parts start: key length, key, type, then the value's parts
        # (a scalar at [3]; an array's item type at [3], count at [4], items after)
        self.kv = {name: self._starts(f) for name, f in reader.fields.items()}
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        self.token_text = [self.kv[tokens.name][i] for i in tokens.data] if tokens else []
        # per tensor: name length, name, n_dims, dims, type, data offset
        self.tensor = [self._starts(t.field) for t in reader.tensors]
        self.tensor_names = [t.name for t in reader.tensors]
        self.size = path.stat().st_size

    @staticmethod
    def _starts(field) -> list[int]:
        offsets = [field.offset]
        for part in field.parts:
            offsets.append(offsets[-1] + int(part.nbytes))
        return offsets


Patch = Callable[[bytearray, _Layout], None]


def _put(fmt: str, offset: int, value) -> Patch:
    return lambda buf, _: struct.pack_into(fmt, buf, offset, value)


def _put_kv(key: str, part: int, fmt: str, value) -> Patch:
    return lambda buf, layout: struct.pack_into(fmt, buf, layout.kv[key][part], value)


def _put_tensor(index: int, part: int, fmt: str, value, dim: int = 0) -> Patch:
    return lambda buf, layout: struct.pack_into(
        fmt, buf, layout.tensor[index][part] + 8 * dim, value
    )


def _put_token(token_id: int, at: int, byte: int) -> Patch:
    def patch(buf: bytearray, layout: _Layout) -> None:
        buf[layout.token_text[token_id] + at] = byte

    return patch


def _offset_past_eof(buf: bytearray, layout: _Layout) -> None:
    struct.pack_into("<Q", buf, layout.tensor[-1][5], (layout.size // 32 + 64) * 32)


def _rename_key(buf: bytearray, layout: _Layout) -> None:
    start = layout.kv["general.architecture"][1]
    buf[start : start + 20] = b"general.architecturX"


def _duplicate_tensor(buf: bytearray, layout: _Layout) -> None:
    # blk.0.attn_k.weight -> blk.0.attn_q.weight, the name of the tensor before it
    i = layout.tensor_names.index("blk.0.attn_k.weight")
    buf[layout.tensor[i][1] + 11] = ord("q")


_BYTE_B = len(SPECIAL_TOKENS) + ord("b")  # the byte tokens follow the specials in byte order
_THE = bpe_vocab()[0].index("Ġthe")  # "Ġthe" is b"\xc4\xa0the"

# kind -> patch of a valid tiny model, each breaking one thing llama.cpp relies on
MALFORMED: dict[str, Patch] = {
    "bad_magic": _put("<4s", 0, b"GGUX"),
    "old_version": _put("<I", 4, 1),
    "future_version": _put("<I", 4, 4),
    "tensor_count": _put("<Q", 8, 1 << 40),
    "kv_count": _put("<Q", 16, 1 << 40),
    "string_past_eof": _put("<Q", 24, 1 << 29),  # length of the first key
    "array_past_eof": _put_kv("tokenizer.ggml.tokens", 4, "<Q", 1 << 40),
    "n_dims": _put_tensor(0, 2, "<I", 9),
    "dim_zero": _put_tensor(0, 3, "<q", 0),
    "dim_overflow": _put_tensor(0, 3, "<q", 1 << 62, dim=1),  # token_embd [n_embd, n_vocab]
    "tensor_type": _put_tensor(0, 4, "<I", 99),
    "block_size": _put_tensor(0, 4, "<I", int(gguf.GGMLQuantizationType.Q4_K)),  # 256 > 64
    "misaligned_offset": _put_tensor(0, 5, "<Q", 1),
    "overlap": _put_tensor(1, 5, "<Q", 0),
    "tensor_offset_past_eof": _offset_past_eof,
    "duplicate_tensor": _duplicate_tensor,
    "no_architecture": _rename_key,
    "zero_layers": _put_kv("llama.block_count", 3, "<I", 0),
    "duplicate_token": _put_token(_BYTE_B, 0, ord("a")),  # "b" -> "a"
    "nul_in_token": _put_token(_THE, 2, 0),  # "Ġ\0he" is "Ġ" to llama.cpp
    "bos_not_utf8": _put_token(BOS_ID, 1, 0x82),  # "<\x82im_start|>"
}


def write_malformed_gguf(path: str | os.PathLike, kind: str, **tiny_kwargs) -> Path:
    """Write a tiny model (see write_tiny_gguf) whose header lies in one way: MALFORMED[kind].

    The lies are patched in with struct after writing, as GGUFWriter refuses them.
    """
    if kind not in MALFORMED:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(MALFORMED)}")
    path = write_tiny_gguf(path, **tiny_kwargs)
    layout = _Layout(path)
    buf = bytearray(path.read_bytes())
    MALFORMED[kind](buf, layout)
    path.write_bytes(buf)
    return path


# ftype llama.cpp quantizes to, and the type it gives the matrices (pure: all of them)
_LLAMA_QUANTS = {
    "Q6_K": ("LLAMA_FTYPE_MOSTLY_Q6_K", "Q6_K"),
    "Q4_K": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_K"),
    "Q5_K": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", "Q5_K"),
    "Q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", "Q5_0"),
    "Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0"),
}


def quantized_tiny_gguf(tmp_path: Path, qtype: str) -> Path:
    """A tiny model with its matrices in ``qtype`` (256-wide: K-quant blocks are 256
    values), quantized by llama.cpp itself (gguf-py has no K-quant quantizer). Q4_K: the
    output layer (527 rows, not a multiple of 8, so not repacked) is Q8_0, as only repacked
    Q4_K goes through 0003's kernels."""
    import llama_cpp as ll

    src = write_tiny_gguf(tmp_path / "tiny-f32.gguf", n_embd=256, n_ff=512, seed=5)
    out = tmp_path / f"tiny-{qtype.lower()}.gguf"
    ftype, tensor_type = _LLAMA_QUANTS[qtype]
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, ftype)
    params.pure, params.nthread = True, 2
    if qtype == "Q4_K":
        params.output_tensor_type = int(gguf.GGMLQuantizationType.Q8_0)
    assert ll.llama_model_quantize(str(src).encode(), str(out).encode(), params) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.ffn_down.weight"] == types["blk.0.attn_q.weight"] == tensor_type, types
    return out
