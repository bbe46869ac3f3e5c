"""pocketlm fit NAME [--ctx N]: will the model run here, and how fast can it decode?"""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.flags import add_flags, collect
from pocketlm.cli.fmt import human_bytes
from pocketlm.params import LoadParams, validate

HELP = "check whether a model fits in this machine's memory, and estimate its decode speed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name or GGUF path")
    add_flags(p, LoadParams, only=("ctx",))
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    load = validate(LoadParams, collect(args, LoadParams))
    r = report(args.model, load.ctx)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0 if r.fits else 1
    verdict = "fits" if r.fits else "does NOT fit"
    limit = f" (model maximum {r.context_length})" if r.context_length else ""
    print(f"{r.model} at {r.ctx} tokens of context{limit}: {verdict} in memory")
    if r.source == "catalog":
        print("  (not pulled yet: the sizes are those its catalog entry records, not the file's)")
    print(f"  weights        {human_bytes(r.weights_bytes):>10}")
    print(f"  KV cache       {human_bytes(r.kv_bytes):>10}   (f16, {r.ctx} tokens)")
    print(f"  compute        {human_bytes(r.compute_bytes):>10}   (estimate)")
    print(f"  total          {human_bytes(r.total_bytes):>10}")
    print(
        f"  RAM available  {human_bytes(r.ram_available_bytes):>10}   of "
        f"{human_bytes(r.ram_total_bytes)}"
    )
    print(
        f"decode speed bound from memory bandwidth ({r.bandwidth_bytes_per_s / 1e9:.1f} GB/s): "
        f"~{r.decode_tps_empty:.0f} tok/s at an empty context, ~{r.decode_tps_full:.0f} tok/s "
        "with the context full"
    )
    if not r.fits:
        print("to fit: use a smaller --ctx, or a smaller quantization of the model")
    return 0 if r.fits else 1


def report(ref: str, ctx: int | None):
    """The fit of a model in the store or a GGUF path; of a catalog model not pulled yet, from
    its catalog entry."""
    from pocketlm.services.fit import fit, fit_catalog
    from pocketlm.store import catalog
    from pocketlm.store.gguf_check import inspect_gguf
    from pocketlm.store.pull import looks_like_path
    from pocketlm.store.refs import resolve
    from pocketlm.store.store import Store

    store = Store()
    if not looks_like_path(ref) and store.find(ref) is None:
        entry = catalog.entries(store.root).get(ref)
        if entry is not None:
            return fit_catalog(entry, ctx)
    return fit(ref, inspect_gguf(resolve(ref, store).path), ctx)
