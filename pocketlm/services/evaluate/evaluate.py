"""One evaluation of a model, as ``pocketlm eval`` runs it: measured, then recorded.

Four modes: multiple choice (``mc``, lm-eval-exact acc and acc_norm), ``perplexity`` of a
text (KL divergence and top-1 agreement too, against a reference model), ``generate``
(generation tasks scored by answer or regex) and ``needle`` (needle-in-a-haystack recall).
Each measurement goes into the results database; ``evaluate`` returns the report with the
row's id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services import results

MODES = ("mc", "perplexity", "generate", "needle")


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate; each mode reads its own fields (None: the measure's default)."""

    threads: int | None = None  # CPU threads (default: physical cores)
    limit: int | None = None  # only the first N items or tasks
    # multiple choice
    format: str | None = None  # jsonl, piqa, hellaswag, arc or mmlu (default: from the file)
    labels: str | None = None  # labels file (PIQA)
    shots: int = 0
    seed: int = 1234  # few-shot draw
    # perplexity
    window: int = 512
    stride: int | None = None  # default: the window
    reference: str | None = None  # model to compare against (KL divergence, top-1)
    max_tokens: int | None = None
    # needle in a haystack
    lengths: list[int] | None = None
    depths: list[float] | None = None
    haystack: str | None = None  # text file (default: generated)
    trials: int = 1
    quick: bool = False
    ctx: int | None = None


@dataclass
class Evaluation:
    """A measurement and the results-database row it was recorded as."""

    mode: str  # one of MODES
    kind: str  # the row's kind: eval, perplexity, kld, generation or needle
    task: str
    model: str
    report: Any  # MCReport, PerplexityReport, GenReport or NeedleReport
    result_id: int | None

    def to_dict(self) -> dict[str, Any]:
        """The report with its row's identity; needle samples left out."""
        out = {
            "model": self.model,
            "task": self.task,
            "kind": self.kind,
            **self.report.to_dict(),
            "result_id": self.result_id,
        }
        out.pop("samples", None)
        return out


def evaluate(
    model: str,
    file: str | None,
    mode: str | None = None,
    options: EvalOptions | None = None,
    *,
    progress: Progress | None = None,
) -> Evaluation:
    """Evaluate ``model`` (name or GGUF path) on ``file`` in ``mode`` (default: guessed from
    the file) and record the result."""
    if mode is None:
        mode = guess_mode(Path(file))
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    return _RUNNERS[mode](model, file, options or EvalOptions(), progress or NullProgress())


def guess_mode(path: Path) -> str:
    """perplexity for text files, generate for JSONL with a "prompt", else multiple choice."""
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "check the path")
    if path.suffix.lower() in (".txt", ".md", ".text"):
        return "perplexity"
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((ln for ln in f if ln.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        record = {}
    return "generate" if isinstance(record, dict) and "prompt" in record else "mc"


def _threads(o: EvalOptions) -> int:
    from pocketlm.services.machine import default_threads

    return o.threads or default_threads()


def _mc(ref: str, file: str, o: EvalOptions, progress: Progress) -> Evaluation:
    from pocketlm.services.evaluate import datasets
    from pocketlm.services.evaluate.multiple_choice import run_multiple_choice
    from pocketlm.services.runtime import open_engine_model
    from pocketlm.store.gguf_check import inspect_gguf

    items = datasets.load(file, o.format, o.labels)[: o.limit]
    name, path, manifest, model = open_engine_model(ref, progress=progress)
    try:
        report = run_multiple_choice(
            model, items, shots=o.shots, seed=o.seed, threads=_threads(o), progress=progress
        )
    finally:
        model.close()
    settings = {
        "shots": o.shots,
        "seed": o.seed,
        "limit": o.limit,
        "format": o.format or datasets.detect_format(Path(file)),
    }
    task = Path(file).name
    row = results.record(
        "eval",
        task,
        name,
        report.to_dict(),
        settings,
        manifest=manifest,
        file_type=inspect_gguf(path).file_type,
    )
    return Evaluation("mc", "eval", task, name, report, row)


def _perplexity(ref: str, file: str, o: EvalOptions, progress: Progress) -> Evaluation:
    from pocketlm.services.evaluate.perplexity import read_text, run_perplexity
    from pocketlm.services.runtime import open_engine_model
    from pocketlm.store.gguf_check import inspect_gguf

    text = read_text(file)
    name, path, manifest, model = open_engine_model(ref, progress=progress)
    reference = open_engine_model(o.reference, progress=progress)[3] if o.reference else None
    try:
        report = run_perplexity(
            model,
            text,
            window=o.window,
            stride=o.stride,
            reference=reference,
            threads=_threads(o),
            max_tokens=o.max_tokens,
            progress=progress,
        )
    finally:
        model.close()
        if reference is not None:
            reference.close()
    settings = {
        "window": o.window,
        "stride": o.stride or o.window,
        "reference": o.reference,
        "max_tokens": o.max_tokens,
    }
    kind, task = "kld" if o.reference else "perplexity", Path(file).name
    row = results.record(
        kind,
        task,
        name,
        report.to_dict(),
        settings,
        manifest=manifest,
        file_type=inspect_gguf(path).file_type,
    )
    return Evaluation("perplexity", kind, task, name, report, row)


def _generate(ref: str, file: str, o: EvalOptions, progress: Progress) -> Evaluation:
    from pocketlm.services.evaluate.generation import load_tasks, run_generation
    from pocketlm.services.runtime import LoadedModel

    tasks = load_tasks(file)[: o.limit]
    task = Path(file).name
    with LoadedModel(ref, progress=progress, threads=o.threads) as m:
        report = run_generation(m, tasks, progress=progress)
        row = results.record(
            "generation",
            task,
            m.name,
            report.to_dict(),
            {"limit": o.limit},
            manifest=m.manifest,
            file_type=m.info.file_type,
        )
    return Evaluation("generate", "generation", task, m.name, report, row)


def _needle(ref: str, file: str | None, o: EvalOptions, progress: Progress) -> Evaluation:
    from pocketlm.services.evaluate.needle import run_needle, task_name
    from pocketlm.services.runtime import LoadedModel

    with LoadedModel(ref, progress=progress, threads=o.threads, ctx=o.ctx) as m:
        report = run_needle(
            m,
            lengths=o.lengths,
            depths=o.depths,
            haystack=o.haystack,
            trials=o.trials,
            quick=o.quick,
            progress=progress,
        )
    return Evaluation("needle", "needle", task_name(report), report.model, report, report.result_id)


_RUNNERS = {"mc": _mc, "perplexity": _perplexity, "generate": _generate, "needle": _needle}
