"""Needle in a haystack: can the model find one fact placed anywhere in a long context?

A needle ("The secret code for the blue door is 4827.") is put at a depth (0: the start,
1: the end) of filler text (the haystack) sized to a context length in tokens; the model is
asked for the code, answers greedily, and scores a hit when the code appears in its answer.
Depths are spread through the context and sampled densely near both edges, where models are
known to recall best, so that the edges can be compared with the middle.

The haystack is prose generated from word lists (deterministic for a seed, and free of
digits, so it can never contain a code) or sentences of a local text file.

Cost: for one (trial, length) the haystack is fixed and the needle moves. Depths run from
the end to the start, so the text before the needle is a prefix of the previous prompt and
the runtime's prefix cache skips it: with the default depths, ~45% of the prompt tokens
are never recomputed. A default run on SmolLM2-135M at its default 4096-token context reads
~100k prompt tokens (~57k evaluated), a few minutes on 2 cores; ``quick`` is ~8x less.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError, option
from pocketlm.progress import NullProgress, Progress
from pocketlm.services import results
from pocketlm.services.results import ResultsDB
from pocketlm.services.runtime import LoadedModel

DEFAULT_DEPTHS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 1.0)
QUICK_DEPTHS = (0.0, 0.02, 0.1, 0.5, 0.9, 0.98, 1.0)
QUICK_MAX_LENGTH = 1024
FIRST_LENGTH = 256
EDGE = 0.1  # depths within this fraction of either end count as "edges"
MAX_ANSWER_TOKENS = 16
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0}  # no penalty: the answer repeats context

# -- the haystack ---------------------------------------------------------------------------

# Filler words: no digits, and none of the needle's words (colors, things, "secret", "code"),
# so the filler can neither contain an answer nor look like a second needle.
_NAMES = "Anna Tomas Mira Jonah Elise Farid Greta Hugo Ines Leo Nadia Oskar Priya Sofia".split()
_ADJECTIVES = (
    "quiet old narrow busy warm distant small steep crowded gentle empty bright muddy wooden "
    "ancient windy calm crooked famous humble tidy noisy shady sunny"
).split()
_NOUNS = (
    "farmer teacher river market bridge village garden train library baker harbor orchard "
    "mountain festival letter lantern fisherman meadow carpenter road museum kitchen painter"
).split()
_PLACES = "valley coast square hills station lake border island city fields monastery".split()
_VERBS = (
    "visited repaired described painted admired followed crossed remembered cleaned watched "
    "carried explored praised sketched"
).split()
_TIMES = (
    "In the morning|Every spring|Late at night|On market days|After the rain|During the long "
    "winter|Each autumn|Before dawn|At noon|In the evening"
).split("|")
_ADVERBS = "slowly carefully happily quietly often rarely eagerly patiently proudly gladly".split()
_TEMPLATES = (
    "The {adj} {noun} {verb} the {adj2} {noun2} near the {place}.",
    "{time}, {name} {verb} the {noun} {adv}.",
    "{name} said that the {noun} in the {place} was {adj} and {adj2}.",
    "{time}, the {noun2} by the {adj} {noun} looked {adj2}.",
    "Nobody in the {place} {verb} the {adj} {noun} as {adv} as {name} did.",
    "{name} and {name2} {verb} the {adj} {noun} on the way to the {place}.",
    "Travelers from the {place} {adv} {verb} the {noun} and the {adj} {noun2}.",
)


def filler_sentences(rng: random.Random) -> Iterator[str]:
    """An endless stream of plausible sentences, the same for the same ``rng`` state."""
    pick = rng.choice
    while True:
        yield pick(_TEMPLATES).format(
            adj=pick(_ADJECTIVES),
            adj2=pick(_ADJECTIVES),
            noun=pick(_NOUNS),
            noun2=pick(_NOUNS),
            verb=pick(_VERBS),
            place=pick(_PLACES),
            time=pick(_TIMES),
            name=pick(_NAMES),
            name2=pick(_NAMES),
            adv=pick(_ADVERBS),
        )


def file_sentences(path: Path) -> list[str]:
    """The sentences of a UTF-8 text file (whitespace collapsed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"haystack file not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise UsageError(f"cannot read haystack {path} as UTF-8 text ({e})") from None
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]
    if not sentences:
        raise UsageError(f"haystack file {path} holds no text", "give a file of prose")
    return sentences


# -- the needle -----------------------------------------------------------------------------

_COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "silver", "golden")
_THINGS = ("door", "box", "gate", "safe", "locker", "vault", "chest", "cabinet")


