"""Models served to many clients: a pool that loads on first use, unloads after an idle
``keep_alive``, refuses loads over a memory budget, and bridges the batching engine's
thread to asyncio streams.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import config
from pocketlm.engine.batch import BatchEngine, Finished, Request, TokenEvent
from pocketlm.engine.llama import Grammar
from pocketlm.errors import ContextOverflowError, ModelNotFoundError, PocketError, UsageError
from pocketlm.params import GenerationParams, LoadParams, ServeParams, context_size
from pocketlm.services import chat_template, fit, machine
from pocketlm.services.runtime import calibrate_speculator, make_speculator
from pocketlm.services.text import TextAssembler
from pocketlm.store.gguf_check import inspect_gguf
from pocketlm.store.manifest import Manifest
from pocketlm.store.names import shown, valid_name
from pocketlm.store.pull import user_path
from pocketlm.store.refs import resolve
from pocketlm.store.store import Store


class InsufficientMemory(PocketError):
    http_status = 503


class _Mailbox:
    """Calls made from the engine's thread, run on an event loop, with one wakeup per burst.

    A step of 8 sequences yields 8 tokens at once. ``post`` wakes the loop (a write to its
    self-pipe) unless a wakeup is already on its way; ``put`` only queues, and ``flush``
    wakes the loop for what was put. The engine's thread puts each token and flushes once,
    after the step's last callback (``BatchEngine(after_step=...)``): the loop woken by the
    first token took the GIL from the thread between its callbacks, and the next token
    woke it again (8 callbacks took 1.4 ms a step instead of ~0.2).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable, tuple]] = []
        self._waking = False

    def put(self, fn: Callable, *args) -> None:
        with self._lock:
            self._calls.append((fn, args))

    def post(self, fn: Callable, *args) -> None:
        self.put(fn, *args)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._waking or not self._calls:
                return  # a drain is already on its way, or nothing to drain
            self._waking = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            with self._lock:
                self._calls.clear()
                self._waking = False

    def _drain(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            self._waking = False
        for fn, args in calls:
            fn(*args)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary()
)


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    box = _mailboxes.get(loop)
    if box is None:
        box = _mailboxes[loop] = _Mailbox(loop)
    return box


@dataclass(frozen=True)
class ServeConfig:
    """A server's settings, as typed once in pocketlm.params: how each model loads (its
    context per sequence, threads, batch, attention) and how it is served."""

    load: LoadParams = field(default_factory=LoadParams)
    serve: ServeParams = field(default_factory=ServeParams)

    @property
    def n_seq(self) -> int:
        return self.serve.parallel

    @property
    def max_queue(self) -> int:
        return self.serve.queue

    @property
    def cache_ram_bytes(self) -> int:
        return self.serve.cache_ram << 20

    @property
    def keep_alive_s(self) -> float:
        return self.serve.keep_alive if self.serve.keep_alive >= 0 else float("inf")

    @property
    def memory_budget_bytes(self) -> int | None:
        budget = self.serve.memory_budget
        return int(budget * 1e9) if budget is not None else None


@dataclass
class Piece:
    """One streamed increment of an answer; the last one carries ``done``."""

    text: str
    event: TokenEvent | None = None
    done: Finished | None = None


class Generation:
    """A request on the engine: ``async for piece in gen``; ``cancel()`` ends it early."""

    def __init__(self, engine: BatchEngine, req: Request, queue: asyncio.Queue[Piece]):
        self._engine, self._req, self._queue = engine, req, queue
        self._pieces = self._iterate()

    def __aiter__(self) -> AsyncIterator[Piece]:
        return self._pieces

    async def _iterate(self) -> AsyncIterator[Piece]:
        finished = False
        try:
            while not finished:
                piece = await self._queue.get()
                finished = piece.done is not None
                yield piece
        finally:
            if not finished:
                self.cancel()

    def cancel(self) -> None:
        self._engine.cancel(self._req)  # a no-op once it has finished

    async def aclose(self) -> None:
        await self._pieces.aclose()
        self.cancel()  # never iterated: the finally above did not run


