"""The scorers against plain reference computations on tiny real models."""

from __future__ import annotations

import math

import llama_cpp as ll
import numpy as np
import pytest

from pocketlm.engine.llama import Context, Model
from pocketlm.services.evaluate.datasets import MCItem
from pocketlm.services.evaluate.multiple_choice import prompt_for, run_multiple_choice
from pocketlm.services.evaluate.perplexity import run_perplexity, windows
from pocketlm.services.evaluate.scoring import Group, Scorer, encode_pair, prefix_tree
from tests.tinymodel import write_tiny_gguf


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = Model(str(tiny_gguf))
    yield m
    m.close()


def reference_rows(model: Model, tokens: list[int], flash_attn: bool = False) -> np.ndarray:
    """log-softmax at every position, from one plain single-sequence evaluation."""
    ctx = Context(
        model,
        n_ctx=max(256, len(tokens)),
        n_threads=1,
        n_batch=max(256, len(tokens)),
        flash_attn=flash_attn,
    )
    ctx.prefill_all(tokens)
    logits = np.ctypeslib.as_array(
        ll.llama_get_logits(ctx._ptr), shape=(len(tokens), model.n_vocab)
    ).astype(np.float64)
    ctx.close()
    return (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )


def reference_score(
    model: Model, scorer: Scorer, context: str, cont: str, flash_attn: bool = False
):
    ctx, k = encode_pair(scorer.tokenize, context, cont)
    tokens = ctx + k
    rows = reference_rows(model, tokens, flash_attn)
    positions = range(len(ctx) - 1, len(tokens) - 1)
    total = sum(rows[p, tokens[p + 1]] for p in positions)
    greedy = all(int(rows[p].argmax()) == tokens[p + 1] for p in positions)
    return total, greedy


def test_encode_pair_moves_trailing_spaces_and_splits_merged_tokens(model):
    tok = lambda s: model.tokenize(s, add_special=False)  # noqa: E731
    ctx, cont = encode_pair(tok, "the cat sat on ", "the mat")
    assert ctx == tok("the cat sat on") and cont == tok("the cat sat on the mat")[len(ctx) :]
    # "th" + "e mat": the tokenizer merges across the boundary (" the" is one token), so the
    # continuation is the tail of the whole text after the context's token count
    ctx, cont = encode_pair(tok, "the cat sat on th", "e mat")
    whole = tok("the cat sat on the mat")
    assert tok("the cat sat on th")[-1] != whole[len(ctx) - 1]  # really merged differently
    assert cont == whole[len(ctx) :]


@pytest.mark.parametrize("flash_attn", [True, False])
def test_scorer_matches_the_reference(model, flash_attn):
    scorer = Scorer(model, n_ctx=512, n_threads=1, n_batch=64, n_seq=5, flash_attn=flash_attn)
    items = [
        ("the cat sat on the", [" mat", " dog", " hello world the cat"]),
        ("Question: where is the cat?\nAnswer:", [" on the mat", " in the world"]),
        ("hello ", ["world", "there", "the cat sat"]),
        ("the dog " * 20, [" ran", " sat on the mat"]),  # longer than a batch
        ("x", [" y"]),
        # choices that begin alike (computed once), one a prefix of another, twins
        ("Q:", [" the cat sat on the mat", " the cat sat", " the dog", " the cat ran"]),
        ("Q:", [" the mat", " the mat"]),
    ] * 3
    groups = [scorer.group(c, ks) for c, ks in items]
    got = scorer.score(groups)
    scorer.close()
    for (context, conts), results in zip(items, got):
        for cont, s in zip(conts, results):
            ref, greedy = reference_score(model, scorer, context, cont, flash_attn)
            assert s.logprob == pytest.approx(ref, abs=1e-3), (context, cont)
            assert s.greedy == greedy


