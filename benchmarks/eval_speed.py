#!/usr/bin/env python3
"""Multiple-choice scoring speed on PIQA, the default model: seconds per 1,000 items.

Measures, in one run, on the first N PIQA validation items (two choices, ~20 context and
~25 continuation tokens each, fetched from the package index):
  - pocketlm's scorer: the shared context computed once per question, many questions packed
    into each llama.cpp batch (target: <= 250 s per 1,000 items here);
  - the naive way: every (context, choice) pair evaluated from scratch, one at a time;
  - the engine's plain prefill speed on as many tokens in full batches, all logits out.
Usage: python benchmarks/eval_speed.py [--items 300] [--naive-items 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import default_model_path, threads  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--naive-items", type=int, default=100)
    args = ap.parse_args()

    from pocketlm.engine.llama import Context
    from pocketlm.services.evaluate import datasets
    from pocketlm.services.evaluate.multiple_choice import run_multiple_choice
    from pocketlm.services.evaluate.scoring import Scorer, encode_pair
    from pocketlm.services.runtime import open_engine_model
    from pocketlm.store import benchmarks

    path = default_model_path()
    data = benchmarks.fetch()
    items = datasets.load(data / "piqa_valid.jsonl", labels=data / "piqa_valid-labels.lst")
    _, _, _, model = open_engine_model(str(path))
    n_threads = threads()
    sample = items[: args.items]

    probe = Scorer(model, n_ctx=2048, n_threads=n_threads)
    groups = [probe.group(i.context, i.choices) for i in sample]
    ctx_tokens = sum(len(g.context) for g in groups) / len(groups)
    cont_tokens = sum(len(k) for g in groups for k in g.continuations) / (2 * len(groups))
    probe.close()
    print(
        f"model {path.name}, {n_threads} threads; PIQA items: {ctx_tokens:.1f} context and "
        f"{cont_tokens:.1f} continuation tokens on average"
    )

    report = run_multiple_choice(model, sample, threads=n_threads)
    shared = report.seconds / len(sample) * 1000
    print(
        f"pocketlm scorer: {len(sample)} items in {report.seconds:.1f} s -> {shared:.0f} s per "
        f"1,000 items (acc {report.acc:.3f}, acc_norm {report.acc_norm:.3f}); target <= 250"
    )

    naive_ctx = Context(model, n_ctx=512, n_threads=n_threads, n_batch=512)
    tokenize = lambda s: model.tokenize(s, add_special=True)  # noqa: E731
    t = time.perf_counter()
    for item in items[: args.naive_items]:
        for choice in item.choices:
            c, k = encode_pair(tokenize, item.context, choice)
            naive_ctx.prefill_all(c + k)  # all logits, nothing shared or cached
    naive = (time.perf_counter() - t) / args.naive_items * 1000
    print(
        f"each choice from scratch: {naive:.0f} s per 1,000 items "
        f"({args.naive_items} items); pocketlm is x{naive / shared:.2f} faster"
    )

    tokens = report.tokens_scored
    flat = (model.tokenize("the quick brown fox jumps over the lazy dog " * 60) * 4)[:512]
    t, done = time.perf_counter(), 0
    while done < min(tokens, 16384):  # enough for a steady rate
        naive_ctx.prefill_all(flat)
        done += len(flat)
    floor = (time.perf_counter() - t) * tokens / done / len(sample) * 1000
    print(
        f"plain prefill of as many tokens ({tokens}) in 512-token batches with all logits: "
        f"{floor:.0f} s per 1,000 items; the scorer runs at x{floor / shared:.2f} that speed "
        "(it shares the choices' common tokens and skips unneeded logits)"
    )
    naive_ctx.close()
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
