"""One model serving a batch job: parallel generation and label scoring, blocking calls.

A job's records go through the continuous-batching engine the server uses (``BatchEngine``):
each record's work runs on a worker thread of its own and blocks on the engine, so up to
``n_seq`` records decode together while the others wait their turn, and multi-step work
(retries, a summary of summaries) reads as plain code. The instructions a job shares
across records are evaluated once: generation reuses them from the engine's prefix cache,
and label scoring (``score``) keeps them in the scorer's KV cache (``Scorer.cache_prefix``).

Scoring runs on the engine's scheduler thread between decoding steps (``BatchEngine.call``),
so one OpenMP team computes everything: groups from all worker threads that wait at the
same time are scored in one call, packed into llama.cpp batches together.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass

from pocketlm.engine.batch import BatchEngine, Finished, Request, TokenEvent
from pocketlm.engine.llama import Grammar
from pocketlm.errors import PocketError, UsageError
from pocketlm.params import GenerationParams
from pocketlm.services import chat_template
from pocketlm.services.evaluate.scoring import Group, Scorer, prefix_tree
from pocketlm.services.machine import default_threads
from pocketlm.services.runtime import open_engine_model

GREEDY = GenerationParams(temperature=0.0, repeat_penalty=1.0, top_k=0, top_p=1.0, min_p=0.0)


@dataclass
class Generated:
    text: str
    tokens: int  # generated
    prompt_tokens: int
    cached_tokens: int
    finish: str  # "stop", "length", "error", "cancelled"
    error: str | None = None


@dataclass
class Counters:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    scored_tokens: int = 0
    generations: int = 0
    scorings: int = 0


class TaskEngine:
    """A store model (or GGUF path) loaded for a batch job. ``n_seq`` sequences decode
    together, each with ``n_ctx_seq`` tokens of context; ``close()`` frees it all."""

    def __init__(
        self,
        ref: str,
        *,
        n_seq: int = 8,
        n_ctx_seq: int = 4096,
        threads: int | None = None,
        progress=None,
    ):
        self.name, self.path, self.manifest, self.model = open_engine_model(ref, progress=progress)
        chat = self.manifest.chat if self.manifest else True
        self.template = self.model.chat_template() if chat else None
        self.n_ctx_seq = min(n_ctx_seq, max(self.model.n_ctx_train, 512))
        self.threads = threads or default_threads()
        self.engine = BatchEngine(
            self.model,
            n_seq=n_seq,
            n_ctx_seq=self.n_ctx_seq,
            n_threads=self.threads,
            max_queue=4096,  # the job's own worker threads are the only clients
        )
        self.n_seq = n_seq
        self.counters = Counters()
        self._scorer: Scorer | None = None
        self._pending: list[tuple[Group, Future]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._end = self._end_token()

    # -- prompts --------------------------------------------------------------------------

    def prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The tokens of a chat prompt ready for the answer (the model's template), or, for a
        model without one, the messages' text followed by "Answer:"."""
        if self.template:
            return chat_template.chat_tokens(self.model, self.template, messages)
        text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
        return self.model.tokenize(text, add_special=True)

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.model.detokenize(list(tokens))

    def _end_token(self) -> int | None:
        """The token a chat model ends its answer with (scored after a label, so that a label
        that begins another, "spam" and "spam offer", is told apart)."""
        if not self.template:
            return None
        probe = self.prompt([{"role": "user", "content": "x"}])
        done = chat_template.chat_tokens(
            self.model,
            self.template,
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        )
        tail = done[len(probe) :]
        ends = [t for t in tail if self.model.is_eog(t)]
        return ends[0] if ends else (self.model.eos if self.model.eos >= 0 else None)

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        tokens: list[int],
        params: GenerationParams = GREEDY,
        *,
        grammar: Grammar | None = None,
    ) -> Generated:
        """Generate after ``tokens``; blocks until the sequence ends (any thread)."""
        if len(tokens) + (params.max_tokens or 1) > self.n_ctx_seq:
            raise PocketError(
                f"the prompt ({len(tokens)} tokens) and answer ({params.max_tokens} tokens) "
                f"do not fit a sequence's context of {self.n_ctx_seq} tokens"
            )
        out: list[int] = []
        done: Future = Future()

        def on_token(event: TokenEvent) -> bool:
            out.append(event.token)
            return True

        if self._closed:
            raise PocketError("the job stopped before this record was done")
        self.engine.submit(
            Request(tokens, params, grammar=grammar, on_token=on_token, on_done=done.set_result)
        )
        while not done.done():  # a request submitted as the engine closed is never finished
            wait([done], timeout=1.0)
            if self._closed and not done.done():
                raise PocketError("the job stopped before this record was done")
        fin: Finished = done.result()
        c = self.counters
        with self._lock:
            c.generations += 1
            c.prompt_tokens += fin.prompt_tokens
            c.cached_tokens += fin.cached_tokens
            c.generated_tokens += fin.completion_tokens
        ended = [t for t in out if not self.model.is_eog(t)]
        return Generated(
            self.detokenize(ended),
            fin.completion_tokens,
            fin.prompt_tokens,
            fin.cached_tokens,
            fin.reason,
            fin.error,
        )

    # -- label scoring ----------------------------------------------------------------------

    def label_tokens(self, labels: Sequence[str]) -> LabelSet:
        """The labels as answers: each as written and, where it differs, with its first
        letter in the other case ("yes", "Yes": models prefer one, the user cannot know
        which), each followed by the end of the answer (so that "spam" and "spam offer"
        differ). When no two labels begin with the same token, just their first tokens:
        once a label has begun, its rest is all but certain."""
        end = [self._end] if self._end is not None else []
        conts, owner = [], []
        for i, label in enumerate(labels):
            variants = dict.fromkeys([label, label[:1].swapcase() + label[1:]])
            for v in variants:
                toks = self.tokenize(v if self.template else " " + v)
                if not toks:
                    raise UsageError(f"the label {label!r} has no tokens", "give non-empty labels")
                conts.append(toks + end)
                owner.append(i)
        firsts: dict[int, set[int]] = {}  # first token -> the labels that begin with it
        for c, i in zip(conts, owner):
            firsts.setdefault(c[0], set()).add(i)
        if all(len(ls) == 1 for ls in firsts.values()):
            # Every label begins with tokens of its own: the first token decides. Scored
            # alone, the record costs one pass and one sequence (see Scorer._tree), and many
            # records share a batch: benchmarks/task_throughput.py (60 tickets, 5 labels,
            # Qwen2.5-Coder-0.5B) went 3.44 -> 5.42 records/s, accuracy unchanged (0.517).
            return LabelSet(
                list(labels), [[t] for t in firsts], [min(ls) for ls in firsts.values()]
            )
        return LabelSet(list(labels), conts, owner)

    def cache_prefix(self, tokens: list[int]) -> None:
        """Keep a job's shared prompt start in the scorer's cache (see ``score``)."""
        self.engine.call(lambda: self._get_scorer().cache_prefix(tokens)).result()

    def score(self, context: list[int], continuations: list[list[int]]) -> list[float]:
        """Log-probability of each continuation after ``context`` (any thread; blocks).
        Groups waiting at the same time are scored together, in one pass."""
        fut: Future = Future()
        with self._lock:
            self._pending.append((Group(context, continuations), fut))
            first = len(self._pending) == 1
        if first:
            self.engine.call(self._score_pending)
        return fut.result()

    def _score_pending(self) -> None:  # the scheduler thread
        with self._lock:
            batch, self._pending = self._pending, []
        scorer = self._get_scorer()
        try:
            groups = [self._fit(scorer, g) for g, _ in batch]
            results = scorer.score(groups)
        except Exception as e:
            for _, fut in batch:
                fut.set_exception(e)
            return
        with self._lock:
            self.counters.scorings += len(batch)
            self.counters.scored_tokens += sum(
                len(g.context) + sum(map(len, g.continuations)) for g in groups
            )
        for (_, fut), scored in zip(batch, results):
            fut.set_result([s.logprob for s in scored])

    def _fit(self, scorer: Scorer, g: Group) -> Group:
        need = len(prefix_tree(g))  # continuations that begin alike share their cells
        if need > scorer.n_ctx:
            raise PocketError(
                f"a record and its answers take {need} tokens, more than the scorer's "
                f"context of {scorer.n_ctx}"
            )
        return g

    def _get_scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = Scorer(
                self.model,
                n_ctx=max(self.n_ctx_seq * 2, 4096),
                n_threads=self.threads,
                n_seq=32,
            )
        return self._scorer

    def close(self) -> None:
        self._closed = True
        self.engine.close()  # runs no more calls: the scorer is free to go
        with self._lock:
            waiting, self._pending = self._pending, []
        for _, fut in waiting:  # their worker threads must not wait forever
            fut.set_exception(PocketError("the job stopped before this record was scored"))
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
        self.model.close()


@dataclass
class LabelSet:
    """Labels and the token sequences that spell each (``owner[i]``: the label of
    ``continuations[i]``)."""

    labels: list[str]
    continuations: list[list[int]]
    owner: list[int]

    def probs(self, logprobs: Sequence[float], prior: Sequence[float] | None = None) -> list[float]:
        """Each label's probability from its spellings' log-probabilities (summed), over the
        labels; divided by ``prior`` (contextual calibration) when given."""
        per = [-math.inf] * len(self.labels)
        for lp, i in zip(logprobs, self.owner):
            per[i] = _logaddexp(per[i], lp)
        p = softmax(per)
        if prior is not None:
            p = [x / max(q, 1e-12) for x, q in zip(p, prior)]
            total = sum(p)
            p = [x / total for x in p]
        return p


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def softmax(logprobs: Sequence[float]) -> list[float]:
    top = max(logprobs)
    exps = [math.exp(x - top) for x in logprobs]
    total = sum(exps)
    return [e / total for e in exps]
