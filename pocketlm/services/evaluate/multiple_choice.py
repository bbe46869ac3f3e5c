"""Log-likelihood multiple choice: acc and acc_norm as lm-evaluation-harness reports them.

acc picks the choice with the highest summed log-probability; acc_norm divides each sum by
the choice's length in bytes (UTF-8) first. Zero- or few-shot: k solved examples from the
same file (drawn once with the seed; never the item itself) precede every question.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pocketlm.engine.llama import Model
from pocketlm.errors import UsageError, option
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.evaluate.datasets import MCItem
from pocketlm.services.evaluate.scoring import Scorer


@dataclass
class MCReport:
    n: int
    acc: float
    acc_norm: float
    acc_stderr: float
    acc_norm_stderr: float
    chance: float  # expected acc of guessing
    shots: int
    seconds: float
    items_per_s: float
    tokens_scored: int

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_for(item: MCItem, examples: Sequence[MCItem]) -> str:
    shots = "".join(ex.example() + "\n\n" for ex in examples if ex is not item)
    return item.preamble + shots + item.context


def choose_examples(items: Sequence[MCItem], shots: int, seed: int) -> list[MCItem]:
    if shots < 0:
        raise UsageError(f"invalid {option('shots', shots)}: must be 0 or more")
    if shots >= len(items):
        raise UsageError(f"{option('shots', shots)} needs more items than the file's {len(items)}")
    # one more than asked: an item drawn as an example is skipped when it is itself asked
    return random.Random(seed).sample(list(items), min(shots + 1, len(items)))


def run_multiple_choice(
    model: Model,
    items: Sequence[MCItem],
    *,
    shots: int = 0,
    seed: int = 1234,
    threads: int = 1,
    n_ctx: int = 2048,
    progress: Progress | None = None,
) -> MCReport:
    progress = progress or NullProgress()
    started = time.perf_counter()
    pool = choose_examples(items, shots, seed)
    scorer = Scorer(model, n_ctx=min(n_ctx, max(model.n_ctx_train, 512)), n_threads=threads)
    try:
        groups = []
        for item in items:
            examples = [ex for ex in pool if ex is not item][:shots]
            groups.append(scorer.group(prompt_for(item, examples), item.choices))
        task = progress.task("scoring", len(groups), unit="items")
        scored = scorer.score(groups, on_group=task.advance)
    finally:
        scorer.close()
    right = right_norm = 0
    for item, results in zip(items, scored):
        sums = [s.logprob for s in results]
        normed = [s / max(len(c.encode("utf-8")), 1) for s, c in zip(sums, item.choices)]
        right += _argmax(sums) == item.answer
        right_norm += _argmax(normed) == item.answer
    n = len(items)
    seconds = time.perf_counter() - started
    return MCReport(
        n=n,
        acc=right / n,
        acc_norm=right_norm / n,
        acc_stderr=_stderr(right / n, n),
        acc_norm_stderr=_stderr(right_norm / n, n),
        chance=sum(1 / len(i.choices) for i in items) / n,
        shots=shots,
        seconds=seconds,
        items_per_s=n / seconds,
        tokens_scored=sum(len(g.context) + sum(map(len, g.continuations)) for g in groups),
    )


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0
