"""The router model: P(the local answer is good enough), from the prompt and, in a cascade,
from the local answer itself; trained on a collected workload, stored as plain JSON.

Label: a prompt's local answer is *good enough* when it is correct, or when the remote
answer is not correct either (escalating would not have helped). So the router learns
where escalating pays, not merely where the small model fails.

Two heads, both logistic regressions trained with scikit-learn and stored as weights, so
that serving needs numpy only:

- the router head, over the prompt's sentence embedding ([384]) and a few counts of its
  text (PROMPT_FEATURES: length, numbers, digits, lines; the embedding sees topics well
  and sizes badly, and a small model fails on big numbers and long inputs): decides
  before any answer exists (route remote when its score is below ``threshold``);
- the cascade head, over [the router head's logit, the local answer's mean and min token
  log-probability, log(1 + its length in tokens)]: decides after the local model answered
  (escalate when its score is below ``cascade_threshold``).

Training holds out a seeded, stratified share of the workload and reports each head's
AUROC on it; the held-out ids are kept in the file, so that calibration can use prompts the
heads never saw.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pocketlm.errors import UsageError

FORMAT = "pocketlm-router"
VERSION = 2  # 2 added prompt_features; version 1 files (embedding only) still load
PROMPT_FEATURES = (
    "log1p_chars",
    "log1p_words",
    "numbers",
    "longest_number",
    "digit_share",
    "lines",
    "log1p_digits",
)
CASCADE_FEATURES = ("router_logit", "mean_logprob", "min_logprob", "log1p_tokens")
LABEL_RULE = "local answer correct, or remote answer not correct either"
DEFAULT_THRESHOLD = 0.5  # before calibration: remote when the local answer is more likely bad
_LOGIT_CLIP = 1e-6
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # inverse L2 strengths tried


def good_enough(rec: dict) -> bool:
    """The label: the local answer is correct, or the remote one is not correct either."""
    return bool(rec["local_ok"]) or not bool(rec["remote_ok"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(p / (1 - p))


@dataclass
class Logistic:
    """P(y=1 | x) = sigmoid(((x - mean) / scale) . coef + intercept); no scaling without
    ``mean`` and ``scale``."""

    coef: np.ndarray  # [d]
    intercept: float
    mean: np.ndarray | None = None  # [d]
    scale: np.ndarray | None = None  # [d]

    def prob(self, x: np.ndarray) -> np.ndarray:
        """x: [n, d] (or [d]) -> probabilities [n] (or a 0-d array)."""
        x = np.asarray(x, dtype=np.float64)
        if self.mean is not None:
            x = (x - self.mean) / self.scale
        return _sigmoid(x @ self.coef + self.intercept)

    def to_dict(self) -> dict:
        d = {"coef": self.coef.tolist(), "intercept": float(self.intercept)}
        if self.mean is not None:
            d |= {"mean": self.mean.tolist(), "scale": self.scale.tolist()}
        return d

    @classmethod
    def from_dict(cls, d: object, name: str, dim: int, fail: Callable) -> Logistic:
        if not isinstance(d, dict):
            raise fail(name, "must be an object with 'coef' and 'intercept'")
        vectors = {
            k: _vector(d.get(k), f"{name}.{k}", dim, fail)
            for k in ("coef", "mean", "scale")
            if k == "coef" or k in d
        }
        intercept = d.get("intercept")
        if not _finite(intercept):
            raise fail(f"{name}.intercept", "must be a number")
        if ("mean" in vectors) != ("scale" in vectors):
            raise fail(f"{name}.scale", "'mean' and 'scale' go together")
        if "scale" in vectors and not np.all(vectors["scale"] > 0):
            raise fail(f"{name}.scale", "must be positive numbers")
        return cls(vectors["coef"], float(intercept), vectors.get("mean"), vectors.get("scale"))


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _vector(v: object, name: str, dim: int, fail: Callable) -> np.ndarray:
    if not isinstance(v, list) or len(v) != dim or not all(_finite(x) for x in v):
        raise fail(name, f"must be a list of {dim} numbers")
    return np.asarray(v, dtype=np.float64)


_NUMBER = re.compile(r"\d+")


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """Counts of each prompt's text that its embedding does not see well: [n, 7] (see
    PROMPT_FEATURES). Linear in the text's length."""
    rows = []
    for text in texts:
        numbers = [len(m) for m in _NUMBER.findall(text)]
        digits = sum(numbers)
        rows.append(
            [
                math.log1p(len(text)),
                math.log1p(len(text.split())),
                len(numbers),
                max(numbers, default=0),
                digits / max(1, len(text)),
                text.count("\n"),
                math.log1p(digits),
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(PROMPT_FEATURES))


def router_inputs(embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """The router head's input: each prompt's embedding and its PROMPT_FEATURES,
    [n, dim + 7]."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(texts) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(texts)} texts")
    return np.hstack([x, prompt_features(texts)])


def cascade_features(
    router_p: np.ndarray | float,
    mean_logprob: np.ndarray | float,
    min_logprob: np.ndarray | float,
    tokens: np.ndarray | float,
) -> np.ndarray:
    """The cascade head's input, [n, 4] (see CASCADE_FEATURES)."""
    cols = [logit(router_p), mean_logprob, min_logprob, np.log1p(np.asarray(tokens, float))]
    return np.column_stack([np.atleast_1d(np.asarray(c, dtype=np.float64)) for c in cols])


@dataclass
class RouterModel:
    """Scores a prompt (and, in a cascade, the local answer): P(local good enough)."""

    router: Logistic
    cascade: Logistic | None = None
    threshold: float = DEFAULT_THRESHOLD  # remote when score < threshold
    cascade_threshold: float = DEFAULT_THRESHOLD  # escalate when cascade score < this
    meta: dict = field(default_factory=dict)
    features: tuple[str, ...] = PROMPT_FEATURES  # () for a version 1 file: embedding only

    @property
    def dim(self) -> int:
        """The embedding's size (the router head also reads ``features``)."""
        return len(self.router.coef) - len(self.features)

    def score(self, embedding: np.ndarray, text: str) -> float:
        """P(the local answer is good enough) for one prompt: its embedding [dim] and text."""
        return float(self.scores(np.asarray(embedding).reshape(1, -1), [text])[0])

    def scores(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Scores of many prompts: embeddings [n, dim] and their texts -> [n]."""
        return self.router.prob(self.inputs(embeddings, texts))

    def inputs(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The router head's input: [n, dim + len(features)]."""
        x = np.asarray(embeddings, dtype=np.float64).reshape(-1, self.dim)
        return router_inputs(x, texts) if self.features else x

    def sends_remote(self, score: float) -> bool:
        return score < self.threshold

    def cascade_score(
        self, router_score: float, mean_logprob: float, min_logprob: float, tokens: int
    ) -> float | None:
        """P(local good enough) once the local answer exists; None without a cascade head."""
        if self.cascade is None:
            return None
        x = cascade_features(router_score, mean_logprob, min_logprob, tokens)
        return float(self.cascade.prob(x)[0])

    def cascade_scores(self, router_scores: np.ndarray, records: Sequence[dict]) -> np.ndarray:
        """Cascade scores of workload records (with their local logprobs): [n]."""
        router_scores = np.asarray(router_scores, dtype=np.float64)
        x = cascade_features(router_scores, *_answer_columns(records))
        # a record without logprobs (a remote-only answer) keeps its router score
        known = np.isfinite(x).all(axis=1)
        out = router_scores.copy()
        out[known] = self.cascade.prob(x[known])
        return out

    def escalates(self, cascade_score: float) -> bool:
        return cascade_score < self.cascade_threshold

    # -- file -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "prompt_features": list(self.features),
            "router": self.router.to_dict(),
            "cascade": self.cascade.to_dict() if self.cascade else None,
            "cascade_features": list(CASCADE_FEATURES),
            "threshold": self.threshold,
            "cascade_threshold": self.cascade_threshold,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as JSON (atomically: a reader never sees half a file)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RouterModel:
        """Read a router file; errors name the file and the field at fault."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(
                f"router file '{path}' not found", "train one with pocketlm route train"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"cannot read router file '{path}': {e}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: object, path: str | os.PathLike = "<router>") -> RouterModel:
        def fail(name: str, problem: str) -> UsageError:
            return UsageError(
                f"router file '{path}': field '{name}' {problem}",
                "retrain it with pocketlm route train",
            )

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise fail("format", f"must be '{FORMAT}'")
        version = data.get("version")
        if version not in (1, VERSION):
            raise fail("version", f"must be 1 or {VERSION} (this pocketlm reads those)")
        features = tuple(data.get("prompt_features", [])) if version == VERSION else ()
        if features != PROMPT_FEATURES[: len(features)] or (version == VERSION and not features):
            raise fail("prompt_features", f"must be {list(PROMPT_FEATURES)}")
        dim = data.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise fail("dim", "must be a positive whole number")
        cascade = data.get("cascade")
        if cascade is not None:
            cascade = Logistic.from_dict(cascade, "cascade", len(CASCADE_FEATURES), fail)
        thresholds = {}
        for key in ("threshold", "cascade_threshold"):
            value = data.get(key, DEFAULT_THRESHOLD)
            if not _finite(value) or not 0 <= value <= 1:
                raise fail(key, "must be a probability from 0 to 1")
            thresholds[key] = float(value)
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise fail("meta", "must be an object")
        router = Logistic.from_dict(data.get("router"), "router", dim + len(features), fail)
        return cls(router, cascade, meta=meta, features=features, **thresholds)


def _answer_columns(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean logprob, min logprob, tokens) of the records' local answers."""
    cols = [[r["local_mean_logprob"] for r in records], [r["local_min_logprob"] for r in records]]
    tokens = [r.get("local_tokens") or 0 for r in records]
    return np.asarray(cols[0], float), np.asarray(cols[1], float), np.asarray(tokens, float)


def has_logprobs(rec: dict) -> bool:
    return _finite(rec.get("local_mean_logprob")) and _finite(rec.get("local_min_logprob"))


# -- training -------------------------------------------------------------------------------


@dataclass
class TrainReport:
    n: int
    n_train: int
    n_test: int
    good_rate: float  # share of prompts whose local answer is good enough
    local_accuracy: float  # on the held-out part
    remote_accuracy: float
    auroc_router: float | None  # held-out; None when the held-out part has one class only
    auroc_cascade: float | None
    C: float  # the router head's regularisation, chosen by cross-validation

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def file_source(path: str | os.PathLike) -> dict:
    """Where a model was trained: the workload's path and sha256."""
    path = Path(path)
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def split(labels: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out indices, stratified by label where each class has 2+ items."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_share < 1:
        raise UsageError(f"invalid test share {test_share}: must be between 0 and 1")
    index = np.arange(len(labels))
    stratify = labels if np.bincount(labels.astype(int), minlength=2).min() >= 2 else None
    train, test = train_test_split(
        index, test_size=test_share, random_state=seed, stratify=stratify
    )
    return np.sort(train), np.sort(test)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def _folds(labels: np.ndarray, seed: int):
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(labels.astype(int), minlength=2).min())
    if smallest < 2:
        which = "good enough" if smallest == labels.sum() else "not good enough"
        raise UsageError(
            f"the workload has fewer than 2 training prompts whose local answer is {which}",
            "collect more prompts (pocketlm route collect --n)",
        )
    return StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed)


def standardise_features(x: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) that standardise the last ``n_features`` columns of ``x`` and leave the
    embedding's columns as they are (they are already on one scale)."""
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if n_features:
        tail = x[:, -n_features:]
        mean[-n_features:], scale[-n_features:] = tail.mean(axis=0), tail.std(axis=0)
        scale[scale == 0] = 1.0
    return mean, scale


def fit_router(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Logistic, float]:
    """The router head over (already standardised) inputs, its regularisation picked by
    cross-validated AUROC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    cv = _folds(y, seed)

    def auroc(C: float) -> float:
        head = LogisticRegression(C=C, max_iter=5000)
        return float(cross_val_score(head, x, y, cv=cv, scoring="roc_auc").mean())

    C = max(C_GRID, key=auroc)  # the first (most regularised) of equals wins
    model = LogisticRegression(C=C, max_iter=5000).fit(x, y)
    return Logistic(model.coef_[0].copy(), float(model.intercept_[0])), C


def fit_cascade(
    x: np.ndarray, y: np.ndarray, records: Sequence[dict], C: float, seed: int
) -> Logistic | None:
    """The cascade head. Its router feature is the out-of-fold router score: in-sample
    scores are over-confident and would teach the head to trust them too much."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    keep = np.array([has_logprobs(r) for r in records])
    if keep.sum() < 10 or len(set(y[keep].tolist())) < 2:
        return None  # a remote-only workload, or one without logprobs: no cascade
    oof = cross_val_predict(
        LogisticRegression(C=C, max_iter=5000), x, y, cv=_folds(y, seed), method="predict_proba"
    )[:, 1]
    kept = [r for r, k in zip(records, keep) if k]
    feats = cascade_features(oof[keep], *_answer_columns(kept))
    mean, scale = feats.mean(axis=0), feats.std(axis=0)
    scale[scale == 0] = 1.0
    head = LogisticRegression(max_iter=5000).fit((feats - mean) / scale, y[keep])
    return Logistic(head.coef_[0].copy(), float(head.intercept_[0]), mean, scale)


def train(
    records: Sequence[dict],
    embed: Callable[[list[str]], np.ndarray],
    *,
    test_share: float = 0.3,
    seed: int = 0,
    source: dict | None = None,
    embedder: str = "all-MiniLM-L6-v2",
) -> tuple[RouterModel, TrainReport]:
    """Train both heads on a seeded split of ``records`` (workload lines) and measure them
    on the held-out part. ``embed`` maps prompts to [n, dim] embeddings."""
    if len(records) < 10:
        raise UsageError(
            f"a workload of {len(records)} prompts is too small to train on",
            "collect at least a few dozen (pocketlm route collect --n 300)",
        )
    y = np.array([good_enough(r) for r in records], dtype=int)
    texts = [r["prompt"] for r in records]
    x = router_inputs(embed(texts), texts)
    tr, te = split(y, test_share, seed)
    mean, scale = standardise_features(x[tr], len(PROMPT_FEATURES))
    xs = (x - mean) / scale
    head, C = fit_router(xs[tr], y[tr], seed)
    router = Logistic(head.coef, head.intercept, mean, scale)
    cascade = fit_cascade(xs[tr], y[tr], [records[i] for i in tr], C, seed)
    model = RouterModel(router, cascade)
    test = [records[i] for i in te]
    p_test = model.router.prob(x[te])
    report = TrainReport(
        n=len(records),
        n_train=len(tr),
        n_test=len(te),
        good_rate=float(y.mean()),
        local_accuracy=float(np.mean([r["local_ok"] for r in test])),
        remote_accuracy=float(np.mean([r["remote_ok"] for r in test])),
        auroc_router=_auroc(y[te], p_test),
        auroc_cascade=_cascade_auroc(model, p_test, y[te], test),
        C=C,
    )
    model.meta = _meta(records, report, source, embedder, [r["id"] for r in test], seed)
    return model, report


def _cascade_auroc(model: RouterModel, p: np.ndarray, y: np.ndarray, test: list[dict]):
    keep = np.array([has_logprobs(r) for r in test], dtype=bool)
    if model.cascade is None or not keep.any():
        return None
    kept = [r for r, k in zip(test, keep) if k]
    return _auroc(y[keep], model.cascade_scores(p[keep], kept))


def _meta(records, report: TrainReport, source, embedder, test_ids, seed) -> dict:
    first = records[0]
    return {
        "trained_on": source or {},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "embedder": embedder,
        "local": first.get("local_tier"),
        "remote": first.get("remote_tier"),
        "label": LABEL_RULE,
        "seed": seed,
        **report.to_dict(),
        "test_ids": test_ids,
        "calibration": None,
    }
