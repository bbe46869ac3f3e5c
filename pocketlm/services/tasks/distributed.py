"""`pocketlm task VERB INPUT --ray`: a per-record job's records spread over Ray workers.

Each worker is a Ray actor that asks for ``threads`` CPUs, loads the task's engine as a
local run does (``runner.build_task``) and runs each shard of records it is sent on its own
threads (``job.run_all``), so that its engine decodes several records together. The driver
reads the input lazily, a shard at a time, keeps at most ``IN_FLIGHT`` shards per worker,
and writes the results in input order through the same ``Output`` and ``Tally`` as a local
run: the results, --resume, --overwrite, the counts and the summary are a local run's.

Records travel from the driver; a worker reads the model and the files that options name
(--labels FILE, --examples, --schema, --categories FILE) itself, so on a cluster of several
machines these must be at the same path on each. Logs and security are not spread: their
state (templates found so far, failures per address) spans every line of the file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pocketlm.errors import PocketError, UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.tasks import runner
from pocketlm.services.tasks.job import JobSummary, Tally, run_all
from pocketlm.services.tasks.records import Record, started

IN_FLIGHT = 2  # shards per worker: one running, the next queued behind it (no idle engine)
MAX_SHARD = 64  # records
LOCAL_OBJECT_STORE = 256 << 20  # bytes: shards are small, the machine's memory is for models
# Off, Ray keeps a cluster to one machine (its default on macOS and Windows): see _loopback
_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_CONNECT_HINT = (
    "check the address (`ray status` on the cluster shows it); a cluster with token "
    "authentication also needs RAY_AUTH_MODE=token and its token here"
)


def run_on_ray(
    spec: runner.JobSpec,
    address: str | None,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    wrap: Callable[[Callable, Any], Callable] | None = None,
) -> JobSummary:
    """Run the per-record job ``spec`` on Ray workers (see the module docstring).

    ``address``: a cluster's ("ray://host:10001", "host:6379"); "auto" or None: the one in
    ``RAY_ADDRESS``, else a cluster of this machine, started on 127.0.0.1 and stopped here.
    ``workers``: by default one per ``spec.threads`` (default 1) CPUs of the cluster.
    ``wrap``: as ``runner.run``'s, applied in each worker (it travels pickled).
    """
    if spec.verb in runner.STREAMS:
        raise UsageError(
            f"pocketlm task {spec.verb} runs on one machine: its state spans every line",
            "run it without --ray",
        )
    count_fields = runner.task_of(spec.verb)[1]
    ray = _import_ray()
    progress = progress or NullProgress()
    threads = spec.threads or 1  # several workers share a machine
    spec = dataclasses.replace(spec, model=runner.model_for(spec), threads=threads)
    records = started(runner.read(spec))  # a bad input fails before Ray starts
    out = runner.open_output(spec)
    try:
        with _connected(ray, address, local_cpus=_local_cpus(workers, threads)):
            n = _worker_count(int(ray.cluster_resources().get("CPU", 0)), workers, threads)
            worker = ray.remote(ShardWorker).options(num_cpus=threads, max_concurrency=IN_FLIGHT)
            actors = [worker.remote(spec, wrap) for _ in range(n)]
            try:
                model = _model_name(ray, actors)
                progress.note(
                    f"on Ray: {n} workers, {threads} thread{'s' if threads > 1 else ''} each"
                )
                total = runner.count(spec)
                tally = Tally(
                    out.write,
                    done=out.done,
                    retry=out.retry,
                    count_fields=count_fields,
                    total=total,
                    progress=progress,
                )
                _drive(ray, actors, _shards(records, _shard_size(spec, total, n), tally), tally)
                summary = tally.finish()
                summary.model = model
                for counters in ray.get([a.counters.remote() for a in actors]):
                    summary.add_tokens(counters)
                return summary
            except ray.exceptions.RayActorError:
                raise PocketError(
                    "a Ray worker stopped before its records were done",
                    "its log is in the Ray session's logs/ folder; the results so far are "
                    "written, and a run with --resume continues them",
                ) from None
            finally:
                for actor in actors:
                    ray.kill(actor)
    finally:
        out.close()


class ShardWorker:
    """A Ray actor (``ray.remote(ShardWorker)``): one task engine, running the shards it is
    sent on its threads, so that the records of the shards in flight decode together."""

    def __init__(self, spec: runner.JobSpec, wrap: Callable[[Callable, Any], Callable] | None):
        self._engine, self._error = None, None
        try:
            self._engine, self._work = runner.build_task(spec)
            if wrap is not None:
                self._work = wrap(self._work, self._engine)
        except PocketError as e:  # raised by ``model``, to the driver, which shows it
            self._error = e
        self._pool = ThreadPoolExecutor(
            runner.worker_threads(spec), thread_name_prefix="pocketlm-task"
        )

    def model(self) -> str:
        """The model's name, once it is loaded; raises what stopped the engine or task."""
        if self._error is not None:
            raise self._error
        return self._engine.name

    def run(self, records: list[Record]) -> list[dict[str, Any]]:
        """The results of ``records``, in order (a record that fails has its ``error``)."""
        return run_all(records, self._work, self._pool)

    def counters(self):
        """The engine's token counters (``TaskEngine.counters``)."""
        return self._engine.counters


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(
            "running on Ray needs the ray package, which is not installed",
            "pip install 'pocketlm[ray]'",
        ) from None
    return ray


