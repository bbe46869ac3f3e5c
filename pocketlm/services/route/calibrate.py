"""Calibration: what each remote share buys, and the threshold that gives a chosen one.

Routing by a score sends remote the prompts with the lowest P(local good enough) first.
Sending the ``k`` lowest-scored of ``n`` prompts remote gives the accuracy

    quality(k) = (correct local answers + sum over the k of (remote_ok - local_ok)) / n

so the curve runs from local-only accuracy (share 0) to remote-only accuracy (share 1).
Prompts with equal scores cannot be told apart: within a run of ties the curve is the
straight line between its ends (the expectation over their order). Random routing is the
straight line from local-only to remote-only: it recovers X% of the gap at X% share.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketlm.errors import UsageError
from pocketlm.services.route.router import RouterModel, good_enough

GAP = 0.8  # the share of the local-to-remote accuracy gap the figures are quoted for


@dataclass
class Curve:
    """Accuracy of the routed system at each remote share (k / n for k = 0..n)."""

    name: str
    share: np.ndarray  # [n + 1]
    quality: np.ndarray  # [n + 1]

    def share_for(self, target: float) -> float | None:
        """The smallest share whose accuracy reaches ``target``; None if none does."""
        reached = np.nonzero(self.quality >= target - 1e-12)[0]
        return float(self.share[reached[0]]) if len(reached) else None


def routing_curve(name: str, scores, local_ok, remote_ok) -> Curve:
    """The curve of sending the lowest ``scores`` remote first."""
    scores = np.asarray(scores, dtype=np.float64)
    local_ok, remote_ok = np.asarray(local_ok, float), np.asarray(remote_ok, float)
    n = len(scores)
    order = np.argsort(scores, kind="stable")
    gain = (remote_ok - local_ok)[order]
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    s = scores[order]
    # runs of tied scores: [starts[i], ends[i]); inside one, interpolate between its ends
    starts = np.concatenate([[0], np.nonzero(np.diff(s))[0] + 1])
    ends = np.concatenate([starts[1:], [n]])
    for a, b in zip(starts, ends):
        if b - a > 1:
            cum[a : b + 1] = np.linspace(cum[a], cum[b], b - a + 1)
    return Curve(name, np.arange(n + 1) / n, (local_ok.sum() + cum) / n)


def random_curve(local_ok, remote_ok) -> Curve:
    local, remote = float(np.mean(local_ok)), float(np.mean(remote_ok))
    return Curve("random", np.array([0.0, 1.0]), np.array([local, remote]))


def share_for_gap(curve: Curve, local: float, remote: float, gap: float = GAP) -> float:
    """Remote share needed to recover ``gap`` of the accuracy gap; 0 when remote is no
    better. Random routing's straight line is read off exactly (it needs ``gap`` itself)."""
    if remote <= local:
        return 0.0
    if curve.name == "random":
        return gap
    return curve.share_for(local + gap * (remote - local))


@dataclass
class Point:
    """A threshold and what it does: remote when score < threshold."""

    threshold: float
    share: float  # of the prompts sent remote
    quality: float  # accuracy of the routed system

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "share": self.share, "quality": self.quality}


def evaluate(threshold: float, scores, local_ok, remote_ok) -> Point:
    remote = np.asarray(scores) < threshold
    quality = np.where(remote, np.asarray(remote_ok, float), np.asarray(local_ok, float))
    return Point(float(threshold), float(remote.mean()), float(quality.mean()))


def _candidates(scores) -> np.ndarray:
    """Thresholds that separate every run of equal scores: below all, between neighbours,
    above all (at most 1, scores being probabilities)."""
    s = np.unique(np.asarray(scores, dtype=np.float64))
    top = min(1.0, float(np.nextafter(s[-1], np.inf))) if s[-1] < 1 else float(s[-1]) + 1e-9
    return np.concatenate([[s[0]], (s[:-1] + s[1:]) / 2, [top]])


def for_share(share: float, scores, local_ok, remote_ok) -> Point:
    """The threshold whose remote share is closest to ``share`` (0..1)."""
    if not 0 <= share <= 1:
        raise UsageError(f"invalid remote share {share}: give a fraction from 0 to 1")
    points = [evaluate(t, scores, local_ok, remote_ok) for t in _candidates(scores)]
    return min(points, key=lambda p: (abs(p.share - share), p.share))


def for_quality(quality: float, scores, local_ok, remote_ok) -> Point:
    """The threshold with the smallest remote share whose accuracy reaches ``quality``."""
    if not 0 <= quality <= 1:
        raise UsageError(f"invalid minimum quality {quality}: give an accuracy from 0 to 1")
    points = [evaluate(t, scores, local_ok, remote_ok) for t in _candidates(scores)]
    reached = [p for p in points if p.quality >= quality - 1e-12]
    if not reached:
        best = max(points, key=lambda p: p.quality)
        raise UsageError(
            f"no threshold reaches accuracy {quality:g} on this workload (local only "
            f"{points[0].quality:.3f}, best {best.quality:.3f} at remote share {best.share:.2f})",
            "ask for less with --min-quality, or pick a share with --remote-share",
        )
    return min(reached, key=lambda p: (p.share, -p.quality))


@dataclass
class Calibration:
    n: int
    local_accuracy: float
    remote_accuracy: float
    curves: dict[str, Curve]  # router, cascade (if any), random
    auroc: dict[str, float | None]
    share_for_gap: dict[str, float | None]  # remote share that recovers GAP of the gap
    chosen: dict[str, Point] = field(default_factory=dict)  # router, cascade
    target: str = ""  # what was asked, e.g. "remote share 0.3"
    gap: float = GAP

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "local_accuracy": self.local_accuracy,
            "remote_accuracy": self.remote_accuracy,
            "auroc": self.auroc,
            "gap": self.gap,
            "share_for_gap": self.share_for_gap,
            "chosen": {k: p.to_dict() for k, p in self.chosen.items()},
            "target": self.target,
        }


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None


