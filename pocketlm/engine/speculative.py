"""Speculative decoding: guess the next few tokens cheaply, check them all in one batch.

A decode step of a model this size costs about as much for a handful of tokens as for one
(it reads every weight once either way: on 2 CPU threads the Qwen2.5 1.5B model took 85-90
ms for 1 token and 100-130 ms for 4 with stock llama.cpp, and takes 55 and 60 ms with
pocketlm's engine patches 0007-0008, docs/engine.md). So the sequence's next token and k drafted
tokens after it are evaluated together, and the target model samples each position in
turn, exactly as plain decoding would: while its draw equals the draft, the draft token is
kept (its KV is already in the cache) and the next position is drawn; the first draw that
differs is kept too and the rest is dropped. Each step yields 1 to k + 1 tokens.

Lossless. Every emitted token is the target's own draw from its own logits given the same
prefix, with the same sampler chain (penalties, grammar) and one random number per token,
as in plain decoding. Drafts here are
deterministic (n-grams, or the draft model's greedy choice), and for a deterministic draft
the standard rejection rule (accept d with probability min(1, p(d) / q(d)) = p(d), else draw
from p without d, renormalised) is the same distribution as "draw from p, keep d if the draw
is d": the output distribution is unchanged.

Greedy decoding is speculative only where it is exact. Stock llama.cpp's CPU kernels change
paths with the number of tokens in a step (repacked GEMM, llamafile's tinyBLAS, attention
over several queries) and round differently: a step of several tokens moved logits by up to
0.5 on Qwen2.5 Q4_K_M files, and the KV it wrote moved later logits further. That is
harmless to a sampled distribution but flips greedy near-ties, so the text would differ
from plain decoding's. pocketlm's engine patches 0001-0004 (docs/engine.md) make a step of
n tokens compute each token's logits bit for bit as n one-token steps do, on x86 with AVX2 or
AVX-512 for the ladder's quantization types. Whether that holds for a file on this machine
is measured with the step costs (``calibrate``: batches of several sizes against one-token
steps, and the KV they wrote against the next step's), and greedy requests draft only where
every logit was identical (``Calibration.exact``); elsewhere they decode plainly.

Drafts come from
  - prompt lookup (``Lookup``): the continuation of the last earlier occurrence of the
    sequence's final n tokens (n = 4 down to 1) in the prompt and the answer so far; free,
    and right whenever the answer copies (rewrites, edits, extraction, code);
  - a draft model (``DraftModel``): a smaller model with the same vocabulary, greedy.

Never slower (``Speculator``): the number of drafted tokens is chosen each step to maximise
expected tokens per second, from the measured acceptance of each source (per n-gram length
for lookup; lookup proposals that were not verified are scored against the token that came,
so its acceptance is known for free) and the measured cost of a step of n tokens on this
machine. When no draft pays, the step is plain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pocketlm.engine.llama import Context, Model, Sampler
from pocketlm.errors import UsageError, option
from pocketlm.store.store import write_atomic

MAX_DRAFT = 16  # most tokens drafted in one step
CALIBRATION_SIZES = (2, 3, 4, 5, 6, 7, 8, 9, 12, MAX_DRAFT + 1)  # step sizes timed once per model
CALIBRATION_REPEATS = 3  # timings of each size; the median is kept
PLAUSIBLE_DIP = 0.7  # a step of more tokens measured below 0.7x one of fewer: disturbed
NOISE_FLOOR = 1e-3  # seconds: a one-token step this fast is timer noise (tiny test models)
NGRAM_MAX = 4
PRIOR_STEP_SLOPE = 0.1  # until measured: a step of n tokens costs (1 + 0.1 (n - 1)) x one
DECAY = 0.97  # weight of older observations in the acceptance and cost estimates
# auto: a draft must promise this much more speed than a plain step (the estimate leaves out
# proposing, sampling each position and dropping rejected KV: measured, a 10% promise was a
# 4% loss on Qwen2.5 1.5B, where a step of 2 tokens costs 1.8 steps of one)
MIN_GAIN = 1.15


def mode_for(speculate: str | None, lookup: bool, draft: bool) -> str:
    """The Speculator mode the load options ask for: ``--lookup`` or ``--draft`` alone use
    that source at every step; ``auto`` (the default, or both given) uses what pays."""
    if speculate == "off":
        if lookup or draft:
            raise UsageError(
                f"{option('speculate', 'off')} cannot be combined with "
                f"{option('lookup', True)} or {option('draft')}",
                "choose one",
            )
        return "off"
    if speculate == "auto" or (lookup and draft) or not (lookup or draft):
        return "auto"
    return "lookup" if lookup else "draft"


# -- draft sources ------------------------------------------------------------------


class Lookup:
    """Prompt lookup: n-gram index of one sequence's tokens (prompt and answer)."""

    def __init__(self, ngram_max: int = NGRAM_MAX):
        self.ngram_max = ngram_max
        self.tokens: list[int] = []
        # _after[n - 1][the n tokens] = index just past their latest occurrence that has a
        # successor (the sequence's own final n tokens are entered once the next one comes)
        self._after: list[dict[tuple[int, ...], int]] = [{} for _ in range(ngram_max)]

    def sync(self, tokens: Sequence[int]) -> None:
        """Make the index hold ``tokens`` (extended in place when they continue it)."""
        have = self.tokens
        if len(tokens) < len(have) or list(tokens[: len(have)]) != have:
            self.tokens, self._after = [], [{} for _ in range(self.ngram_max)]
        for tok in tokens[len(self.tokens) :]:
            self._push(tok)

    def _push(self, tok: int) -> None:
        h, n_have = self.tokens, len(self.tokens)
        for n in range(1, min(self.ngram_max, n_have) + 1):
            self._after[n - 1][tuple(h[n_have - n :])] = n_have
        h.append(tok)

    def propose(self, k: int) -> tuple[list[int], int]:
        """Up to ``k`` tokens that followed the longest matching n-gram, and that n (0: none)."""
        h = self.tokens
        for n in range(min(self.ngram_max, len(h)), 0, -1):
            at = self._after[n - 1].get(tuple(h[-n:]))
            if at is not None:
                return h[at : at + k], n
        return [], 0


