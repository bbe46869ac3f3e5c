"""pocketlm distill on tiny models: the losses, the data, the teacher's top-k, the loop."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pocketlm.cli import main as cli_main  # noqa: E402
from pocketlm.engine.llama import Context, Model  # noqa: E402
from pocketlm.errors import PocketError, UsageError  # noqa: E402
from pocketlm.services.distill import data, losses, resources, teacher  # noqa: E402
from pocketlm.services.distill.train import Recipe, distill  # noqa: E402
from pocketlm.services.evaluate.perplexity import _log_probs  # noqa: E402
from pocketlm.store.store import Store  # noqa: E402
from tests.conftest import pulled, run_cli  # noqa: E402
from tests.tinymodel import write_tiny_gguf  # noqa: E402

WORDS = "the cat sat on the mat and the dog is in the house hello world".split()


def _import(path: Path, name: str) -> None:
    assert cli_main(["import", str(path), "--name", name]) == 0


@pytest.fixture
def pair(tmp_path) -> tuple[str, str]:
    """A 4-layer teacher and a 2-layer student with the same vocabulary, in the store."""
    _import(write_tiny_gguf(tmp_path / "t.gguf", n_layer=4, seed=3), "tteacher")
    _import(write_tiny_gguf(tmp_path / "s.gguf", n_layer=2, seed=4), "tstudent")
    return "tteacher", "tstudent"


def _data(path: Path, n_text: int = 60, n_chat: int = 30) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(n_text):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(40))}) + "\n")
        for _ in range(n_chat):
            f.write(json.dumps({"prompt": "What is two plus two?", "completion": "Four."}) + "\n")
    return path


def _recipe(data_path: Path, **kw) -> Recipe:
    base = dict(
        student="tstudent",
        teacher="tteacher",
        data=str(data_path),
        name="tdist",
        seq_len=64,
        batch_tokens=256,
        epochs=2,
        eval_every=5,
        lr=3e-3,
    )
    return Recipe(**(base | kw))


# -- losses ---------------------------------------------------------------------------


def test_divergences_are_zero_for_the_teacher_itself_and_positive_otherwise():
    logits = torch.randn(5, 50)
    logq = torch.log_softmax(logits, -1)
    lp, ids = logq.topk(8, dim=1)
    for kind in losses.LOSSES:
        same = losses.divergence(kind, lp, ids, logq)
        assert torch.allclose(same, torch.zeros(5), atol=1e-5)
        other = losses.divergence(kind, lp, ids, torch.log_softmax(torch.randn(5, 50), -1))
        assert (other > 1e-3).all()
    assert (other <= math.log(2) + 1e-6).all()  # JSD is bounded


def test_coarse_kl_is_a_lower_bound_of_the_full_kl():
    p = torch.log_softmax(torch.randn(4, 100) * 2, -1)
    q = torch.log_softmax(torch.randn(4, 100) * 2, -1)
    full = (p.exp() * (p - q)).sum(1)
    lp, ids = p.topk(10, dim=1)
    coarse = losses.divergence("kl", lp, ids, q)
    assert (coarse <= full + 1e-5).all() and (coarse > 0).all()
    lp_all, ids_all = p.topk(100, dim=1)  # with every token kept, it is the full KL
    assert torch.allclose(losses.divergence("kl", lp_all, ids_all, q), full, atol=1e-4)


# -- data -------------------------------------------------------------------------------


def test_records_of_every_shape_become_masked_examples(tmp_path, tiny_gguf):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"prompt": "Hello", "completion": "world"}),
        json.dumps(
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
        ),
        json.dumps({"text": "the cat sat on the mat"}),
        "not json",
        json.dumps({"other": 1}),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    vocab = Model(str(tiny_gguf), vocab_only=True)
    ds = data.load(path, vocab, seq_len=64, held_out_share=0)
    assert ds.records == 5 and sum(ds.skipped.values()) == 2
    chats = [ex for ex in ds.train if not all(ex.trained)]
    assert len(chats) == 2
    for ex in chats:  # the answer, then the end of the turn, is what is trained
        answer = [t for t, on in zip(ex.tokens, ex.trained, strict=True) if on]
        assert answer[-1] == vocab.eos and answer == ex.tokens[-len(answer) :]
    (plain,) = [ex for ex in ds.train if all(ex.trained)]
    assert plain.tokens == vocab.tokenize("the cat sat on the mat", add_special=False) + [vocab.eos]
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_balance_draws_each_label_to_the_median_count_and_leaves_free_text():
    def ex(i: int, answer: list[int]) -> data.Example:
        return data.Example([1, 2, 100 + i, *answer], [False] * 3 + [True] * len(answer))

    examples = [ex(i, [7]) for i in range(30)] + [ex(i, [8, 9]) for i in range(10)]
    examples += [ex(i, [5]) for i in range(4)] + [ex(i, [60 + i, 61]) for i in range(3)]
    out, counts = data.balance(examples, seed=1)
    assert counts == {(7,): (30, 10), (8, 9): (10, 10), (5,): (4, 10)}
    answers = [tuple(e.tokens[3:]) for e in out]
    assert answers.count((7,)) == answers.count((8, 9)) == answers.count((5,)) == 10
    assert len(out) == 33  # and the three free-text answers, once each
    small = [e for e in out if e.tokens[3:] == [5]]
    assert {e.tokens[2] for e in small} == {100, 101, 102, 103}  # all of the small label
    assert len(set(map(id, [e for e in out if e.tokens[3:] == [7]]))) == 10  # no repeats
    assert data.balance(examples, seed=1)[0] == out  # seeded
    # nothing repeats: nothing to balance
    free = [ex(i, [60 + i]) for i in range(5)]
    assert data.balance(free, seed=0) == (free, {})


def test_a_file_with_no_usable_record_is_a_clear_error(tmp_path, tiny_gguf):
    path = tmp_path / "d.jsonl"
    path.write_text('{"x": 1}\n[1, 2]\nnot json\n')
    vocab = Model(str(tiny_gguf), vocab_only=True)
    with pytest.raises(UsageError, match="no usable training records"):
        data.load(path, vocab, seq_len=64)


# -- the teacher's top-k ----------------------------------------------------------------


def test_stored_top_k_is_the_teachers_full_softmax_top_k_and_resumes(tmp_path, tiny_gguf):
    vocab = Model(str(tiny_gguf))
    ds = data.load(_data(tmp_path / "d.jsonl", 10, 4), vocab, seq_len=32, held_out_share=0)
    key = {"teacher": "x"}
    topk = teacher.compute(str(tiny_gguf), ds.train, tmp_path / "tk", k=5, key=key, threads=1)
    assert topk.ids.shape == (sum(ex.n_trained for ex in ds.train), 5)
    ctx = Context(vocab, n_ctx=64, n_threads=1, n_batch=64)
    for i in (0, len(ds.train) - 1):
        ex = ds.train[i]
        full = _log_probs(ctx, ex.tokens, vocab.n_vocab)[teacher.trained_rows(ex)]
        ids, lps = topk.rows(i)
        expect = np.sort(full, axis=1)[:, ::-1][:, :5]
        np.testing.assert_allclose(lps.astype(np.float32), expect, atol=2e-2)
        np.testing.assert_array_equal(
            np.take_along_axis(full, ids.astype(int), 1) >= expect[:, -1:] - 1e-4, True
        )
    ctx.close()
    state = json.loads((tmp_path / "tk" / "state.json").read_text())
    assert state["done"] == len(ds.train)
    mtime = (tmp_path / "tk" / "ids.npy").stat().st_mtime_ns
    again = teacher.compute(str(tiny_gguf), ds.train, tmp_path / "tk", k=5, key=key, threads=1)
    assert (tmp_path / "tk" / "ids.npy").stat().st_mtime_ns == mtime  # nothing recomputed
    np.testing.assert_array_equal(again.ids, topk.ids)


def test_sequences_that_open_alike_reuse_the_teachers_cache_with_the_same_rows(tmp_path, tiny_gguf):
    vocab = Model(str(tiny_gguf))
    rng = random.Random(2)
    opening = [rng.randrange(3, 200) for _ in range(30)]
    examples = []
    for n in (4, 9, 6, 2):
        tail = [rng.randrange(3, 200) for _ in range(n)]
        examples.append(data.Example(opening + tail, [False] * 31 + [True] * (n - 1)))
    examples.append(data.Example(opening[:12], [True] * 12))  # trained from the start
    key = {"teacher": "x", "tokens": teacher.tokens_sha256(examples)}
    topk = teacher.compute(str(tiny_gguf), examples, tmp_path / "a", k=4, key=key, threads=1)
    ctx = Context(vocab, n_ctx=64, n_threads=1, n_batch=64)
    for i, ex in enumerate(examples):
        full = _log_probs(ctx, ex.tokens, vocab.n_vocab)[teacher.trained_rows(ex)]
        expect = np.sort(full, axis=1)[:, ::-1][:, :4]
        np.testing.assert_allclose(topk.rows(i)[1].astype(np.float32), expect, atol=2e-2)
    ctx.close()
    vocab.close()
    # another run over the same sequences links these rows instead of asking the teacher
    notes = []

    class Notes:
        def task(self, *a, **kw):
            raise AssertionError("the teacher was asked again")

        def note(self, message):
            notes.append(message)

    again = teacher.compute(
        "/nonexistent.gguf", examples, tmp_path / "run2" / "teacher", k=4, key=key,
        threads=1, progress=Notes(), reuse=[tmp_path / "a"],
    )  # fmt: skip
    np.testing.assert_array_equal(again.logprobs, topk.logprobs)
    assert notes and "reused" in notes[0]
    other = {"teacher": "x", "tokens": teacher.tokens_sha256(examples[:-1])}
    assert other != key
    # the linked run then trains on other data: its new rows must not overwrite the rows
    # it shares with the first run (they were one file), which a third run would reuse
    teacher.compute(str(tiny_gguf), examples[:-1], tmp_path / "run2" / "teacher", k=4,
                    key=other, threads=1)  # fmt: skip
    kept = teacher.compute(
        "/nonexistent.gguf", examples, tmp_path / "run3" / "teacher", k=4, key=key,
        threads=1, progress=Notes(), reuse=[tmp_path / "a", tmp_path / "run2" / "teacher"],
    )  # fmt: skip
    np.testing.assert_array_equal(kept.logprobs, topk.logprobs)
    np.testing.assert_array_equal(kept.ids, topk.ids)


# -- the loop -----------------------------------------------------------------------------


def test_distillation_brings_the_student_closer_to_the_teacher_and_keeps_it(pair, tmp_path):
    path = _data(tmp_path / "d.jsonl")
    result = distill(_recipe(path), threads=2)
    assert result.mode == "logits" and result.stopped_by == "data"
    before, after = result.before, result.after
    assert after.held_out_div < 0.8 * before.held_out_div
    assert after.held_out_ce < before.held_out_ce
    m = Store().get("tdist")
    assert m.parent == "tstudent" and m.teacher == "tteacher"
    assert m.data_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.recipe["loss"] == "kl" and m.recipe["steps"] == result.state.step
    assert m.source == "derived:distill:tstudent"
    assert result.plot is not None and result.plot.stat().st_size > 1000
    assert not (result.run_dir / "checkpoint.pt").exists()
    # the exported student runs in llama.cpp
    proc = run_cli("run", "tdist", "--max-tokens", "4", "Hello")
    assert proc.returncode == 0 and proc.stdout_text.strip(), proc.stderr_text


class _StopAt:
    """A progress whose bar raises KeyboardInterrupt after `steps` steps (a Ctrl-C)."""

    def __init__(self, steps: int):
        self.steps, self.seen = steps, 0

    def task(self, description, total, unit="bytes"):
        outer = self

        class Task:
            def advance(self, n):
                if description == "distilling":
                    outer.seen += n
                    if outer.seen >= outer.steps:
                        raise KeyboardInterrupt

            def update(self, completed, total=None):
                pass

            def describe(self, text):
                pass

        return Task()

    def note(self, message):
        pass

    def close(self):
        pass


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(pair, tmp_path):
    path = _data(tmp_path / "d.jsonl")
    whole = distill(_recipe(path, name="whole"), threads=1)
    with pytest.raises(KeyboardInterrupt):
        distill(_recipe(path, name="cut"), threads=1, progress=_StopAt(7))
    store = Store()
    assert store.find("cut") is None  # no half-written model
    assert (store.root / "runs" / "cut" / "checkpoint.pt").exists()
    with pytest.raises(UsageError, match="--resume"):
        distill(_recipe(path, name="cut"), threads=1)
    with pytest.raises(UsageError, match="another recipe"):
        distill(_recipe(path, name="cut", lr=1e-3), threads=1, resume=True)
    resumed = distill(_recipe(path, name="cut"), threads=1, resume=True)
    assert resumed.state.step == whole.state.step and resumed.state.tokens == whole.state.tokens
    assert resumed.after.held_out_div == pytest.approx(whole.after.held_out_div, rel=1e-4)


def test_restart_discards_an_interrupted_run_and_trains_from_the_start(pair, tmp_path):
    path = _data(tmp_path / "d.jsonl")
    with pytest.raises(KeyboardInterrupt):
        distill(_recipe(path, name="cut2"), threads=1, progress=_StopAt(7))
    run_dir = Store().root / "runs" / "cut2"
    assert (run_dir / "checkpoint.pt").exists()
    with pytest.raises(UsageError, match="--restart"):
        distill(_recipe(path, name="cut2"), threads=1)
    with pytest.raises(UsageError, match="exclude each other"):
        distill(_recipe(path, name="cut2"), threads=1, resume=True, restart=True)
    # another recipe: resuming would be refused ("another recipe"), starting over is not
    distill(_recipe(path, name="cut2", lr=1e-3), threads=1, restart=True)
    assert not (run_dir / "checkpoint.pt").exists()
    assert Store().get("cut2").recipe["lr"] == 1e-3


def test_lora_trains_adapters_and_merges_them(pair, tmp_path):
    result = distill(
        _recipe(_data(tmp_path / "d.jsonl"), lora=True, lora_rank=4, lr=2e-2), threads=2
    )
    assert result.after.held_out_div < result.before.held_out_div
    assert Store().get("tdist").recipe["lora"] is True
    # quantized to 4 bits without calibration, the student is told its data is the calibration
    from pocketlm.services.quantize.quantize import quantize

    notes: list[str] = []
    progress = type("Notes", (_StopAt,), {"note": lambda self, m: notes.append(m)})(10**9)
    fast = {"eval_tokens": 64, "window": 32, "decode_tokens": 0}
    quantize("tdist", "Q4_0", params=fast, threads=1, progress=progress, record=False)
    hint = [n for n in notes if "was distilled on" in n]
    assert len(hint) == 1 and str(tmp_path / "d.jsonl") in hint[0] and "calibrate" in hint[0]
    notes.clear()
    quantize("tdist", "Q8_0", params=fast, threads=1, progress=progress, record=False)
    assert not [n for n in notes if "was distilled on" in n]  # 8 bits: nothing to say


def test_a_time_or_token_budget_stops_the_run(pair, tmp_path):
    result = distill(_recipe(_data(tmp_path / "d.jsonl"), token_budget=600), threads=2)
    assert result.stopped_by == "tokens" and 600 <= result.state.tokens < 600 + 256 + 64


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_shared_prefix_goes_through_the_model_once_with_the_same_result(
    tmp_path, monkeypatch, arch
):
    # every record of a task repeats its instruction: computed once per batch, the
    # log-probabilities and the gradient are the plain forward's
    from pocketlm.services.distill import trainer as tr
    from pocketlm.services.distill.gguf_io import load_torch

    _import(write_tiny_gguf(tmp_path / "s.gguf", arch=arch, seed=4), "tstudent")
    model = load_torch(Store().get("tstudent"))
    t = object.__new__(tr.Trainer)
    t.model, t.device = model, torch.device("cpu")
    rng = random.Random(1)
    prefix = [rng.randrange(3, 200) for _ in range(24)]
    examples = []
    for n in (5, 9, 2):
        tail = [rng.randrange(3, 200) for _ in range(n + 3)]
        examples.append(data.Example(prefix + tail, [False] * (24 + n) + [True] * 3))
    assert tr.shared_prefix(examples) == 24

    def run():
        model.zero_grad()
        logq, targets = t._forward(examples)
        logq.gather(1, targets.unsqueeze(1)).sum().backward()
        return logq.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    shared, shared_grads = run()
    monkeypatch.setattr(tr, "MIN_SHARED", 10**9)
    assert tr.shared_prefix(examples) == 0
    plain, plain_grads = run()
    assert shared.shape == plain.shape == (9, model.config.vocab_size)
    assert torch.allclose(shared, plain, atol=1e-5)
    assert len(shared_grads) == len(plain_grads) > 0
    for a, b in zip(shared_grads, plain_grads, strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_the_shared_prefix_stops_before_the_first_trained_row():
    from pocketlm.services.distill import trainer as tr

    head = list(range(40))
    a = data.Example(head + [1, 2], [False] * 41 + [True])
    b = data.Example(head + [3, 4], [False] * 20 + [True] * 22)  # trained from token 20
    assert tr.shared_prefix([a, b]) == 19  # row 19 predicts token 20
    assert tr.shared_prefix([a]) == 0  # nothing to share
    packed = data.Example(head, [True] * 40)
    assert tr.shared_prefix([packed, packed]) == 0  # plain text: every row trained
    # a micro-batch counts its prefix once
    many = [data.Example(head + [i, i], [False] * 41 + [True]) for i in range(60)]
    groups = list(tr._micro_batches(list(range(60)), many))
    assert sum(map(len, groups)) == 60 and len(groups[0]) > tr.MICRO_TOKENS // 42


def test_a_teacher_with_another_vocabulary_teaches_by_its_outputs(tmp_path):
    _import(pulled("smollm2-135m-instruct"), "smol")
    _import(write_tiny_gguf(tmp_path / "s.gguf", n_layer=2, seed=4), "tstudent")
    path = _data(tmp_path / "d.jsonl", 20, 10)
    result = distill(_recipe(path, teacher="smol", epochs=1), threads=2)
    assert result.mode == "sequence" and result.after.held_out_div is None
    assert result.after.held_out_ce < result.before.held_out_ce
    with pytest.raises(UsageError, match="tokenize differently"):
        distill(_recipe(path, teacher="smol", mode="logits", name="x"), threads=2)


def test_bad_runs_are_refused_before_they_start(pair, tmp_path):
    path = _data(tmp_path / "d.jsonl")
    with pytest.raises(UsageError, match="larger than the teacher"):
        distill(_recipe(path, student="tteacher", teacher="tstudent"))
    with pytest.raises(UsageError, match="same model"):
        distill(_recipe(path, teacher="tstudent"))
    _import(write_tiny_gguf(tmp_path / "g.gguf", arch="gemma3"), "gem")
    with pytest.raises(UsageError, match="trains llama and qwen2"):
        distill(_recipe(path, student="gem"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="no usable"):
        distill(_recipe(empty))
    with pytest.raises(PocketError, match="memory"):
        resources.check(resources.Need(10**15, 0, "x"), tmp_path)
    with pytest.raises(PocketError, match="disk"):
        resources.check(resources.Need(0, 10**18, "x"), tmp_path)
    with pytest.raises(UsageError, match="--top-k"):
        _recipe(path, top_k=0)
