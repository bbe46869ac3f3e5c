"""A loaded model and what you can ask of it: generate, chat, tokenize.

This is the service the CLI (`pocketlm run`), the Python API (`pocketlm.load`)
and the server stand on. Generation is a generator of text pieces: prefill
(evaluate the prompt, reusing any cached prefix) and then one decode step per
token, with stop strings, UTF-8 reassembly and the context limit handled here.
"""

from __future__ import annotations

import logging
import os
import resource
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from typing_extensions import Unpack

from pocketlm import config
from pocketlm.errors import ContextOverflowError, UsageError, option
from pocketlm.params import (
    GenerationOverrides,
    GenerationParams,
    LoadOverrides,
    LoadParams,
    context_size,
    with_overrides,
)
from pocketlm.progress import Progress
from pocketlm.services import chat_template
from pocketlm.services.machine import default_threads
from pocketlm.services.text import TextAssembler
from pocketlm.store.gguf_check import GGUFInfo, inspect_gguf
from pocketlm.store.refs import resolve
from pocketlm.store.store import Store

log = logging.getLogger("pocketlm")


@dataclass
class Stats:
    """Timings of one generation; rates in tokens per second."""

    load_s: float = 0.0
    ttft_s: float = 0.0  # request start (after load) to the first generated token
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache, not recomputed
    prefill_tps: float = 0.0
    completion_tokens: int = 0
    decode_tps: float = 0.0  # tokens after the first, over the time after the first
    peak_rss_bytes: int = 0
    seed: int | None = None
    truncated_tokens: int = 0  # prompt tokens dropped to fit the context (--truncate)
    truncated_messages: int = 0
    speculative: str = "off"  # the speculative decoding mode: auto, lookup, draft or off
    drafted_tokens: int = 0  # tokens drafted (prompt lookup or the draft model) and verified
    accepted_tokens: int = 0  # of those, the ones the model kept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn or stop string), "length" (max tokens), "context"
    stats: Stats = field(default_factory=Stats)

    def __str__(self) -> str:
        return self.text


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux keeps ru_maxrss across exec (a child of a
    big process would report its parent's), so VmHWM is read there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def load_draft(
    ref: str,
    target,
    target_name: str,
    *,
    n_ctx: int,
    n_threads: int,
    store=None,
    progress: Progress | None = None,
):
    """The draft model ``ref`` for ``target`` (an engine Model): resolved, checked, loaded,
    its vocabulary the target's (else a one-line error naming both)."""
    from pocketlm.engine.speculative import DraftModel, check_vocabulary

    name, _, _, model = open_engine_model(ref, store, progress)
    try:
        check_vocabulary(target, model, target_name, name)
        return DraftModel(name, model, n_ctx=n_ctx, n_threads=n_threads)
    except BaseException:
        model.close()
        raise


def make_speculator(
    name: str,
    model,
    p: LoadParams,
    *,
    n_ctx: int,
    n_threads: int,
    store: Store | None = None,
    progress: Progress | None = None,
    lenient: bool = False,
):
    """The speculative decoding ``p`` asks for, for the engine Model ``model`` (calibrate it
    with ``calibrate_speculator`` on the thread that decodes). ``lenient`` (a server, whose
    ``draft`` serves every model it fits): a model of another vocabulary, or the draft model
    itself, decodes without it, unless the draft model was asked for alone (then it is an
    error, as it always is otherwise)."""
    from pocketlm.engine.speculative import Speculator, mode_for

    mode = mode_for(p.speculate, p.lookup, p.draft is not None)
    draft = None
    if p.draft and not (lenient and p.draft == name):
        try:
            draft = load_draft(
                p.draft,
                model,
                name,
                n_ctx=n_ctx,
                n_threads=n_threads,
                store=store,
                progress=progress,
            )
        except UsageError:
            if not lenient or mode == "draft":
                raise
            log.warning("serving %s without the draft model %s (another vocabulary)", name, p.draft)
    if mode == "draft" and draft is None:
        mode = "off"
    return Speculator(mode=mode, draft_model=draft)


NOTE_CALIBRATION_BYTES = 256 << 20  # a model this large says it times the machine


