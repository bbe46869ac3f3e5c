"""The quantization types this llama.cpp can write, in one table.

Each type is a ``llama_ftype`` (``LLAMA_FTYPE_*`` in llama-cpp-python 0.3.36): a file-wide
recipe that llama.cpp turns into a type per tensor. The "mixes" (``Q4_K_M``, ``Q3_K_S``,
``IQ3_M``, ...) give some tensors more bits than others, and every K- or I-quant falls back
to a 32-block type for tensors whose rows are not a multiple of 256 (SmolLM2's 576-wide
rows, say): the real bits per weight of a file can be far from the nominal figure here,
which is what llama.cpp's quantize tool lists (Llama-3-8B file sizes for the mixes, the
tensor type's own bits for the rest).

The ftype ids are copied (importing llama_cpp costs every CLI start a shared-library
load); tests/services/quantize/test_types.py checks them against llama_cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketlm.errors import UsageError

FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class QuantType:
    name: str  # as llama.cpp's quantize tool and GGUF's general.file_type name it
    ftype: int  # enum llama_ftype
    bpw: float  # nominal bits per weight
    family: str  # float | legacy | k-quant | i-quant | ternary | mxfp4
    needs_imatrix: bool = False  # llama.cpp refuses it without an importance matrix
    note: str = ""

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_TYPES


def _t(name: str, ftype: int, bpw: float, family: str, **kw) -> QuantType:
    return QuantType(name, ftype, bpw, family, **kw)


_IMATRIX = {"needs_imatrix": True}

# Largest first. The bpw of the K-quant mixes and legacy types is 8 * size / 8.03e9 for
# the Llama-3-8B sizes (GiB) in llama.cpp's tools/quantize/quantize.cpp.
TYPES: dict[str, QuantType] = {
    t.name: t
    for t in (
        _t("F32", 0, 32.0, "float", note="no quantization (1-D tensors are always F32)"),
        _t("F16", 1, 16.0, "float"),
        _t("BF16", 32, 16.0, "float"),
        _t("Q8_0", 7, 8.51, "legacy", note="practically lossless"),
        _t("Q6_K", 18, 6.57, "k-quant"),
        _t("Q5_K_M", 17, 5.70, "k-quant"),
        _t("Q5_K_S", 16, 5.57, "k-quant"),
        _t("Q5_1", 9, 6.04, "legacy"),
        _t("Q5_0", 8, 5.57, "legacy"),
        _t("Q4_K_M", 15, 4.90, "k-quant", note="the usual default"),
        _t("Q4_K_S", 14, 4.67, "k-quant"),
        _t("Q4_1", 3, 5.11, "legacy"),
        _t("Q4_0", 2, 4.64, "legacy", note="fastest on CPUs (weights repacked at load)"),
        _t("IQ4_NL", 25, 4.50, "i-quant"),
        _t("IQ4_XS", 30, 4.25, "i-quant"),
        _t("Q3_K_L", 13, 4.31, "k-quant"),
        _t("Q3_K_M", 12, 4.00, "k-quant"),
        _t("Q3_K_S", 11, 3.65, "k-quant"),
        _t("IQ3_M", 27, 3.66, "i-quant"),
        _t("IQ3_S", 26, 3.44, "i-quant"),
        _t("IQ3_XS", 22, 3.30, "i-quant", **_IMATRIX),
        _t("IQ3_XXS", 23, 3.06, "i-quant", **_IMATRIX),
        _t("Q2_K", 10, 3.17, "k-quant"),
        _t("Q2_K_S", 21, 3.17, "k-quant", **_IMATRIX),
        _t("IQ2_M", 29, 2.70, "i-quant", **_IMATRIX),
        _t("IQ2_S", 28, 2.50, "i-quant", **_IMATRIX),
        _t("IQ2_XS", 20, 2.31, "i-quant", **_IMATRIX),
        _t("IQ2_XXS", 19, 2.06, "i-quant", **_IMATRIX),
        _t("Q2_0", 41, 2.25, "legacy", note="2-bit, blocks of 64"),
        _t("TQ2_0", 37, 2.06, "ternary", note="for ternary-trained models (BitNet)"),
        _t("IQ1_M", 31, 1.75, "i-quant", **_IMATRIX),
        _t("TQ1_0", 36, 1.69, "ternary", note="for ternary-trained models (BitNet)"),
        _t("IQ1_S", 24, 1.56, "i-quant", **_IMATRIX),
        _t("Q1_0", 40, 1.125, "legacy", note="1-bit, blocks of 128: rows must be multiples"),
        _t("MXFP4_MOE", 38, 4.25, "mxfp4", note="MoE experts only (dense models: as Q8_0)"),
    )
}
# Not listed: NVFP4 (this llama.cpp cannot write it: "invalid output file type").


def get(name: str) -> QuantType:
    """The type named ``name`` (any case); an unknown name lists the valid ones."""
    qt = TYPES.get(name.strip().upper())
    if qt is None:
        raise UsageError(
            f"unknown quantization type '{name}'", f"choose one of {', '.join(TYPES)} (see --list)"
        )
    return qt


def is_quantized(file_type: str) -> bool:
    """Whether a GGUF file type (``GGUFInfo.file_type``) is already quantized, so that
    quantizing it again works from its rounded weights, not the original ones."""
    return file_type.upper() not in FLOAT_TYPES
