"""Speculative decoding: the drafting policy, and outputs unchanged by it (greedy: the same
tokens; sampled: the same seed gives the same tokens, and the distribution is unchanged)."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter

import numpy as np
import pytest

import pocketlm
from pocketlm.engine.batch import BatchEngine, Finished, Request, TokenEvent
from pocketlm.engine.llama import Model
from pocketlm.engine.speculative import (
    CALIBRATION_SIZES,
    DraftModel,
    Lookup,
    Speculator,
    StepCosts,
    calibrate,
    expected_tokens,
    mode_for,
)
from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams
from tests.tinymodel import quantized_tiny_gguf, write_tiny_gguf

# -- the policy, without a model --------------------------------------------------------


def test_lookup_proposes_what_followed_the_longest_matching_ngram():
    lk = Lookup(ngram_max=3)
    lk.sync([1, 2, 3, 4, 9, 2, 3, 5, 7, 1, 2, 3])
    # "2 3" was followed by 4 and by 5; "1 2 3" (longer) only by 4
    assert lk.propose(3) == ([4, 9, 2], 3)
    lk.sync([1, 2, 3, 4, 9, 2, 3, 5, 7, 1, 2, 3, 5])  # extended in place
    assert lk.propose(2) == ([7, 1], 3)  # "2 3 5" -> 7
    lk.sync([8, 8])  # another sequence: rebuilt
    assert lk.propose(4) == ([8], 1)
    lk.sync([6])
    assert lk.propose(4) == ([], 0)


def test_expected_tokens_of_a_draft():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_step_costs_extrapolate_from_the_largest_measured_size_below():
    costs = StepCosts()
    assert costs(1) is None
    costs.observe(1, 0.1)
    assert costs(1) == 0.1
    assert costs(3) == pytest.approx(0.1 * 1.2)
    costs.observe(3, 0.3)
    assert costs(5) == pytest.approx(0.3 * 1.4 / 1.2)


def _spec(mode: str, step_cost) -> Speculator:
    spec = Speculator(mode=mode)
    for n in range(1, 10):
        spec.costs.observe(n, step_cost(n))
    return spec


def test_auto_drafts_when_verifying_is_cheap_and_the_text_repeats():
    spec = _spec("auto", lambda n: 0.1 + 0.005 * n)  # a batch costs little more than a token
    tokens = [5, 6, 7, 8] * 10
    draft = spec.propose(tokens, room=8)
    assert draft is not None and draft.source == "lookup"
    assert draft.tokens and draft.tokens == [5, 6, 7, 8][: len(draft.tokens)]


def test_auto_does_not_draft_when_a_step_costs_what_its_tokens_cost_one_by_one():
    spec = _spec("auto", lambda n: 0.1 * n)  # no batching gain: a draft can only lose
    assert spec.propose([5, 6, 7, 8] * 10, room=8) is None


def test_auto_stops_drafting_a_source_that_is_never_right():
    spec = _spec("auto", lambda n: 0.1 + 0.03 * n)
    tokens = [1, 2, 3] * 5
    for _ in range(30):  # every draft rejected at its first token
        draft = spec.propose(tokens, room=8)
        if draft is None:
            break
        spec.verified(draft, 0, 0.1 + 0.03 * (len(draft.tokens) + 1))
        tokens = tokens + [9]
    else:
        pytest.fail("kept drafting although nothing was ever accepted")
    # ... and a forced mode keeps drafting (its length adapted), as asked
    forced = _spec("lookup", lambda n: 0.1 * n)
    assert forced.propose([1, 2, 3] * 5, room=8) is not None


def test_unverified_lookup_guesses_are_scored_against_the_token_that_came():
    spec = _spec("auto", lambda n: 0.1 * n)  # never drafts, but keeps score
    tokens = [4, 5] * 6
    before = spec._lookup_p[3].p
    for _ in range(10):
        assert spec.propose(tokens, room=4) is None
        spec.verified(None, 0, 0.1)
        tokens = tokens + [tokens[-2]]  # the guess was right
    assert spec._lookup_p[3].p > before


def test_mode_from_the_options():
    assert mode_for(None, False, False) == "auto"
    assert mode_for(None, True, False) == "lookup"
    assert mode_for(None, False, True) == "draft"
    assert mode_for(None, True, True) == "auto"
    assert mode_for("auto", False, True) == "auto"
    assert mode_for("off", False, False) == "off"
    with pytest.raises(UsageError, match="cannot be combined"):
        mode_for("off", True, False)


# -- lossless, on a tiny real model -------------------------------------------------------

PROMPT = "one two three four five one two three four five one two three"


@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    """A tiny model whose kernels compute a short batch exactly as one-token steps (Q4_1,
    as SmolLM2's file), so a seeded sampled run gives the plain run's tokens."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tq") / "tiny-q4.gguf", seed=1, qtype="Q4_1")


