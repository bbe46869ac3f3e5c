"""Continuous batching: many sequences decoded together in one llama.cpp context.

A scheduler thread owns the context. Each step it builds one llama.cpp batch out of
  - one token for every sequence that is generating, and
  - prompt chunks of sequences still being prefilled (within ``n_batch`` tokens),
runs one ``llama_decode``, and samples the next token of every sequence whose logits came
out, each with its own sampler chain (parameters, seed, grammar). New requests join at
the next step; a cancelled one leaves at the next step.

Prefix cache: a slot keeps the KV of its last sequence after it finishes. A new request
goes to a free slot whose cached prompt it does not destroy (an empty one, or one its prompt
extends, such as a chat's previous turn), else to the least recently used one; if another
slot (busy or not) shares a longer prefix with its prompt, that KV is copied over
(``llama_memory_seq_cp``) and cut to the shared prefix: only the rest is evaluated.
Requests admitted together choose in order of their longest cached prefix.

RAM tier: before a slot's cache is overwritten, its KV is copied to host memory
(``llama_state_seq_get_data``, up to ``cache_ram_bytes``, least recently used out first). A
prompt that returns later (a chat's next turn after other users took its slot, a long
system prompt used now and then) is copied back instead of evaluated again: 1,600 tokens
of SmolLM2-135M are 37 MB, saved in 20 ms and restored in 6 ms, against 3.4 s to evaluate.

Each sequence has a KV buffer of its own (``n_ctx_seq`` cells), not one shared by all: with
a shared buffer, attention spans every cell in use, so the cached prompts of idle slots
slow every other sequence down. Measured on SmolLM2-135M, 2 threads: one sequence decoding
next to 7 idle cached 1,500-token prompts ran at 19 tok/s with a shared buffer and 108 with
a buffer each (92 with no cache at all); 8 sequences decoding together ran alike (~185).

Other llama.cpp work on the model (embeddings) runs on the scheduler thread too, between
steps (``call``). Every thread that computes gets its own OpenMP team, and once there are more
team threads than cores, OpenMP stops spinning at its barriers (libgomp's throttling) and
sleeps instead, for every team: after one embeddings request on a worker thread, one
sequence decoded 22% slower for the rest of the server's life. A thread that computed once
(creating a context) and a scheduler gone idle let their team go (``release_openmp_threads``).

Callbacks run on the scheduler thread and must be quick. So must starting a request: a
grammar from a client comes as a ``Grammar`` parsed beforehand (pocketlm.services.grammar
prepares JSON schemas so, in a check process first), which a request only copies; a parse here
(a 20,000-value enum took 20 s) held up every other sequence.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as ll
import numpy as np

from pocketlm.engine.llama import (
    Context,
    Grammar,
    Model,
    Sampler,
    common_prefix,
    release_openmp_threads,
)
from pocketlm.engine.speculative import Draft, Speculator
from pocketlm.errors import PocketError
from pocketlm.params import GenerationParams

PREFILL_WHILE_DECODING = 128
HOST_CACHE_MIN_TOKENS = 32  # shorter caches are cheaper to evaluate again than to keep


class Overloaded(PocketError):
    """The request queue is full."""

    http_status = 503


@dataclass
class TokenEvent:
    token: int
    logprob: float | None = None  # log-probability of ``token`` under the model
    top: list[tuple[int, float]] | None = None  # the most likely tokens and their logprobs


@dataclass
class Finished:
    reason: str  # "stop" (end of turn or stopped by the consumer), "length", "cancelled", "error"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    t_queued: float
    t_started: float  # left the queue
    t_first: float | None  # first token sampled (end of prefill)
    t_end: float
    # per prompt token: (logprob, top alternatives) given the tokens before it; None for the first
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]] | None] | None = None
    error: str | None = None
    speculative: str = "off"  # the engine's speculative decoding mode
    drafted_tokens: int = 0  # drafted for this sequence and verified
    accepted_tokens: int = 0  # of those, kept


@dataclass(eq=False)
class Request:
    """One sequence to generate: its prompt, how to sample (``params``, whole, as the user
    gave it: max_tokens None runs until the end of turn or the sequence's context), and
    the consumer's callbacks."""

    tokens: list[int]
    params: GenerationParams = field(default_factory=GenerationParams)
    grammar: str | Grammar | None = None  # GBNF text, or a grammar prepared off this thread
    n_logprobs: int | None = None  # None: no logprobs; k: the chosen token's and top k
    prompt_logprobs: bool = False
    score_only: bool = False  # evaluate the prompt (for its logprobs), generate nothing
    on_token: Callable[[TokenEvent], bool] = lambda e: True  # False: stop here
    on_done: Callable[[Finished], None] = lambda f: None
    cancelled: bool = False
    t_queued: float = field(default_factory=time.perf_counter)

    @property
    def max_tokens(self) -> int | None:
        return 0 if self.score_only else self.params.max_tokens


class _Slot:
    def __init__(self, seq: int):
        self.seq = seq
        self.tokens: list[int] = []  # what the KV cache holds for this sequence
        self.n_prompt = 0  # how many of them are its last request's prompt
        self.req: Request | None = None
        self.pending: list[int] = []  # prompt tokens not evaluated yet
        self.next_token: int | None = None
        self.sampler: Sampler | None = None
        self.n_out = 0
        self.cached = 0
        self.t_started = 0.0
        self.t_first: float | None = None
        self.prompt_lp: list | None = None
        self.carry: np.ndarray | None = None  # logprobs from the last evaluated prompt token
        self.last_used = 0.0
        self.drafted = 0
        self.accepted = 0


class BatchEngine:
    def __init__(
        self,
        model: Model,
        *,
        n_seq: int = 8,
        n_ctx_seq: int = 4096,
        n_threads: int = 1,
        n_batch: int = 512,
        max_queue: int = 16,
        flash_attn: bool = False,
        after_step: Callable[[], None] | None = None,
        cache_ram_bytes: int = 0,
        speculator: Speculator | None = None,
    ):
        """``after_step`` runs on the scheduler thread after each step's callbacks (a consumer
        can gather its wakeups there). ``cache_ram_bytes``: host memory for the KV of evicted
        sequences (0: none). ``speculator``: drafts for a sequence decoding alone (with
        several, continuous batching already uses the compute a draft would)."""
        self.model = model
        self.speculator = speculator
        self._spec_req: Request | None = None
        self._host = _HostCache(cache_ram_bytes)
        self._after_step = after_step
        self.n_ctx_seq = n_ctx_seq
        self.n_threads = n_threads
        self.max_queue = max_queue
        self.ctx = Context(
            model,
            n_ctx=n_ctx_seq * n_seq,
            n_threads=n_threads,
            n_batch=n_batch,
            flash_attn=flash_attn,
            n_seq=n_seq,
            unified_kv=False,
        )
        self.n_batch = n_batch
        self._slots = [_Slot(i) for i in range(n_seq)]
        self._queue: collections.deque[Request] = collections.deque()
        self._calls: list[tuple[Callable[[], Any], concurrent.futures.Future]] = []
        self._cv = threading.Condition()
        self._running = True
        self.tokens_evaluated = 0  # counters for metrics
        self.tokens_generated = 0
        self.tokens_restored = 0  # prompt tokens copied back from the RAM tier
        self.tokens_drafted = 0
        self.tokens_accepted = 0
        self._thread = threading.Thread(target=self._loop, name="pocketlm-batch", daemon=True)
        self._thread.start()

    # -- public, any thread ---------------------------------------------------------------

    def submit(self, req: Request) -> None:
        if not req.tokens:
            raise ValueError("a request needs at least one prompt token")  # caller checks
        if len(req.tokens) + max(req.max_tokens or 1, 1) > self.n_ctx_seq:
            raise ValueError("request does not fit the per-sequence context")  # caller checks
        with self._cv:
            # Requests the free slots will take at the next step are not waiting: a burst
            # submitted faster than the scheduler admits it must not be refused.
            waiting = len(self._queue) - sum(s.req is None for s in self._slots)
            if waiting >= self.max_queue:
                raise Overloaded(
                    f"the server is busy ({waiting} requests waiting)", "retry shortly"
                )
            self._queue.append(req)
            self._cv.notify()

    def cancel(self, req: Request) -> None:
        with self._cv:
            req.cancelled = True
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the scheduler thread before the next step; its result or exception
        comes back in the future (cancelled if the engine closes first)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if not self._running:
                fut.cancel()
                return fut
            self._calls.append((fn, fut))
            self._cv.notify()
        return fut

    @property
    def capacity(self) -> int:
        """The most requests it holds at once: running plus waiting."""
        return len(self._slots) + self.max_queue

    @property
    def cache_ram_used(self) -> int:
        """Bytes of host memory the prefix cache's RAM tier holds."""
        return self._host.used

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return sum(s.req is not None for s in self._slots)

    def close(self) -> None:
        with self._cv:
            self._running = False
            self._cv.notify()
        self._thread.join()
        for _, fut in self._calls:
            fut.cancel()
        self._calls.clear()
        for slot in self._slots:
            if slot.req is not None:
                self._finish(slot, "cancelled")
        for req in self._queue:
            req.on_done(_unstarted(req, "cancelled"))
        self._queue.clear()
        if self.speculator is not None:
            self.speculator.close()
        self.ctx.close()

    # -- scheduler thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                released = False
                while (
                    self._running
                    and not self._queue
                    and not self._calls
                    and not any(s.req for s in self._slots)
                ):
                    if not released:  # idle: its OpenMP workers would slow other engines
                        release_openmp_threads()
                        released = True
                    self._cv.wait()
                if not self._running:
                    return
                calls, self._calls = self._calls, []
                self._drop_cancelled()
                self._admit()
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # the caller gets it
                        fut.set_exception(e)
            try:
                self._step()
            except Exception as e:  # keep serving: fail the sequences of this step only
                for slot in self._slots:
                    if slot.req is not None:
                        self._finish(slot, "error", error=str(e))

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._queue if r.cancelled]:
            self._queue.remove(req)
            req.on_done(_unstarted(req, "cancelled"))
        for slot in self._slots:
            if slot.req is not None and slot.req.cancelled:
                self._finish(slot, "cancelled")

    def _admit(self) -> None:
        free = [s for s in self._slots if s.req is None]
        reqs = [self._queue.popleft() for _ in range(min(len(free), len(self._queue)))]
        if not reqs:
            return
        # Requests with the longest cached prefix choose first (a burst admitted together),
        # each the free slot whose cache it loses least (see _placement). Placed one by one in
        # arrival order, a request whose own cache is gone took the slot holding the next
        # request's cache (they share a system prompt), that one the next's, and so on down
        # the burst: every request of it re-evaluated its prompt.
        common = [{s.seq: common_prefix(s.tokens, r.tokens) for s in free} for r in reqs]
        placed: dict[int, _Slot] = {}
        for i in sorted(range(len(reqs)), key=lambda i: -max(common[i].values())):
            slot = min(free, key=lambda s: _placement(s, common[i][s.seq]))
            free.remove(slot)
            placed[i] = slot
        for i, req in enumerate(reqs):
            self._start(req, placed[i])

    def _start(self, req: Request, slot: _Slot) -> None:
        prompt = req.tokens
        limit = 0 if req.prompt_logprobs else len(prompt) - 1  # >= 1 token to evaluate
        reuse = min(common_prefix(slot.tokens, prompt), limit)
        donor, donated = None, reuse
        for other in self._slots:
            n = min(common_prefix(other.tokens, prompt), limit)
            if other is not slot and n > donated:
                donor, donated = other, n
        mem = self.ctx._memory
        if len(slot.tokens) - reuse >= HOST_CACHE_MIN_TOKENS:  # a cache about to be lost
            kept = max(
                [
                    reuse,
                    *(common_prefix(o.tokens, slot.tokens) for o in self._slots if o is not slot),
                ]
            )
            self._host.save(self.ctx._ptr, slot.seq, slot.tokens, kept)
        entry, hosted = self._host.best(prompt, limit)
        tried = hosted > donated  # a failed restore leaves the slot's sequence empty
        if tried and self._host.restore(self.ctx._ptr, entry, slot.seq, mem):
            ll.llama_memory_seq_rm(mem, slot.seq, hosted, -1)
            reuse = hosted
            self.tokens_restored += hosted
        elif donor is not None:
            # Between buffers llama.cpp copies whole sequences only (p0 = p1 = -1, else it
            # aborts): copy it all, then cut it to the shared prefix.
            ll.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            ll.llama_memory_seq_cp(mem, donor.seq, slot.seq, -1, -1)
            ll.llama_memory_seq_rm(mem, slot.seq, donated, -1)
            reuse = donated
        else:
            reuse = 0 if tried else reuse
            ll.llama_memory_seq_rm(mem, slot.seq, reuse, -1)
        slot.tokens = list(prompt[:reuse])
        slot.n_prompt = len(prompt)
        slot.pending = list(prompt[reuse:])
        slot.req, slot.n_out, slot.cached = req, 0, reuse
        slot.t_started, slot.t_first, slot.next_token = time.perf_counter(), None, None
        slot.prompt_lp = [None] if req.prompt_logprobs else None
        slot.carry = None
        slot.drafted = slot.accepted = 0
        try:
            slot.sampler = Sampler.for_params(req.params, self.model, grammar=req.grammar)
        except Exception as e:  # this sequence fails; the scheduler thread must live on
            slot.sampler = None
            self._fail(slot, e)
            return
        # The penalty's window starts with the prompt; with a grammar, with the answer only
        # (as when llama.cpp's own penalties sampler, which a grammar chain could not be fed
        # the prompt through, did the work).
        if req.grammar is None:
            slot.sampler.accept_all(prompt)

    def _step(self) -> None:
        batch, n = self.ctx._batch, 0
        plan: list[tuple[_Slot, int, int, bool]] = []  # slot, first index, count, is a prompt

        def put(tok: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = tok, pos, 1
            batch.seq_id[n][0], batch.logits[n] = seq, logits
            n += 1

        alone, draft = self._speculation()
        for slot in self._slots:  # generating sequences: one token each (and its drafts)
            if slot.req is not None and slot.next_token is not None:
                drafts = draft.tokens if slot is alone and draft is not None else []
                plan.append((slot, n, 1 + len(drafts), False))
                for i, tok in enumerate([slot.next_token, *drafts]):
                    put(tok, len(slot.tokens) + i, slot.seq, True)
        # Prompts fill the rest, in chunks. While others are generating, a step carries at most
        # PREFILL_WHILE_DECODING prompt tokens, so a long prompt cannot stall their streams.
        room = self.n_batch - n if n == 0 else min(self.n_batch - n, PREFILL_WHILE_DECODING)
        for slot in self._slots:
            if slot.req is None or not slot.pending or room <= 0:
                continue
            take = min(len(slot.pending), room)
            room -= take
            done = take == len(slot.pending)
            all_logits = slot.req.prompt_logprobs
            plan.append((slot, n, take, True))
            for i, tok in enumerate(slot.pending[:take]):
                put(tok, len(slot.tokens) + i, slot.seq, all_logits or (done and i == take - 1))
        if n == 0:
            return
        batch.n_tokens = n
        started = time.perf_counter()
        rc = ll.llama_decode(self.ctx._ptr, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed (code {rc})")
        seconds = time.perf_counter() - started
        self.tokens_evaluated += n
        drawn: list[tuple[_Slot, TokenEvent | None]] = []  # None: the slot ends (end of turn)
        for slot, first, count, is_prompt in plan:
            if not is_prompt:
                slot.tokens.append(slot.next_token)
                if slot is alone and draft is not None:
                    self._verify(slot, first, draft, seconds, drawn)
                else:
                    self._sample_or_fail(slot, first, drawn)
                continue
            chunk = slot.pending[:count]
            if slot.prompt_lp is not None:
                self._prompt_logprobs(slot, first, chunk)
            slot.tokens.extend(chunk)
            del slot.pending[:count]
            if not slot.pending:
                self._sample_or_fail(slot, first + count - 1, drawn)
        if alone is not None and draft is None and n == 1:
            self.speculator.verified(None, 0, seconds)  # a plain one-token step: its cost
        # The consumers hear of the tokens once all are drawn. The first callback wakes their
        # event loop, which then takes the GIL whenever this thread is in C (every draw is a
        # llama.cpp call): woken mid-step, it handed the GIL back and forth with the draws
        # still to come, while ggml's other threads waited for the next decode.
        for slot, event in drawn:
            if slot.req is None:
                continue  # it ended at an earlier token of this step
            if event is None:
                self._finish(slot, "stop")
            else:
                self._deliver(slot, event)
        if self._after_step is not None:
            self._after_step()

    def _speculation(self) -> tuple[_Slot | None, Draft | None]:
        """The sequence decoding alone (nothing else running or waiting), and its draft."""
        spec = self.speculator
        if spec is None or not spec.sources or self._queue:
            return None, None
        active = [s for s in self._slots if s.req is not None]
        if len(active) != 1 or active[0].pending or active[0].next_token is None:
            return None, None
        slot = active[0]
        req = slot.req
        if req is not self._spec_req:
            spec.reset()
            self._spec_req = req
        room = min(
            (req.max_tokens or self.n_ctx_seq) - slot.n_out - 1,
            self.n_ctx_seq - len(slot.tokens) - 3,
        )
        try:
            greedy = req.params.temperature <= 0
            return slot, spec.propose(slot.tokens + [slot.next_token], room, greedy)
        except Exception:  # a draft model that failed: decode plainly
            return slot, None

    def _verify(self, slot: _Slot, first: int, draft: Draft, seconds: float, drawn: list) -> None:
        """Draw the slot's tokens at the draft's positions while they match it (see
        pocketlm.engine.speculative); forget the KV of the drafts that did not."""
        accepted = 0
        for i in range(len(draft.tokens) + 1):
            try:
                event = self._sample(slot, first + i, finish_at_end=False)
            except Exception as e:
                self._fail(slot, e)
                break
            end = self.model.is_eog(event.token)
            drawn.append((slot, None if end else event))
            if end or i == len(draft.tokens) or event.token != draft.tokens[i]:
                break
            slot.tokens.append(draft.tokens[i])  # accepted: its KV is in the cache
            accepted += 1
        ll.llama_memory_seq_rm(self.ctx._memory, slot.seq, len(slot.tokens), -1)
        slot.drafted += len(draft.tokens)
        slot.accepted += accepted
        self.tokens_drafted += len(draft.tokens)
        self.tokens_accepted += accepted
        self.speculator.verified(draft, accepted, seconds)

    def _prompt_logprobs(self, slot: _Slot, first: int, chunk: list[int]) -> None:
        # logits at position i predict token i + 1: the chunk's first token is scored by the
        # previous chunk's last logits, kept in ``slot.carry``.
        k = slot.req.n_logprobs or 0
        for i, tok in enumerate(chunk):
            if slot.carry is not None:
                slot.prompt_lp.append((float(slot.carry[tok]), _top(slot.carry, k)))
            slot.carry = _log_softmax(self.ctx.logits(first + i))

    def _sample_or_fail(self, slot: _Slot, index: int, drawn: list) -> None:
        try:
            event = self._sample(slot, index)
        except Exception as e:
            if slot.req is not None:
                self._fail(slot, e)
            return
        if event is not None:
            drawn.append((slot, event))

    def _sample(self, slot: _Slot, index: int, finish_at_end: bool = True) -> TokenEvent | None:
        """Draw the slot's next token; None if the sequence ended here (end of turn, or a
        prompt evaluated for scoring only). ``finish_at_end=False``: an end-of-turn token is
        returned, the caller ends the sequence (after delivering the tokens before it)."""
        req = slot.req
        if slot.t_first is None:
            slot.t_first = time.perf_counter()
            slot.carry = None
            if req.score_only:
                self._finish(slot, "length")
                return None
        event = TokenEvent(0)
        if req.n_logprobs is not None:
            lp = _log_softmax(self.ctx.logits(index))
        tok = slot.sampler.sample(self.ctx, index)
        event.token = tok
        if req.n_logprobs is not None:
            event.logprob = float(lp[tok])
            event.top = _top(lp, req.n_logprobs)
        if finish_at_end and self.model.is_eog(tok):
            self._finish(slot, "stop")
            return None
        return event

    def _deliver(self, slot: _Slot, event: TokenEvent) -> None:
        req = slot.req
        slot.n_out += 1
        self.tokens_generated += 1
        try:
            keep_going = req.on_token(event)
        except Exception as e:
            self._fail(slot, e)
            return
        if not keep_going:
            self._finish(slot, "stop")
        elif slot.n_out >= (req.max_tokens or self.n_ctx_seq) or (
            len(slot.tokens) + 1 >= self.n_ctx_seq
        ):
            self._finish(slot, "length")
        else:
            slot.next_token = event.token

    def _fail(self, slot: _Slot, e: Exception) -> None:
        """This sequence fails, not the others of the step."""
        self._finish(slot, "error", error=str(e) or type(e).__name__)

    def _finish(self, slot: _Slot, reason: str, error: str | None = None) -> None:
        req = slot.req
        if slot.sampler is not None:
            slot.sampler.close()
        slot.sampler, slot.req, slot.next_token, slot.pending = None, None, None, []
        slot.last_used = time.perf_counter()
        req.on_done(
            Finished(
                reason=reason,
                prompt_tokens=len(req.tokens),
                cached_tokens=slot.cached,
                completion_tokens=slot.n_out,
                t_queued=req.t_queued,
                t_started=slot.t_started,
                t_first=slot.t_first,
                t_end=slot.last_used,
                prompt_logprobs=slot.prompt_lp,
                error=error,
                speculative=self.speculator.mode if self.speculator else "off",
                drafted_tokens=slot.drafted,
                accepted_tokens=slot.accepted,
            )
        )


class _HostCache:
    """KV of evicted sequences in host memory, least recently used out first. Each entry is
    one sequence's state (``llama_state_seq_get_data``) and the tokens it holds."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self._entries: collections.OrderedDict[int, tuple[list[int], ctypes.Array]] = (
            collections.OrderedDict()
        )
        self._next = 0

    def save(self, ctx, seq: int, tokens: list[int], kept: int) -> None:
        """Keep the KV of sequence ``seq`` (``tokens``), unless the slots (``kept``: the
        longest prefix of it they keep) or an entry already hold all but fewer than
        HOST_CACHE_MIN_TOKENS of it."""
        if self.budget <= 0:
            return
        commons = {key: common_prefix(held, tokens) for key, (held, _) in self._entries.items()}
        best = max(commons, key=commons.get, default=None)
        if len(tokens) - max(kept, commons.get(best, 0)) < HOST_CACHE_MIN_TOKENS:
            if best is not None and commons[best] > kept:
                self._entries.move_to_end(best)  # in use again
            return
        size = ll.llama_state_seq_get_size_ext(ctx, seq, 0)
        if not 0 < size <= self.budget:
            return
        buf = (ctypes.c_uint8 * size)()
        if ll.llama_state_seq_get_data_ext(ctx, buf, size, seq, 0) != size:
            return
        for key, common in commons.items():
            if common == len(self._entries[key][0]):
                self._drop(key)  # this one holds all of that entry, and more
        while self.used + size > self.budget:
            self._drop(next(iter(self._entries)))
        self._entries[self._next] = (list(tokens), buf)
        self._next += 1
        self.used += size

    def best(self, prompt: list[int], limit: int) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with ``prompt`` (at most ``limit`` tokens)."""
        best, n = None, 0
        for key, (held, _) in self._entries.items():
            common = min(common_prefix(held, prompt), limit)
            if common > n:
                best, n = key, common
        return best, n

    def restore(self, ctx, key: int, seq: int, mem) -> bool:
        """Copy an entry into the (emptied) sequence ``seq``; False if llama.cpp refused."""
        _, buf = self._entries[key]
        self._entries.move_to_end(key)
        ll.llama_memory_seq_rm(mem, seq, -1, -1)
        if ll.llama_state_seq_set_data_ext(ctx, buf, len(buf), seq, 0) == len(buf):
            return True
        ll.llama_memory_seq_rm(mem, seq, -1, -1)
        self._drop(key)
        return False

    def _drop(self, key: int) -> None:
        _, buf = self._entries.pop(key)
        self.used -= len(buf)


def _placement(slot: _Slot, common: int) -> tuple:
    """Sort key of a free slot for a new request whose prompt shares ``common`` leading
    tokens with the slot's cache (lowest first). First the slots whose cached prompt the
    request would not destroy: empty ones, or one the prompt extends (a chat that continues),
    the longest shared prefix first (nothing to copy). Then the least recently used. A
    shorter shared prefix than another slot's is not a reason to overwrite a cache: the
    prefix is copied from that other slot (_start)."""
    lost = slot.n_prompt - common
    return (0, -common, 0.0) if lost <= 0 else (1, slot.last_used, lost)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _top(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens, most likely first."""
    if k <= 0:
        return []
    top = np.argpartition(-logprobs, k)[:k]
    top = top[np.argsort(-logprobs[top])]
    return [(int(t), float(logprobs[t])) for t in top]


def _unstarted(req: Request, reason: str) -> Finished:
    now = time.perf_counter()
    return Finished(reason, len(req.tokens), 0, 0, req.t_queued, now, None, now)
