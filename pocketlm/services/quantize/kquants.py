"""GGUF block formats in NumPy: Q4_0, Q2_K, Q3_K and Q4_K, bit for bit as llama.cpp lays them out.

Every format here stores, per block of values, integer codes ``q`` and per sub-block a scale
and (for the "min" formats) an offset, each an integer times a per-block fp16 factor:

    value = (d * sc) * (q - zero) - (dmin * mn)

| format | block | sub-block | codes | sc          | mn    | bytes |
|--------|-------|-----------|-------|-------------|-------|-------|
| Q4_0   | 32    | 32        | 0..15 | 1           | -     | 18    |
| Q2_K   | 256   | 16        | 0..3  | 0..15       | 0..15 | 84    |
| Q3_K   | 256   | 16        | 0..7  | -32..31     | -     | 110   |
| Q4_K   | 256   | 32        | 0..15 | 0..63       | 0..63 | 144   |

(ggml/src/ggml-common.h and the dequantize_row_* functions of ggml-quants.c.) ``Blocks`` holds
those integers unpacked; ``pack``/``unpack`` convert to and from the file's bytes, and
``dequantize`` computes the values in float32 in llama.cpp's order of operations.

``ggml_quantize`` runs llama.cpp's own quantizer (``ggml_quantize_chunk``, the function
``llama_model_quantize`` calls for each tensor), with or without importance weights.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import gguf
import numpy as np

QT = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Format:
    name: str
    ggml_type: QT
    block: int  # values per block
    sub: int  # values per sub-block: one scale (and one min) each
    qmax: int  # codes are 0..qmax
    zero: int  # value = scale * (code - zero) - min
    sc_min: int  # integer sub-scales lie in sc_min..sc_max
    sc_max: int
    mn_max: int  # integer mins lie in 0..mn_max (0: the format has no min)

    @property
    def n_sub(self) -> int:
        return self.block // self.sub

    @property
    def type_size(self) -> int:
        return gguf.GGML_QUANT_SIZES[self.ggml_type][1]

    @property
    def has_min(self) -> bool:
        return self.mn_max > 0


FORMATS: dict[str, Format] = {
    "Q4_0": Format("Q4_0", QT.Q4_0, 32, 32, 15, 8, 1, 1, 0),
    "Q2_K": Format("Q2_K", QT.Q2_K, 256, 16, 3, 0, 0, 15, 15),
    "Q3_K": Format("Q3_K", QT.Q3_K, 256, 16, 7, 4, -32, 31, 0),
    "Q4_K": Format("Q4_K", QT.Q4_K, 256, 32, 15, 0, 0, 63, 63),
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"no block format {name!r}: one of {', '.join(FORMATS)}")
    return FORMATS[name]


@dataclass
class Blocks:
    """One tensor's quantized data, unpacked. nb = number of blocks."""

    d: np.ndarray  # [nb] float16
    dmin: np.ndarray  # [nb] float16 (zeros for formats without a min)
    sc: np.ndarray  # [nb, n_sub] int16
    mn: np.ndarray  # [nb, n_sub] int16
    q: np.ndarray  # [nb, block] uint8

    def scales(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, min) of every sub-block as float32 [nb, n_sub], as llama.cpp computes them."""
        s = self.d.astype(np.float32)[:, None] * self.sc.astype(np.float32)
        m = self.dmin.astype(np.float32)[:, None] * self.mn.astype(np.float32)
        return s, m


def dequantize(fmt: Format, b: Blocks) -> np.ndarray:
    """Values [nb, block] float32."""
    s, m = b.scales()
    codes = (b.q.astype(np.int16) - fmt.zero).astype(np.float32).reshape(len(b.q), fmt.n_sub, -1)
    values = s[:, :, None] * codes
    if fmt.has_min:
        values = values - m[:, :, None]
    return values.reshape(len(b.q), fmt.block)


def codes_for(fmt: Format, x: np.ndarray, s: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Nearest codes of values x [..., n_sub, sub] on the grids scale s, min m [..., n_sub]."""
    safe = np.where(s == 0, 1.0, s)[..., None]
    q = np.rint((x + m[..., None]) / safe) + fmt.zero
    q = np.where(s[..., None] == 0, fmt.zero, q)
    return np.clip(q, 0, fmt.qmax).astype(np.uint8)


# --- bytes ------------------------------------------------------------------------


def _halves(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8).reshape(len(x), 2)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """[nb, 256] codes 0..3 -> [nb, 64]: byte 32h + l holds codes 128h + l + 32k at bits 2k."""
    q = q.reshape(len(q), 2, 4, 32).astype(np.uint8)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(len(q), 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return ((qs.reshape(len(qs), 2, 1, 32) >> shifts) & 3).reshape(len(qs), 256)


def _pack_scales_q3(sc: np.ndarray) -> np.ndarray:
    """16 signed 6-bit scales -> 12 bytes: low nibbles in 0..7 (j < 8 low, j >= 8 high),
    high 2 bits in byte 8 + j % 4 at bits 2 * (j // 4)."""
    lv = (sc.astype(np.int16) + 32).astype(np.uint8)
    low = lv & 0xF
    out = np.zeros((len(sc), 12), np.uint8)
    out[:, :8] = low[:, :8] | (low[:, 8:] << 4)
    high = (lv >> 4).reshape(len(sc), 4, 4)  # [nb, j // 4, j % 4]
    out[:, 8:] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    return out


def _unpack_scales_q3(raw: np.ndarray) -> np.ndarray:
    low = np.concatenate([raw[:, :8] & 0xF, raw[:, :8] >> 4], axis=1)
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)
    high = ((raw[:, None, 8:] >> shifts) & 3).reshape(len(raw), 16)
    return (low | (high << 4)).astype(np.int16) - 32


