"""The bridge from the batching engine's thread to asyncio streams (services/serving.py)."""

from __future__ import annotations

import asyncio

from pocketlm.params import GenerationParams, LoadParams, ServeParams
from pocketlm.services.serving import ServeConfig, ServedModel
from tests.conftest import scheduler_held


def test_a_step_of_several_streams_wakes_the_event_loop_once(tiny_gguf):
    """4 streams of 16 tokens: one wakeup per engine step (not one per token), plus the
    ends of the streams."""
    served = ServedModel(
        "tiny",
        tiny_gguf,
        None,
        ServeConfig(LoadParams(ctx=256, threads=1), ServeParams(parallel=4)),
    )

    async def run() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):
            nonlocal wakeups
            wakeups += 1
            return real(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting
        with scheduler_held(served.engine):  # admitted together: every step carries all four
            gens = [
                served.stream(
                    served.model.tokenize(f"the cat {i}"),
                    GenerationParams(temperature=0.0, max_tokens=16),
                )
                for i in range(4)
            ]

        async def count(gen) -> int:
            return sum([1 async for piece in gen if piece.event is not None])

        tokens = await asyncio.gather(*(count(g) for g in gens))
        del loop.call_soon_threadsafe
        return wakeups, tokens

    try:
        wakeups, tokens = asyncio.run(run())
    finally:
        served.close()
    assert tokens == [16] * 4
    # 16 steps (the prompts' step draws the first tokens), then up to 2 posts per stream's end
    # (its last piece, and its release): at most 16 + 8. One wakeup per token would be 64.
    assert wakeups <= 16 + 8, wakeups  # fewer when the loop drains after several steps
