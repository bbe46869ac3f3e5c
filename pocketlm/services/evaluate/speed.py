"""One speed run, in a fresh process: ``python -m pocketlm.services.evaluate.speed``.

The bench service (``bench``) starts this module once per run and sends it a job (JSON on
stdin): load the model (weights + context); a short warm-up evaluation (it faults in the
memory-mapped weights and sizes the compute buffers); for each prompt length, a prefill
from an empty cache followed by one greedy token (time to first token); then greedy
decoding of a fixed number of tokens, straight through any end-of-generation token so that
every run decodes the same count. It writes one JSON line per step, then the result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pocketlm.errors import EngineError, PocketError
from pocketlm.services.runtime import peak_rss_bytes

DECODE_PROMPT_TOKENS = 16  # decoding starts after this many prompt tokens
WARMUP_TOKENS = 32

_PASSAGE = (
    "The keeper of the lighthouse wrote in the log every evening: the direction of the wind, "
    "the height of the waves, the ships that passed the point and the lamps that needed oil. "
    "On quiet nights he added a line about the birds, the fishing boats and the weather."
)


def prompt_tokens(model, n: int) -> list[int]:
    """Exactly ``n`` tokens of deterministic English text (numbered log entries)."""
    entries = n // 40 + 1
    while True:
        text = " ".join(f"Entry {i}. {_PASSAGE}" for i in range(entries))
        tokens = model.tokenize(text, add_special=True)
        if len(tokens) >= n or entries > 4 * n:
            break
        entries *= 2
    if not tokens:
        raise EngineError(f"the model's tokenizer made no tokens of the prompt ({model.path})")
    return (tokens * (n // len(tokens) + 1))[:n]  # the repeat only for a degenerate tokenizer


def measure_run(job: dict[str, Any], on_step: Callable[[], None]) -> dict[str, Any]:
    """Load the model, measure prefill at each length and greedy decode; free it all."""
    from pocketlm.engine.llama import Context, Model, Sampler, init_backend

    init_backend()
    base_rss = _current_rss()
    started = time.perf_counter()
    model = Model(job["path"], use_extra_bufts=job["extra_bufts"])
    ctx = Context(
        model,
        n_ctx=job["n_ctx"],
        n_threads=job["n_threads"],
        n_batch=job["n_batch"],
        flash_attn=job["flash_attn"],
    )
    load_s = time.perf_counter() - started
    on_step()
    sampler = Sampler.greedy(model.n_vocab)
    try:
        out = {"load_s": load_s, "base_rss_bytes": base_rss}
        out |= _measure_tokens(model, ctx, sampler, job, on_step)
    finally:
        sampler.close()
        ctx.close()
        model.close()
    return out | {"peak_rss_bytes": peak_rss_bytes()}


def _measure_tokens(model, ctx, sampler, job: dict[str, Any], on_step) -> dict[str, Any]:
    n_ctx = min(job["n_ctx"], ctx.n_ctx)  # llama.cpp may round it up
    lengths = [min(n, n_ctx) for n in job["prompt_lengths"]]
    tokens = prompt_tokens(model, max(lengths + [DECODE_PROMPT_TOKENS, WARMUP_TOKENS]))
    warmup_s = _timed(lambda: _warm_up(ctx, sampler, tokens[: min(WARMUP_TOKENS, n_ctx - 1)]))
    on_step()
    prefill = {}
    for n in lengths:
        ctx.reset()
        started = time.perf_counter()
        ctx.prefill(tokens[:n])
        prefilled = time.perf_counter()
        sampler.sample(ctx)
        prefill[str(n)] = {
            "tok_per_s": n / (prefilled - started),
            "ttft_s": time.perf_counter() - started,
        }
        on_step()
    prompt_n = min(DECODE_PROMPT_TOKENS, n_ctx // 2)
    decoded = min(job["decode_tokens"], n_ctx - prompt_n)
    ctx.reset()
    ctx.prefill(tokens[:prompt_n])
    decode_s = _timed(lambda: _decode(ctx, sampler, decoded))
    on_step()
    return {
        "n_ctx": n_ctx,
        "warmup_s": warmup_s,
        "prefill": prefill,
        "decode_prompt_tokens": prompt_n,
        "decode_tokens": decoded,
        "decode_tok_per_s": decoded / decode_s,
    }


def _warm_up(ctx, sampler, tokens: list[int]) -> None:
    """A short prefill and one decode step: the first evaluations in a process page in the
    weights and size the compute buffers, which the measured ones should not pay for."""
    ctx.prefill(tokens)
    ctx.step(sampler.sample(ctx))


def _decode(ctx, sampler, n: int) -> None:
    """``n`` greedy steps, end-of-generation tokens included: the same work every run."""
    for _ in range(n):
        ctx.step(sampler.sample(ctx))


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return max(time.perf_counter() - started, 1e-9)


def _current_rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def _child_main() -> int:
    """Read a job (JSON) on stdin; write one JSON line per step, then the result or error."""

    def emit(**msg: Any) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    try:
        result = measure_run(json.loads(sys.stdin.read()), lambda: emit(step=1))
    except PocketError as e:
        emit(error=str(e))
        return 1
    emit(result=result)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
