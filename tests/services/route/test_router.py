"""The router model: the label rule, training on synthetic workloads whose signal is known
(a direction of the embedding, the local answer's logprobs), the held-out split, and the
JSON file with its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocketlm.errors import UsageError
from pocketlm.services.route import router as r

DIM = 16


def synthetic(n: int, signal: float, lp_signal: float, seed: int = 0):
    """Records and an embed function. Whether the local answer is good depends on the
    prompt's hidden difficulty ``d``; the embedding shows ``d`` with weight ``signal``, the
    local answer's logprobs with weight ``lp_signal``; the remote tier is always right."""
    rng = np.random.default_rng(seed)
    vectors, records = {}, []
    for i in range(n):
        d = rng.normal()
        good = rng.random() < 1 / (1 + np.exp(3 * d))
        v = rng.normal(size=DIM)
        v[0] = signal * d + rng.normal() * 0.3
        prompt = f"prompt {i}"
        vectors[prompt] = v / np.linalg.norm(v)
        lp = -0.2 - lp_signal * (0 if good else 1.5) + rng.normal() * 0.3
        records.append(
            {
                "id": f"p{i}",
                "prompt": prompt,
                "local_ok": bool(good),
                "remote_ok": True,
                "local_mean_logprob": lp,
                "local_min_logprob": 3 * lp,
                "local_tokens": int(rng.integers(1, 40)),
                "local_tier": "small",
                "remote_tier": "big",
            }
        )
    return records, lambda prompts: np.stack([vectors[p] for p in prompts])


def test_label_rule():
    assert r.good_enough({"local_ok": True, "remote_ok": True})
    assert r.good_enough({"local_ok": True, "remote_ok": False})
    assert r.good_enough({"local_ok": False, "remote_ok": False})  # escalating would not help
    assert not r.good_enough({"local_ok": False, "remote_ok": True})


def test_train_learns_a_known_signal():
    records, embed = synthetic(400, signal=3.0, lp_signal=0.0)
    model, report = r.train(records, embed, seed=1, source={"path": "w.jsonl", "sha256": "ab"})
    assert report.n == 400 and report.n_train + report.n_test == 400
    assert report.auroc_router > 0.85
    assert report.remote_accuracy == 1.0 and report.local_accuracy < 0.8
    meta = model.meta
    assert meta["trained_on"] == {"path": "w.jsonl", "sha256": "ab"}
    assert (meta["local"], meta["remote"], meta["n"]) == ("small", "big", 400)
    assert len(meta["test_ids"]) == report.n_test
    assert meta["auroc_router"] == report.auroc_router and meta["embedder"]
    # a score is P(local good): the easy end of the signal scores higher
    easy, hard = np.zeros(DIM), np.zeros(DIM)
    easy[0], hard[0] = -1.0, 1.0
    assert model.score(easy, "prompt 1") > 0.5 > model.score(hard, "prompt 1")


def test_router_reads_the_prompts_numbers_where_the_embedding_is_blind():
    # the embedding is noise; the local model fails on long numbers, as small models do
    rng = np.random.default_rng(4)
    records, vectors = [], {}
    for i in range(300):
        digits = int(rng.integers(1, 7))
        prompt = f"Compute {rng.integers(10 ** (digits - 1), 10**digits)} + 7. ({i})"
        vectors[prompt] = rng.normal(size=DIM)
        ok = rng.random() < (0.9 if digits <= 3 else 0.15)
        records.append({"id": f"p{i}", "prompt": prompt, "local_ok": ok, "remote_ok": True})
    model, report = r.train(records, lambda ps: np.stack([vectors[p] for p in ps]), seed=4)
    assert report.auroc_router > 0.8
    noise = np.zeros(DIM)
    easy, hard = (
        model.score(noise, "Compute 12 + 7. (5)"),
        model.score(noise, "Compute 123456 + 7. (5)"),
    )
    assert easy > 0.5 > hard


def test_prompt_features_are_counts_of_the_text():
    f = r.prompt_features(["", "add 12 and 3456\nnow"])
    assert f.shape == (2, len(r.PROMPT_FEATURES))
    row = dict(zip(r.PROMPT_FEATURES, f[1]))
    assert (row["numbers"], row["longest_number"], row["lines"]) == (2, 4, 1)
    assert row["digit_share"] == pytest.approx(6 / 19)
    assert f[0].tolist() == [0.0] * len(r.PROMPT_FEATURES)


def test_train_without_signal_scores_near_chance():
    records, embed = synthetic(300, signal=0.0, lp_signal=0.0)
    _, report = r.train(records, embed, seed=2)
    assert report.auroc_router < 0.7


