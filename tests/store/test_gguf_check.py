"""inspect_gguf: the fields of valid files, and every kind of broken file rejected cleanly."""

from __future__ import annotations

import json
import os
import random
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import gguf
import pytest

from pocketlm.errors import InvalidModelError
from pocketlm.store import gguf_check
from pocketlm.store.gguf_check import SUPPORTED_ARCHITECTURES, inspect_gguf
from tests.tinymodel import (
    CHATML_TEMPLATE,
    MALFORMED,
    QTYPES,
    bpe_vocab,
    flip_byte,
    truncate_copy,
    write_malformed_gguf,
    write_tiny_gguf,
)

N_VOCAB = len(bpe_vocab()[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """One default tiny model per qtype."""
    root = tmp_path_factory.mktemp("tiny")
    return {q: write_tiny_gguf(root / f"tiny-{q}.gguf", qtype=q) for q in QTYPES}


def expected_params(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128) -> int:
    n_kv = n_embd // n_head * n_head_kv
    per_layer = 2 * n_embd + 2 * n_embd * n_embd + 2 * n_kv * n_embd + 3 * n_ff * n_embd
    return 2 * N_VOCAB * n_embd + n_embd + n_layer * per_layer


@pytest.mark.parametrize("qtype", QTYPES)
def test_tiny_model_fields(tiny, qtype):
    info = inspect_gguf(tiny[qtype])
    assert info.path == tiny[qtype]
    assert info.size_bytes == tiny[qtype].stat().st_size
    assert (info.gguf_version, info.architecture, info.name) == (3, "llama", "tiny-test")
    assert (info.file_type, info.license) == (qtype, "apache-2.0")
    assert info.parameter_count == expected_params()
    assert info.tensor_count == 3 + 2 * 9
    n_norms = 1 + 2 * 2
    assert info.tensor_types == ({"F32": 21} if qtype == "F32" else {qtype: 16, "F32": n_norms})
    assert info.tensor_data_bytes < info.size_bytes
    nominal_bits = {"F32": 32, "F16": 16, "Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0}[qtype]
    assert nominal_bits <= info.bits_per_weight < nominal_bits + 0.2
    assert (info.context_length, info.n_layer, info.n_embd) == (512, 2, 64)
    assert (info.n_head, info.n_head_kv, info.head_dim_k, info.head_dim_v) == (4, 2, 16, 16)
    assert info.vocab_size == N_VOCAB
    assert info.chat_template == CHATML_TEMPLATE
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_to_dict_is_json(tiny):
    d = inspect_gguf(tiny["Q8_0"]).to_dict()
    assert d["path"] == str(tiny["Q8_0"])
    assert json.loads(json.dumps(d)) == d


def test_optional_metadata_absent(tmp_path):
    path = write_tiny_gguf(tmp_path / "bare.gguf", chat_template=None, name=None, license=None)
    info = inspect_gguf(path)
    assert (info.chat_template, info.name, info.license) == (None, None, None)


def test_file_type_falls_back_to_tensor_types(tiny, tmp_path):
    # Rename general.file_type (same length) so the key is unknown.
    data = tiny["Q4_0"].read_bytes()
    at = data.index(b"general.file_type") + len("general.file_typ")
    path = flip_byte(tiny["Q4_0"], tmp_path / "no-ftype.gguf", at, 0x20)  # 'e' -> 'E'
    assert inspect_gguf(path).file_type == "Q4_0"


def test_arch_is_read_from_the_file(tmp_path):
    path = write_tiny_gguf(tmp_path / "qwen2.gguf", arch="qwen2", n_ctx=4096)
    info = inspect_gguf(path)
    assert (info.architecture, info.context_length, info.n_layer) == ("qwen2", 4096, 2)


# --- malformed files -----------------------------------------------------------------

# kind -> words the message must contain
MALFORMED_MESSAGES = {
    "bad_magic": "not a GGUF file",
    "old_version": "version 1",
    "future_version": "version 4",
    "tensor_count": "tensors, more than the file can hold",
    "kv_count": "metadata keys, more than the file can hold",
    "string_past_eof": "past the end of the file",
    "array_past_eof": "'tokenizer.ggml.tokens' claims",
    "n_dims": "9 dimensions",
    "dim_zero": "dimensions must be positive",
    "dim_overflow": "too many elements",
    "tensor_type": "unknown ggml type id 99",
    "block_size": "not a multiple of its block size 256",
    "misaligned_offset": "not aligned",
    "overlap": "overlaps",
    "tensor_offset_past_eof": "but the file has only",
    "duplicate_tensor": "appears twice",
    "no_architecture": "no general.architecture",
    "zero_layers": "llama.block_count is 0",
    "duplicate_token": "1 duplicate tokens",
    "nul_in_token": "1 duplicate tokens",
    "bos_not_utf8": "not valid UTF-8",
}


def test_every_malformed_kind_has_a_test():
    assert set(MALFORMED_MESSAGES) == set(MALFORMED)


@pytest.mark.parametrize("kind", MALFORMED_MESSAGES)
def test_malformed_is_rejected(tmp_path, kind):
    path = write_malformed_gguf(tmp_path / f"{kind}.gguf", kind, qtype="Q8_0")
    with pytest.raises(InvalidModelError) as e:
        inspect_gguf(path)
    assert MALFORMED_MESSAGES[kind] in e.value.message
    assert str(path) in e.value.message
    assert e.value.hint
    assert "\n" not in str(e.value)


def test_unsupported_architecture(tmp_path):
    path = write_tiny_gguf(tmp_path / "x.gguf", arch="notallm")
    with pytest.raises(InvalidModelError, match="architecture 'notallm'"):
        inspect_gguf(path)


def test_missing_tokenizer(tmp_path):
    path = write_tiny_gguf(tmp_path / "x.gguf", vocab="none")
    with pytest.raises(InvalidModelError, match="no tokenizer"):
        inspect_gguf(path)


@pytest.mark.parametrize("keep", [0.999, 0.9, 0.5, 0.1, 0.02, 100, 30, 24, 10, 4, 2])
def test_truncated(tiny, tmp_path, keep):
    src = tiny["Q4_0"]
    size = src.stat().st_size
    n = int(size * keep) if isinstance(keep, float) else keep
    path = truncate_copy(src, tmp_path / "cut.gguf", n)
    with pytest.raises(InvalidModelError) as e:
        inspect_gguf(path)
    if keep in (0.999, 0.9, 0.5):  # inside the tensor data
        assert "but the file has only" in e.value.message
        assert "incomplete" in e.value.hint


def test_missing_file(tmp_path):
    with pytest.raises(InvalidModelError, match="does not exist"):
        inspect_gguf(tmp_path / "nope.gguf")


def test_directory(tmp_path):
    with pytest.raises(InvalidModelError, match="is a directory"):
        inspect_gguf(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.gguf").touch()
    with pytest.raises(InvalidModelError, match="is empty"):
        inspect_gguf(tmp_path / "empty.gguf")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo.gguf")  # opening it would block forever
    with pytest.raises(InvalidModelError, match="not a regular file"):
        inspect_gguf(tmp_path / "fifo.gguf")


def test_text_file(tmp_path):
    (tmp_path / "model.gguf").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(InvalidModelError, match="not a GGUF file") as e:
        inspect_gguf(tmp_path / "model.gguf")
    assert "Git LFS pointer" in e.value.hint  # what the file is, never its bytes


def test_zip_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "model.whl", "w") as z:
        z.writestr("model.gguf", b"GGUF")
    with pytest.raises(InvalidModelError, match="not a GGUF file") as e:
        inspect_gguf(tmp_path / "model.whl")
    assert "zip" in e.value.hint


def test_safetensors_file(tmp_path):
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(InvalidModelError, match="not a GGUF file") as e:
        inspect_gguf(tmp_path / "m.safetensors")
    assert "safetensors" in e.value.hint


def test_tiny_file_with_magic_only(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(InvalidModelError, match="truncated"):
        inspect_gguf(tmp_path / "m.gguf")


# --- bit flips ----------------------------------------------------------------------


def _data_start(path: Path) -> int:
    return gguf.GGUFReader(path).data_offset


def _inspect_flipped(path: Path, original: bytes, offset: int, mask: int) -> str:
    """Flip bits in place (faster than a copy per case), inspect, restore."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([original[offset] ^ mask]), offset)
        try:
            inspect_gguf(path)
            return "ok"
        except InvalidModelError:
            return "rejected"
    finally:
        os.pwrite(fd, original[offset : offset + 1], offset)
        os.close(fd)


@pytest.fixture
def flippable(tiny, tmp_path) -> tuple[Path, bytes, int]:
    """A copy of a tiny model to damage, its bytes, and where its tensor data starts."""
    original = tiny["Q4_0"].read_bytes()
    path = tmp_path / "flipped.gguf"
    path.write_bytes(original)
    return path, original, _data_start(path)


def _flip_cases(seed: int, n: int, header_end: int, size: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    cases = [(o, 1 << b) for o in range(24) for b in range(8)]  # every bit of the counts
    cases += [(rng.randrange(header_end), 1 << rng.randrange(8)) for _ in range(n)]
    cases += [(rng.randrange(header_end), rng.randrange(1, 256)) for _ in range(n // 2)]
    cases += [(rng.randrange(size), rng.randrange(1, 256)) for _ in range(n // 10)]
    return cases


def test_bit_flips_give_info_or_invalid_model_error(flippable):
    """Any other exception, or a hang, on a damaged file is a bug."""
    path, original, header_end = flippable
    cases = _flip_cases(1234, 4000, header_end, len(original))
    start = time.perf_counter()
    outcomes = [_inspect_flipped(path, original, o, m) for o, m in cases]
    assert time.perf_counter() - start < 10  # ~1 s: no case walks far
    assert 0 < outcomes.count("rejected") < len(outcomes)


def test_bit_flips_allocate_no_more_than_the_file(flippable):
    path, original, header_end = flippable
    tracemalloc.start()
    try:
        for offset, mask in _flip_cases(99, 300, header_end, len(original)):
            _inspect_flipped(path, original, offset, mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(original) + (1 << 20)  # bounded by the file, not by the header


# --- tables copied from llama.cpp -------------------------------------------------------


def test_tensor_types_agree_with_gguf_py():
    for t in gguf.GGMLQuantizationType:
        ours = gguf_check._TENSOR_TYPES[t.value]
        assert (ours.name, ours.block_size, ours.type_size) == (t.name, *gguf.GGML_QUANT_SIZES[t])


def test_file_types_agree_with_gguf_py():
    for f in gguf.LlamaFileType:
        if f != gguf.LlamaFileType.GUESSED:
            assert gguf_check._FILE_TYPES[f.value] == f.name.removeprefix("MOSTLY_").removeprefix(
                "ALL_"
            )


def test_supported_architectures():
    assert {"llama", "qwen2", "qwen3", "gemma3", "phi3", "smollm3"} <= SUPPORTED_ARCHITECTURES
    assert not {"clip", "(unknown)", "unknown"} & SUPPORTED_ARCHITECTURES


# --- the real model ---------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2(default_model):
    info = inspect_gguf(default_model)
    assert (info.architecture, info.file_type, info.context_length) == ("llama", "Q4_1", 8192)
    assert info.parameter_count == 134_515_008
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv) == (30, 576, 9, 3)
    assert info.vocab_size == 49152
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
