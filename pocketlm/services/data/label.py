"""`pocketlm data label`: a local teacher's labels for the user's own records, as training
data for a student.

It is `pocketlm task classify` or `extract` (``tasks.runner``: the same input layouts,
resume, progress and failures), with each result made a training record: the record's
``text``, the ``label`` (for extraction, the extracted object as JSON text; the object
itself in ``data``), the label probabilities where the task scores them (``probs``), the
instructions the teacher read (``instruction``) and the ``teacher``. The teacher is always a
local model: the records are the user's, and they never leave the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.progress import Progress
from pocketlm.services.data.teacher import resolve
from pocketlm.services.tasks import runner
from pocketlm.services.tasks.job import JobSummary
from pocketlm.services.tasks.records import Record

TASKS = ("classify", "extract")


def spec_for(
    task: str, teacher: str, tiers_file: Path | None = None, **fields: Any
) -> runner.JobSpec:
    """The `pocketlm task` job that labels: ``teacher`` resolved to a local model (a remote
    tier refused), ``fields`` as ``JobSpec``'s."""
    if task not in TASKS:
        raise UsageError(f"unknown labelling task '{task}'", f"choose one of: {', '.join(TASKS)}")
    tier = resolve(teacher, tiers_file, local_only=True)
    model = tier.model if tier is not None else teacher
    return runner.JobSpec(verb=task, model=model, **fields)


def run(
    spec: runner.JobSpec,
    progress: Progress | None = None,
    *,
    ray: str | None = None,
    ray_workers: int | None = None,
) -> JobSummary:
    """Label every record of ``spec.input`` into ``spec.out`` (see the module docstring).
    ``spec.options["grounded"]`` (extract): a string value the record's text does not hold
    is made null where the schema allows (pocketlm.services.tasks.extract), and the record
    lists it in ``ungrounded``. ``ray``: a cluster's address, or "auto" (`task --ray`)."""
    if spec.options.get("grounded") and spec.verb != "extract":
        raise UsageError("--grounded is for --task extract", "drop it")
    if ray is None:
        return runner.run(spec, progress, wrap=_training)
    from pocketlm.services.tasks.distributed import run_on_ray

    return run_on_ray(spec, ray, workers=ray_workers, progress=progress, wrap=_training)


def _training(work: Any, engine: Any) -> _Training:
    return _Training(work, engine.name, _instruction(work))


def _instruction(work: Any) -> str | None:
    return getattr(work, "system", None)  # Classifier's and Extractor's instructions


class _Training:
    """A task's result for a record, made a training record."""

    def __init__(self, work, teacher: str, instruction: str | None):
        self.work, self.teacher, self.instruction = work, teacher, instruction

    def __call__(self, record: Record) -> dict[str, Any]:
        result = self.work(record)
        out: dict[str, Any] = {"text": record.text}
        if "data" in result:  # extract
            data, dropped = result["data"], result.get("ungrounded")
            out["label"] = json.dumps(data, ensure_ascii=False)
            out["data"] = data
            if dropped:
                out["ungrounded"] = dropped
        else:
            out["label"] = result["label"]
            out["probs"] = result["probs"]
        if result.get("truncated"):
            out["truncated"] = True
        if self.instruction:
            out["instruction"] = self.instruction
        out["teacher"] = self.teacher
        return out