def test_prefix_tree_holds_each_shared_token_once():
    g = Group([1, 2], [[3, 4, 5], [3, 4, 6], [3, 7], [3, 4]])
    nodes = prefix_tree(g)
    assert [(t, p, cs) for t, p, cs, _ in nodes] == [
        (1, 0, [0, 1, 2, 3]),
        (2, 1, [0, 1, 2, 3]),
        (3, 2, [0, 1, 2, 3]),
        (4, 3, [0, 1, 3]),
        (7, 3, [2]),
        (5, 4, [0]),
        (6, 4, [1]),
    ]
    targets = {(p, c): nxt for _, p, _, ts in nodes for c, nxt in ts}
    assert targets == {
        (1, 0): 3,
        (1, 1): 3,
        (1, 2): 3,
        (1, 3): 3,
        (2, 0): 4,
        (2, 1): 4,
        (2, 2): 7,
        (2, 3): 4,
        (3, 0): 5,
        (3, 1): 6,
    }


def test_acc_and_acc_norm_follow_the_definitions(model):
    items = [
        MCItem("the cat sat on the", (" mat", " dog", " world of the cats"), 0),
        MCItem("hello", (" world", " there the cat"), 1),
        MCItem("Question: what?\nAnswer:", (" yes", " no it is not"), 1),
        MCItem("the dog", (" ran", " sat"), 0),
    ]
    report = run_multiple_choice(model, items, threads=1)
    scorer = Scorer(model, n_ctx=512, n_threads=1)
    acc = acc_norm = 0
    for item in items:
        sums = [reference_score(model, scorer, item.context, c, True)[0] for c in item.choices]
        normed = [s / len(c.encode()) for s, c in zip(sums, item.choices)]
        acc += int(np.argmax(sums)) == item.answer
        acc_norm += int(np.argmax(normed)) == item.answer
    scorer.close()
    assert report.acc == acc / 4 and report.acc_norm == acc_norm / 4
    assert report.n == 4 and report.chance == pytest.approx((1 / 3 + 3 * 0.5) / 4)


def test_few_shot_prompts_hold_k_examples_never_the_item_itself():
    items = [MCItem(f"Q{i}:", (" a", " b"), i % 2, preamble="P\n\n") for i in range(6)]
    from pocketlm.services.evaluate.multiple_choice import choose_examples

    pool = choose_examples(items, 2, seed=3)
    assert pool == choose_examples(items, 2, seed=3)
    for item in items:
        examples = [ex for ex in pool if ex is not item][:2]
        prompt = prompt_for(item, examples)
        assert prompt.startswith("P\n\n") and prompt.count("P\n\n") == 1
        assert prompt.endswith(item.context) and prompt.count(item.context) == 1
        assert prompt.count("\n\n") == 3  # preamble + two examples


def test_perplexity_matches_the_reference(model):
    text = "the cat sat on the mat and the dog ran to the world. " * 12
    tokens = model.tokenize(text, add_special=True)
    for window, stride in ((64, 64), (64, 16)):
        report = run_perplexity(model, text, window=window, stride=stride, threads=1)
        nll = []
        for begin, end, first in windows(len(tokens), window, stride):
            rows = reference_rows(model, tokens[begin:end])
            nll += [-rows[p - begin - 1, tokens[p]] for p in range(first, end)]
        assert report.tokens == len(nll)
        assert report.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-3)
    full = windows(len(tokens), 64, 16)
    assert [f for _, _, f in full][0] == 1 and full[-1][1] == len(tokens)


def test_kl_divergence_against_itself_and_another_model(model, tmp_path):
    text = "the cat sat on the mat and the dog ran. " * 8
    same = run_perplexity(model, text, window=64, reference=model, threads=1)
    assert same.kld_mean == pytest.approx(0, abs=1e-6) and same.top1_agreement == 1.0
    other = Model(str(write_tiny_gguf(tmp_path / "o.gguf", seed=9)))
    diff = run_perplexity(model, text, window=64, reference=other, threads=1)
    other.close()
    assert diff.kld_mean > 0.01 and diff.top1_agreement < 1.0 and diff.ppl_ref != diff.ppl
    assert diff.kld_p99 >= diff.kld_mean