async def merge(streams: list[Generation]) -> AsyncIterator[tuple[int, Piece]]:
    """Interleave several choices' streams as their pieces arrive: (choice index, piece)."""
    if len(streams) == 1:  # the usual case: no task and queue hop per token
        try:
            async for piece in streams[0]:
                yield 0, piece
        finally:  # a client that left: closing the stream frees the sequence
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Piece]) -> None:
        try:
            async for piece in stream:
                await queue.put((i, piece))
        except Exception as e:  # surfaces in the consumer
            await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, piece = await queue.get()
            if isinstance(piece, Exception):
                raise piece
            if piece.done is not None:
                remaining -= 1
            yield i, piece
    finally:  # a client that left: cancelling a pump ends its stream, which frees the sequence
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _seeded(params: GenerationParams, i: int) -> GenerationParams:
    if i == 0 or params.seed is None:
        return params
    return params.model_copy(update={"seed": (params.seed + i) % (2**32 - 1)})


class ServedModel:
    def __init__(self, name: str, path: Path, manifest: Manifest | None, cfg: ServeConfig):
        from pocketlm.engine import probe
        from pocketlm.engine.llama import Model, init_backend

        started = time.perf_counter()
        self.name, self.path, self.manifest = name, path, manifest
        self.info = inspect_gguf(path)
        init_backend()
        self.model = Model(str(path), use_extra_bufts=probe.extra_bufts_safe(str(path)))
        self.n_ctx_seq = ctx_per_seq(self.info, cfg)
        n_threads = cfg.load.threads or machine.default_threads()
        speculator = make_speculator(
            name, self.model, cfg.load, n_ctx=self.n_ctx_seq, n_threads=n_threads, lenient=True
        )
        self.engine = BatchEngine(
            self.model,
            n_seq=cfg.n_seq,
            n_ctx_seq=self.n_ctx_seq,
            n_threads=cfg.load.threads or machine.default_threads(),
            n_batch=cfg.load.batch,
            max_queue=cfg.max_queue,
            flash_attn=cfg.load.flash_attn,
            after_step=self._flush,
            cache_ram_bytes=cfg.cache_ram_bytes,
            speculator=speculator,
        )
        calibrating = lambda: calibrate_speculator(  # noqa: E731
            speculator, self.model, n_threads=n_threads, flash_attn=cfg.load.flash_attn
        )
        try:
            self.engine.call(calibrating).result()  # on the scheduler thread, which decodes
        except BaseException:
            self.engine.close()
            raise
        self._unflushed: set[_Mailbox] = set()  # the engine's thread only
        chat = manifest.chat if manifest else True
        self.template = self.model.chat_template() if chat else None
        draft = speculator.draft_model
        extra = estimate_bytes(inspect_gguf(draft.model.path), self.n_ctx_seq) if draft else 0
        self._base_bytes = resident_bytes(self.info, cfg) + extra
        self.budget_bytes = budget_bytes(self.info, cfg) + extra
        self.load_s = time.perf_counter() - started
        self.loaded_at = time.time()
        self.keep_alive_s = cfg.keep_alive_s
        self.expires_at = self.loaded_at + self.keep_alive_s
        self.active = 0
        self._embed_ctx = None  # used on the engine's scheduler thread only

    @property
    def busy(self) -> bool:
        """Whether a request holds or waits for one of its sequences."""
        return self.active > 0 or self.engine.queued > 0

    @property
    def size_bytes(self) -> int:
        """Memory in use: weights, KV cache, compute buffers, and the RAM tier's entries."""
        return self._base_bytes + self.engine.cache_ram_used

    def touch(self, keep_alive_s: float | None = None) -> None:
        if keep_alive_s is not None:
            self.keep_alive_s = keep_alive_s
        self.expires_at = time.time() + self.keep_alive_s

    # -- prompts ------------------------------------------------------------------------

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        checked = chat_template.check_messages(messages)
        if not self.template:
            raise UsageError(
                f"model '{self.name}' is not a chat model (no chat template)",
                "use a completion endpoint instead",
            )
        return chat_template.chat_tokens(self.model, self.template, checked)

    def text_tokens(self, text: str) -> list[int]:
        tokens = self.model.tokenize(text, add_special=True, parse_special=True)
        if not tokens:  # an empty prompt: start from the start-of-text token, as OpenAI does
            start = self.model.bos if self.model.bos >= 0 else self.model.eos
            if start < 0:
                raise PocketError(
                    "invalid value for 'prompt': it is empty, and this model has "
                    "no start-of-text token to begin from"
                )
            tokens = [start]
        return tokens

    def token_text(self, token: int) -> str:
        return self.model.piece(token).decode("utf-8", "replace")

    def check_fits(self, prompt_tokens: int, max_tokens: int | None, param: str = "prompt"):
        """A prompt (the request field ``param``) and max_tokens fit a sequence's context."""
        if prompt_tokens + max(max_tokens or 1, 1) > self.n_ctx_seq:
            raise ContextOverflowError(
                prompt_tokens,
                max_tokens or 0,
                self.n_ctx_seq,
                "shorten the prompt or lower max_tokens (or start the server with a larger --ctx)",
                param=param,
            )

    # -- generation ----------------------------------------------------------------------

    def start(
        self,
        prompts: Sequence[list[int]],
        params: GenerationParams,
        *,
        n: int = 1,
        grammar: str | Grammar | None = None,
        n_logprobs: int | None = None,
        prompt_logprobs: bool = False,
        score_only: bool = False,
    ) -> list[Generation]:
        """Every choice of a request, submitted now: each prompt ``n`` times, choice i of a
        prompt seeded ``seed + i`` (so n choices differ and each is reproducible). All or
        none: a full queue raises Overloaded before any response has started, and the
        choices already submitted are cancelled. Call from the event loop."""
        plan = [(tokens, _seeded(params, i)) for tokens in prompts for i in range(n)]
        capacity = self.engine.capacity
        if len(plan) > capacity:  # a 503 would never turn into an answer: say why
            raise UsageError(
                f"invalid value for 'n': this request asks for {len(plan)} sequences (prompts "
                f"x n) and the server holds at most {capacity} at once (--parallel + --queue)",
                "ask for fewer",
                param="n",
            )
        for tokens in prompts:
            self.check_fits(len(tokens), 0 if score_only else params.max_tokens)
        streams: list[Generation] = []
        try:
            for tokens, p in plan:
                streams.append(
                    self.stream(
                        tokens,
                        p,
                        grammar=grammar,
                        n_logprobs=n_logprobs,
                        prompt_logprobs=prompt_logprobs,
                        score_only=score_only,
                    )
                )
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return streams

    def stream(
        self,
        tokens: list[int],
        params: GenerationParams,
        *,
        grammar: str | Grammar | None = None,
        n_logprobs: int | None = None,
        prompt_logprobs: bool = False,
        score_only: bool = False,
    ) -> Generation:
        """Submit one generation to the shared engine now (see ``start``); iterate the result
        for text pieces, the last one with ``done``. Leaving the iteration early (a client
        that disconnects) frees the sequence at once. Call from the event loop."""
        if not tokens:
            raise PocketError("invalid value for 'prompt': it is empty")
        self.check_fits(len(tokens), 0 if score_only else params.max_tokens)
        n_vocab = self.model.n_vocab
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:  # llama_decode would fail the whole batch, other requests too
            raise PocketError(
                f"invalid value for 'prompt': token id {bad} is not in the "
                f"model's vocabulary (0 to {n_vocab - 1})"
            )
        mailbox = _mailbox(asyncio.get_running_loop())
        queue: asyncio.Queue[Piece] = asyncio.Queue()
        text = TextAssembler(params.stop)

        def on_token(event: TokenEvent) -> bool:  # the step's end flushes (_flush)
            piece, stopped = text.push(self.model.piece(event.token))
            mailbox.put(queue.put_nowait, Piece(piece, event))
            self._unflushed.add(mailbox)
            return not stopped

        def on_done(done: Finished) -> None:
            mailbox.post(queue.put_nowait, Piece(text.flush(), None, done))
            mailbox.post(self._release)  # counted until the engine lets go, read or not

        req = Request(
            tokens=tokens,
            params=params,
            grammar=grammar,
            n_logprobs=n_logprobs,
            prompt_logprobs=prompt_logprobs,
            score_only=score_only,
            on_token=on_token,
            on_done=on_done,
        )
        self.engine.submit(req)
        self.active += 1
        return Generation(self.engine, req, queue)

    def _flush(self) -> None:
        """After each engine step, on its thread: one wakeup per event loop for its tokens."""
        while self._unflushed:
            self._unflushed.pop().flush()

    def _release(self) -> None:
        self.active -= 1
        self.touch()

    # -- embeddings ------------------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Mean-pooled, L2-normalised embeddings (a separate context); returns them and the
        number of tokens read. Each text is computed on the engine's scheduler thread between
        two generation steps (see BatchEngine.call), so streams keep flowing meanwhile."""
        self.active += 1  # busy: keep_alive 0 or the reaper unloads it after, not during
        try:
            batch = await asyncio.to_thread(self._embed_tokens, texts)
            out = [
                await asyncio.wrap_future(self.engine.call(lambda t=tokens: self._embed(t)))
                for tokens in batch
            ]
        finally:
            self._release()
        return out, sum(len(t) for t in batch)

    def _embed_tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Every text tokenized and checked before any is computed."""
        batch = [self.model.tokenize(text, add_special=True) for text in texts]
        for i, tokens in enumerate(batch):
            if not tokens:  # no BOS to stand in: llama.cpp would read a NULL batch
                raise UsageError(f"invalid value for 'input': text {i} is empty", param="input")
            self.check_fits(len(tokens), 0, param="input")
        return batch

    def _embed(self, tokens: list[int]) -> list[float]:
        import llama_cpp as ll
        import numpy as np

        from pocketlm.engine.llama import Context

        if self._embed_ctx is None:
            self._embed_ctx = Context(
                self.model,
                n_ctx=self.n_ctx_seq,
                n_batch=self.n_ctx_seq,
                n_threads=self.engine.n_threads,
                embeddings=True,
            )
        ctx = self._embed_ctx
        ctx.reset()
        ctx.prefill_all(tokens)
        ptr = ll.llama_get_embeddings_seq(ctx._ptr, 0)
        vec = np.ctypeslib.as_array(ptr, shape=(ll.llama_model_n_embd(self.model._ptr),))
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return [float(x) for x in vec]

    def close(self) -> None:
        self.engine.close()
        if self._embed_ctx is not None:
            self._embed_ctx.close()
        self.model.close()