@contextlib.contextmanager
def _connected(ray, address: str | None, *, local_cpus: int) -> Iterator[None]:
    """Ray connected for the ``with`` block: the caller's connection if there is one, else to
    the cluster at ``address`` (or ``RAY_ADDRESS``), else to a cluster of this machine started
    here (``local_cpus`` CPUs). A connection made here is closed after (a cluster started
    here stops with it)."""
    if ray.is_initialized():  # the Python API's caller connected; theirs to close
        yield
        return
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS") or None
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}  # stderr: progress only
    if address is None:
        _start_local(ray, local_cpus, quiet)
    else:
        _check_listening(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise PocketError(
                f"cannot connect to the Ray cluster at {address}: {' '.join(str(e).split())}",
                _CONNECT_HINT,
            ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_listening(address: str) -> None:
    """Ray retries an address where nothing listens for many minutes: fail in seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port; Ray says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise PocketError(
            f"nothing answers at {address} ({e.strerror or e})", _CONNECT_HINT
        ) from None


def _start_local(ray, cpus: int, quiet: dict[str, Any]) -> None:
    with _loopback():
        ray.init(
            address="local",  # a new cluster, even where `ray start` left one to join
            num_cpus=cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=LOCAL_OBJECT_STORE,
            **quiet,
        )
    if ray.util.get_node_ip_address() != "127.0.0.1":
        ray.shutdown()
        raise PocketError(
            "this version of Ray would not keep its local cluster on 127.0.0.1",
            "pass the address of a Ray cluster to --ray",
        )


@contextlib.contextmanager
def _loopback() -> Iterator[None]:
    """Ray takes 127.0.0.1 to mean the machine's network address, and its servers listen
    there, unless clusters of several machines are off (as on macOS and Windows): off while
    a local cluster starts, so its processes (which keep the setting) listen on 127.0.0.1."""
    from ray._private import ray_constants

    saved_env, saved = os.environ.get(_CLUSTERS_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_CLUSTERS_ENV, None)
        else:
            os.environ[_CLUSTERS_ENV] = saved_env


def _local_cpus(workers: int | None, threads: int) -> int:
    """A local cluster's CPUs: the machine's cores, or what the workers asked for need."""
    from pocketlm.services.machine import default_threads

    return max(default_threads(), (workers or 0) * threads)


def _worker_count(cpus: int, workers: int | None, threads: int) -> int:
    n = workers or max(1, cpus // threads)
    if n * threads > cpus:  # Ray would wait for the CPUs forever
        raise UsageError(
            f"{n} Ray workers of {threads} threads need {n * threads} CPUs; the cluster has {cpus}",
            "ask for fewer workers (--ray-workers) or threads (--threads)",
        )
    return n


def _model_name(ray, actors: list) -> str:
    """Waits for every worker's engine; raises the first error one met (a missing model...)."""
    try:
        return ray.get([actor.model.remote() for actor in actors])[0]
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, PocketError):
            raise e.cause from None
        raise


def _shard_size(spec: runner.JobSpec, total: int | None, workers: int) -> int:
    """As many records as a worker's threads run at once; fewer in a small input, so that
    it still reaches every worker."""
    size = runner.worker_threads(spec)
    if total:
        size = min(size, -(-total // (workers * IN_FLIGHT)))
    return max(1, min(size, MAX_SHARD))


def _shards(records: Iterable[Record], size: int, tally: Tally) -> Iterator[list[Record]]:
    """``records`` in lists of ``size``, less the ones written already (resuming)."""
    shard: list[Record] = []
    for record in records:
        if tally.skip(record):
            continue
        shard.append(record)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


def _drive(ray, actors: list, shards: Iterator[list[Record]], tally: Tally) -> None:
    """Send each shard to the least busy worker (at most IN_FLIGHT each) and write results in
    input order as they come back. The driver holds a bounded window of shards."""
    window: collections.deque = collections.deque()  # shards' result refs, in input order
    unfinished: dict[Any, int] = {}  # result ref -> its worker
    running = [0] * len(actors)  # per worker: its shards not finished yet
    limit = 2 * IN_FLIGHT * len(actors)  # finished shards held behind a slow one

    def settle() -> None:  # waits for a shard to finish; writes the oldest finished ones
        if unfinished:
            refs = list(unfinished)
            ray.wait(refs, num_returns=1)
            for ref in ray.wait(refs, num_returns=len(refs), timeout=0)[0]:
                running[unfinished.pop(ref)] -= 1
        while window and window[0] not in unfinished:
            for result in ray.get(window.popleft()):
                tally.put(result)

    for shard in shards:
        while min(running) >= IN_FLIGHT or len(window) >= limit:
            settle()
        i = running.index(min(running))
        ref = actors[i].run.remote(shard)
        running[i] += 1
        unfinished[ref] = i
        window.append(ref)
    while window:
        settle()
