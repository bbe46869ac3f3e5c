"""The one entry point of `pocketlm task` (CLI, Python API, Ray workers): a job described by a
``JobSpec`` is read, run and written here.

Per-record tasks (classify, extract, summarize, emails) run through ``job.run_job`` on a
``TaskEngine``; logs and security read their file as a stream of lines (``run_logs``,
``run_security`` in ``streams``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketlm.errors import UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.tasks import records as readers
from pocketlm.services.tasks.job import JobSummary, run_job
from pocketlm.services.tasks.output import Output

if TYPE_CHECKING:
    from pocketlm.services.tasks.engine import TaskEngine

# Each task's default model: the ladder model its labelled test files showed to be the best
# trade of accuracy and speed on this kind of machine (docs/tasks.md has the table).
DEFAULT_MODELS = {
    "classify": "qwen2.5-coder-1.5b-instruct",  # tickets: 0.70 vs 0.52 (0.5B), 0.25 (135M)
    "extract": "qwen2.5-coder-1.5b-instruct",  # contacts: 0.82 of fields vs 0.61, 0.36
    "summarize": "qwen2.5-coder-0.5b-instruct",  # key facts 0.57 vs 0.23; 1.5B not measured
    "emails": "qwen2.5-coder-0.5b-instruct",  # the 1.5B no better on the 48 emails, 2x slower
    "logs": "qwen2.5-coder-0.5b-instruct",  # templates of new groups only; rules do the most
    "security": "qwen2.5-coder-0.5b-instruct",  # unknown lines and the incident summary only
}
SCORING_ONLY = ("classify",)  # tasks that generate nothing: one sequence is enough
STREAMS = ("logs", "security")  # whole files read as line streams, their state spans lines


@dataclass
class JobSpec:
    """One `pocketlm task` run. ``options`` are the verb's own (labels, schema...)."""

    verb: str
    input: Path
    out: Path | None = None
    out_format: str = "jsonl"
    fmt: str = "auto"
    field: str | None = None
    resume: bool = False
    retry_failed: bool = False  # resuming: records whose result is an error are done again
    overwrite: bool = False
    model: str | None = None
    threads: int | None = None
    parallel: int = 8
    ctx: int = 4096
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def model_for(spec: JobSpec) -> str:
    """``--model``, else ``POCKETLM_MODEL``, else the task's default."""
    return spec.model or os.environ.get("POCKETLM_MODEL") or DEFAULT_MODELS[spec.verb]


def read(spec: JobSpec) -> Iterator[readers.Record]:
    email = spec.verb == "emails"
    return readers.read_records(spec.input, fmt=spec.fmt, field=spec.field, email=email)


def count(spec: JobSpec) -> int | None:
    """How many records the input holds, when counting is cheap (line formats), for the
    progress bar's ETA; None otherwise."""
    path = spec.input
    if not path.is_file() or readers.detect_format(path) not in ("jsonl", "text", "syslog"):
        return None
    return readers.count_lines(path)


def run(
    spec: JobSpec,
    progress: Progress | None = None,
    wrap: Callable[[Callable, TaskEngine], Callable] | None = None,
) -> JobSummary:
    """Run a per-record job from ``spec`` (see module docstring) and return its summary.
    ``wrap(work, engine)``, when given, makes the per-record callable out of the task's own
    (``pocketlm data label`` turns each result into a training record)."""
    progress = progress or NullProgress()
    if spec.verb in STREAMS:
        return _run_stream(spec, progress)
    _, count_fields, _ = task_of(spec.verb)
    records = readers.started(read(spec))
    out = open_output(spec)
    try:
        engine, work = build_task(spec, progress)
    except BaseException:
        out.close()
        raise
    try:
        try:
            summary = run_job(
                records,
                wrap(work, engine) if wrap else work,
                out.write,
                workers=worker_threads(spec),
                done=out.done,
                retry=out.retry,
                count_fields=count_fields,
                total=count(spec),
                progress=progress,
            )
        finally:
            out.close()
        summary.model = engine.name
        summary.add_tokens(engine.counters)
        return summary
    finally:
        engine.close()


def task_of(verb: str) -> tuple[Builder, tuple[str, ...], list[str]]:
    """A per-record task's (builder, fields counted in the summary, output columns for CSV)."""
    task = _TASKS.get(verb)
    if task is None:
        raise UsageError(f"unknown task '{verb}'", f"choose one of: {', '.join(_TASKS)}")
    return task