def estimate_bytes(info, n_ctx_total: int) -> int:
    return (
        info.tensor_data_bytes
        + fit.kv_bytes_per_token(info) * n_ctx_total
        + fit.compute_bytes(info)
    )


def ctx_per_seq(info, cfg: ServeConfig) -> int:
    """Context per sequence (params.context_size)."""
    return context_size(cfg.load.ctx, info.context_length)


def resident_bytes(info, cfg: ServeConfig) -> int:
    """Weights, the KV cache of every sequence and compute buffers, served with ``cfg``."""
    return estimate_bytes(info, ctx_per_seq(info, cfg) * cfg.n_seq)


def budget_bytes(info, cfg: ServeConfig) -> int:
    """What the memory budget counts for a model: resident bytes plus the RAM tier's cap."""
    return resident_bytes(info, cfg) + cfg.cache_ram_bytes


@dataclass
class ModelPool:
    """The models a server holds. Clients name models by store (or catalog) name only: a
    path from a request could reach any file on the machine. The operator may serve a
    file by path (``serve --preload PATH``): ``add_file`` gives it a name."""

    store: Store = field(default_factory=Store)
    cfg: ServeConfig = field(default_factory=ServeConfig)
    default: str | None = None  # for requests that name no model (else config.default_model())

    def __post_init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.files: dict[str, Path] = {}  # served by path, registered by the operator
        self._retiring: list[ServedModel] = []  # unloaded once their sequences finish
        self._locks: dict[str, asyncio.Lock] = {}
        self.memory_budget_bytes = self.cfg.memory_budget_bytes or int(machine.ram()[1] * 0.9)

    def add_file(self, path: str | Path) -> str:
        """Serve a GGUF file under its file name, without the extension (``tiny.gguf``:
        ``tiny``); returns that name. For the operator (the CLI), never for a request."""
        path = user_path(path).resolve()
        if not path.is_file():
            raise ModelNotFoundError(f"model file '{path}' not found", "no such file")
        name = path.name.removesuffix(".gguf")
        if not valid_name(name):
            raise UsageError(
                f"cannot serve '{path}' under the name '{shown(name)}'",
                "rename the file, or import it: pocketlm import PATH --name NAME",
            )
        self.files[name] = path
        return name

    def resolve(self, name: str) -> tuple[Path, Manifest | None]:
        """A requested model: a file the operator served by path, else a store name."""
        if name in self.files:
            return self.files[name], None
        try:
            m = resolve(name, self.store, paths=False)
        except ModelNotFoundError as e:
            if self.models and e.message.startswith("unknown"):
                e.hint = f"{e.hint}; loaded now: {', '.join(self.models)}"
            raise
        return m.path, m.manifest

    async def acquire(self, name: str | None, keep_alive_s: float | None = None) -> ServedModel:
        name = name or self.default or config.default_model()
        served = self.models.get(name)
        if served is None:
            # an unknown name fails here, before it gets a lock (so the locks are at most one
            # per model the store or the operator has)
            path, manifest = self.resolve(name)
            async with self._locks.setdefault(name, asyncio.Lock()):
                served = self.models.get(name)
                if served is None:
                    served = await asyncio.to_thread(self._load, name, path, manifest)
                    self.models[name] = served
        served.touch(keep_alive_s)
        return served

    def _load(self, name: str, path: Path, manifest: Manifest | None) -> ServedModel:
        info = inspect_gguf(path)
        need = budget_bytes(info, self.cfg)
        used = sum(m.budget_bytes for m in [*self.models.values(), *self._retiring])
        if used + need > self.memory_budget_bytes:
            raise InsufficientMemory(
                f"loading '{name}' needs about {need / 1e9:.2f} GB; {used / 1e9:.2f} GB of the "
                f"{self.memory_budget_bytes / 1e9:.2f} GB memory budget is in use",
                "unload a model (keep_alive 0), or start the server with a smaller --ctx, "
                "--parallel or --cache-ram",
            )
        return ServedModel(name, path, manifest, self.cfg)

    async def unload(self, name: str) -> bool:
        """Take ``name`` out of service: new requests load it again; the sequences it is
        generating finish first (a stream is never cut short), then it is freed."""
        served = self.models.pop(name, None)
        if served is None:
            return False
        if served.busy:
            self._retiring.append(served)
        else:
            await asyncio.to_thread(served.close)
        return True

    async def reap(self, interval_s: float = 1.0) -> None:
        """Unload models idle past their keep_alive, and retired ones once idle (forever;
        run as a task)."""
        while True:
            await asyncio.sleep(interval_s)
            now = time.time()
            for name, served in list(self.models.items()):
                if not served.busy and now >= served.expires_at:
                    await self.unload(name)
            for served in [s for s in self._retiring if not s.busy]:
                self._retiring.remove(served)
                await asyncio.to_thread(served.close)

    async def close(self) -> None:
        for name in list(self.models):
            await self.unload(name)
        for served in self._retiring:  # shutting down: what still runs is cancelled
            await asyncio.to_thread(served.close)
        self._retiring.clear()