def test_calibration_times_each_step_size_once_per_machine(tiny_q4, monkeypatch):
    m = Model(str(tiny_q4))
    try:
        cal = calibrate(m, n_threads=1, flash_attn=False)
        assert set(cal.costs) == {1, *CALIBRATION_SIZES} and min(cal.costs.values()) > 0
        assert cal.exact  # Q4_1 with patch 0001: batches round as one-token steps
        monkeypatch.setattr("pocketlm.engine.speculative._measure", None)  # cached now
        assert calibrate(m, n_threads=1, flash_attn=False) == cal
    finally:
        m.close()


def test_step_costs_timed_while_the_cores_were_busy_are_not_kept(tiny_q4, monkeypatch):
    """Figures where more tokens cost less (seen on a busy machine: 0.70 s for 1 token, 0.08
    for 2) are not cached and make drafting look as dear as it can be; a cached entry like
    that is measured again."""
    from pocketlm.engine import probe
    from pocketlm.engine import speculative as sp

    busy = {1: 0.70, 2: 0.078, 3: 0.075, 4: 0.094, 5: 0.14, 6: 0.14, 8: 0.23, 12: 0.31, 17: 0.32}
    quiet = {1: 0.035, 2: 0.063, 3: 0.07, 4: 0.107, 5: 0.12, 6: 0.13, 8: 0.17, 12: 0.25, 17: 0.33}
    assert not sp.plausible(busy) and sp.plausible(quiet)
    assert sp.plausible({1: 7e-5, 2: 1e-5})  # microseconds: timer noise, whatever it says
    measured = [busy]
    monkeypatch.setattr(sp, "_measure", lambda *a: sp.Calibration(dict(measured[-1])))
    m = Model(str(tiny_q4))
    try:
        key = f"{probe.file_key(m.path)}:2:True"  # settings no other test uses on this file
        cal = calibrate(m, n_threads=2, flash_attn=True)
        assert cal.costs == {n: n * 0.70 for n in busy}  # no draft pays this load
        assert key not in sp._read_cache()  # not cached: the next load measures again
        measured.append(quiet)
        assert calibrate(m, n_threads=2, flash_attn=True).costs == quiet
        cache = sp._read_cache()
        assert cache[key] == {"costs": {str(n): t for n, t in quiet.items()}, "exact": False}
        cache[key] = {"costs": busy, "exact": False}  # left before this check existed
        sp._cache_file().write_text(json.dumps(cache))
        measured.append({n: t * 1.1 for n, t in quiet.items()})
        assert calibrate(m, n_threads=2, flash_attn=True).costs == measured[-1]  # again
    finally:
        m.close()


def test_greedy_decoding_drafts_where_batches_are_exact_and_keeps_plain_text(tiny_q4):
    gen = dict(raw=True, temperature=0.0, max_tokens=48)
    with pocketlm.load(str(tiny_q4), speculate="off") as m:
        plain = m.generate(PROMPT, **gen)
        unpenalised = m.generate(PROMPT, **gen, repeat_penalty=1.0)
    for load in ({"draft": str(tiny_q4)}, {"lookup": True}):
        with pocketlm.load(str(tiny_q4), **load) as m:
            done = m.generate(PROMPT, **gen)
            self_drafted = m.generate(PROMPT, **gen, repeat_penalty=1.0)
        assert done.text == plain.text, load
        assert done.stats.completion_tokens == plain.stats.completion_tokens
        assert done.stats.drafted_tokens > 0, load
        assert self_drafted.text == unpenalised.text
        if "draft" in load:  # drafting greedily for itself (no penalty), the model's every
            # draft is its own next token, as its batch computes it
            s = self_drafted.stats
            assert 0 < s.accepted_tokens == s.drafted_tokens