def calibrate_speculator(
    spec, model, *, n_threads: int, flash_attn: bool, progress: Progress | None = None
) -> None:
    """Give ``spec`` this machine's step costs (measured once, then cached; ``progress``
    says so when it measures: a few seconds). It decodes: call it on the thread that decodes
    the model, or that thread's OpenMP team gets a twin (see pocketlm.engine.batch)."""
    from pocketlm.engine.speculative import calibrate

    if spec.mode == "off":
        return

    def note() -> None:
        # a few seconds from ~0.5 GB on (the 0.5B model: 4 s, the 1.5B: 7 s); a small
        # model's timing is over before a note would be read, and keeps stderr quiet
        if progress is not None and os.path.getsize(model.path) >= NOTE_CALIBRATION_BYTES:
            progress.note(
                "timing this machine's decode steps for speculative decoding "
                "(once per model; a few seconds)"
            )

    draft = spec.draft_model
    own = None
    if draft:
        own = calibrate(draft.model, n_threads=n_threads, flash_attn=False, on_measure=note)
    mine = calibrate(model, n_threads=n_threads, flash_attn=flash_attn, on_measure=note)
    spec.calibrated(mine, own)


def open_engine_model(ref: str, store: Store | None = None, progress: Progress | None = None):
    """(name, path, manifest, engine Model) for a reference, checked and CPU-probed first."""
    from pocketlm.engine import probe
    from pocketlm.engine.llama import Model, init_backend

    m = resolve(ref, store, pull_missing=True, progress=progress)
    inspect_gguf(m.path)
    init_backend()
    model = Model(str(m.path), use_extra_bufts=probe.extra_bufts_safe(str(m.path)))
    return m.name, m.path, m.manifest, model


class LoadedModel:
    """A model loaded into memory with one context. Use as a context manager, or ``close()``."""

    def __init__(
        self,
        ref: str | None = None,
        params: LoadParams | None = None,
        *,
        store: Store | None = None,
        progress: Progress | None = None,
        **overrides: Unpack[LoadOverrides],
    ):
        from pocketlm.engine import probe
        from pocketlm.engine.llama import Context, Model, init_backend

        self.params: LoadParams = with_overrides(LoadParams, params, overrides)
        started = time.perf_counter()
        store = store or Store()
        self.ref = ref or config.default_model()
        m = resolve(self.ref, store, pull_missing=True, progress=progress)
        path, self.manifest, self.name = m.path, m.manifest, m.name
        self.info: GGUFInfo = inspect_gguf(path)  # before llama.cpp sees a byte of it
        init_backend()
        extra = probe.extra_bufts_safe(str(path))
        self._model = Model(str(path), use_extra_bufts=extra)
        n_ctx = context_size(self.params.ctx, self._model.n_ctx_train)
        self._ctx = Context(
            self._model,
            n_ctx=n_ctx,
            n_threads=self.params.threads or default_threads(),
            n_batch=min(self.params.batch, n_ctx),
            flash_attn=self.params.flash_attn,
        )
        threads = self.params.threads or default_threads()
        self._spec = make_speculator(
            self.name,
            self._model,
            self.params,
            n_ctx=self._ctx.n_ctx,
            n_threads=threads,
            store=store,
            progress=progress,
        )
        fa = self.params.flash_attn
        calibrate_speculator(
            self._spec, self._model, n_threads=threads, flash_attn=fa, progress=progress
        )
        # A base (not instruction-tuned) model completes text: no template unless asked.
        chat = self.manifest.chat if self.manifest else True
        self.template = self._model.chat_template() if chat else None
        self.load_s = time.perf_counter() - started

    # -- life cycle ---------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the weights (idempotent)."""
        if getattr(self, "_spec", None) is not None:
            self._spec.close()
            self._spec = None
        for part in ("_ctx", "_model"):  # the context first: it points into the model
            if getattr(self, part, None) is not None:
                getattr(self, part).close()
                setattr(self, part, None)

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        return self._ctx.n_ctx

    # -- vocabulary -----------------------------------------------------------------

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return self._model.detokenize(list(tokens), special=special)

    # -- generation -----------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        params: GenerationParams | None = None,
        *,
        system: str | None = None,
        raw: bool = False,
        stream: bool = False,
        **overrides: Unpack[GenerationOverrides],
    ) -> Completion | Stream:
        """Complete ``prompt``: formatted with the model's chat template unless ``raw`` (or the
        model has none). Sampling: ``params``, with ``overrides`` (its field names) on top.
        ``stream=True`` returns an iterator of text pieces."""
        if not prompt.strip():
            raise UsageError("the prompt is empty", 'give a prompt, e.g. pocketlm run "Hello"')
        if raw or not self.template:
            if system:
                prompt = f"{system}\n\n{prompt}"
            return self._start(self._raw_prompt(prompt), params, overrides, stream)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.chat(messages, params, stream=stream, **overrides)

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        params: GenerationParams | None = None,
        *,
        stream: bool = False,
        **overrides: Unpack[GenerationOverrides],
    ) -> Completion | Stream:
        """Answer the last message of a conversation, formatted with the model's template."""
        checked = chat_template.check_messages(messages)
        if not self.template:
            raise UsageError(
                f"model '{self.name}' is not a chat model (no chat template)",
                "complete text with generate(..., raw=True)",
            )
        return self._start(_ChatPrompt(self, checked), params, overrides, stream)

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        m = self._model
        bos = m.token_text(m.bos) if m.bos >= 0 else ""
        eos = m.token_text(m.eos) if m.eos >= 0 else ""
        return chat_template.render(self.template, messages, bos_token=bos, eos_token=eos)

    def _raw_prompt(self, text: str) -> _RawPrompt:
        return _RawPrompt(self.tokenize(text, add_special=True, parse_special=True))

    def _start(self, prompt: _Prompt, params, overrides, stream: bool):
        gen = with_overrides(GenerationParams, params, overrides)
        s = Stream(self, prompt, gen)
        if stream:
            return s
        for _ in s:
            pass
        return s.completion

    def _chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return chat_template.chat_tokens(self._model, self.template, messages)


