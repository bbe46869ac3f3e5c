"""Perplexity over a text file, and KL divergence and top-1 agreement against a reference.

Sliding window: windows of ``window`` tokens start every ``stride`` tokens; each token is
scored once, by the first window that predicts it (with as much context before it as the
window allows). With a reference model (the unquantized parent, say), the same windows run
through both and, token by token, KL(P_ref || P_model) and whether both models' most likely
token agree are averaged, as llama.cpp's perplexity tool reports them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pocketlm.engine.llama import Context, Model
from pocketlm.errors import UsageError
from pocketlm.progress import NullProgress, Progress


@dataclass
class PerplexityReport:
    tokens: int  # tokens scored
    ppl: float
    nll_mean: float
    window: int
    stride: int
    seconds: float
    ppl_ref: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path.name} is not UTF-8 text") from None


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) for each window. A position is scored at most once,
    by the first window that holds it and a token before it (with stride == window, the first
    token of each later window has no context in it and is not scored)."""
    if window < 2 or stride < 1 or stride > window:
        raise UsageError(
            f"invalid window {window} / stride {stride}: need window >= 2 and 1 <= stride <= window"
        )
    out, scored_to, begin = [], 1, 0
    while scored_to < n_tokens:
        end = min(begin + window, n_tokens)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append((begin, end, first))
        scored_to = end
        begin += stride
        if begin + 1 >= n_tokens:
            break
    return out


def _log_probs(ctx: Context, tokens: list[int], n_vocab: int) -> np.ndarray:
    """log-softmax of the logits at every position of ``tokens``: [len(tokens), n_vocab]."""
    import llama_cpp as ll

    ctx.prefill_all(tokens)
    logits = np.ctypeslib.as_array(ll.llama_get_logits(ctx._ptr), shape=(len(tokens), n_vocab))
    top = logits.max(axis=1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))


def run_perplexity(
    model: Model,
    text: str,
    *,
    window: int = 512,
    stride: int | None = None,
    reference: Model | None = None,
    threads: int = 1,
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> PerplexityReport:
    progress = progress or NullProgress()
    started = time.perf_counter()
    stride = stride or window
    tokens = model.tokenize(text, add_special=True)
    if max_tokens:
        tokens = tokens[:max_tokens]
    if len(tokens) < 2:
        raise UsageError("the text is too short to measure: it needs at least 2 tokens")
    if reference is not None:
        if reference.n_vocab != model.n_vocab or reference.tokenize(text[:2000]) != model.tokenize(
            text[:2000]
        ):
            raise UsageError(
                "the reference model has another vocabulary: KL divergence needs "
                "models that share a tokenizer (the same model, quantized "
                "differently)"
            )
    spans = windows(len(tokens), window, stride)
    ctx = Context(model, n_ctx=window, n_threads=threads, n_batch=window)
    ref_ctx = (
        Context(reference, n_ctx=window, n_threads=threads, n_batch=window)
        if reference is not None
        else None
    )
    nll, nll_ref, klds, agree = [], [], [], 0
    task = progress.task("scoring", len(tokens) - 1, unit="tokens")
    try:
        for begin, end, first in spans:
            chunk = tokens[begin:end]
            lp = _log_probs(ctx, chunk, model.n_vocab)
            rows = np.arange(first - 1 - begin, end - 1 - begin)  # positions predicting ...
            targets = np.array(chunk[first - begin : end - begin])  # ... these tokens
            nll.extend((-lp[rows, targets]).tolist())
            if ref_ctx is not None:
                ref = _log_probs(ref_ctx, chunk, reference.n_vocab)
                nll_ref.extend((-ref[rows, targets]).tolist())
                p_ref = np.exp(ref[rows])
                klds.extend((p_ref * (ref[rows] - lp[rows])).sum(axis=1).tolist())
                agree += int((ref[rows].argmax(axis=1) == lp[rows].argmax(axis=1)).sum())
            task.advance(end - first)
    finally:
        ctx.close()
        if ref_ctx is not None:
            ref_ctx.close()
    mean = float(np.mean(nll))
    report = PerplexityReport(
        tokens=len(nll),
        ppl=math.exp(mean),
        nll_mean=mean,
        window=window,
        stride=stride,
        seconds=time.perf_counter() - started,
    )
    if reference is not None:
        report.ppl_ref = math.exp(float(np.mean(nll_ref)))
        report.kld_mean = float(np.mean(klds))
        report.kld_p99 = float(np.percentile(klds, 99))
        report.kld_max = float(np.max(klds))
        report.top1_agreement = agree / len(klds)
    return report
