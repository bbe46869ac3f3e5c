"""Calibration: the quality-vs-remote-share curve on hand-made cases, ties, random routing,
the share for 80% of the gap, thresholds for a share or an accuracy, and the PNG."""

from __future__ import annotations

import numpy as np
import pytest

from pocketlm.errors import UsageError
from pocketlm.services.route import calibrate as c
from pocketlm.services.route.router import Logistic, RouterModel

# four prompts, lowest score first: the two the local model fails come first, then one both
# get right, then one only the local model gets right
SCORES = [0.1, 0.2, 0.3, 0.4]
LOCAL = [0, 0, 1, 1]
REMOTE = [1, 1, 1, 0]


def _records(local=LOCAL, remote=REMOTE):
    return [
        {"id": f"p{i}", "prompt": f"q{i}", "local_ok": bool(a), "remote_ok": bool(b)}
        for i, (a, b) in enumerate(zip(local, remote))
    ]


def test_curve_by_hand():
    curve = c.routing_curve("router", SCORES, LOCAL, REMOTE)
    assert curve.share.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    # local only 2/4; +1 +1 for the two fixed; 0 for the one both get; -1 for the last
    assert curve.quality.tolist() == [0.5, 0.75, 1.0, 1.0, 0.75]


def test_curve_order_does_not_depend_on_input_order():
    perm = [2, 0, 3, 1]
    curve = c.routing_curve(
        "r", [SCORES[i] for i in perm], [LOCAL[i] for i in perm], [REMOTE[i] for i in perm]
    )
    assert curve.quality.tolist() == [0.5, 0.75, 1.0, 1.0, 0.75]


def test_tied_scores_give_the_straight_line():
    curve = c.routing_curve("r", [0.5] * 4, LOCAL, REMOTE)
    assert np.allclose(curve.quality, np.linspace(0.5, 0.75, 5))
    # a tie in the middle: exact at its ends, interpolated inside
    curve = c.routing_curve("r", [0.1, 0.3, 0.3, 0.4], LOCAL, REMOTE)
    assert np.allclose(curve.quality, [0.5, 0.75, 0.875, 1.0, 0.75])


def test_share_for_gap():
    curve = c.routing_curve("router", SCORES, LOCAL, REMOTE)
    # local 0.5, remote 0.75: 80% of the gap is accuracy 0.7, reached at one prompt of four
    assert c.share_for_gap(curve, 0.5, 0.75) == 0.25
    assert c.share_for_gap(c.random_curve(LOCAL, REMOTE), 0.5, 0.75) == 0.8
    assert c.share_for_gap(curve, 0.5, 0.75, gap=1.0) == 0.25
    assert c.share_for_gap(curve, 0.8, 0.75) == 0.0  # remote no better: nothing to recover
    bad = c.routing_curve("bad", [0.4, 0.3, 0.2, 0.1], LOCAL, REMOTE)  # worst first
    assert bad.quality.tolist() == [0.5, 0.25, 0.25, 0.5, 0.75]
    assert c.share_for_gap(bad, 0.5, 0.75) == 1.0


def test_threshold_for_share():
    p = c.for_share(0.5, SCORES, LOCAL, REMOTE)
    assert p.threshold == pytest.approx(0.25)
    assert (p.share, p.quality) == (0.5, 1.0)
    assert c.for_share(0.0, SCORES, LOCAL, REMOTE).share == 0.0
    everything = c.for_share(1.0, SCORES, LOCAL, REMOTE)
    assert everything.share == 1.0 and everything.quality == 0.75
    assert c.for_share(0.3, SCORES, LOCAL, REMOTE).share == 0.25  # the nearest one reachable
    with pytest.raises(UsageError, match="invalid remote share 1.5"):
        c.for_share(1.5, SCORES, LOCAL, REMOTE)


def test_threshold_for_quality():
    p = c.for_quality(0.75, SCORES, LOCAL, REMOTE)
    assert (p.share, p.quality) == (0.25, 0.75) and p.threshold == pytest.approx(0.15)
    assert c.for_quality(0.9, SCORES, LOCAL, REMOTE).share == 0.5
    assert c.for_quality(0.4, SCORES, LOCAL, REMOTE).share == 0.0
    with pytest.raises(UsageError, match="no threshold reaches accuracy 0.8"):
        c.for_quality(0.8, [0.1, 0.2], [0, 0], [1, 0])


def test_calibrate_figures_and_apply():
    records = _records()
    cal = c.calibrate(records, {"router": np.array(SCORES)}, remote_share=0.5)
    assert (cal.n, cal.local_accuracy, cal.remote_accuracy) == (4, 0.5, 0.75)
    assert cal.share_for_gap == {"router": 0.25, "random": 0.8}
    # labels (good enough): False, False, True, True; the scores rank them perfectly
    assert cal.auroc["router"] == 1.0
    assert cal.chosen["router"].share == 0.5 and cal.target == "remote share 0.5"
    model = RouterModel(Logistic(np.zeros(3), 0.0))
    c.apply(model, cal)
    assert model.threshold == pytest.approx(0.25)
    assert model.meta["calibration"]["share_for_gap"]["router"] == 0.25
    with pytest.raises(UsageError, match="not both"):
        c.calibrate(records, {"router": np.array(SCORES)}, remote_share=0.5, min_quality=0.7)


def test_held_out_records():
    records = _records()
    model = RouterModel(Logistic(np.zeros(3), 0.0))
    model.meta = {"trained_on": {"sha256": "aa"}, "test_ids": ["p1", "p3"]}
    assert [r["id"] for r in c.held_out(model, records, {"sha256": "aa"})] == ["p1", "p3"]
    assert len(c.held_out(model, records, {"sha256": "bb"})) == 4  # another workload: all


def test_chart_png(tmp_path):
    rng = np.random.default_rng(0)
    local = rng.random(200) < 0.4
    remote = local | (rng.random(200) < 0.5)
    scores = {"router": rng.random(200) + local * 0.5, "cascade": rng.random(200) + local}
    cal = c.calibrate(_records(local, remote), scores, remote_share=0.3)
    path = c.curve_chart(cal, tmp_path / "img" / "curve.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert cal.share_for_gap["cascade"] < cal.share_for_gap["router"] < 0.8