def test_greedy_decoding_is_plain_where_batches_round_differently(tmp_path):
    """Q5_K has no batch-invariant kernel (the patches cover Q4_1, Q4_K, Q6_K, F16): the
    calibration finds a batch's logits differ, and greedy requests never draft on it."""
    path = quantized_tiny_gguf(tmp_path, "Q5_K")
    m = Model(str(path))
    try:
        assert not calibrate(m, n_threads=1, flash_attn=False).exact
    finally:
        m.close()
    with pocketlm.load(str(path), draft=str(path)) as m:
        greedy = m.generate(PROMPT, raw=True, temperature=0.0, max_tokens=24)
        sampled = m.generate(PROMPT, raw=True, temperature=0.5, seed=1, max_tokens=24)
    assert greedy.stats.drafted_tokens == 0 < sampled.stats.drafted_tokens


def test_a_seeded_sampled_run_gives_the_same_tokens_with_a_draft_model(tiny_q4):
    """The tiny model drafts for itself; some drafts are kept, some refused."""
    gen = dict(max_tokens=48, repeat_penalty=1.0, temperature=1.5, top_k=3, seed=7)
    with pocketlm.load(str(tiny_q4), speculate="off") as m:
        plain = m.generate(PROMPT, raw=True, **gen)
    with pocketlm.load(str(tiny_q4), draft=str(tiny_q4)) as m:
        spec = m.generate(PROMPT, raw=True, **gen)
    assert spec.text == plain.text
    s = spec.stats
    assert s.speculative == "draft" and plain.stats.speculative == "off"
    assert 0 < s.accepted_tokens < s.drafted_tokens
    assert s.completion_tokens == plain.stats.completion_tokens


def test_greedy_text_of_a_real_model_is_plain_decodings(default_model):
    text = (
        "Copy this list exactly, one item per line:\n"
        "apples, pears, plums, cherries, lemons, limes, oranges, grapes, melons, figs"
    )
    with pocketlm.load(str(default_model), speculate="off") as m:
        plain = m.generate(text, max_tokens=48, temperature=0.0)
    with pocketlm.load(str(default_model), lookup=True) as m:
        greedy = m.generate(text, max_tokens=48, temperature=0.0)
    assert greedy.text == plain.text and greedy.stats.accepted_tokens > 0


@pytest.fixture(scope="module")
def model(tiny_q4):
    m = Model(str(tiny_q4))
    yield m
    m.close()


def _generate(engine: BatchEngine, tokens, params: GenerationParams) -> tuple[list[int], Finished]:
    out: list[int] = []
    box: list[Finished] = []
    done = threading.Event()

    def on_done(f: Finished) -> None:
        box.append(f)
        done.set()

    def on_token(e: TokenEvent) -> bool:
        out.append(e.token)
        return True

    engine.submit(Request(list(tokens), params, on_token=on_token, on_done=on_done))
    assert done.wait(60), "no answer in 60 s"
    return out, box[0]


def _engine(model, mode: str | None) -> BatchEngine:
    """An engine; mode "draft": the tiny model drafts for itself."""
    spec = None
    if mode == "draft":
        own = DraftModel("tiny", Model(model.path), n_ctx=256, n_threads=1)
        spec = Speculator(mode=mode, draft_model=own)
    elif mode:
        spec = Speculator(mode=mode)
    return BatchEngine(model, n_seq=2, n_ctx_seq=256, n_threads=1, speculator=spec)


