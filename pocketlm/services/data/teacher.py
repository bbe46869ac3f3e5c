"""The teacher of `pocketlm data`: the model that writes (``synth``) or labels (``label``).

A local teacher is a store model (or a GGUF path) in a ``TaskEngine``: the records of a job
decode together in the continuous-batching engine, one worker thread each. A remote teacher
is a tier of a tiers file (any OpenAI-compatible endpoint), asked from the same worker
threads through one event loop running in a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams
from pocketlm.progress import Progress
from pocketlm.services.tasks.engine import Counters


@dataclass
class Written:
    text: str
    finish: str  # "stop", "length", or why it failed
    error: str | None = None


class Teacher(Protocol):
    name: str
    counters: Counters

    def write(self, prompt: str, params: GenerationParams) -> Written: ...
    def close(self) -> None: ...


def resolve(teacher: str, tiers_file: Path | None, *, local_only: bool = False):
    """The ``Tier`` named ``teacher`` in ``tiers_file``, or None when there is no tiers file
    (``teacher`` is a store model or GGUF path). ``local_only``: a remote tier is refused."""
    if tiers_file is None:
        if teacher.startswith(("http://", "https://")):
            raise UsageError(
                f"the teacher {teacher} is a URL", "name a store model, or a tier with --tiers"
            )
        return None
    from pocketlm.services.route import tiers as tiers_mod

    tiers = tiers_mod.load(tiers_file)
    tier = tiers.get(teacher)
    if tier is None:
        names = ", ".join(t.name for t in tiers.tiers)
        raise UsageError(f"no tier '{teacher}' in {tiers_file}", f"tiers: {names}")
    if local_only and not tier.local:
        raise UsageError(
            f"tier '{tier.name}' is remote ({tier.host}): labelling sends your records to the "
            "teacher, and they must not leave this machine",
            "name a local store model with --teacher",
        )
    return tier


def open_teacher(
    teacher: str,
    tiers_file: Path | None = None,
    *,
    parallel: int = 8,
    ctx: int = 2048,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Teacher:
    """The teacher, loaded (a local model) or connected (a remote tier)."""
    tier = resolve(teacher, tiers_file)
    if tier is not None and not tier.local:
        return RemoteTeacher(tier, parallel)
    ref = tier.model if tier is not None else teacher
    return LocalTeacher(ref, parallel=parallel, ctx=ctx, threads=threads, progress=progress)


class LocalTeacher:
    def __init__(self, ref: str, *, parallel: int, ctx: int, threads: int | None, progress):
        from pocketlm.services.tasks.engine import TaskEngine

        self.engine = TaskEngine(
            ref, n_seq=parallel, n_ctx_seq=ctx, threads=threads, progress=progress
        )
        self.name = self.engine.name
        self.counters = self.engine.counters

    def write(self, prompt: str, params: GenerationParams) -> Written:
        tokens = self.engine.prompt([{"role": "user", "content": prompt}])
        room = self.engine.n_ctx_seq - len(tokens)
        if params.max_tokens and params.max_tokens > room:
            params = params.model_copy(update={"max_tokens": max(room, 1)})
        out = self.engine.generate(tokens, params)
        return Written(out.text.strip(), out.finish, out.error)

    def close(self) -> None:
        self.engine.close()


class RemoteTeacher:
    """A remote tier, asked by many threads at once (``concurrency`` connections)."""

    def __init__(self, tier, concurrency: int):
        from pocketlm.services.route.remote import RemoteClient

        self.tier, self.name = tier, f"{tier.name}:{tier.model}"
        self.counters = Counters()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = RemoteClient()
        self._gate = threading.Semaphore(concurrency)

    def write(self, prompt: str, params: GenerationParams) -> Written:
        body = {"temperature": params.temperature, "top_p": params.top_p}
        if params.max_tokens:
            body["max_tokens"] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        messages = [{"role": "user", "content": prompt}]
        with self._gate:
            call = self._client.complete(self.tier, messages, body)
            reply = asyncio.run_coroutine_threadsafe(call, self._loop).result()
        with self._lock:
            self.counters.generations += 1
            self.counters.prompt_tokens += reply.tokens_in
            self.counters.generated_tokens += reply.tokens_out
        return Written(reply.text.strip(), reply.finish_reason or "stop")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