class DraftModel:
    """A smaller model with the target's vocabulary, drafting greedily in a context of its
    own (which keeps the sequence's KV between steps: only new tokens are evaluated)."""

    def __init__(self, name: str, model: Model, *, n_ctx: int, n_threads: int):
        self.name = name
        self.model = model
        self.ctx = Context(model, n_ctx=n_ctx, n_threads=n_threads, n_batch=min(512, n_ctx))
        self._greedy = Sampler.greedy(model.n_vocab)
        # measured (catching up included); first from the draft model's own calibration
        self.seconds_per_token: float | None = None

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        if len(tokens) + k > self.ctx.n_ctx:
            return []
        started = time.perf_counter()
        self.ctx.prefill(tokens)
        out: list[int] = []
        for i in range(k):
            out.append(self._greedy.sample(self.ctx))
            if i < k - 1:
                self.ctx.step(out[-1])
        per = (time.perf_counter() - started) / max(k, 1)
        old = self.seconds_per_token
        self.seconds_per_token = per if old is None else DECAY * old + (1 - DECAY) * per
        return out

    def close(self) -> None:
        self._greedy.close()
        self.ctx.close()
        self.model.close()


def check_vocabulary(target: Model, draft: Model, target_name: str, draft_name: str) -> None:
    """Drafts are token ids: the two models must give every id the same text."""
    same = target.n_vocab == draft.n_vocab
    if same:
        step = max(1, target.n_vocab // 997)
        ids = {*range(0, target.n_vocab, step), target.n_vocab - 1, target.eos, target.bos}
        same = all(target.token_text(i) == draft.token_text(i) for i in ids if i >= 0)
    if not same:
        raise UsageError(
            f"draft model '{draft_name}' ({draft.n_vocab} tokens) does not share the "
            f"vocabulary of '{target_name}' ({target.n_vocab} tokens)",
            "a draft model must come from the same family (e.g. Qwen2.5 0.5B for Qwen2.5 1.5B)",
        )


# -- what a step of n tokens costs ------------------------------------------------------


class StepCosts:
    """Seconds of a decode step of one sequence with n tokens in it, measured on this
    machine (shared by every sequence of a model)."""

    def __init__(self) -> None:
        self._t: dict[int, float] = {}

    def observe(self, n: int, seconds: float) -> None:
        old = self._t.get(n)
        self._t[n] = seconds if old is None else DECAY * old + (1 - DECAY) * seconds

    def __call__(self, n: int) -> float | None:
        """Estimated seconds for n tokens (None until a one-token step was measured)."""
        if n in self._t:
            return self._t[n]
        below = [m for m in self._t if m < n]
        if not below:
            return None
        m = max(below)  # extrapolate from the largest measured size below n
        return self._t[m] * (1 + PRIOR_STEP_SLOPE * (n - 1)) / (1 + PRIOR_STEP_SLOPE * (m - 1))


# -- policy ------------------------------------------------------------------------------


@dataclass
class Acceptance:
    """Probability that a drafted token is accepted, given the ones before it were: a
    decaying count of hits and misses (a Beta(1, 1) prior)."""

    hits: float = 1.0
    misses: float = 1.0

    def add(self, hits: int, misses: int) -> None:
        self.hits = DECAY ** (hits + misses) * self.hits + hits
        self.misses = DECAY ** (hits + misses) * self.misses + misses

    @property
    def p(self) -> float:
        return self.hits / (self.hits + self.misses)


def expected_tokens(p: float, k: int) -> float:
    """Tokens one step yields with k drafts each accepted with probability p: 1 + p + ... + p^k."""
    return float(k + 1) if p >= 1 else (1 - p ** (k + 1)) / (1 - p)


@dataclass
class Draft:
    tokens: list[int]
    source: str  # "lookup" or "draft"
    ngram: int = 0  # lookup: the length of the n-gram that matched


@dataclass
class SpecCounts:
    drafted: int = 0
    accepted: int = 0
    steps: int = 0  # verification steps (steps with at least one draft)


@dataclass
class Speculator:
    """Chooses each step's draft for one sequence at a time (``reset`` between sequences).

    ``mode``: "auto" (prompt lookup and the draft model if there is one, each used only
    when it pays), "lookup" or "draft" (that source whenever it has a proposal, its length
    still adapted), or "off"."""

    mode: str = "auto"
    draft_model: DraftModel | None = None
    costs: StepCosts = field(default_factory=StepCosts)
    max_draft: int = MAX_DRAFT
    counts: SpecCounts = field(default_factory=SpecCounts)
    # a step of several tokens gives one-token steps' logits bit for bit (measured by
    # ``calibrate``): greedy decoding may draft
    exact: bool = False

    def __post_init__(self) -> None:
        self.lookup = Lookup()
        self._lookup_p = [Acceptance() for _ in range(NGRAM_MAX)]
        self._draft_p = Acceptance(hits=3.0, misses=1.0)  # try it first; measured after
        self._shadow: tuple[int, int, int] | None = None  # (index, proposed token, ngram)
        self._pending: Draft | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        if self.mode == "off":
            return ()
        if self.mode == "lookup":
            return ("lookup",)
        if self.mode == "draft":
            return ("draft",)
        return ("lookup", "draft") if self.draft_model is not None else ("lookup",)

    def reset(self) -> None:
        """A new sequence: its counts start at zero; what was learnt of this machine and of
        the sources' acceptance stays."""
        self.counts = SpecCounts()
        self._shadow = None
        self._pending = None

    def calibrated(self, cal: Calibration, draft: Calibration | None = None) -> Speculator:
        """Start from what ``calibrate`` measured of this model (and of the draft model) on
        this machine."""
        for n, seconds in cal.costs.items():
            self.costs.observe(n, seconds)
        self.exact = cal.exact
        if draft is not None and self.draft_model is not None:
            self.draft_model.seconds_per_token = draft.costs[1]
        return self

    def propose(self, tokens: Sequence[int], room: int, greedy: bool = False) -> Draft | None:
        """The draft for the step after ``tokens`` (the sequence so far, including the token
        about to be evaluated), at most ``room`` tokens; None: a plain step (always for
        ``greedy`` decoding unless the model's batches are ``exact``: see the module's
        docstring)."""
        room = min(room, self.max_draft)
        if not self.sources or room <= 0 or (greedy and not self.exact):
            return None
        self.lookup.sync(tokens)
        self._score_shadow(tokens)
        t1 = self.costs(1)
        if t1 is None:
            return None  # measure a plain step first
        best: tuple[float, str, int, list[int], int] = (MIN_GAIN / t1, "", 0, [], 0)
        forced = self.mode in ("lookup", "draft")
        if "lookup" in self.sources:
            proposal, n = self.lookup.propose(room)
            if proposal:
                self._shadow = (len(tokens), proposal[0], n)
                k, speed = self._best_k(self._lookup_p[n - 1].p, len(proposal), 0.0, forced)
                if (k and speed > best[0]) or forced:
                    best = (speed, "lookup", k, proposal[:k], n)
        if "draft" in self.sources and self.draft_model is not None:
            per = self.draft_model.seconds_per_token or 0.0
            k, speed = self._best_k(self._draft_p.p, room, per, forced)
            if k and (speed > best[0] or forced):
                best = (speed, "draft", k, [], 0)
        _, source, k, proposal, n = best
        if not source or k == 0:
            return None
        if source == "draft":
            proposal = self.draft_model.propose(tokens, k)
            if not proposal:
                return None
        self._pending = Draft(proposal, source, n)
        return self._pending

    def _best_k(self, p: float, most: int, draft_s: float, forced: bool) -> tuple[int, float]:
        """The draft length with the most expected tokens per second, and that rate (k = 0:
        a plain step); ``forced``: at least one token."""
        best_k, best = 0, 0.0
        for k in range(0 if not forced else 1, most + 1):
            t = self.costs(k + 1)  # known: extrapolated from the measured one-token step
            rate = expected_tokens(p, k) / (t + draft_s * k)
            if rate > best:
                best_k, best = k, rate
        return best_k, best

    def _score_shadow(self, tokens: Sequence[int]) -> None:
        """A lookup proposal that was not verified, scored against the token that came."""
        if self._shadow is None:
            return
        at, proposed, n = self._shadow
        self._shadow = None
        if at < len(tokens):
            hit = tokens[at] == proposed
            self._lookup_p[n - 1].add(int(hit), int(not hit))

    def verified(self, draft: Draft | None, accepted: int, seconds: float) -> None:
        """The step is done: ``accepted`` of the draft's tokens were kept; the step took
        ``seconds`` (the decode of its 1 + len(draft) tokens)."""
        self._pending = None
        if draft is None:
            self.costs.observe(1, seconds)
            return
        k = len(draft.tokens)
        self.costs.observe(k + 1, seconds)
        self.counts.drafted += k
        self.counts.accepted += accepted
        self.counts.steps += 1
        misses = int(accepted < k)
        if draft.source == "lookup":
            self._lookup_p[draft.ngram - 1].add(accepted, misses)
            self._shadow = None  # this proposal was verified, not shadowed
        else:
            self._draft_p.add(accepted, misses)

    def close(self) -> None:
        if self.draft_model is not None:
            self.draft_model.close()
            self.draft_model = None


# -- what this machine's kernels do with a step of n tokens -------------------------------


@dataclass
class Calibration:
    """Seconds of a decode step of n tokens of one sequence, for this model on this machine,
    and whether such a step gave every token the logits of one-token steps bit for bit
    (``exact``: greedy decoding may draft)."""

    costs: dict[int, float]
    exact: bool = False


def calibrate(model: Model, *, n_threads: int, flash_attn: bool, on_measure=None) -> Calibration:
    """Time steps of CALIBRATION_SIZES tokens once per engine build, CPU, file and settings
    (cached): the Speculator then chooses draft lengths from this machine's figures from the
    first step on (a 1.5B model took 35 ms for 1 token and 107 ms for 4 on one 2-core
    machine, 88 and 100-130 ms on another).

    Figures timed while something else held the cores can say that a step of several tokens
    is cheaper than a step of one (seen: 0.70 s for 1 token, 0.08 s for 2), which would have
    ``auto`` draft where it loses. Such figures (``plausible``) are neither cached nor used:
    this load takes a cost of n times one token's (``auto`` then drafts nothing), and the
    next load measures again; a cached entry of that kind is measured again too.
    ``on_measure()`` is called before measuring (not when the figures are cached)."""
    from pocketlm.engine import probe

    key = f"{probe.file_key(model.path)}:{n_threads}:{flash_attn}"
    cache = _read_cache()
    try:
        entry = cache[key]
        costs = {int(n): float(t) for n, t in entry["costs"].items()}
        cached = Calibration(costs, exact=entry["exact"] is True)
        if plausible(cached.costs):
            return cached
    except (KeyError, AttributeError, TypeError, ValueError):  # not measured, or unreadable
        pass
    if on_measure is not None:
        on_measure()
    cal = _measure(model, n_threads, flash_attn)
    if not plausible(cal.costs):
        return Calibration({n: n * cal.costs[1] for n in cal.costs}, exact=cal.exact)
    cache = _read_cache()
    cache[key] = {"costs": cal.costs, "exact": cal.exact}
    write_atomic(_cache_file(), json.dumps(cache, indent=1).encode())
    return cal


def plausible(costs: dict[int, float]) -> bool:
    """Whether step costs (size -> seconds) can be this machine's: a step of more tokens does
    all the work of a step of fewer, so it is never much cheaper (PLAUSIBLE_DIP). Below
    NOISE_FLOOR seconds a step is timer noise, and any figures go."""
    sizes = sorted(costs)
    if not sizes or costs[sizes[0]] <= 0:
        return False
    if costs[sizes[0]] < NOISE_FLOOR:
        return True
    most = 0.0
    for n in sizes:
        if costs[n] < PLAUSIBLE_DIP * most:
            return False
        most = max(most, costs[n])
    return True


def _measure(model: Model, n_threads: int, flash_attn: bool, base: int = 64) -> Calibration:
    """The median of CALIBRATION_REPEATS timings of each step size (one disturbed timing of
    a size does not count), and whether the steps are ``exact``."""
    n_max = max(CALIBRATION_SIZES)
    text = "def mean(xs):\n    return sum(xs) / len(xs)\n\nThe quick brown fox jumps over the dog. "
    tokens = model.tokenize(text * (8 + base // 8), add_special=True)[: base + n_max + 1]
    ctx = Context(model, n_ctx=base + 64, n_threads=n_threads, n_batch=512, flash_attn=flash_attn)
    times: dict[int, list[float]] = {n: [] for n in (1, *CALIBRATION_SIZES)}
    try:
        ctx.prefill(tokens[:base])
        for _ in range(CALIBRATION_REPEATS):
            for n in times:
                ctx.truncate(base)
                started = time.perf_counter()
                if n == 1:
                    ctx.step(tokens[base])
                else:
                    ctx.extend(tokens[base : base + n])
                times[n].append(time.perf_counter() - started)
        exact = _exact(ctx, tokens[base:], base)
        return Calibration({n: sorted(t)[len(t) // 2] for n, t in times.items()}, exact=exact)
    finally:
        ctx.close()


EXACT_SIZES = (2, 3, 4, 5, 6, 7, 9, MAX_DRAFT + 1)  # every remainder of 4- and 8-wide kernels


def _exact(ctx: Context, tokens: Sequence[int], base: int) -> bool:
    """Whether steps of EXACT_SIZES tokens after ``base`` cached ones give each token the
    logits that one-token steps give, bit for bit, and write the same KV (the one-token step
    after the batch gives the same logits too)."""
    n_max = max(EXACT_SIZES)
    ctx.truncate(base)
    alone = []
    for tok in tokens[: n_max + 1]:
        ctx.step(tok)
        alone.append(ctx.logits())
    for n in EXACT_SIZES:
        ctx.truncate(base)
        ctx.extend(tokens[:n])
        batch = [ctx.logits(i) for i in range(n)]
        ctx.step(tokens[n])
        batch.append(ctx.logits())
        if not all(np.array_equal(a, b) for a, b in zip(batch, alone)):
            return False
    return True


def _cache_file():
    from pocketlm import config

    return config.cache_dir() / "speculation.json"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
