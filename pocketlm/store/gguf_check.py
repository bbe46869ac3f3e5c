"""Check a GGUF file before llama.cpp opens it, and describe the model inside.

llama.cpp trusts much of a GGUF file: a corrupt count or length can make it
allocate gigabytes, and some bad values trip a GGML_ASSERT that aborts the whole
process. ``inspect_gguf`` walks the header with bounds-checked reads of its own
(no number read from the file sizes a loop or an allocation before it is checked
against the bytes left in the file), checks the tensor layout as llama.cpp's
``gguf_init_from_file`` does, then the few values llama.cpp asserts on while
loading (a unique vocab, the layer count, ...), and returns a ``GGUFInfo``.
Every problem found is an ``InvalidModelError``.

Only the header (metadata and tensor infos, ~2 MB for a 49k-token vocab) is
read, never the tensor data. gguf-py is not imported here: its ``GGUFReader``
builds a numpy view per array element (2 s on SmolLM2-135M, 10 s on Gemma 3
270M), and importing the package adds 35-70 ms to every ``pocketlm run``. The
two tables it would give us are copied below from the vendored llama.cpp
instead, and tests/store/test_gguf_check.py checks them against gguf-py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pocketlm.errors import InvalidModelError
from pocketlm.store.names import shown

# LLM_ARCH_NAMES in vendor/llama.cpp/src/llama-arch.cpp of llama-cpp-python 0.3.36,
# less "clip" (a placeholder used only by llama-quantize) and "(unknown)".
SUPPORTED_ARCHITECTURES = frozenset(
    """
    llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert
    modern-bert nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom
    stablelm qwen qwen2 qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35
    qwen35moe qwen4exp phi2 phi3 phimoe plamo plamo2 plamo3 codeshell orion internlm2 minicpm
    minicpm3 gemma gemma2 gemma3 gemma3n gemma4 gemma4-assistant gemma-embedding starcoder2
    mamba mamba2 maple jamba falcon-h1 xverse command-r cohere2 cohere2moe dbrx olmo olmo2
    olmoe muse-glimmer openelm arctic deepseek deepseek2 deepseek2-ocr deepseek32 deepseek4
    chatglm glm4 glm4moe glm-dsa bitnet t5 t5encoder jais jais2 nemotron nemotron_h
    nemotron_h_moe exaone exaone4 exaone-moe rwkv6 rwkv6qwen2 rwkv7 arwkv7 granite granitemoe
    granitehybrid graniteswitch granite_swa chameleon wavtokenizer-dec plm bailingmoe
    bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe laguna ernie4_5 ernie4_5-moe
    hunyuan-moe hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2 lfm2moe dream
    smallthinker llada llada-moe seed_oss grovemoe apertus minimax-01 hrm_text minimax-m2
    minimax-m3 cogvlm rnd1 pangu-embedded mistral3 eagle3 dflash mistral4 paddleocr mimo2
    step35 spark2_5 llama-embed maincoder kimi-linear kimi-k3 glm5-next talkie mellum
    nanbeige qwen3tts pockettts
    """.split()
)


class _TensorType(NamedTuple):
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block


# enum ggml_type (ggml/include/ggml.h) with blck_size / type_size from ggml/src/ggml.c.
# Ids 4, 5, 31-33 and 36-38 were removed from llama.cpp; Q2_0 (42) is not in gguf-py 0.19.
_TENSOR_TYPES: dict[int, _TensorType] = {
    0: _TensorType("F32", 1, 4),
    1: _TensorType("F16", 1, 2),
    2: _TensorType("Q4_0", 32, 18),
    3: _TensorType("Q4_1", 32, 20),
    6: _TensorType("Q5_0", 32, 22),
    7: _TensorType("Q5_1", 32, 24),
    8: _TensorType("Q8_0", 32, 34),
    9: _TensorType("Q8_1", 32, 40),
    10: _TensorType("Q2_K", 256, 84),
    11: _TensorType("Q3_K", 256, 110),
    12: _TensorType("Q4_K", 256, 144),
    13: _TensorType("Q5_K", 256, 176),
    14: _TensorType("Q6_K", 256, 210),
    15: _TensorType("Q8_K", 256, 292),
    16: _TensorType("IQ2_XXS", 256, 66),
    17: _TensorType("IQ2_XS", 256, 74),
    18: _TensorType("IQ3_XXS", 256, 98),
    19: _TensorType("IQ1_S", 256, 50),
    20: _TensorType("IQ4_NL", 32, 18),
    21: _TensorType("IQ3_S", 256, 110),
    22: _TensorType("IQ2_S", 256, 82),
    23: _TensorType("IQ4_XS", 256, 136),
    24: _TensorType("I8", 1, 1),
    25: _TensorType("I16", 1, 2),
    26: _TensorType("I32", 1, 4),
    27: _TensorType("I64", 1, 8),
    28: _TensorType("F64", 1, 8),
    29: _TensorType("IQ1_M", 256, 56),
    30: _TensorType("BF16", 1, 2),
    34: _TensorType("TQ1_0", 256, 54),
    35: _TensorType("TQ2_0", 256, 66),
    39: _TensorType("MXFP4", 32, 17),
    40: _TensorType("NVFP4", 64, 36),
    41: _TensorType("Q1_0", 128, 18),
    42: _TensorType("Q2_0", 64, 18),
}

# enum llama_ftype (include/llama.h), names without the LLAMA_FTYPE_MOSTLY_ prefix.
# 1024 (GUESSED) and unknown values fall back to the tensor types.
_FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # what this llama.cpp reads; v1 used 32-bit counts
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor_count, kv_count
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, value type, uint8 value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME: llama.cpp rejects tensor names this long or longer
_MAX_LENGTH = 1 << 30  # GGUF_MAX_STRING_LENGTH and GGUF_MAX_ARRAY_ELEMENTS in gguf.cpp
_INT64_MAX = (1 << 63) - 1
_DEFAULT_ALIGNMENT = 32
_MAX_LAYERS = 512  # LLAMA_MAX_LAYERS (src/llama-hparams.h)
_MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
_ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # LLAMA_ROPE_SCALING_TYPES

# GGUF value types; 8 (string) and 9 (array) are read separately.
_STRING, _ARRAY = 8, 9
_TOKENS = "tokenizer.ggml.tokens"
_SCALARS = {
    code: struct.Struct("<" + fmt)
    for code, fmt in {
        0: "B",
        1: "b",
        2: "H",
        3: "h",
        4: "I",
        5: "i",
        6: "f",
        7: "?",
        10: "Q",
        11: "q",
        12: "d",
    }.items()
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY_HEAD = struct.Struct("<IQ")  # item type, count
_SHAPES = [struct.Struct(f"<{n}q") for n in range(_MAX_DIMS + 1)]

_HINT_DAMAGED = "the file is damaged: delete it and pull or convert the model again"
_HINT_TRUNCATED = "the file is incomplete (an interrupted download?): delete it and pull again"
_HINT_NOT_MODEL = "it is not a model llama.cpp can load: use a GGUF file of a language model"


@dataclass(frozen=True)
class GGUFInfo:
    """What pocketlm needs to know about a checked GGUF model file."""

    path: Path
    size_bytes: int
    gguf_version: int
    architecture: str
    name: str | None
    parameter_count: int
    file_type: str  # quantization, e.g. "Q4_K_M"
    bits_per_weight: float
    tensor_count: int
    tensor_data_bytes: int
    tensor_types: dict[str, int]  # type name -> number of tensors
    context_length: int | None
    n_layer: int | None
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    head_dim_k: int | None
    head_dim_v: int | None
    vocab_size: int | None
    chat_template: str | None
    license: str | None
    bos_token: str | None
    eos_token: str | None

    def to_dict(self) -> dict:
        """JSON-friendly fields."""
        return dataclasses.asdict(self) | {"path": str(self.path)}


class _Malformed(Exception):
    """A structural problem, turned into InvalidModelError by inspect_gguf."""

    def __init__(self, problem: str, hint: str = _HINT_DAMAGED):
        super().__init__(problem)
        self.problem = problem
        self.hint = hint


class _Array(NamedTuple):
    item_type: int
    count: int
    start: int  # file offset of the first item


class _Tensor(NamedTuple):
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    type: _TensorType
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int


class _Header:
    """Bounds-checked little-endian reads from a file, read in as far as needed."""

    def __init__(self, file: BinaryIO, size: int):
        self.file = file
        self.size = size
        self.data = b""  # the file's first len(data) bytes (bytes: slices can go in a set)
        self.pos = 0

    def _fill(self, end: int, what: str) -> bytes:
        if end > self.size:
            raise _Malformed(
                f"{what} at byte {self.pos} runs past the end of the file ({self.size} bytes)"
            )
        # Read ahead in doubling chunks: a header takes a handful of reads and copies.
        want = min(self.size, max(end, 2 * len(self.data), 1 << 20))
        self.data += self.file.read(want - len(self.data))
        if len(self.data) < end:
            raise _Malformed(f"the file shrank to {len(self.data)} bytes while being read")
        return self.data

    def take(self, n: int, what: str) -> int:
        """Step over n bytes of `what`; return the offset where they start."""
        start, end = self.pos, self.pos + n
        if end > len(self.data):
            self._fill(end, what)
        self.pos = end
        return start

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack_from(self.data, self.take(fmt.size, what))

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)[0]

    def raw_string(self, what: str) -> bytes:
        at = self.pos
        (n,) = self.unpack(_U64, what)
        if n > _MAX_LENGTH or n > self.size - self.pos:
            raise _Malformed(f"{what} at byte {at} claims {n} bytes, past the end of the file")
        start = self.take(n, what)
        return self.data[start : start + n]

    def string(self, what: str) -> str:
        """A UTF-8 string (llama-cpp-python decodes metadata strictly)."""
        at = self.pos
        try:
            return self.raw_string(what).decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"{what} at byte {at} is not valid UTF-8") from None

    def skip_strings(self, count: int, what: str) -> None:
        """Step over `count` length-prefixed strings (the hot loop: merges)."""
        data, pos, unpack = self.data, self.pos, _U64.unpack_from
        avail = len(data)
        for _ in range(count):
            if pos + 8 > avail:
                self.pos = pos
                data = self._fill(pos + 8, what)
                avail = len(data)
            pos += 8 + unpack(data, pos)[0]
        self.pos = pos
        if pos > self.size:
            raise _Malformed(f"{what} runs past the end of the file ({self.size} bytes)")

    def count_distinct_strings(self, count: int, what: str) -> int:
        """Step over `count` strings like skip_strings; return how many differ (the vocab)."""
        seen: set[bytes] = set()
        data, pos, unpack, add = self.data, self.pos, _U64.unpack_from, seen.add
        avail = len(data)
        for _ in range(count):
            start = pos + 8
            if start > avail:
                self.pos = pos
                data = self._fill(start, what)
                avail = len(data)
            pos = start + unpack(data, pos)[0]
            if pos > avail:
                self.pos = start - 8
                data = self._fill(pos, what)
                avail = len(data)
            add(data[start:pos])
        self.pos = pos
        if b"\0" in b"".join(seen):  # llama.cpp reads tokens as C strings: "a\0b" is "a"
            return len({t.split(b"\0", 1)[0] for t in seen})
        return len(seen)

    def string_at(self, array: _Array, index: int) -> bytes:
        """Item `index` of a string array already stepped over once."""
        saved, self.pos = self.pos, array.start
        try:
            self.skip_strings(index, "string array")
            return self.raw_string("string array item")
        finally:
            self.pos = saved


def _read_value(h: _Header, key: str) -> object:
    what = f"value of '{key}'"
    vtype = h.u32(what)
    if vtype == _STRING:
        return h.string(what)
    if vtype == _ARRAY:
        item_type, count = h.unpack(_ARRAY_HEAD, what)
        return _read_array(h, key, item_type, count)
    if vtype not in _SCALARS:
        raise _Malformed(f"key '{key}' has unknown value type {vtype}")
    return h.unpack(_SCALARS[vtype], what)[0]


def _read_array(h: _Header, key: str, item_type: int, count: int) -> _Array:
    if item_type == _STRING:
        item_min_size = 8  # the length prefix
    elif item_type in _SCALARS:
        item_min_size = _SCALARS[item_type].size
    else:
        raise _Malformed(f"array '{key}' has unknown item type {item_type}")
    if count > _MAX_LENGTH or count * item_min_size > h.size - h.pos:
        raise _Malformed(f"array '{key}' claims {count} items, more than the file can hold")
    array = _Array(item_type, count, h.pos)
    if key == _TOKENS and item_type == _STRING:
        # Duplicate tokens make llama.cpp abort (GGML_ASSERT in llama-vocab.cpp).
        n_distinct = h.count_distinct_strings(count, f"array '{key}'")
        if n_distinct < count:
            raise _Malformed(f"array '{key}' holds {count - n_distinct} duplicate tokens")
    elif item_type == _STRING:
        h.skip_strings(count, f"array '{key}'")
    else:
        h.take(count * item_min_size, f"array '{key}'")
    return array


def _read_kv(h: _Header, count: int) -> dict[str, object]:
    kv: dict[str, object] = {}
    for i in range(count):
        key = h.string(f"key #{i}")
        if not key:
            raise _Malformed(f"key #{i} is empty")
        if key in kv:
            raise _Malformed(f"key '{key}' appears twice")
        kv[key] = _read_value(h, key)
    return kv


def _read_tensor_info(h: _Header, i: int) -> _Tensor:
    raw_name = h.raw_string(f"name of tensor #{i}")
    if len(raw_name) >= _MAX_NAME:
        raise _Malformed(f"tensor #{i} has a name of {len(raw_name)} bytes (limit {_MAX_NAME - 1})")
    name = raw_name.decode("utf-8", "replace")
    n_dims = h.u32(f"tensor '{name}'")
    if n_dims > _MAX_DIMS:
        raise _Malformed(f"tensor '{name}' has {n_dims} dimensions (at most {_MAX_DIMS})")
    shape = h.unpack(_SHAPES[n_dims], f"shape of tensor '{name}'")
    if any(d <= 0 for d in shape):
        raise _Malformed(f"tensor '{name}' has shape {list(shape)}: dimensions must be positive")
    n_elements = math.prod(shape)
    if n_elements > _INT64_MAX:
        raise _Malformed(f"tensor '{name}' has shape {list(shape)}: too many elements")
    type_id = h.u32(f"type of tensor '{name}'")
    ttype = _TENSOR_TYPES.get(type_id)
    if ttype is None:
        raise _Malformed(f"tensor '{name}' has unknown ggml type id {type_id}")
    row = shape[0] if shape else 1
    if row % ttype.block_size:
        raise _Malformed(
            f"tensor '{name}' of type {ttype.name} has rows of {row} elements, "
            f"not a multiple of its block size {ttype.block_size}"
        )
    (offset,) = h.unpack(_U64, f"offset of tensor '{name}'")
    n_bytes = n_elements // ttype.block_size * ttype.type_size
    return _Tensor(name, shape, ttype, offset, n_elements, n_bytes)


def _read_tensor_infos(h: _Header, count: int) -> list[_Tensor]:
    tensors = [_read_tensor_info(h, i) for i in range(count)]
    names = Counter(t.name for t in tensors)
    dup = next((n for n, c in names.items() if c > 1), None)
    if dup is not None:
        raise _Malformed(f"tensor '{dup}' appears twice")
    return tensors


def _alignment(kv: dict[str, object]) -> int:
    value = kv.get("general.alignment", _DEFAULT_ALIGNMENT)
    if type(value) is not int or value <= 0 or value & (value - 1):
        raise _Malformed(f"general.alignment is {value!r}, not a power of two")
    return value


def _check_layout(tensors: list[_Tensor], data_start: int, alignment: int, size: int) -> None:
    """Tensors must be packed in order, each aligned, all inside the file (as llama.cpp needs)."""
    expected = 0
    for t in tensors:
        end = data_start + t.offset + t.n_bytes
        if end > size:
            raise _Malformed(
                f"tensor '{t.name}' ends at byte {end} but the file has only {size} bytes",
                _HINT_TRUNCATED,
            )
        if t.offset % alignment:
            raise _Malformed(f"tensor '{t.name}' offset {t.offset} is not aligned to {alignment}")
        if t.offset < expected:
            raise _Malformed(f"tensor '{t.name}' at offset {t.offset} overlaps the tensor before")
        if t.offset > expected:
            raise _Malformed(
                f"tensor '{t.name}' at offset {t.offset} leaves a gap (expected {expected})"
            )
        expected += -(-t.n_bytes // alignment) * alignment


def _parse(h: _Header) -> tuple[int, dict[str, object], list[_Tensor]]:
    """Read and check the whole header; return (version, metadata, tensors)."""
    _, version, n_tensors, n_kv = h.unpack(_HEADER, "header")
    room = h.size - _HEADER.size
    if n_tensors * _MIN_TENSOR_INFO_BYTES > room:
        raise _Malformed(f"header claims {n_tensors} tensors, more than the file can hold")
    if n_kv * _MIN_KV_BYTES > room - n_tensors * _MIN_TENSOR_INFO_BYTES:
        raise _Malformed(f"header claims {n_kv} metadata keys, more than the file can hold")
    kv = _read_kv(h, n_kv)
    alignment = _alignment(kv)
    tensors = _read_tensor_infos(h, n_tensors)
    data_start = -(-h.pos // alignment) * alignment
    _check_layout(tensors, data_start, alignment, h.size)
    return version, kv, tensors


def _int(kv: dict[str, object], key: str) -> int | None:
    value = kv.get(key)
    return value if type(value) is int else None


def _str(kv: dict[str, object], key: str) -> str | None:
    value = kv.get(key)
    return value if isinstance(value, str) else None


def _file_type(kv: dict[str, object], tensors: list[_Tensor]) -> str:
    code = _int(kv, "general.file_type")
    if code in _FILE_TYPES:
        return _FILE_TYPES[code]
    weights = [t for t in tensors if len(t.shape) == 2 and t.name.endswith(".weight")]
    return Counter(t.type.name for t in weights or tensors).most_common(1)[0][0]


def _token(h: _Header, tokens: _Array, kv: dict[str, object], key: str) -> str | None:
    token_id = _int(kv, key)
    if token_id is None or not 0 <= token_id < tokens.count:
        return None  # llama.cpp warns and falls back to a default id
    try:  # llama-cpp-python decodes the bos and eos texts strictly
        return h.string_at(tokens, token_id).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"{key} {token_id} names a token that is not valid UTF-8") from None


def _check_hparams(kv: dict[str, object], arch: str) -> None:
    """Values llama.cpp checks with GGML_ASSERT (which aborts the process) while loading."""
    n_layer = _int(kv, f"{arch}.block_count")
    if n_layer is None or not 0 < n_layer <= _MAX_LAYERS:
        raise _Malformed(f"{arch}.block_count is {kv.get(f'{arch}.block_count')!r}, not 1 to 512")
    if (_int(kv, f"{arch}.nextn_predict_layers") or 0) > n_layer:
        raise _Malformed(f"{arch}.nextn_predict_layers is more than {arch}.block_count")
    n_expert = _int(kv, f"{arch}.expert_count") or 0
    if n_expert > _MAX_EXPERTS or (_int(kv, f"{arch}.expert_used_count") or 0) > n_expert:
        raise _Malformed(f"{arch}.expert_count / expert_used_count are out of range")
    scaling = kv.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in _ROPE_SCALING_TYPES:
        raise _Malformed(f"{arch}.rope.scaling.type is {scaling!r}, not a known type")


def _describe(path: Path, h: _Header, version: int, kv: dict, tensors: list) -> GGUFInfo:
    arch = _str(kv, "general.architecture")
    if not arch:
        raise InvalidModelError(f"{path} has no general.architecture key", _HINT_NOT_MODEL)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise InvalidModelError(
            f"{path} has architecture '{shown(arch, 64)}', which llama.cpp "
            "(llama-cpp-python 0.3.36) does not support",
            "use a model of a supported architecture, such as llama, qwen2 or gemma3",
        )
    tokens = kv.get(_TOKENS)
    if not _str(kv, "tokenizer.ggml.model") or not isinstance(tokens, _Array):
        raise InvalidModelError(
            f"{path} has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens)",
            _HINT_NOT_MODEL,
        )
    if tokens.item_type != _STRING or tokens.count == 0:
        raise InvalidModelError(f"{path} has an invalid tokenizer.ggml.tokens", _HINT_DAMAGED)
    if not tensors:
        raise InvalidModelError(f"{path} contains no tensors", _HINT_NOT_MODEL)
    _check_hparams(kv, arch)

    n_params = sum(t.n_elements for t in tensors)
    n_bytes = sum(t.n_bytes for t in tensors)
    n_embd = _int(kv, f"{arch}.embedding_length")
    n_head = _int(kv, f"{arch}.attention.head_count")
    head_dim = n_embd // n_head if n_embd and n_head else None
    head_dim_k = _int(kv, f"{arch}.attention.key_length") or head_dim
    key_kv = f"{arch}.attention.head_count_kv"
    return GGUFInfo(
        path=path,
        size_bytes=h.size,
        gguf_version=version,
        architecture=arch,
        name=_str(kv, "general.name"),
        parameter_count=n_params,
        file_type=_file_type(kv, tensors),
        bits_per_weight=8 * n_bytes / n_params,
        tensor_count=len(tensors),
        tensor_data_bytes=n_bytes,
        tensor_types=dict(Counter(t.type.name for t in tensors)),
        context_length=_int(kv, f"{arch}.context_length"),
        n_layer=_int(kv, f"{arch}.block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=_int(kv, key_kv) if key_kv in kv else n_head,
        head_dim_k=head_dim_k,
        head_dim_v=_int(kv, f"{arch}.attention.value_length") or head_dim_k,
        vocab_size=tokens.count,
        chat_template=_str(kv, "tokenizer.chat_template"),
        license=_str(kv, "general.license"),
        bos_token=_token(h, tokens, kv, "tokenizer.ggml.bos_token_id"),
        eos_token=_token(h, tokens, kv, "tokenizer.ggml.eos_token_id"),
    )


def _not_gguf(path: Path, head: bytes) -> InvalidModelError:
    # Never the bytes themselves: the file may be anyone's (`pocketlm run /etc/shadow`).
    if head.startswith(b"PK\x03\x04"):
        hint = "it is a zip archive (a wheel?): extract the .gguf file inside it"
    elif len(head) >= 10 and head[8:10] == b'{"':
        hint = "it looks like safetensors: convert it with llama.cpp's convert_hf_to_gguf.py"
    elif head.startswith(b"version https://git-lfs"):
        hint = "it is a Git LFS pointer, not the model: fetch the file with `git lfs pull`"
    else:
        hint = "give the path of a .gguf model file"
    return InvalidModelError(
        f"{path} is not a GGUF file (it does not start with the GGUF magic)", hint
    )


def _check_start(path: Path, head: bytes) -> None:
    """Magic and version, with messages for the common wrong files."""
    if head[:4] != _MAGIC:
        raise _not_gguf(path, head)
    if len(head) < _HEADER.size:
        raise InvalidModelError(
            f"{path} is a truncated GGUF file ({len(head)} bytes)", _HINT_TRUNCATED
        )
    (version,) = _U32.unpack_from(head, 4)
    if version not in _VERSIONS:
        raise InvalidModelError(
            f"{path} is GGUF version {version}; llama.cpp reads versions 2 and 3",
            "convert the model again with a current llama.cpp",
        )


def _open(path: Path) -> tuple[BinaryIO, int]:
    """Open a regular, non-empty file; errors name the path."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise InvalidModelError(
                f"{path} is a directory, not a GGUF file", "give the .gguf file"
            )
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise InvalidModelError(f"{path} is not a regular file", "give the .gguf file")
        if st.st_size == 0:
            raise InvalidModelError(f"{path} is empty", _HINT_TRUNCATED)
        return open(path, "rb"), st.st_size  # closed by inspect_gguf
    except FileNotFoundError:
        raise InvalidModelError(f"{path} does not exist", "check the path") from None
    except PermissionError:
        raise InvalidModelError(
            f"{path} cannot be read (permission denied)", "check the file's permissions"
        ) from None
    except OSError as e:
        raise InvalidModelError(f"{path} cannot be read: {e.strerror or e}", None) from None


def inspect_gguf(path: str | os.PathLike) -> GGUFInfo:
    """Check that `path` is a GGUF model llama.cpp can safely open; describe it."""
    path = Path(path)
    file, size = _open(path)
    with file:
        h = _Header(file, size)
        try:
            h.take(min(size, _HEADER.size), "header")
            _check_start(path, h.data[: _HEADER.size])
            h.pos = 0
            version, kv, tensors = _parse(h)
            return _describe(path, h, version, kv, tensors)
        except _Malformed as e:  # may name keys and values of the file: escaped, cut short
            raise InvalidModelError(
                f"{path} is not a valid GGUF file: {shown(e.problem, 300)}", e.hint
            ) from None
        except (OSError, struct.error, ValueError, OverflowError, MemoryError) as e:
            # Bounds are checked above; this is the last guard for untrusted bytes.
            raise InvalidModelError(
                f"{path} could not be read as GGUF: {e}", _HINT_DAMAGED
            ) from None
