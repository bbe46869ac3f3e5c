"""The teacher's top-k log-probabilities, computed once with llama.cpp and kept on disk.

For every trained position of every sequence the teacher's k most likely next tokens and
their log-probabilities (under its full softmax) are stored: token ids as uint32 and
log-probabilities as float16, so 6 * k bytes per trained token (96 bytes at k = 16, against
600 KB for the full distribution over Qwen2.5's 151,936 tokens). The mass outside the top k
is 1 - sum(exp(logprobs)): the loss treats it as one more outcome.

The arrays are memory-mapped .npy files written sequence by sequence; ``state.json``
says how many sequences are done, so an interrupted run resumes where it stopped, and a
different teacher, data or k starts over. The key is what the rows depend on: the teacher
and the token sequences (``tokens_sha256``), so another student of the same tokenizer, a
different learning rate or epoch count, finds the rows of an earlier run (``reuse``) and
links them instead of asking the teacher again.

Consecutive sequences that open alike (a task's instruction, repeated by every record)
keep the shared part in the teacher's KV cache: only the rest is evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketlm.engine.llama import Context, Model, common_prefix
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.distill.data import Example

BYTES_PER_LOGPROB = 6  # uint32 id + float16 log-probability


@dataclass
class TopK:
    """Per trained row: ids [rows, k] and logprobs [rows, k]; rows of sequence i start at
    offsets[i] (rows are the positions whose next token is trained, in order)."""

    ids: np.ndarray
    logprobs: np.ndarray
    offsets: np.ndarray  # [n_sequences + 1]

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.logprobs[a:b]


def trained_rows(example: Example) -> np.ndarray:
    """Positions p whose prediction (of token p + 1) is trained."""
    return np.flatnonzero(np.asarray(example.trained[1:], dtype=bool))


def tokens_sha256(examples: Iterable[Example]) -> str:
    """A digest of the sequences and their trained positions: what the rows are of."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(np.asarray(ex.tokens, dtype=np.int64).tobytes())
        digest.update(np.packbits(np.asarray(ex.trained, dtype=bool)).tobytes())
        digest.update(b"|%d|" % len(ex.tokens))
    return digest.hexdigest()


def cache_bytes(examples: list[Example], k: int) -> int:
    return sum(ex.n_trained for ex in examples) * k * BYTES_PER_LOGPROB


def compute(
    teacher_path: str,
    examples: list[Example],
    folder: Path,
    *,
    k: int,
    key: dict,
    threads: int,
    progress: Progress | None = None,
    reuse: Iterable[Path] = (),
) -> TopK:
    """The teacher's top-k over ``examples`` in ``folder``, resuming what was done for the
    same ``key`` (teacher sha256, tokens sha256, ...), or linking the complete rows of one
    of the ``reuse`` folders (other runs) made for the same key."""
    progress = progress or NullProgress()
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([ex.n_trained for ex in examples])
    rows = int(offsets[-1])
    done = _resume_point(folder, key, rows, k)
    if done < len(examples):
        for other in reuse:
            if other != folder and _resume_point(other, key, rows, k) == len(examples):
                _link(other, folder)
                progress.note(f"the teacher's top-k of {other.parent.name} reused")
                done = len(examples)
                break
    if not done:  # a new file, never the old one rewritten: it may be another run's (_link)
        for name in ("ids.npy", "logprobs.npy"):
            (folder / name).unlink(missing_ok=True)
    mode = "r+" if done else "w+"
    ids = np.lib.format.open_memmap(folder / "ids.npy", mode, np.uint32, (rows, k))
    lps = np.lib.format.open_memmap(folder / "logprobs.npy", mode, np.float16, (rows, k))
    if done < len(examples):
        _fill(teacher_path, examples, offsets, ids, lps, done, folder, key, threads, progress)
    return TopK(ids, lps, offsets)


def _resume_point(folder: Path, key: dict, rows: int, k: int) -> int:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return 0
    same = state.get("key") == key and state.get("rows") == rows and state.get("k") == k
    try:  # the arrays themselves of that shape (not rewritten since the state was)
        complete = all(
            np.load(folder / name, mmap_mode="r").shape == (rows, k)
            for name in ("ids.npy", "logprobs.npy")
        )
    except (OSError, ValueError):
        complete = False
    return int(state.get("done", 0)) if same and complete else 0


def _link(source: Path, folder: Path) -> None:
    """Hard-link (or copy) another run's complete rows into ``folder``; state last."""
    for name in ("ids.npy", "logprobs.npy", "state.json"):
        target = folder / name
        target.unlink(missing_ok=True)
        try:
            os.link(source / name, target)
        except OSError:
            shutil.copyfile(source / name, target)


def _write_state(folder: Path, key: dict, rows: int, k: int, done: int) -> None:
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps({"key": key, "rows": rows, "k": k, "done": done}))
    os.replace(tmp, folder / "state.json")


def _fill(teacher_path, examples, offsets, ids, lps, done, folder, key, threads, progress):
    k = ids.shape[1]
    longest = max(len(ex.tokens) for ex in examples)
    from pocketlm.engine import probe

    # repacked weights only where a child process showed they do not crash (the AMX note)
    model = Model(teacher_path, use_extra_bufts=probe.extra_bufts_safe(teacher_path))
    ctx = Context(model, n_ctx=longest, n_threads=threads, n_batch=longest)
    remaining = sum(len(ex.tokens) for ex in examples[done:])
    task = progress.task("teacher top-k", remaining, unit="tokens")
    try:
        for i in range(done, len(examples)):
            ex = examples[i]
            a, b = offsets[i], offsets[i + 1]
            ids[a:b], lps[a:b] = top_k(ctx, model, ex, k)
            if (i + 1) % 16 == 0 or i + 1 == len(examples):
                ids.flush()
                lps.flush()
                _write_state(folder, key, ids.shape[0], k, i + 1)
            task.advance(len(ex.tokens))
    finally:
        ids.flush()
        lps.flush()
        ctx.close()
        model.close()


def top_k(ctx: Context, model: Model, example: Example, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [rows, k] uint32, logprobs [rows, k] float16) at ``example``'s trained rows,
    most likely first. The tokens the context already holds, up to the first trained row,
    are kept (the previous example's shared opening)."""
    import llama_cpp as ll

    rows = trained_rows(example)
    keep = min(common_prefix(ctx.tokens, example.tokens), example.first_row)
    ctx.truncate(keep)
    ctx.extend(example.tokens[keep:])
    n = len(example.tokens) - keep
    logits = np.ctypeslib.as_array(ll.llama_get_logits(ctx._ptr), shape=(n, model.n_vocab))
    logits = logits[rows - keep]  # [rows, vocab]
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(logits, top, axis=1)
    peak = logits.max(axis=1, keepdims=True)
    log_z = peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
    order = np.argsort(-picked, axis=1)
    ids = np.take_along_axis(top, order, axis=1).astype(np.uint32)
    return ids, (np.take_along_axis(picked, order, axis=1) - log_z).astype(np.float16)
