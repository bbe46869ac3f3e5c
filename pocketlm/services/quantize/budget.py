"""The best quantization type for a size budget: the lowest KL divergence whose file fits.

Every type's file size is first estimated by llama.cpp's dry run (exact to ~10 KB, in
milliseconds). The candidates are the types estimated to fit, down to ``BAND`` of the
largest that fits (a type with a quarter fewer bits loses more: trying it would only cost
time), plus the smallest type over the budget (``NEAR_MISSES``: shown so one sees what a
little more room would buy; never chosen). Types larger than the parent file are skipped
(they cannot be closer to it than the parent's own type), and so are ternary types for
models not trained ternary (architecture ``bitnet``): they ruin the others. Each candidate
is quantized to scratch space and measured against the reference; only the best file found
so far is kept on disk, and the winner goes into the store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketlm.errors import EngineError, PocketError, UsageError, option
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.machine import default_threads
from pocketlm.services.quantize import types
from pocketlm.services.quantize.quantize import (
    Calibration,
    Estimate,
    Quantized,
    Source,
    build,
    check_calibration,
    check_disk,
    check_free_name,
    default_name,
    estimate_sizes,
    keep,
    open_source,
    provenance,
    record_result,
    reference_model,
    resolve_reference,
    warn_same_text,
)
from pocketlm.services.quantize.report import QualityParams, QualityReport, load_text, measure
from pocketlm.services.quantize.types import QuantType
from pocketlm.store.gguf_check import GGUFInfo
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store

if TYPE_CHECKING:
    from pocketlm.engine.llama import Model

NEAR_MISSES = 1  # the smallest type(s) over the budget, measured too (never chosen) ...
NEAR_MISS_LIMIT = 1.25  # ... if at most 25% over it
BAND = 0.75  # types under 75% of the largest that fits are not tried: fewer bits, more loss

Best = tuple["Candidate", GGUFInfo]  # the best candidate so far and its file's header
Plan = tuple[list[tuple[QuantType, int]], dict[str, str]]  # types to try, types skipped

_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """'60MB', '2GB', '500M', '1.5 GB' -> bytes (decimal units; KiB, MiB, GiB are binary)."""
    m = _SIZE_RE.match(text)
    unit = _UNITS.get(m.group(2).upper()) if m else None
    value = int(float(m.group(1)) * unit) if unit else 0
    if value <= 0:
        raise UsageError(
            f"invalid size '{text}'",
            "give a number and a unit, e.g. 60MB, 2GB or 500M (1 MB = 1,000,000 bytes)",
        )
    return value


@dataclass
class Candidate:
    """One type tried for the budget."""

    type: str
    estimate_bytes: int
    size_bytes: int | None = None  # the real file
    fits: bool = False
    quality: QualityReport | None = None
    error: str | None = None  # llama.cpp could not write it
    result_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "estimate_bytes": self.estimate_bytes,
            "size_bytes": self.size_bytes,
            "fits": self.fits,
            "error": self.error,
            "quality": self.quality.to_dict() if self.quality else None,
            "result_id": self.result_id,
        }


@dataclass
class BudgetChoice:
    budget_bytes: int
    parent: str
    reference: str
    candidates: list[Candidate]
    skipped: dict[str, str]  # type -> why it was not tried
    estimates: dict[str, int]  # type -> estimated file size (bytes), where llama.cpp can
    winner: Quantized
    seconds: float
    chart: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "parent": self.parent,
            "reference": self.reference,
            "winner": self.winner.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "skipped": self.skipped,
            "estimates": self.estimates,
            "chart": str(self.chart) if self.chart else None,
            "seconds": self.seconds,
        }


def choose(
    ref: str,
    budget_bytes: int,
    *,
    name: str | None = None,
    reference: str | None = None,
    eval_text: str | Path | None = None,
    calibrate: Calibration | None = None,
    params: QualityParams | dict[str, Any] | None = None,
    threads: int | None = None,
    chart: Path | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
    record: bool = True,
) -> BudgetChoice:
    """Quantize ``ref`` to the type with the lowest KL divergence whose file fits
    ``budget_bytes``; keep it in the store and (if ``chart``) draw size against KLD."""
    from pocketlm.params import validate

    started = time.perf_counter()
    store, progress = store or Store(), progress or NullProgress()
    check_calibration(None, calibrate)
    params = params if isinstance(params, QualityParams) else validate(QualityParams, params or {})
    text = load_text(eval_text)
    warn_same_text(calibrate, text, progress)
    threads = threads or default_threads()
    source = open_source(ref, store, progress)
    ref_name, ref_path = resolve_reference(reference, source, store, progress)
    estimates = estimate_sizes(source, types.TYPES.values())
    tries, skipped = plan(source, estimates, budget_bytes, calibrate)
    for qt, est in tries:
        if est <= budget_bytes:  # a possible winner: its name must be free
            check_free_name(store, name or default_name(source.name, qt))
    check_disk(store, 2 * max(est for _, est in tries))  # the best so far + the one being made
    with store.scratch() as scratch, reference_model(ref_path, store, progress) as ref_model:
        search = _Search(
            source,
            budget_bytes,
            ref_name,
            ref_model,
            text,
            params,
            threads,
            calibrate,
            store,
            progress,
            scratch,
        )
        candidates, best = search.run(tries)
        if best is None:
            raise PocketError(
                f"none of the types tried fits {budget_bytes / 1e6:.1f} MB once "
                "written: " + _tried(candidates),
                f"raise {option('budget')}",
            )
        manifest = search.keep(best, candidates, name)
    winner = Quantized(
        manifest,
        source.parent,
        source.requantizing,
        manifest.calibration,
        best[0].quality,
        seconds=time.perf_counter() - started,
    )
    sizes = {n: e.size_bytes for n, e in estimates.items() if not e.error}
    choice = BudgetChoice(
        budget_bytes,
        source.name,
        ref_name,
        candidates,
        skipped,
        sizes,
        winner,
        seconds=time.perf_counter() - started,
    )
    if record:
        _record(store, choice, params, threads)
    if chart is not None:
        from pocketlm.services.charts import budget_chart

        choice.chart = budget_chart(choice, chart)
    return choice


@dataclass
class _Search:
    """One budget search: what every candidate is made and measured with."""

    source: Source
    budget_bytes: int
    ref_name: str
    ref_model: Model
    text: tuple[str, str]
    params: QualityParams
    threads: int
    calibrate: Calibration | None
    store: Store
    progress: Progress
    scratch: Path

    def file(self, qtype: str) -> Path:
        return self.scratch / f"{qtype}.gguf"

    def run(self, tries: list[tuple[QuantType, int]]) -> tuple[list[Candidate], Best | None]:
        """Make and measure each type; only the best file that fits stays on disk."""
        candidates: list[Candidate] = []
        best: Best | None = None
        for i, (qt, est) in enumerate(tries, 1):
            self.progress.note(f"[{i}/{len(tries)}] {qt.name}: about {est / 1e6:.1f} MB")
            cand, info = self.attempt(qt, est)
            candidates.append(cand)
            if info is None:
                continue
            if cand.fits and (best is None or _better(cand, best[0])):
                if best is not None:
                    self.file(best[0].type).unlink()
                best = (cand, info)
            else:
                self.file(qt.name).unlink()
        return candidates, best

    def attempt(self, qt: QuantType, est: int) -> tuple[Candidate, GGUFInfo | None]:
        cand = Candidate(qt.name, est)
        try:
            info = build(
                self.source,
                qt,
                self.file(qt.name),
                threads=self.threads,
                calibrate=self.calibrate,
                progress=self.progress,
            )
        except EngineError as e:  # this type, on this model: the others may still work
            cand.error = e.message
            return cand, None
        cand.size_bytes, cand.fits = info.size_bytes, info.size_bytes <= self.budget_bytes
        cand.quality = measure(
            self.file(qt.name),
            info,
            self.ref_model,
            self.ref_name,
            self.text,
            self.params,
            threads=self.threads,
            store=self.store,
            progress=self.progress,
        )
        return cand, info

    def keep(self, best: Best, candidates: list[Candidate], name: str | None) -> Manifest:
        cand, info = best
        qt = types.get(cand.type)
        extras = provenance(self.source, self.calibrate, cand.quality) | {
            "budget": {"bytes": self.budget_bytes, "candidates": [_brief(c) for c in candidates]}
        }
        return keep(
            self.store,
            self.source,
            qt,
            self.file(qt.name),
            info,
            name or default_name(self.source.name, qt),
            extras,
            self.progress,
        )


def plan(
    source: Source, estimates: dict[str, Estimate], budget_bytes: int, calibrate: Calibration | None
) -> Plan:
    """(types to try with their estimated sizes, smallest last; types skipped -> why)."""
    eligible, skipped = [], {}
    for qt in types.TYPES.values():
        est = estimates[qt.name]
        why = _skip_reason(qt, est, source, calibrate)
        if why:
            skipped[qt.name] = why
        else:
            eligible.append((qt, est.size_bytes))
    eligible.sort(key=lambda t: t[1])
    fitting = [t for t in eligible if t[1] <= budget_bytes]
    if not fitting:
        raise PocketError(
            _too_small(source, estimates, budget_bytes, calibrate), f"raise {option('budget')}"
        )
    over = [t for t in eligible if budget_bytes < t[1] <= budget_bytes * NEAR_MISS_LIMIT]
    tries = [t for t in fitting if t[1] >= BAND * fitting[-1][1]] + over[:NEAR_MISSES]
    for qt, _ in eligible:
        if all(qt is not t for t, _ in tries):
            too_big = estimates[qt.name].size_bytes > budget_bytes
            skipped[qt.name] = "over the budget" if too_big else "much smaller than allowed"
    return tries[::-1], skipped


def _skip_reason(
    qt: QuantType, est: Estimate, source: Source, calibrate: Calibration | None
) -> str | None:
    if qt.family == "mxfp4":
        return "for MoE models"
    if qt.family == "ternary" and source.info.architecture != "bitnet":
        return "for ternary-trained models"
    if qt.needs_imatrix and calibrate is None:
        return "needs --calibrate"  # a line of the CLI's table
    if est.error:
        return f"llama.cpp cannot write it for this model: {est.error}"
    if est.size_bytes > source.info.size_bytes:
        return f"larger than {source.name}"
    return None


def _too_small(
    source: Source, estimates: dict[str, Estimate], budget_bytes: int, calibrate: Calibration | None
) -> str:
    def smallest(allowed) -> tuple[str, int] | None:
        sizes = [(e.size_bytes, n) for n, e in estimates.items() if not e.error and allowed(n)]
        return min(sizes, default=None)

    usable = smallest(lambda n: not _skip_reason(types.get(n), estimates[n], source, calibrate))
    text = f"no quantization type fits {budget_bytes / 1e6:.1f} MB for {source.name}"
    if usable:
        text += f": the smallest is {usable[1]} at about {usable[0] / 1e6:.1f} MB"
    calibrated = smallest(lambda n: types.get(n).needs_imatrix)
    if calibrate is None and calibrated and (not usable or calibrated[0] < usable[0]):
        size = f"about {calibrated[0] / 1e6:.1f} MB"
        text += f" ({calibrated[1]}, {size}, with {option('calibrate', True)})"
    return text


def _better(a: Candidate, b: Candidate) -> bool:
    return (a.quality.kld_mean, a.size_bytes) < (b.quality.kld_mean, b.size_bytes)


def _tried(candidates: list[Candidate]) -> str:
    return ", ".join(
        f"{c.type} {c.size_bytes / 1e6:.1f} MB" if c.size_bytes else f"{c.type} failed"
        for c in candidates
    )


def _brief(c: Candidate) -> dict[str, Any]:
    q = c.quality
    return {
        "type": c.type,
        "size_bytes": c.size_bytes,
        "fits": c.fits,
        "kld_mean": q.kld_mean if q else None,
        "error": c.error,
    }


def _record(store: Store, choice: BudgetChoice, params: QualityParams, threads: int) -> None:
    """A row for every type measured: the winner's (kept) and the others' (not kept)."""
    from pocketlm.services.results import ResultsDB, record

    w = choice.winner
    settings = {"budget_bytes": choice.budget_bytes}
    w.result_id = record_result(store, w, params, threads, **settings, kept=True)
    db = ResultsDB.of(store)
    for c in choice.candidates:
        if c.quality is None:
            continue
        if c.type == w.quality.type:
            c.result_id = w.result_id
            continue
        c.result_id = record(
            "quantize",
            c.quality.eval_text,
            f"{choice.parent}-{c.type.lower()}",
            metrics=c.quality.to_dict() | {"requantized": w.requantized},
            settings={
                "type": c.type,
                "parent": choice.parent,
                "reference": choice.reference,
                "calibration": w.calibration,
                "threads": threads,
                **params.model_dump(),
                **settings,
                "kept": False,
            },
            file_type=c.type,
            db=db,
        )