def test_the_batch_engine_drafts_for_a_sequence_alone_and_keeps_its_tokens(model):
    tokens = model.tokenize(PROMPT, add_special=True)
    params = GenerationParams(temperature=1.5, top_k=3, seed=5, max_tokens=40, repeat_penalty=1.0)
    plain_engine, spec_engine = _engine(model, None), _engine(model, "draft")
    try:
        plain, _ = _generate(plain_engine, tokens, params)
        spec, done = _generate(spec_engine, tokens, params)
        assert spec == plain
        assert done.speculative == "draft" and done.drafted_tokens > 0 < done.accepted_tokens
        assert done.completion_tokens == len(spec) == 40
        assert spec_engine.tokens_accepted == done.accepted_tokens
        # the cache holds what the slot says (no rejected draft left behind): the same
        # prompt again reuses it and gives the same tokens
        again, done2 = _generate(spec_engine, tokens, params)
        assert again == plain and done2.cached_tokens == len(tokens) - 1
    finally:
        plain_engine.close()
        spec_engine.close()


def test_the_batch_engine_honours_max_tokens_and_the_end_inside_a_draft(model):
    tokens = model.tokenize(PROMPT, add_special=True)
    engine = _engine(model, "draft")
    try:
        for n in (1, 2, 3, 5, 8, 13):
            params = GenerationParams(temperature=1.0, seed=n, max_tokens=n, repeat_penalty=1.0)
            out, done = _generate(engine, tokens, params)
            assert len(out) == done.completion_tokens <= n
            assert done.reason == "length" or len(out) < n
    finally:
        engine.close()


def _chi2_same_distribution(a: Counter, b: Counter) -> tuple[float, float]:
    """Chi-square statistic of two samples drawn from one distribution, and its 0.999
    quantile (Wilson-Hilferty)."""
    keys = sorted(set(a) | set(b))
    table = np.array([[a[k] for k in keys], [b[k] for k in keys]], dtype=float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    df = len(keys) - 1
    z = 3.09
    quantile = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, quantile


def test_sampled_drafts_leave_the_output_distribution_unchanged(model):
    """Different seeds for the two runs: the same distribution, not the same draws."""
    tokens = model.tokenize(PROMPT, add_special=True)
    n, length = 300, 4
    plain_engine, spec_engine = _engine(model, None), _engine(model, "draft")
    plain, spec = Counter(), Counter()
    drafted = accepted = 0
    try:
        for i in range(n):
            p = GenerationParams(temperature=1.5, top_k=3, max_tokens=length, repeat_penalty=1.0)
            out, _ = _generate(plain_engine, tokens, p.model_copy(update={"seed": i}))
            plain.update((pos, t) for pos, t in enumerate(out))
            out, done = _generate(spec_engine, tokens, p.model_copy(update={"seed": 10_000 + i}))
            spec.update((pos, t) for pos, t in enumerate(out))
            drafted, accepted = drafted + done.drafted_tokens, accepted + done.accepted_tokens
    finally:
        plain_engine.close()
        spec_engine.close()
    assert 0 < accepted < drafted  # drafts were both kept and refused
    for pos in range(1, length):
        a = Counter({t: c for (p_, t), c in plain.items() if p_ == pos})
        b = Counter({t: c for (p_, t), c in spec.items() if p_ == pos})
        stat, limit = _chi2_same_distribution(a, b)
        assert stat < limit, f"position {pos}: chi2 {stat:.1f} >= {limit:.1f}"


def test_the_first_timing_of_a_large_model_is_said_once(tiny_q4, tmp_path, monkeypatch):
    """Timing a model's decode steps takes a few seconds on a real model: the first load
    says so (a note, on stderr under `pocketlm run`); later loads read the cached figures,
    silently. A model under NOTE_CALIBRATION_BYTES says nothing (its timing is over at
    once, and `pocketlm run` keeps stderr empty): lowered here to the tiny model's size."""
    from pocketlm.services import runtime

    notes: list[str] = []

    class Notes:
        note = staticmethod(notes.append)

    m = Model(str(tiny_q4))
    try:
        for limit, cache in ((1, "a"), (1, "a"), (1 << 40, "b")):
            monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path / cache))
            monkeypatch.setattr(runtime, "NOTE_CALIBRATION_BYTES", limit)
            spec = Speculator(mode="auto")
            runtime.calibrate_speculator(spec, m, n_threads=1, flash_attn=False, progress=Notes())
            assert spec.costs(1) is not None  # calibrated either way
    finally:
        m.close()
    assert notes == [
        "timing this machine's decode steps for speculative decoding (once per model; a few "
        "seconds)"
    ]
