"""Local first, escalate only what a small model cannot do: one request, one tier.

``Hybrid`` answers a conversation with the tier a request names, or with the one the router
picks for ``model: "auto"``:

1. rules: no remote tier, or the remote one is blocked by privacy -> local; a prompt longer
   than the local context -> remote;
2. the router (``pocketlm route train``): P(the local answer is good enough) from the prompt's
   embedding; at or above its threshold -> local;
3. the cascade (when the tiers file allows it): below the threshold the local model answers
   anyway, and the answer stays when its token probabilities say it is sure (the router's
   cascade head, or the mean token log-probability against ``cascade_threshold``); else the
   request is escalated.

Before anything goes to a remote tier its personal and secret data are pseudonymised (the
tier's ``privacy``, tightened by the request's), and the answer is rehydrated, streamed
answers included. A remote tier that fails after its retries falls back to the best local
tier, flagged in the reply. Every escalation goes to the audit log (kinds and counts of what
was replaced, never the values), and every request's tokens, cost and energy are counted
per tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.errors import PocketError, UsageError
from pocketlm.params import GenerationParams
from pocketlm.services.route import tiers as tiers_mod
from pocketlm.services.route.remote import RemoteClient, RemoteReply, RemoteUnavailable
from pocketlm.services.route.tiers import Privacy, Tier, Tiers

log = logging.getLogger("pocketlm.route")
DEFAULT_CASCADE_THRESHOLD = -0.5  # mean token logprob: ~0.6 average probability
MAX_ROUTER_TEXT = 4000  # characters of the conversation the router embeds (its end)


class TierBlocked(PocketError):
    http_status = 403


@dataclass
class Answer:
    """A whole answer from one tier (``Hybrid.answer``: workloads, tests)."""

    text: str
    tokens_in: int
    tokens_out: int
    mean_logprob: float | None
    min_logprob: float | None
    tier: str
    energy_j: float | None = None
    energy_estimated: bool = True


@dataclass
class Route:
    """Which tier answered and why (the ``x-pocketlm-tier`` header and the ``route`` field)."""

    tier: str
    reason: str
    score: float | None = None  # router P(local good enough)
    confidence: float | None = None  # cascade: the local answer's mean token logprob
    fallback: bool = False
    escalated: bool = False
    cascade: bool = False  # decided: answer locally, escalate if unsure
    replaced: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0
    currency: str = "USD"
    energy_j: float | None = None
    energy_estimated: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def headers(self) -> dict[str, str]:
        return {
            "x-pocketlm-tier": self.tier,
            "x-pocketlm-route": self.reason.encode("ascii", "replace").decode()[:200],
        }


@dataclass
class Reply:
    """An answer being produced: ``pieces`` yields its text; ``route`` and the token counts
    are final once the pieces are exhausted."""

    route: Route
    pieces: AsyncIterator[str]
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str = "stop"

    async def text(self) -> str:
        return "".join([p async for p in self.pieces])


@dataclass
class TierStats:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    energy_j: float = 0.0
    cost_if_remote: float = 0.0
    fallbacks: int = 0


class Hybrid:
    """Tiers, router, privacy boundary and accounting for one process (server or CLI)."""

    def __init__(
        self, tiers: Tiers, pool, *, router=None, router_path=None, audit=None, detector=None
    ):
        self.tiers = tiers
        self.router_path = router_path
        self.pool = pool  # pocketlm.services.serving.ModelPool: the local tiers' models
        self.router = router
        self.audit = audit
        self._detector = detector
        self.remote = RemoteClient()
        self.stats: dict[str, TierStats] = {t.name: TierStats() for t in tiers.tiers}
        self._embedder = None
        self.audit_failures = 0
        self._energy = None  # EnergyMeter, made on first use
        self._measuring = 0  # local answers being measured now

    @classmethod
    def from_file(cls, path: str | Path | Tiers, pool, *, router_path: str | Path | None = None):
        """A tiers file (or one already loaded), its router (if trained) and the audit log."""
        tiers = path if isinstance(path, Tiers) else tiers_mod.load(path)
        if any(t.privacy == "redact" for t in tiers.remote):
            _check_installed("presidio_analyzer", 'the privacy boundary (privacy = "redact")')
        router = None
        router_file = Path(router_path) if router_path else tiers.router
        if router_file is None:
            default = _default_router_path()
            router_file = default if default.is_file() else None
        if router_file is not None:
            from pocketlm.services.route.router import RouterModel

            router = RouterModel.load(router_file)
        return cls(tiers, pool, router=router, router_path=router_file, audit=_audit_log(tiers))

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: str | Path, **kwargs):
        """``async with Hybrid.open(tiers_file) as h``: with a model pool of its own."""
        from pocketlm.services.serving import ModelPool

        pool = ModelPool()
        hybrid = cls.from_file(path, pool, **kwargs)
        try:
            yield hybrid
        finally:
            await hybrid.aclose()
            await pool.close()

    async def aclose(self) -> None:
        await self.remote.aclose()

    def describe(self) -> str:
        """One line for the operator: the tiers, and how ``auto`` decides."""
        tiers = ", ".join(
            f"{t.name} ({t.model})" if t.local else f"{t.name} ({t.url}, privacy {t.privacy})"
            for t in self.tiers.tiers
        )
        if self.router is not None:
            how = f"router {self.router_path} (threshold {self.router.threshold:.2f})"
        else:
            how = "no router trained: local first"
        if self.tiers.cascade:
            how += ", cascade on"
        return f"tiers: {tiers}; model 'auto': {how}"

    # -- choosing a tier ------------------------------------------------------------------

    def tier(self, name: str) -> Tier:
        tier = self.tiers.get(name)
        if tier is None:
            raise UsageError(
                f"unknown tier '{name[:64]}'",
                f"tiers: {', '.join(t.name for t in self.tiers.tiers)}, or auto",
                param="model",
            )
        return tier

    def local_default(self) -> Tier:
        if not self.tiers.local:
            raise UsageError(
                "the tiers file has no local tier",
                "add a [[tier]] with a store model",
            )
        return self.tiers.local[0]

    def remote_for(self, privacy: Privacy | None) -> Tier | None:
        """The first remote tier this request may use (its policy tightened by the request's)."""
        for tier in self.tiers.remote:
            if tiers_mod.tighter(tier.privacy, privacy or "allow") != "block":
                return tier
        return None

    async def decide(
        self, messages: list[dict], privacy: Privacy | None
    ) -> tuple[Route, list[int] | None]:
        """The tier for ``model: auto`` before any answer exists (rules, then the router),
        and the conversation's tokens for the local tier when the length rule needed them (a
        local answer reuses them). ``route.cascade``: answer locally, then keep or escalate
        by the answer's confidence."""
        local = self.local_default()
        if not self.tiers.remote:
            return Route(local.name, "no remote tier"), None
        remote = self.remote_for(privacy)
        if remote is None:
            return Route(local.name, "privacy: every remote tier is blocked for this request"), None
        served = await self.pool.acquire(local.model)
        tokens = await asyncio.to_thread(served.chat_tokens, messages)
        if len(tokens) + 16 > served.n_ctx_seq:
            return Route(remote.name, "rule: the prompt is longer than the local context"), None
        if self.router is None:
            return Route(local.name, "no router trained", cascade=True), tokens
        score = await self.score(messages)
        t = self.router.threshold
        if score >= t:
            return Route(local.name, f"router: {score:.2f} >= {t:.2f}", score), tokens
        if self.tiers.cascade:
            route = Route(local.name, f"router: {score:.2f} < {t:.2f}", score, cascade=True)
            return route, tokens
        return Route(remote.name, f"router: {score:.2f} < {t:.2f}", score), None

    async def score(self, messages: list[dict]) -> float:
        text = _router_text(messages)
        if self._embedder is None:
            from pocketlm.services.route.embed import Embedder

            self._embedder = Embedder(threads=1)
        vector = await asyncio.to_thread(lambda: self._embedder.encode([text])[0])
        return float(self.router.score(vector, text))

    def _cascade_ok(self, route: Route, answer: Answer) -> tuple[bool, str]:
        mean = answer.mean_logprob if answer.mean_logprob is not None else -math.inf
        if self.router is not None and self.router.cascade is not None and route.score is not None:
            lowest = answer.min_logprob if answer.min_logprob is not None else -math.inf
            p = self.router.cascade_score(route.score, mean, lowest, answer.tokens_out)
            t = self.router.cascade_threshold
            return p >= t, f"cascade: P(local good) {p:.2f} {'>=' if p >= t else '<'} {t:.2f}"
        t = self.tiers.cascade_threshold
        t = DEFAULT_CASCADE_THRESHOLD if t is None else t
        ok = mean >= t
        return ok, f"cascade: mean token logprob {mean:.2f} {'>=' if ok else '<'} {t:.2f}"

    # -- answering ------------------------------------------------------------------------

    async def chat(
        self,
        messages: list[dict],
        params: GenerationParams,
        *,
        model: str = "auto",
        privacy: Privacy | None = None,
    ) -> Reply:
        """Answer with the named tier, or the routed one for ``auto``. The reply streams."""
        if model != "auto":
            tier = self.tier(model)
            route = Route(tier.name, "requested")
            if tier.local:
                return await self._local_reply(tier, messages, params, route)
            return await self._remote_reply(tier, messages, params, route, privacy)
        started = time.monotonic()
        route, tokens = await self.decide(messages, privacy)
        tier = self.tier(route.tier)
        if not tier.local:
            return await self._remote_reply(tier, messages, params, route, privacy)
        remote = self.remote_for(privacy)
        if not route.cascade or remote is None:
            return await self._local_reply(tier, messages, params, route, tokens)
        # the cascade: a whole local answer, kept when it is sure
        answer = await self._local_answer(tier, messages, params, tokens)
        ok, why = self._cascade_ok(route, answer)
        route.confidence = answer.mean_logprob
        if ok:
            route.reason = f"{route.reason}; {why}"
            route.energy_j, route.energy_estimated = answer.energy_j, answer.energy_estimated
            self._audit(tier, route, answer.tokens_in, answer.tokens_out, started, "ok")
            return self._done_reply(route, answer)
        up = Route(remote.name, f"{route.reason}; {why}: escalated", route.score)
        up.confidence = answer.mean_logprob
        return await self._remote_reply(remote, messages, params, up, privacy, local=answer)

    async def answer(
        self, tier: str, messages: list[dict], max_tokens: int, temperature: float = 0.0
    ) -> Answer:
        """One whole answer from the named tier, with its token probabilities when local."""
        t = self.tier(tier)
        params = GenerationParams(max_tokens=max_tokens, temperature=temperature, seed=0)
        if t.local:
            return await self._local_answer(t, messages, params)
        reply = await self._remote_reply(t, messages, params, Route(t.name, "requested"), None)
        text = await reply.text()
        if reply.route.fallback:
            raise RemoteUnavailable(f"tier '{tier}' is unavailable: {reply.route.reason}")
        return Answer(text, reply.tokens_in, reply.tokens_out, None, None, t.name)

    async def _local_stream(self, tier: Tier, messages, params, tokens=None, n_logprobs=None):
        """(prompt tokens, the answer's pieces); ``tokens``: the conversation's, if known."""
        from pocketlm.services.serving import merge

        served = await self.pool.acquire(tier.model)
        if tokens is None:
            tokens = await asyncio.to_thread(served.chat_tokens, messages)
        streams = served.start([tokens], params, n=1, n_logprobs=n_logprobs)
        return len(tokens), merge(streams)

    async def _local_answer(self, tier: Tier, messages, params, tokens=None) -> Answer:
        meter = self._meter()
        n_in, pieces = await self._local_stream(tier, messages, params, tokens, n_logprobs=0)
        text, lps, n_out = [], [], 0
        async for _, piece in pieces:
            text.append(piece.text)
            if piece.event is not None:
                lps.append(piece.event.logprob)
            if piece.done is not None:
                if piece.done.error:
                    raise PocketError(f"generation failed: {piece.done.error}")
                n_out = piece.done.completion_tokens
        mean = sum(lps) / len(lps) if lps else None
        energy = self._stop(meter)
        answer = Answer("".join(text), n_in, n_out, mean, min(lps) if lps else None, tier.name)
        answer.energy_j, answer.energy_estimated = energy
        self._count(tier, n_in, n_out, energy)
        return answer

    async def _local_reply(self, tier: Tier, messages, params, route: Route, tokens=None) -> Reply:
        meter, started = self._meter(), time.monotonic()
        n_in, pieces = await self._local_stream(tier, messages, params, tokens)
        reply = Reply(route, _empty(), tokens_in=n_in)

        async def gen() -> AsyncIterator[str]:
            async for _, piece in pieces:
                if piece.text:
                    yield piece.text
                if piece.done is not None:
                    if piece.done.error:
                        raise PocketError(f"generation failed: {piece.done.error}")
                    reply.tokens_out = piece.done.completion_tokens
                    reply.finish_reason = "length" if piece.done.reason == "length" else "stop"
            energy = self._stop(meter)
            self._count(tier, reply.tokens_in, reply.tokens_out, energy)
            route.energy_j, route.energy_estimated = energy
            self._audit(tier, route, reply.tokens_in, reply.tokens_out, started, "ok")

        reply.pieces = gen()
        return reply

    def _done_reply(self, route: Route, answer: Answer) -> Reply:
        async def one() -> AsyncIterator[str]:
            yield answer.text

        return Reply(route, one(), answer.tokens_in, answer.tokens_out)

    async def _remote_reply(
        self,
        tier: Tier,
        messages: list[dict],
        params: GenerationParams,
        route: Route,
        privacy: Privacy | None,
        local: Answer | None = None,
    ) -> Reply:
        policy = tiers_mod.tighter(tier.privacy, privacy or "allow")
        if policy == "block":
            if route.reason != "requested":
                raise TierBlocked(f"tier '{tier.name}' is blocked for this request")
            raise TierBlocked(
                f"tier '{tier.name}' has privacy = \"block\": nothing is sent to it",
                "name a local tier, or model 'auto'",
            )
        sent, restorer = messages, None
        if policy == "redact":
            from pocketlm.services.privacy.pseudonym import Restorer

            pseudonymizer = self._pseudonymizer()
            sent = await asyncio.to_thread(pseudonymizer.redact_messages, messages)
            restorer = Restorer(pseudonymizer)
            route.replaced = pseudonymizer.counts()
        route.escalated = True
        started = time.monotonic()
        try:
            deltas = await self.remote.stream(tier, sent, _remote_params(params))
        except RemoteUnavailable as e:
            return await self._fallback(tier, messages, params, route, local, str(e), started)
        reply = Reply(route, _empty())

        async def gen() -> AsyncIterator[str]:
            done = None
            try:
                async for delta in deltas:
                    done = delta.done or done
                    text = restorer.feed(delta.text) if restorer else delta.text
                    if text:
                        yield text
                if restorer:
                    tail = restorer.flush()
                    if tail:
                        yield tail
            finally:
                self._finish_remote(tier, route, reply, done, started)

        reply.pieces = gen()
        return reply

    def _finish_remote(self, tier, route, reply, done: RemoteReply | None, started) -> None:
        if done is not None:
            reply.tokens_in, reply.tokens_out = done.tokens_in, done.tokens_out
            reply.finish_reason = done.finish_reason
        route.cost = tier.cost(reply.tokens_in, reply.tokens_out)
        route.currency = tier.currency
        self._count(tier, reply.tokens_in, reply.tokens_out, None, cost=route.cost)
        status = "ok" if done else "cut"
        self._audit(tier, route, reply.tokens_in, reply.tokens_out, started, status)

    async def _fallback(self, tier, messages, params, route, local, error, started) -> Reply:
        self._audit(tier, route, 0, 0, started, "unavailable")
        fallback = self.tiers.best_local
        if fallback is None:
            raise RemoteUnavailable(error, "no local tier to fall back to")
        self.stats[tier.name].fallbacks += 1
        new = Route(fallback.name, f"fallback: {error}", route.score, route.confidence)
        new.fallback = True
        if local is not None and local.tier == fallback.name:
            return self._done_reply(new, local)
        return await self._local_reply(fallback, messages, params, new)

    def _pseudonymizer(self):
        from pocketlm.services.privacy.pseudonym import Pseudonymizer

        if self._detector is None:
            from pocketlm.services.privacy.detect import Detector

            self._detector = Detector()
        return Pseudonymizer(self._detector)

    # -- accounting -----------------------------------------------------------------------

    def _meter(self):
        """Starts measuring one local answer's energy (see ``_stop``)."""
        from pocketlm.services.route.cost import EnergyMeter

        if self._energy is None:
            self._energy = EnergyMeter()
        self._measuring += 1
        return self._energy.start()

    def _stop(self, mark) -> tuple[float, bool]:
        """The answer's energy: the process's (RAPL: the package's) energy over its span,
        shared evenly among the local answers measured at the same time."""
        share = 1.0 / max(1, self._measuring)
        self._measuring -= 1
        energy = self._energy.stop(mark, share=share)
        return energy.joules, energy.estimated

    def _count(self, tier: Tier, n_in: int, n_out: int, energy, cost: float = 0.0) -> None:
        s = self.stats[tier.name]
        s.requests += 1
        s.tokens_in += n_in
        s.tokens_out += n_out
        s.cost += cost
        if energy is not None:
            s.energy_j += energy[0]
        reference = self.tiers.remote[0] if self.tiers.remote else None
        s.cost_if_remote += reference.cost(n_in, n_out) if reference else 0.0

    def _audit(self, tier: Tier, route: Route, n_in: int, n_out: int, started, status) -> None:
        if self.audit is None:
            return
        reference = self.tiers.remote[0] if self.tiers.remote else None
        record = {
            "request_id": uuid.uuid4().hex[:16],
            "tier": tier.name,
            "decision": _decision(route.reason),
            "reason": route.reason[:120],
            "score": route.score,
            "replaced": dict(route.replaced),
            "tokens_in": n_in,
            "tokens_out": n_out,
            "cost": tier.cost(n_in, n_out),
            "currency": tier.currency,
            "cost_if_remote": reference.cost(n_in, n_out) if reference else None,
            "energy_j": None if route.energy_j is None else round(route.energy_j, 3),
            "energy_estimated": route.energy_estimated if route.energy_j is not None else None,
            "fallback": status == "unavailable",
            "status": status,
            "latency_s": round(time.monotonic() - started, 3),
        }
        try:
            self.audit.append({k: v for k, v in record.items() if v is not None})
        except PocketError as e:  # the answer is out already: say it loudly, keep serving
            self.audit_failures += 1
            log.error("request not recorded in the audit log: %s", e)


async def _empty() -> AsyncIterator[str]:
    return
    yield


def _check_installed(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} is not installed", "pip install 'pocketlm[hybrid]'")


def _decision(reason: str) -> str:
    """The kind of decision a route's reason records (the audit log's ``decision``)."""
    for word in ("fallback", "cascade", "router", "rule", "privacy", "requested"):
        if word in reason:
            return word
    return "other"


def _router_text(messages: list[dict]) -> str:
    text = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") != "assistant")
    return text[-MAX_ROUTER_TEXT:]


def _remote_params(params: GenerationParams) -> dict:
    out: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
    if params.max_tokens is not None:
        out["max_tokens"] = params.max_tokens
    if params.stop:
        out["stop"] = list(params.stop)
    if params.seed is not None:
        out["seed"] = params.seed
    return out


def _default_router_path() -> Path:
    from pocketlm.store.store import Store

    return Store().root / "router.json"


def _audit_log(tiers: Tiers):
    from pocketlm.services.route.audit import AuditLog, default_path

    return AuditLog(tiers.audit_log or default_path())
