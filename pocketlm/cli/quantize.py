"""pocketlm quantize MODEL --type TYPE | --budget SIZE: a new quantized model in the store,
with a quality report measured against its parent."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pocketlm.cli.flags import add_flags, collect
from pocketlm.cli.fmt import human_bytes, table
from pocketlm.errors import UsageError
from pocketlm.params import LoadParams, validate

HELP = (
    "quantize a model to any llama.cpp type, with a measured quality report; or find the "
    "best type for a size budget"
)

EXAMPLES = """examples:
  pocketlm quantize --list                              # every type, nominal bits per weight
  pocketlm quantize smollm2-135m-instruct --list        # ... and each type's size for this model
  pocketlm quantize smollm2-135m-instruct --type Q4_K_M
  pocketlm quantize smollm2-135m-instruct --type F32 --name smollm2-f32
  pocketlm quantize smollm2-135m-instruct --type Q4_0 --reference smollm2-f32 --json
  pocketlm quantize smollm2-135m-instruct --budget 80MB --chart budget.png

The result is a new model in the store, named <model>-<type> unless --name is given; its
manifest records the parent, the type, the real bits per weight and the quality report:
mean KL divergence and top-1 agreement against the reference (default: the parent), the
perplexity and its change, and decode speed. The report is measured on the first
--eval-tokens tokens of --eval-text (default: the calibration text shipped with pocketlm)
and recorded in the results database (pocketlm eval --history).

--budget tries the types whose file llama.cpp estimates to fit (down to 75% of the largest
that fits) and those up to 10% over (for comparison), measures each, keeps the one with
the lowest KL divergence that fits and discards the rest. It draws file size against KL
divergence, with the budget line, to --chart (default: quantize-budget-<model>.png in the
current directory).

Types marked "needs --calibrate" (IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS, Q2_K_S) are refused by
llama.cpp without an importance matrix; --calibrate [FILE] computes one from text
(default: the shipped calibration text). Put --calibrate after the model name.

A distilled student is best calibrated on the data it learnt its task from: --calibrate
takes a JSONL training set (the records `pocketlm data label` writes, or prompt/completion,
messages or text records) as well as text. Uncalibrated Q4_0 cost a distilled 0.5B
extraction student 23 points of its 85; calibrated on its training records, none
(docs/distill.md):

  pocketlm quantize my-student --type Q4_0 --calibrate labelled.jsonl