@dataclass(frozen=True)
class Needle:
    key: str  # "blue door"
    answer: str  # "4827"

    @property
    def fact(self) -> str:
        return f"The secret code for the {self.key} is {self.answer}."

    @property
    def question(self) -> str:
        return f"What is the secret code for the {self.key}?"

    def found_in(self, output: str) -> bool:
        """The answer appears in ``output`` (digit groups "4 827" / "4,827" joined first)."""
        return self.answer in re.sub(r"(?<=\d)[\s,](?=\d)", "", output)


def make_needle(rng: random.Random, avoid: str = "") -> Needle:
    """A random key and a 4-digit code that does not occur in ``avoid`` (a haystack's text)."""
    key = f"{rng.choice(_COLORS)} {rng.choice(_THINGS)}"
    for _ in range(1000):
        if (answer := str(rng.randrange(1000, 10000))) not in avoid:
            return Needle(key, answer)
    raise UsageError(
        "the haystack holds so many numbers that no 4-digit code is missing from it",
        "give a haystack file of prose",
    )


# -- the report -----------------------------------------------------------------------------


@dataclass
class NeedleSample:
    """One prompt: where the needle was, what the model said, and whether it was right."""

    length: int  # target context length in tokens
    depth: float
    trial: int
    answer: str
    output: str
    found: bool
    prompt_tokens: int


@dataclass
class NeedleReport:
    lengths: list[int]  # context lengths in tokens (the whole prompt)
    depths: list[float]  # needle depth: 0 = start of the context, 1 = end
    recall: list[list[float]]  # [length][depth]: fraction of trials answered right
    edges_recall: float | None  # mean recall over depths <= EDGE or >= 1 - EDGE
    middle_recall: float | None  # mean recall over the depths in between
    start_recall: float | None  # the edges apart: depths <= EDGE
    end_recall: float | None  # depths >= 1 - EDGE
    mean_recall: float
    trials: int
    seed: int
    model: str
    n_ctx: int
    prompt_format: str  # "chat" (the model's template) or "raw" (Question: ... Answer:)
    haystack: str  # "generated" or the file's path
    seconds: float
    prompt_tokens: int = 0  # tokens in all prompts
    evaluated_tokens: int = 0  # of which evaluated (the rest came from the prefix cache)
    samples: list[NeedleSample] = field(default_factory=list)
    result_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def edges_and_middle(
    depths: Sequence[float], recall: Sequence[Sequence[float]]
) -> tuple[float | None, float | None]:
    """Mean recall of the cells at the edges (depth within EDGE of 0 or 1) and in the middle;
    None for a group with no depth in it."""
    return (
        _mean_where(depths, recall, lambda d: d <= EDGE or d >= 1 - EDGE),
        _mean_where(depths, recall, lambda d: EDGE < d < 1 - EDGE),
    )


def _mean_where(depths, recall, keep) -> float | None:
    cells = [r for row in recall for d, r in zip(depths, row) if keep(d)]
    return _mean(cells) if cells else None


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


# -- grids ----------------------------------------------------------------------------------


def max_length(model: LoadedModel) -> int:
    """The longest prompt that leaves room for the answer in the model's context."""
    return model.n_ctx - MAX_ANSWER_TOKENS - 8  # 8: slack for tokenizer merges at the seams


def default_lengths(n_max: int, *, quick: bool = False) -> list[int]:
    """256, 512, 1024, ... while below ``n_max``, then ``n_max`` itself (``quick``: at most
    QUICK_MAX_LENGTH)."""
    top = min(n_max, QUICK_MAX_LENGTH) if quick else n_max
    lengths = []
    n = FIRST_LENGTH
    while n < top:
        lengths.append(n)
        n *= 2
    return lengths + [top]


def check_grid(
    lengths: Sequence[int], depths: Sequence[float], trials: int, n_max: int, n_min: int
) -> None:
    """Raise a UsageError naming the first value out of range."""
    if trials < 1:
        raise UsageError(f"invalid trials {trials}: must be at least 1")
    if not lengths:
        raise UsageError("no context lengths given")
    if not depths:
        raise UsageError("no needle depths given")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise UsageError(f"invalid depth {d}: depths are fractions from 0 (start) to 1 (end)")
    for n in lengths:
        if n > n_max:
            raise UsageError(
                f"context length {n} does not fit: the context holds {n_max} prompt tokens "
                f"with room for a {MAX_ANSWER_TOKENS}-token answer",
                f"load the model with {option('ctx', n + MAX_ANSWER_TOKENS + 8)} or give shorter "
                "lengths",
            )
        if n < n_min:
            raise UsageError(
                f"context length {n} is too short: the needle and the question alone take "
                f"{n_min} tokens"
            )


