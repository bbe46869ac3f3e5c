"""Routed answers without a server: ``pocketlm run --tiers`` and the Python API.

import pocketlm
with pocketlm.hybrid("tiers.toml") as h:
    a = h.chat("Summarise this ticket: ...")      # model "auto": the router picks
    print(a.text, a.route["tier"], a.route["reason"])
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.params import GenerationParams, validate
from pocketlm.services.route.tiers import Tiers


@dataclass
class RoutedAnswer:
    text: str
    route: dict[str, Any]  # tier, reason, score, fallback, replaced, cost, energy_j...
    tokens_in: int
    tokens_out: int
    finish_reason: str


class HybridSession:
    """The tiers of one file with their own model pool and event loop (blocking calls)."""

    def __init__(self, tiers: str | Path | Tiers, router: str | Path | None = None):
        from pocketlm.services.route.hybrid import Hybrid
        from pocketlm.services.serving import ModelPool

        self.loop = asyncio.new_event_loop()
        self.pool = ModelPool()
        self.hybrid = Hybrid.from_file(tiers, self.pool, router_path=router)

    def chat(
        self,
        messages: str | list[dict[str, str]],
        *,
        model: str = "auto",
        system: str | None = None,
        privacy: str | None = None,
        on_text=None,
        **gen: Any,
    ) -> RoutedAnswer:
        """Answer with the tier ``model`` names, or the routed one ("auto"). ``on_text`` is
        called with each piece as it streams. ``gen``: GenerationParams fields."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        params = validate(GenerationParams, gen)
        return self.loop.run_until_complete(
            self._chat(list(messages), params, model, privacy, on_text)
        )

    async def _chat(self, messages, params, model, privacy, on_text) -> RoutedAnswer:
        reply = await self.hybrid.chat(messages, params, model=model, privacy=privacy)
        parts = []
        async for piece in reply.pieces:
            parts.append(piece)
            if on_text is not None:
                on_text(piece)
        return RoutedAnswer(
            "".join(parts),
            reply.route.as_dict(),
            reply.tokens_in,
            reply.tokens_out,
            reply.finish_reason,
        )

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.run_until_complete(self.hybrid.aclose())
        self.loop.run_until_complete(self.pool.close())
        self.loop.close()

    def __enter__(self) -> HybridSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