class _RawPrompt:
    def __init__(self, tokens: list[int]):
        self.tokens = tokens
        self.dropped_messages = 0

    def fit(self, budget: int) -> int:
        """Drop tokens from the start (keeping a leading BOS) until ``budget`` is met."""
        excess = len(self.tokens) - budget
        if excess <= 0:
            return 0
        keep_head = 1 if len(self.tokens) > 1 else 0
        del self.tokens[keep_head : keep_head + excess]
        return excess


class _ChatPrompt:
    def __init__(self, model: LoadedModel, messages: list[dict[str, str]]):
        self._model = model
        self.messages = messages
        self.tokens = model._chat_tokens(messages)
        self.dropped_messages = 0

    def fit(self, budget: int) -> int:
        """Drop the oldest non-system messages until ``budget`` is met; return tokens dropped."""
        before = len(self.tokens)
        while len(self.tokens) > budget:
            droppable = [i for i, m in enumerate(self.messages[:-1]) if m["role"] != "system"]
            if not droppable:
                break
            del self.messages[droppable[0]]
            self.dropped_messages += 1
            self.tokens = self._model._chat_tokens(self.messages)
        return before - len(self.tokens)


_Prompt = _RawPrompt | _ChatPrompt


class Stream:
    """Iterate to receive the answer as text pieces; ``completion`` holds the result after."""

    def __init__(self, model: LoadedModel, prompt: _Prompt, params: GenerationParams):
        self._model = model
        self._params = params
        self.completion: Completion | None = None
        self._started = 0.0  # set when generation starts (a stream may be consumed later)
        n_ctx = model.n_ctx
        stats = Stats(load_s=model.load_s)
        want = params.max_tokens or 0
        if len(prompt.tokens) + max(want, 1) > n_ctx:
            if not params.truncate:
                raise ContextOverflowError(
                    len(prompt.tokens), want, n_ctx, _overflow_hint(model, len(prompt.tokens), want)
                )
            reserve = want or min(256, n_ctx // 4)
            stats.truncated_tokens = prompt.fit(n_ctx - reserve)
            stats.truncated_messages = prompt.dropped_messages
            if len(prompt.tokens) + max(want, 1) > n_ctx:
                raise ContextOverflowError(
                    len(prompt.tokens),
                    want,
                    n_ctx,
                    f"even the last message alone does not fit: raise {option('ctx')} or "
                    "shorten it",
                )
        self.tokens = prompt.tokens
        stats.prompt_tokens = len(self.tokens)
        stats.seed = params.seed if params.seed is not None else secrets.randbelow(2**32 - 1)
        self.stats = stats
        self._iter = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._iter

    def __next__(self) -> str:
        return next(self._iter)

    def close(self) -> None:
        """Stop generating (``completion`` then holds what was produced so far)."""
        self._iter.close()

    def _run(self) -> Iterator[str]:
        from pocketlm.engine.llama import Sampler

        model, p, stats = self._model, self._params, self.stats
        self._started = time.perf_counter()
        ctx, vocab = model._ctx, model._model
        sampler = Sampler.for_params(p.model_copy(update={"seed": stats.seed}), vocab)
        spec = model._spec
        spec.reset()
        stats.speculative = spec.mode
        text = TextAssembler(p.stop)
        finish = "length"
        n_out = 0
        t_first = None
        try:
            sampler.accept_all(self.tokens)
            stats.cached_tokens = ctx.prefill(self.tokens)
            t_prefilled = time.perf_counter()
            evaluated = stats.prompt_tokens - stats.cached_tokens
            stats.prefill_tps = evaluated / max(t_prefilled - self._started, 1e-9)
            limit = min(p.max_tokens or ctx.n_ctx, ctx.n_ctx - len(self.tokens))
            for tok in _decode(ctx, sampler, spec, limit, greedy=p.temperature <= 0):
                if vocab.is_eog(tok):
                    finish = "stop"
                    break
                n_out += 1
                if t_first is None:
                    t_first = time.perf_counter()
                    stats.ttft_s = t_first - self._started
                piece, stopped = text.push(vocab.piece(tok))
                if piece:
                    yield piece
                if stopped:
                    finish = "stop"
                    break
                if n_out >= limit:
                    finish = "length" if p.max_tokens and n_out >= p.max_tokens else "context"
                    break
            if rest := text.flush():
                yield rest
        finally:
            sampler.close()
            t_end = time.perf_counter()
            stats.completion_tokens = n_out
            stats.drafted_tokens = spec.counts.drafted
            stats.accepted_tokens = spec.counts.accepted
            if t_first is not None and n_out > 1:
                stats.decode_tps = (n_out - 1) / max(t_end - t_first, 1e-9)
            stats.peak_rss_bytes = peak_rss_bytes()
            self.completion = Completion(text.text, finish, stats)


def _decode(ctx, sampler, spec, limit: int, greedy: bool) -> Iterator[int]:
    """The model's tokens after a prefilled prompt, at most ``limit``: each drawn by
    ``sampler`` from the model's logits, as one plain step per token would, with drafts from
    ``spec`` verified in batches (see pocketlm.engine.speculative)."""
    vocab = ctx.model
    tok, n = sampler.sample(ctx), 1
    yield tok
    while n < limit:
        room = min(limit - n - 1, ctx.n_ctx - len(ctx.tokens) - 2)
        draft = spec.propose(ctx.tokens + [tok], room, greedy)
        started = time.perf_counter()
        if draft is None:
            ctx.step(tok)
            spec.verified(None, 0, time.perf_counter() - started)
            tok, n = sampler.sample(ctx), n + 1
            yield tok
            continue
        base = len(ctx.tokens)
        ctx.extend([tok, *draft.tokens])
        seconds = time.perf_counter() - started
        drawn: list[int] = []
        for i in range(len(draft.tokens) + 1):  # batch index i: the logits after token i
            drawn.append(sampler.sample(ctx, i))
            if i == len(draft.tokens) or drawn[-1] != draft.tokens[i] or vocab.is_eog(drawn[-1]):
                break
        ctx.truncate(base + len(drawn))
        spec.verified(draft, len(drawn) - 1, seconds)
        yield from drawn
        tok, n = drawn[-1], n + len(drawn)


def _overflow_hint(model: LoadedModel, prompt_tokens: int, want: int) -> str:
    need = prompt_tokens + max(want, 1)
    train = model._model.n_ctx_train
    if need <= train:
        fix = f"raise the context with {option('ctx', need)} (the model supports up to {train})"
    else:
        fix = f"the model supports at most {train} tokens: shorten the prompt"
    if want:
        fix += f", lower {option('max_tokens')}"
    return fix + f", or pass {option('truncate', True)} to drop the oldest part of the prompt"