def _pack_scales_q4k(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 6-bit scales and mins -> 12 bytes (get_scale_min_k4 in ggml-quants.c)."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.zeros((len(sc), 12), np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)
    return out


def _unpack_scales_q4k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b, c = raw[:, 0:4], raw[:, 4:8], raw[:, 8:12]
    sc = np.concatenate([a & 0x3F, (c & 0xF) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc.astype(np.int16), mn.astype(np.int16)


def pack(fmt: Format, b: Blocks) -> np.ndarray:
    """The blocks' bytes as GGUF stores them: [nb, type_size] uint8."""
    nb = len(b.q)
    q = b.q.astype(np.uint8)
    if fmt.name == "Q4_0":
        return np.concatenate([_halves(b.d), q[:, :16] | (q[:, 16:] << 4)], axis=1)
    if fmt.name == "Q2_K":
        scales = (b.sc.astype(np.uint8) & 0xF) | (b.mn.astype(np.uint8) << 4)
        return np.concatenate([scales, _pack_2bit(q & 3), _halves(b.d), _halves(b.dmin)], axis=1)
    if fmt.name == "Q3_K":
        high = (q >> 2).reshape(nb, 8, 32)  # code j: byte j % 32, bit j // 32
        hmask = np.zeros((nb, 32), np.uint8)
        for bit in range(8):
            hmask |= high[:, bit] << bit
        return np.concatenate(
            [hmask, _pack_2bit(q & 3), _pack_scales_q3(b.sc), _halves(b.d)], axis=1
        )
    if fmt.name == "Q4_K":
        q4 = q.reshape(nb, 4, 2, 32)
        qs = (q4[:, :, 0] | (q4[:, :, 1] << 4)).reshape(nb, 128)
        return np.concatenate(
            [_halves(b.d), _halves(b.dmin), _pack_scales_q4k(b.sc, b.mn), qs], axis=1
        )
    raise ValueError(f"no packer for {fmt.name}")


def unpack(fmt: Format, raw: np.ndarray) -> Blocks:
    """Inverse of pack: raw [nb, type_size] uint8 (or flat bytes) -> Blocks."""
    raw = np.asarray(raw, np.uint8).reshape(-1, fmt.type_size)
    nb = len(raw)
    half = lambda a: np.ascontiguousarray(a).view(np.float16).reshape(nb)  # noqa: E731
    zeros = np.zeros(nb, np.float16)
    if fmt.name == "Q4_0":
        qs = raw[:, 2:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1)
        ones = np.ones((nb, 1), np.int16)
        return Blocks(half(raw[:, :2]), zeros, ones, np.zeros_like(ones), q)
    if fmt.name == "Q2_K":
        scales = raw[:, :16]
        return Blocks(
            half(raw[:, 80:82]),
            half(raw[:, 82:84]),
            (scales & 0xF).astype(np.int16),
            (scales >> 4).astype(np.int16),
            _unpack_2bit(raw[:, 16:80]),
        )
    if fmt.name == "Q3_K":
        hmask = raw[:, :32]
        high = np.stack([(hmask >> bit) & 1 for bit in range(8)], axis=1).reshape(nb, 256)
        q = _unpack_2bit(raw[:, 32:96]) | (high << 2)
        sc = _unpack_scales_q3(raw[:, 96:108])
        return Blocks(half(raw[:, 108:110]), zeros, sc, np.zeros_like(sc), q.astype(np.uint8))
    if fmt.name == "Q4_K":
        sc, mn = _unpack_scales_q4k(raw[:, 4:16])
        qs = raw[:, 16:].reshape(nb, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        q = (qs & 0xF).reshape(nb, 256)
        return Blocks(half(raw[:, 0:2]), half(raw[:, 2:4]), sc, mn, q)
    raise ValueError(f"no unpacker for {fmt.name}")


# --- llama.cpp's quantizer ------------------------------------------------------


def _ggml_quantize_chunk():
    from llama_cpp._ggml import libggml

    fn = libggml.ggml_quantize_chunk
    fn.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    fn.restype = ctypes.c_size_t
    return fn


def ggml_quantize(fmt: Format, x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's quantization of x [rows, n] (n a multiple of fmt.block): its default
    (``importance`` None) or its importance-matrix path (``importance`` [n], one weight per
    column, as llama-quantize --imatrix passes it). Returns [rows * n / block, type_size]."""
    x = np.ascontiguousarray(x, np.float32)
    rows, n = x.shape
    out = np.zeros((rows * n // fmt.block, fmt.type_size), np.uint8)
    imp = None if importance is None else np.ascontiguousarray(importance, np.float32)
    size = _ggml_quantize_chunk()(
        int(fmt.ggml_type),
        x.ctypes.data,
        out.ctypes.data,
        0,
        rows,
        n,
        None if imp is None else imp.ctypes.data,
    )
    if size != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {size} bytes, expected {out.nbytes}")
    return out