def open_output(spec: JobSpec) -> Output:
    """The job's results file, opened as ``spec`` asks (new, resumed or overwritten)."""
    columns = task_of(spec.verb)[2]
    return Output(
        spec.out,
        spec.out_format,
        resume=spec.resume,
        overwrite=spec.overwrite,
        columns=columns,
        retry_failed=spec.retry_failed,
    )


def build_task(
    spec: JobSpec, progress: Progress | None = None
) -> tuple[TaskEngine, Callable[[readers.Record], dict[str, Any]]]:
    """The loaded ``TaskEngine`` and the per-record callable of ``spec``'s task: what ``run``
    and each Ray worker (``distributed``) run. The caller closes the engine."""
    from pocketlm.services.tasks.engine import TaskEngine

    make = task_of(spec.verb)[0](spec)  # the task's options (labels, schema) read first
    engine = TaskEngine(
        model_for(spec),
        n_seq=1 if spec.verb in SCORING_ONLY else spec.parallel,
        n_ctx_seq=spec.ctx,
        threads=spec.threads,
        progress=progress,
    )
    try:
        return engine, make(engine)
    except BaseException:
        engine.close()
        raise


def worker_threads(spec: JobSpec) -> int:
    """Threads that run records: twice the sequences decoded together, so that the engine
    never waits for work."""
    return 2 * spec.parallel


def _run_stream(spec: JobSpec, progress: Progress) -> JobSummary:
    from pocketlm.services.tasks import streams
    from pocketlm.services.tasks.engine import TaskEngine

    def make_engine():
        return TaskEngine(
            model_for(spec),
            n_seq=spec.parallel,
            n_ctx_seq=min(spec.ctx, 2048),  # a line, a few examples, a short answer
            threads=spec.threads,
            progress=progress,
        )

    job = streams.run_logs if spec.verb == "logs" else streams.run_security
    return job(spec, make_engine, progress)


# A task's builder reads its options (files included: a bad one fails before the model
# loads) and returns what makes the per-record callable on the loaded engine.
Builder = Callable[[JobSpec], Callable[[Any], Callable]]


def _classify(spec: JobSpec):
    from pocketlm.services.tasks import classify

    o = spec.options
    if not o.get("labels"):
        raise UsageError("no labels given", "pass --labels A,B,C or --labels FILE")
    labels = classify.parse_labels(o["labels"])
    examples = classify.load_examples(Path(o["examples"]), labels) if o.get("examples") else []
    return lambda engine: classify.Classifier(
        engine, labels, examples=examples, task=o.get("instruction"), calibrate=o.get("calibrate")
    )


def _extract(spec: JobSpec):
    from pocketlm.services.tasks import extract

    o = spec.options
    if not o.get("schema"):
        raise UsageError("no schema given", "pass --schema SCHEMA.json")
    schema = extract.load_schema(Path(o["schema"]))
    return lambda engine: extract.Extractor(
        engine,
        schema,
        task=o.get("instruction"),
        max_tokens=o.get("max_tokens") or 512,
        grounded=bool(o.get("grounded")),
    )


def _summarize(spec: JobSpec):
    from pocketlm.services.tasks import summarize

    o = spec.options
    return lambda engine: summarize.Summarizer(
        engine, length=o.get("length") or "2-3 sentences", max_tokens=o.get("max_tokens") or 200
    )


def _emails(spec: JobSpec):
    from pocketlm.services.tasks import emails

    categories = emails.categories(spec.options.get("categories"))
    return lambda engine: emails.EmailTriage(engine, categories=categories)


# verb -> (builder, fields counted in the summary, output columns for CSV)
_TASKS: dict[str, tuple[Builder, tuple[str, ...], list[str]]] = {
    "classify": (_classify, ("label",), ["label", "probs", "truncated", "error"]),
    "extract": (_extract, ("ungrounded",), ["data", "ungrounded", "attempts", "error"]),
    "summarize": (_summarize, (), ["summary", "parts", "error"]),
    "emails": (
        _emails,
        ("category", "priority", "needs_reply", "spam"),
        "subject from category priority needs_reply spam reason summary probs error".split(),
    ),
}
