"""`pocketlm data synth --ray`: the records spread over Ray workers, as `pocketlm task --ray`
spreads a task's (``tasks.distributed``: the same connection, worker count, shards, driver
and output; only the worker differs).

Each worker is a Ray actor with a teacher of its own (a local model loaded from the store of
its machine, or a connection to the remote tier) that writes the records of each shard it is
sent on its threads, so that its engine decodes several together. The driver makes the
plan, writes the results in order and resumes as a local run does: the file is the one a
local run writes.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pocketlm.errors import PocketError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.data import synth
from pocketlm.services.data.teacher import open_teacher
from pocketlm.services.tasks import distributed as tasks_ray
from pocketlm.services.tasks.job import JobSummary, Tally, run_all
from pocketlm.services.tasks.records import Record


def run_on_ray(
    spec: synth.SynthSpec,
    address: str | None,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> JobSummary:
    """``synth.run`` on Ray workers: ``address`` and ``workers`` as in
    ``tasks.distributed.run_on_ray`` (each worker ``spec.threads`` CPUs, default 1)."""
    ray = tasks_ray._import_ray()
    progress = progress or NullProgress()
    spec = dataclasses.replace(spec, threads=spec.threads or 1)
    plan = synth.Plan.of(spec)  # files checked before Ray starts
    out = synth.open_output(spec)
    try:
        cpus = tasks_ray._local_cpus(workers, spec.threads)
        with tasks_ray._connected(ray, address, local_cpus=cpus):
            total_cpus = int(ray.cluster_resources().get("CPU", 0))
            n = tasks_ray._worker_count(total_cpus, workers, spec.threads)
            actor = ray.remote(SynthWorker).options(
                num_cpus=spec.threads, max_concurrency=tasks_ray.IN_FLIGHT
            )
            actors = [actor.remote(spec) for _ in range(n)]
            try:
                return _drive(ray, actors, spec, plan, out, progress)
            except ray.exceptions.RayActorError:
                raise PocketError(
                    "a Ray worker stopped before its records were done",
                    "the records so far are written, and a run with --resume continues them",
                ) from None
            finally:
                for a in actors:
                    ray.kill(a)
    finally:
        out.close()


def _drive(ray, actors, spec, plan, out, progress) -> JobSummary:
    model = tasks_ray._model_name(ray, actors)
    progress.note(f"on Ray: {len(actors)} workers, {spec.threads} thread(s) each")
    tally = Tally(
        out.write,
        done=out.done,
        retry=out.retry,
        count_fields=synth.count_fields(spec),
        total=spec.n,
        progress=progress,
    )
    per_worker = -(-spec.n // (len(actors) * tasks_ray.IN_FLIGHT))
    size = max(1, min(2 * spec.parallel, per_worker, tasks_ray.MAX_SHARD))
    tasks_ray._drive(ray, actors, tasks_ray._shards(plan.records(), size, tally), tally)
    summary = tally.finish()
    summary.model = model
    for counters in ray.get([a.counters.remote() for a in actors]):
        summary.add_tokens(counters)
    return summary


class SynthWorker:
    """A Ray actor (``ray.remote(SynthWorker)``): one teacher, writing the records of the
    shards it is sent on its threads."""

    def __init__(self, spec: synth.SynthSpec):
        self._teacher, self._error = None, None
        try:
            self._teacher = open_teacher(
                spec.teacher,
                spec.tiers,
                parallel=spec.parallel,
                ctx=spec.max_tokens + synth.PROMPT_ROOM,
                threads=spec.threads,
            )
            self._work = synth.Writer(spec, self._teacher)
        except PocketError as e:  # raised by ``model``, to the driver, which shows it
            self._error = e
        self._pool = ThreadPoolExecutor(2 * spec.parallel, thread_name_prefix="pocketlm-synth")

    def model(self) -> str:
        if self._error is not None:
            raise self._error
        return self._teacher.name

    def run(self, records: list[Record]) -> list[dict[str, Any]]:
        return run_all(records, self._work, self._pool)

    def counters(self):
        return self._teacher.counters