# -- prompts --------------------------------------------------------------------------------


class _Prompter:
    """Builds the text the model reads, and counts its tokens."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.format = "chat" if model.template else "raw"

    def text(self, context: str, needle: Needle) -> str:
        if self.format == "raw":
            return f"{context}\nQuestion: {needle.question}\nAnswer:"
        return f"{context}\n\n{needle.question}"

    def ask(self, context: str, needle: Needle):
        prompt = self.text(context, needle)
        if self.format == "raw":
            return self.model.generate(prompt, raw=True, max_tokens=MAX_ANSWER_TOKENS, **GREEDY)
        messages = [{"role": "user", "content": prompt}]
        return self.model.chat(messages, max_tokens=MAX_ANSWER_TOKENS, **GREEDY)

    def min_length(self) -> int:
        """Tokens of a prompt with the longest needle and no haystack, plus a little filler."""
        longest = Needle(f"{max(_COLORS, key=len)} {max(_THINGS, key=len)}", "0000")
        return self.n_tokens(longest.fact, longest) + 8

    def n_tokens(self, context: str, needle: Needle) -> int:
        prompt = self.text(context, needle)
        if self.format == "raw":
            return len(self.model.tokenize(prompt, add_special=True, parse_special=True))
        text = self.model.render([{"role": "user", "content": prompt}])
        return len(self.model.tokenize(text, add_special=True, parse_special=True))


@dataclass
class _Haystack:
    """Sentences to fill contexts with, and their token counts."""

    sentences: list[str]
    tokens: list[int]

    def fill(self, budget: int) -> list[str]:
        """The first sentences whose tokens add up to at most ``budget``."""
        total, n = 0, 0
        while n < len(self.sentences) and total + self.tokens[n] <= budget:
            total += self.tokens[n]
            n += 1
        return self.sentences[:n]


def _haystack_for(model, source, rng: random.Random, n_tokens: int) -> _Haystack:
    """``n_tokens`` worth of sentences: generated, or a file's from a random start (cycled)."""
    if source is None:
        stream = filler_sentences(rng)
    else:
        start = rng.randrange(len(source))
        stream = (source[(start + i) % len(source)] for i in range(1 << 62))
    sentences, counts, total = [], [], 0
    while total < n_tokens:
        s = next(stream)
        k = len(model.tokenize(" " + s, add_special=False))
        sentences.append(s)
        counts.append(k)
        total += k
    return _Haystack(sentences, counts)


def _insert(sentences: list[str], counts: list[int], depth: float, fact: str) -> str:
    """Put ``fact`` at the sentence boundary nearest ``depth`` of the haystack's tokens."""
    target = depth * sum(counts)
    at, seen = 0, 0
    for i, k in enumerate(counts):
        if abs(seen + k - target) >= abs(seen - target):
            break
        seen += k
        at = i + 1
    return " ".join(sentences[:at] + [fact] + sentences[at:])


def _context_for(prompter: _Prompter, hay: _Haystack, needle: Needle, length: int):
    """Sentences (and their token counts) that make the prompt ``length`` tokens at most."""
    overhead = prompter.n_tokens(needle.fact, needle)
    sentences = hay.fill(length - overhead)
    while sentences and prompter.n_tokens(" ".join([*sentences, needle.fact]), needle) > length:
        sentences = sentences[:-1]  # token counts of separate sentences undercounted the seams
    return sentences, hay.tokens[: len(sentences)]


# -- the run --------------------------------------------------------------------------------


@dataclass
class NeedlePrompt:
    """One question to ask: the context holds the needle's fact at ``depth``."""

    length: int
    depth: float
    trial: int
    needle: Needle
    context: str


def needle_prompts(
    model: LoadedModel,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    haystack: str | Path | None = None,
    trials: int = 1,
    seed: int = 0,
) -> Iterator[NeedlePrompt]:
    """The prompts of a run, in the order that reuses the most cache: per trial (one needle
    and one haystack) and length, depths from the end to the start. A trial's needle and
    haystack depend only on ``seed`` and the trial's number, not on the grid."""
    source = file_sentences(Path(haystack)) if haystack is not None else None
    avoid = " ".join(source) if source else ""
    prompter = _Prompter(model)
    for trial in range(trials):
        rng = random.Random(f"needle/{seed}/{trial}")  # str seeds hash the same in every run
        needle = make_needle(rng, avoid)
        hay = _haystack_for(model, source, rng, max(lengths))
        for length in lengths:
            sentences, counts = _context_for(prompter, hay, needle, length)
            for depth in sorted(depths, reverse=True):
                context = _insert(sentences, counts, depth, needle.fact)
                yield NeedlePrompt(length, depth, trial, needle, context)