def calibrate(
    records: Sequence[dict],
    scores: dict[str, np.ndarray],
    *,
    remote_share: float | None = None,
    min_quality: float | None = None,
    gap: float = GAP,
) -> Calibration:
    """Curves, AUROC and the share for ``gap`` of each score in ``scores`` (name -> [n]),
    and, given a target (a remote share or a minimum accuracy), the threshold of each."""
    if not records:
        raise UsageError("no prompts to calibrate on", "collect a workload first")
    local_ok = np.array([bool(r["local_ok"]) for r in records], dtype=float)
    remote_ok = np.array([bool(r["remote_ok"]) for r in records], dtype=float)
    labels = np.array([good_enough(r) for r in records], dtype=int)
    local, remote = float(local_ok.mean()), float(remote_ok.mean())
    curves = {name: routing_curve(name, s, local_ok, remote_ok) for name, s in scores.items()}
    curves["random"] = random_curve(local_ok, remote_ok)
    cal = Calibration(
        n=len(records),
        local_accuracy=local,
        remote_accuracy=remote,
        curves=curves,
        auroc={name: _auroc(labels, np.asarray(s)) for name, s in scores.items()},
        share_for_gap={k: share_for_gap(c, local, remote, gap) for k, c in curves.items()},
        gap=gap,
    )
    if remote_share is not None and min_quality is not None:
        raise UsageError("give a remote share or a minimum quality, not both")
    for name, s in scores.items():
        if remote_share is not None:
            cal.chosen[name] = for_share(remote_share, s, local_ok, remote_ok)
            cal.target = f"remote share {remote_share:g}"
        elif min_quality is not None:
            cal.chosen[name] = for_quality(min_quality, s, local_ok, remote_ok)
            cal.target = f"accuracy {min_quality:g}"
    return cal


def held_out(model: RouterModel, records: Sequence[dict], source: dict) -> list[dict]:
    """The records to calibrate on: those the model was not trained on, when ``records``
    is the workload it was trained on (same sha256); otherwise all of them."""
    meta = model.meta
    same = meta.get("trained_on", {}).get("sha256") == source.get("sha256")
    ids = set(meta.get("test_ids") or [])
    if same and ids:
        return [r for r in records if r["id"] in ids]
    return list(records)


def model_scores(model: RouterModel, records: Sequence[dict], embed) -> dict[str, np.ndarray]:
    """Each head's scores of ``records``: router always, cascade when the model has one."""
    texts = [r["prompt"] for r in records]
    p = model.scores(np.asarray(embed(texts)), texts)
    out = {"router": p}
    if model.cascade is not None:
        out["cascade"] = model.cascade_scores(p, records)
    return out


def apply(model: RouterModel, cal: Calibration) -> RouterModel:
    """Write the chosen thresholds (and what they give) into the model."""
    if "router" in cal.chosen:
        model.threshold = cal.chosen["router"].threshold
    if "cascade" in cal.chosen:
        model.cascade_threshold = cal.chosen["cascade"].threshold
    model.meta["calibration"] = cal.to_dict()
    return model


# -- chart ----------------------------------------------------------------------------------

_STYLE = {
    "router": ("C0", "-", "embedding router"),
    "cascade": ("C2", "-", "cascade (router + local confidence)"),
    "random": ("C7", "--", "random routing"),
}


def curve_chart(cal: Calibration, path: str | os.PathLike, title: str = "") -> Path:
    """A PNG of accuracy against remote share: each score's curve, random routing, the
    level of ``gap`` of the gap, and the chosen points ringed."""
    from pocketlm.services.charts import _figure, _save

    fig = _figure(7.5, 5, dpi=110)
    ax = fig.subplots()
    for name, curve in cal.curves.items():
        color, style, label = _STYLE.get(name, ("C3", "-", name))
        need = cal.share_for_gap.get(name)
        auroc = cal.auroc.get(name)
        extra = [f"AUROC {auroc:.2f}"] if auroc is not None else []
        extra += [f"{cal.gap:.0%} of gap at {need:.0%}"] if need is not None else []
        text = f"{label} ({', '.join(extra)})" if extra else label
        ax.plot(curve.share * 100, curve.quality * 100, style, color=color, label=text)
    level = cal.local_accuracy + cal.gap * (cal.remote_accuracy - cal.local_accuracy)
    ax.axhline(level * 100, color="C3", linestyle=":", lw=1, label=f"{cal.gap:.0%} of the gap")
    for name, p in cal.chosen.items():
        color = _STYLE.get(name, ("C3",))[0]
        ax.scatter(
            [p.share * 100],
            [p.quality * 100],
            s=160,
            facecolors="none",
            edgecolors=color,
            linewidths=2,
            zorder=4,
        )
        ax.annotate(
            f"{name}: t={p.threshold:.3f}\n{p.share:.0%} remote, acc {p.quality:.1%}",
            (p.share * 100, p.quality * 100),
            textcoords="offset points",
            xytext=(10, -28),
            fontsize=8,
        )
    ax.set_xlabel("prompts sent to the remote tier (%)")
    ax.set_ylabel("accuracy of the routed answers (%)")
    ax.set_xlim(0, 100)
    ax.set_title(
        title
        or f"quality against remote share, {cal.n} prompts (local only "
        f"{cal.local_accuracy:.1%}, remote only {cal.remote_accuracy:.1%})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