def test_cascade_uses_the_local_answers_confidence():
    # the prompt says little, the local answer's logprobs say a lot
    records, embed = synthetic(400, signal=0.3, lp_signal=1.0)
    model, report = r.train(records, embed, seed=3)
    assert model.cascade is not None
    assert report.auroc_cascade > 0.85 > report.auroc_router
    confident = model.cascade_score(0.5, mean_logprob=-0.1, min_logprob=-0.3, tokens=5)
    unsure = model.cascade_score(0.5, mean_logprob=-2.0, min_logprob=-6.0, tokens=5)
    assert confident > unsure


def test_no_cascade_without_logprobs():
    records, embed = synthetic(200, signal=3.0, lp_signal=1.0)
    for rec in records:
        rec["local_mean_logprob"] = rec["local_min_logprob"] = None
    model, report = r.train(records, embed)
    assert model.cascade is None and report.auroc_cascade is None
    assert model.cascade_score(0.5, -1.0, -2.0, 3) is None


def test_split_is_seeded_and_stratified():
    labels = np.array([1] * 70 + [0] * 30)
    a_train, a_test = r.split(labels, 0.3, seed=5)
    b_train, b_test = r.split(labels, 0.3, seed=5)
    assert a_test.tolist() == b_test.tolist() and len(a_test) == 30
    assert not set(a_train) & set(a_test)
    assert labels[a_test].sum() == 21  # the 70/30 mix kept
    assert r.split(labels, 0.3, seed=6)[1].tolist() != a_test.tolist()


def test_train_refuses_too_little_or_one_sided_data():
    records, embed = synthetic(5, signal=1.0, lp_signal=0.0)
    with pytest.raises(UsageError, match="too small"):
        r.train(records, embed)
    records, embed = synthetic(60, signal=1.0, lp_signal=0.0)
    for rec in records:
        rec["local_ok"] = True
    with pytest.raises(UsageError, match="fewer than 2 training prompts"):
        r.train(records, embed)


def test_save_load_round_trip(tmp_path):
    records, embed = synthetic(200, signal=2.0, lp_signal=1.0)
    model, _ = r.train(records, embed)
    model.threshold, model.cascade_threshold = 0.3, 0.4
    path = model.save(tmp_path / "sub" / "router.json")
    back = r.RouterModel.load(path)
    texts = [rec["prompt"] for rec in records]
    x = embed(texts)
    assert np.allclose(back.scores(x, texts), model.scores(x, texts))
    assert back.features == r.PROMPT_FEATURES
    assert back.cascade_score(0.4, -1, -2, 7) == pytest.approx(model.cascade_score(0.4, -1, -2, 7))
    assert (back.threshold, back.cascade_threshold) == (0.3, 0.4)
    assert back.meta == json.loads(json.dumps(model.meta))
    assert back.sends_remote(0.29) and not back.sends_remote(0.31)
    assert back.escalates(0.39) and not back.escalates(0.41)
    # plain JSON: readable without sklearn
    data = json.loads(path.read_text())
    assert data["format"] == "pocketlm-router" and data["dim"] == DIM
    assert len(data["router"]["coef"]) == DIM + len(r.PROMPT_FEATURES)


def test_a_version_1_file_scores_on_the_embedding_alone(tmp_path):
    data = {
        "format": "pocketlm-router",
        "version": 1,
        "dim": 3,
        "router": {"coef": [1.0, 0.0, 0.0], "intercept": 0.0},
        "cascade": None,
    }
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = r.RouterModel.load(tmp_path / "old.json")
    assert old.features == () and old.dim == 3
    assert old.score(np.array([2.0, 0, 0]), "Compute 123456 + 7.") == pytest.approx(
        1 / (1 + np.exp(-2.0))
    )


def _broken(tmp_path, edit) -> str:
    records, embed = synthetic(100, signal=2.0, lp_signal=1.0)
    model, _ = r.train(records, embed)
    data = model.to_dict()
    edit(data)
    path = tmp_path / "router.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as e:
        r.RouterModel.load(path)
    assert str(path) in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=7), "version"),
        (lambda d: d.update(prompt_features=["vibes"]), "prompt_features"),
        (lambda d: d.pop("prompt_features"), "prompt_features"),
        (lambda d: d["router"].update(coef=[1.0, 2.0]), "router.coef"),
        (lambda d: d["router"].update(intercept="x"), "router.intercept"),
        (lambda d: d["cascade"].update(scale=[0, 1, 1, 1]), "cascade.scale"),
        (lambda d: d["cascade"].pop("mean"), "cascade.scale"),
        (lambda d: d.update(threshold=1.5), "threshold"),
        (lambda d: d.update(cascade_threshold=None), "cascade_threshold"),
        (lambda d: d.update(router=None), "router"),
    ],
)
def test_load_errors_name_the_field(tmp_path, edit, field):
    assert f"field '{field}'" in _broken(tmp_path, edit)


def test_load_missing_or_not_json(tmp_path):
    with pytest.raises(UsageError, match="not found; train one with pocketlm route train"):
        r.RouterModel.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UsageError, match="cannot read router file"):
        r.RouterModel.load(bad)