def run_needle(
    model: LoadedModel,
    *,
    lengths: Sequence[int] | None = None,
    depths: Sequence[float] | None = None,
    haystack: str | Path | None = None,
    trials: int = 1,
    seed: int = 0,
    quick: bool = False,
    progress: Progress | None = None,
    record: bool = True,
    db: ResultsDB | None = None,
) -> NeedleReport:
    """Recall of a needle at each (context length, depth), ``trials`` needles per cell.

    ``lengths`` default to a doubling series from 256 up to what the loaded context holds;
    ``depths`` to DEFAULT_DEPTHS. ``quick`` picks smaller defaults (QUICK_DEPTHS, lengths up
    to QUICK_MAX_LENGTH). ``haystack``: a text file to take filler sentences from (default:
    generated prose). Greedy decoding: the same seed gives the same report. ``record``
    adds the report to the results database (``db``, default the store's); the samples
    stay out of it. ``charts.needle_heatmap`` draws a report.
    """
    started = time.perf_counter()
    prompter = _Prompter(model)
    n_max = max_length(model)
    if lengths is None:
        lengths = default_lengths(n_max, quick=quick)
    if depths is None:
        depths = QUICK_DEPTHS if quick else DEFAULT_DEPTHS
    lengths, depths = sorted(set(lengths)), sorted({float(d) for d in depths})
    check_grid(lengths, depths, trials, n_max, prompter.min_length())

    hits = {(n, d): 0 for n in lengths for d in depths}
    samples: list[NeedleSample] = []
    task = (progress or NullProgress()).task(
        f"needle: {len(lengths)} lengths x {len(depths)} depths x {trials} trial(s)",
        total=len(depths) * sum(lengths) * trials,
        unit="tokens",
    )
    evaluated = 0
    for p in needle_prompts(model, lengths, depths, haystack=haystack, trials=trials, seed=seed):
        out = prompter.ask(p.context, p.needle)
        found = p.needle.found_in(out.text)
        hits[p.length, p.depth] += found
        samples.append(
            NeedleSample(
                p.length,
                p.depth,
                p.trial,
                p.needle.answer,
                out.text,
                found,
                out.stats.prompt_tokens,
            )
        )
        evaluated += out.stats.prompt_tokens - out.stats.cached_tokens
        task.advance(p.length)

    recall = [[hits[n, d] / trials for d in depths] for n in lengths]
    edges, middle = edges_and_middle(depths, recall)
    report = NeedleReport(
        lengths=list(lengths),
        depths=depths,
        recall=recall,
        edges_recall=edges,
        middle_recall=middle,
        start_recall=_mean_where(depths, recall, lambda d: d <= EDGE),
        end_recall=_mean_where(depths, recall, lambda d: d >= 1 - EDGE),
        mean_recall=_mean([r for row in recall for r in row]),
        trials=trials,
        seed=seed,
        model=model.name,
        n_ctx=model.n_ctx,
        prompt_format=prompter.format,
        haystack=str(Path(haystack).resolve()) if haystack is not None else "generated",
        seconds=time.perf_counter() - started,
        prompt_tokens=sum(s.prompt_tokens for s in samples),
        evaluated_tokens=evaluated,
        samples=samples,
    )
    if record:
        report.result_id = _record(report, model, db)
    return report


_SETTINGS = ("lengths", "depths", "trials", "seed", "haystack", "n_ctx", "prompt_format")
_METRICS = (
    "recall",
    "edges_recall",
    "middle_recall",
    "start_recall",
    "end_recall",
    "mean_recall",
    "seconds",
    "prompt_tokens",
    "evaluated_tokens",
)


def _record(report: NeedleReport, model: LoadedModel, db: ResultsDB | None) -> int:
    """The report as a results-database row (kind "needle"); samples stay out of it."""
    d = report.to_dict()
    settings = {k: d[k] for k in _SETTINGS} | {"max_answer_tokens": MAX_ANSWER_TOKENS}
    return results.record(
        "needle",
        task_name(report),
        report.model,
        {k: d[k] for k in _METRICS},
        settings,
        manifest=model.manifest,
        file_type=model.info.file_type,
        db=db,
    )


def task_name(report: NeedleReport) -> str:
    """The task a run is recorded under: "needle", or "needle:FILE" for a haystack file."""
    return "needle" if report.haystack == "generated" else f"needle:{Path(report.haystack).name}"
