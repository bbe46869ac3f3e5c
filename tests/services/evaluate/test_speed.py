"""One speed run's pieces, in this process (the bench tests run it in a child)."""

from __future__ import annotations

from pocketlm.services.evaluate import speed


def test_prompt_tokens_have_the_exact_count_and_are_deterministic(tiny_gguf):
    from pocketlm.engine.llama import Model

    model = Model(str(tiny_gguf))
    try:
        for n in (1, 7, 300, 2000):
            tokens = speed.prompt_tokens(model, n)
            assert len(tokens) == n
            assert tokens == speed.prompt_tokens(model, n)
    finally:
        model.close()