Ctrl-C at any point leaves nothing half-written in the store."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pocketlm.services.quantize.report import QualityParams

    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", nargs="?", help="model name or GGUF path to quantize")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--type", metavar="TYPE", help="quantization type, e.g. Q4_K_M (see --list)")
    what.add_argument(
        "--budget",
        metavar="SIZE",
        help="pick the best type whose file fits SIZE, e.g. 80MB, 2GB, 500M (decimal units)",
    )
    what.add_argument(
        "--list",
        action="store_true",
        help="list the types (with MODEL: the file size each would give it)",
    )
    p.add_argument("--name", help="store name of the result (default: <model>-<type>)")
    p.add_argument(
        "--calibrate",
        nargs="?",
        const="",
        metavar="FILE",
        help="importance-aware quantization from the text of FILE, or of the records of a "
        ".jsonl training set (default: the shipped calibration text)",
    )
    q = p.add_argument_group("quality report")
    q.add_argument(
        "--reference", metavar="MODEL", help="model to measure against (default: the parent)"
    )
    q.add_argument(
        "--eval-text",
        metavar="FILE",
        help="text to measure on (default: the shipped calibration text)",
    )
    fields = QualityParams.model_fields
    for name, f in fields.items():
        flag = "--" + name.replace("_", "-")
        q.add_argument(
            flag, dest=name, type=int, metavar="N", help=f"{f.description} (default: {f.default})"
        )
    add_flags(p, LoadParams, only=("threads",))
    p.add_argument(
        "--chart",
        metavar="FILE.png",
        help="with --budget: where to draw the chart (default: quantize-budget-<model>.png here)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from pocketlm.services.quantize import types
    from pocketlm.services.quantize.budget import parse_size
    from pocketlm.services.quantize.report import QualityParams

    if args.list:
        return list_types(args.model, args.json)
    if not args.model:
        raise UsageError("name the model to quantize", "see pocketlm quantize --help")
    if not args.type and not args.budget:
        raise UsageError("choose a --type (pocketlm quantize --list) or a --budget SIZE")
    qt = types.get(args.type) if args.type else None  # a bad name fails before any work
    budget = parse_size(args.budget) if args.budget else None
    validate(LoadParams, collect(args, LoadParams))  # --threads: its range
    values = {k: getattr(args, k) for k in QualityParams.model_fields}
    params = validate(
        QualityParams, {k: v for k, v in values.items() if v is not None}, flag_names=True
    )
    chart = _chart_path(args) if budget else None
    if args.chart and not budget:
        raise UsageError("--chart goes with --budget")
    common = {
        "name": args.name,
        "reference": args.reference,
        "eval_text": args.eval_text,
        "calibrate": _calibration(args.calibrate),
        "params": params,
        "threads": args.threads,
    }
    from pocketlm.progress import RichProgress

    progress = RichProgress()
    try:
        if budget:
            from pocketlm.services.quantize.budget import choose

            result = choose(args.model, budget, chart=chart, progress=progress, **common)
        else:
            from pocketlm.services.quantize.quantize import quantize

            result = quantize(args.model, qt, progress=progress, **common)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(format_budget(result) if budget else format_quantized(result))
    if budget and result.chart:
        print(f"wrote {result.chart}", file=sys.stderr)
    return 0


def _calibration(value: str | None):
    """--calibrate: absent -> None; bare -> the shipped text; FILE -> that file."""
    if value is None:
        return None
    from pocketlm.services.quantize.quantize import Calibration
    from pocketlm.services.quantize.report import load_text

    return Calibration(*load_text(value or None))


def _chart_path(args) -> Path:
    if args.chart is None:
        from pocketlm.store.pull import default_name, looks_like_path

        stem = default_name(Path(args.model)) if looks_like_path(args.model) else args.model
        return Path(f"quantize-budget-{stem}.png")
    from pocketlm.store.pull import user_path

    path = user_path(args.chart)
    if path.suffix.lower() != ".png":
        raise UsageError(f"invalid --chart {args.chart!r}: the file name must end in .png")
    if not path.parent.is_dir():
        raise UsageError(f"invalid --chart {args.chart!r}: folder {path.parent} does not exist")
    return path


# -- output -----------------------------------------------------------------------------


def list_types(model: str | None, as_json: bool) -> int:
    from pocketlm.services.quantize import types

    estimates, source = {}, None
    if model:
        from pocketlm.progress import RichProgress
        from pocketlm.services.quantize.quantize import estimate_sizes, open_source
        from pocketlm.store.store import Store

        progress = RichProgress()
        try:
            source = open_source(model, Store(), progress)
            estimates = estimate_sizes(source, types.TYPES.values())
        finally:
            progress.close()
    rows = []
    for qt in types.TYPES.values():
        e = estimates.get(qt.name)
        note = "needs --calibrate" if qt.needs_imatrix else qt.note
        if e is not None and e.error:
            note = f"cannot: {e.error}"
        rows.append(
            {
                "type": qt.name,
                "bpw": qt.bpw,
                "family": qt.family,
                "needs_imatrix": qt.needs_imatrix,
                "note": note,
                "size_bytes": e.size_bytes if e and not e.error else None,
            }
        )
    if as_json:
        print(json.dumps(rows))
        return 0
    header = ["TYPE", "BPW", "FAMILY"] + ([f"SIZE ({source.name})"] if source else []) + ["NOTE"]
    body = [
        [r["type"], f"{r['bpw']:.2f}", r["family"]]
        + ([human_bytes(r["size_bytes"]) if r["size_bytes"] else "-"] if source else [])
        + [r["note"]]
        for r in rows
    ]
    print(table(body, header))
    print(
        "\nBPW: nominal bits per weight; a file's real figure depends on the model's shapes"
        + (" (SIZE: llama.cpp's estimate for this model)" if source else "")
    )
    return 0


def format_quantized(done) -> str:
    q, m = done.quality, done.manifest
    origin = f"from {done.parent}" + (", requantized" if done.requantized else "")
    if done.calibration:
        origin += f", calibrated on {done.calibration}"
    speed = f"{q.decode_tps:.1f} tok/s" if q.decode_tps is not None else "not measured"
    return "\n".join(
        [
            f"{m.name}: {q.type}, {human_bytes(q.size_bytes)}, "
            f"{q.bpw:.2f} bits per weight ({origin})",
            f"against {q.reference} on {q.eval_text} ({q.tokens} tokens, window {q.window}):",
            f"  mean KL divergence  {q.kld_mean:.5f} (p99 {q.kld_p99:.4f})",
            f"  top-1 agreement     {100 * q.top1_agreement:.2f}%",
            f"  perplexity          {_ppl(q.ppl)} (reference {_ppl(q.ppl_ref)}, "
            f"{'+' if q.ppl_delta >= 0 else ''}{_ppl(q.ppl_delta)})",
            f"  decode              {speed}",
            f"quantized and measured in {done.seconds:.1f} s  [result {done.result_id}]",
        ]
    )


def format_budget(choice) -> str:
    body = []
    for c in sorted(choice.candidates, key=lambda c: -(c.size_bytes or c.estimate_bytes)):
        q = c.quality
        if q is None:
            body.append([c.type, "-", "-", "-", "-", "-", f"failed: {c.error}"])
            continue
        body.append(
            [
                c.type,
                human_bytes(c.size_bytes),
                f"{q.bpw:.2f}",
                f"{q.kld_mean:.5f}",
                f"{100 * q.top1_agreement:.1f}%",
                _ppl(q.ppl),
                "yes" if c.fits else "no",
            ]
        )
    w = choice.winner
    q = w.quality
    skipped: dict[str, list[str]] = {}
    for name, why in choice.skipped.items():
        skipped.setdefault(why, []).append(name)
    lines = [
        f"budget {human_bytes(choice.budget_bytes)} for {choice.parent}; KL divergence "
        f"against {choice.reference} on {q.eval_text} ({q.tokens} tokens)",
        "",
        table(body, ["TYPE", "SIZE", "BPW", "KLD", "TOP-1", "PPL", "FITS"]),
        "",
        f"chosen: {q.type} -> {w.manifest.name} ({human_bytes(q.size_bytes)}, mean KL "
        f"divergence {q.kld_mean:.5f}, top-1 {100 * q.top1_agreement:.1f}%)",
    ]
    if q.top1_agreement < 0.5:
        lines.append(
            f"warning: {q.type} picks another next token than {choice.reference} "
            f"{100 * (1 - q.top1_agreement):.0f}% of the time: hardly usable; see "
            "what a larger budget buys above"
        )
    if skipped:
        lines.append(
            "not tried: "
            + "; ".join(f"{', '.join(names)} ({why})" for why, names in skipped.items())
        )
    lines.append(f"done in {choice.seconds:.1f} s  [result {w.result_id}]")
    return "\n".join(lines)


def _ppl(x: float) -> str:
    """Perplexity: 3 decimals, or 3 significant digits where it is huge (random models)."""
    return f"{x:.3f}" if abs(x) < 1e5 else f"{x:.3g}"
