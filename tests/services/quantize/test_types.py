"""The table of types against the llama.cpp it describes."""

from __future__ import annotations

import llama_cpp
import pytest

from pocketlm.errors import UsageError
from pocketlm.services.quantize import types
from pocketlm.services.quantize.quantize import run_child
from tests.services.quantize.conftest import WIDE
from tests.tinymodel import write_tiny_gguf

# In llama_cpp but not in the table: cannot be written by this llama.cpp, or not a type.
UNLISTED = {"NVFP4", "GUESSED"}


def _ftypes() -> dict[str, int]:
    out = {}
    for key, value in vars(llama_cpp).items():
        for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_", "LLAMA_FTYPE_"):
            if key.startswith(prefix) and isinstance(value, int):
                out[key[len(prefix) :]] = value
                break
    return out


def test_every_llama_cpp_type_is_listed_with_its_ftype():
    ftypes = {k: v for k, v in _ftypes().items() if k not in UNLISTED}
    assert {name: qt.ftype for name, qt in types.TYPES.items()} == ftypes


def test_names_are_found_in_any_case_and_unknown_ones_list_the_choices():
    assert types.get("q4_k_m") is types.TYPES["Q4_K_M"]
    with pytest.raises(UsageError) as e:
        types.get("Q4_K_X")
    assert "Q4_K_X" in str(e.value) and "Q4_K_M" in str(e.value) and "IQ2_XXS" in str(e.value)


def test_float_types_are_not_quantized():
    assert not types.is_quantized("F32") and not types.is_quantized("bf16")
    assert types.is_quantized("Q4_1") and types.is_quantized("IQ4_XS")


def test_needs_imatrix_is_what_llama_cpp_enforces(tmp_path):
    """Every type is really written (no dry run) without an importance matrix: exactly the
    flagged ones are refused."""
    small = write_tiny_gguf(tmp_path / "small.gguf", n_layer=1, **(WIDE | {"n_ff": 256}))
    job = {
        "src": str(small),
        "dst": str(tmp_path / "out.gguf"),
        "types": list(types.TYPES),
        "threads": 1,
        "dry_run": False,
    }
    refused = {r["type"]: r["error"] for r in run_child(job) if r["error"]}
    assert set(refused) == {n for n, qt in types.TYPES.items() if qt.needs_imatrix}
    assert all("imatrix" in why for why in refused.values()), refused
