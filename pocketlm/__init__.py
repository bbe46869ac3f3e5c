"""pocketlm: run small language models on your own machine, offline.

import pocketlm
with pocketlm.load("smollm2-135m-instruct") as m:
    print(m.generate("Why is the sky blue?", max_tokens=64).text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "pull", "hybrid", "GenerationParams", "LoadParams", "PocketError", "__version__"]

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from pocketlm.params import LoadOverrides, LoadParams
    from pocketlm.services.runtime import LoadedModel
    from pocketlm.store.manifest import Manifest


def load(
    model: str | None = None,
    params: LoadParams | None = None,
    **overrides: Unpack[LoadOverrides],
) -> LoadedModel:
    """Load a model by store name, catalog name (pulled on first use) or GGUF path.

    ``params`` (``pocketlm.LoadParams``), with ``overrides`` of its fields on top: ``ctx``,
    ``threads``, ``batch``, ``flash_attn``.
    """
    from pocketlm.progress import RichProgress
    from pocketlm.services.runtime import LoadedModel

    progress = RichProgress()
    try:
        return LoadedModel(model, params, progress=progress, **overrides)
    finally:
        progress.close()


def pull(model: str) -> Manifest:
    """Fetch a catalog model into the store (or register a GGUF path); returns its manifest."""
    from pocketlm.progress import RichProgress
    from pocketlm.store.pull import pull as _pull

    progress = RichProgress()
    try:
        return _pull(model, progress=progress).manifest
    finally:
        progress.close()


def hybrid(tiers: str, router: str | None = None):
    """Route between the local models and remote tiers of a tiers file (docs/hybrid.md):
    ``pocketlm.hybrid("tiers.toml").chat("...")`` answers with the tier the router picks,
    or the one ``model=`` names; personal data is pseudonymised before it leaves."""
    from pocketlm.services.route.session import HybridSession

    return HybridSession(tiers, router)


def __getattr__(name: str) -> Any:
    # Heavy modules load on first use, so `import pocketlm` stays fast.
    if name in ("GenerationParams", "LoadParams"):
        from pocketlm import params

        return getattr(params, name)
    if name == "PocketError":
        from pocketlm.errors import PocketError

        return PocketError
    raise AttributeError(f"module 'pocketlm' has no attribute {name!r}")
