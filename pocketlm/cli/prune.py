"""pocketlm prune MODEL --layers N [--ffn N]: a smaller student in the store, its blocks and
channels chosen by their importance on calibration text."""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.fmt import human_bytes, human_count, table

HELP = "prune a model's least important layers or FFN channels into a smaller student"

EXAMPLES = """examples:
  pocketlm prune qwen2.5-coder-0.5b-instruct --layers 12         # keep 12 of the 24 layers
  pocketlm prune qwen2.5-coder-0.5b-instruct --layers 8 --ffn 2432 --name draft-8l
  pocketlm prune smollm2-135m-instruct --layers 20 --calibration my-text.txt --json

--layers N keeps N layers (blocks) of the model and drops the others: those whose output
differs least from their input on the calibration text (ShortGPT's block influence,
1 - cosine similarity averaged over the tokens), each scored in one pass and dropped
individually. --ffn N keeps the N feed-forward channels of every layer with the largest
mean activation on the same text (Minitron's width pruning). The scores of every layer are
printed and kept in the new model's manifest with the rest of the recipe.

The result is a new model in the store, named <model>-L<N> (-ffn<N>) unless --name is
given, written as F16 (--dtype) from a float32 copy of the model in PyTorch. A pruned model
has lost quality: distil into it (pocketlm distill --student NAME) before using it.
Ctrl-C at any point leaves nothing half-written in the store."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pocketlm.services.distill.gguf_io import DTYPES

    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", help="model name or GGUF path to prune (llama or qwen2)")
    p.add_argument("--layers", type=int, metavar="N", help="number of layers the result keeps")
    p.add_argument("--ffn", type=int, metavar="N", help="feed-forward channels each layer keeps")
    p.add_argument("--name", help="store name of the result (default: <model>-L<N>)")
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="text the importance is measured on, or a .jsonl training set's records "
        "(default: the shipped calibration text)",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=2048,
        metavar="N",
        help="calibration tokens to measure on (default: 2048)",
    )
    p.add_argument(
        "--dtype", choices=DTYPES, default="F16", help="type of the written weights (default: F16)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.services.distill.prune import prune

    progress = RichProgress()
    try:
        done = prune(
            args.model,
            layers=args.layers,
            ffn=args.ffn,
            name=args.name,
            calibration=args.calibration,
            max_tokens=args.tokens,
            dtype=args.dtype,
            progress=progress,
        )
    finally:
        progress.close()
    print(json.dumps(done.to_dict()) if args.json else format_pruned(done))
    return 0


def format_pruned(done) -> str:
    m = done.manifest
    rows = [
        [str(i), f"{s:.4f}", "kept" if i in done.kept else "dropped"]
        for i, s in enumerate(done.scores)
    ]
    width = f", FFN {done.ffn_before} -> {done.ffn}" if done.ffn != done.ffn_before else ""
    dropped = ", ".join(map(str, done.dropped)) or "none"
    return "\n".join(
        [
            table(rows, ["LAYER", "IMPORTANCE", ""]),
            "",
            f"{m.name}: {len(done.kept)} of {len(done.scores)} layers (dropped {dropped}){width}",
            f"  {m.quantization}, {human_bytes(m.size_bytes)}, "
            f"{human_count(m.parameter_count)} parameters, from {done.parent}",
            f"  importance measured on {done.calibration} ({done.tokens} tokens); "
            f"done in {done.seconds:.1f} s",
            f"  next: distil into it (pocketlm distill --student {m.name} ...), then quantize",
        ]
    )
