"""pocketlm data VERB: training data for a small model: synthesise, curate, label."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pocketlm.errors import UsageError

INTERMIXED = False  # VERB is a subcommand
HELP = "training data: a teacher writes or labels it; curate it (dedup, filters, decontamination)"

VERBS = {
    "synth": "a teacher writes training data: textbook passages from topics, or task examples",
    "curate": "drop duplicates, near duplicates, low-quality and contaminated records; report",
    "label": "a local teacher labels your own records (classify or extract) as training data",
}

EXAMPLES = """examples:
  pocketlm data synth --teacher qwen2.5-coder-1.5b-instruct --n 500 --out textbook.jsonl
  pocketlm data synth --teacher big --tiers tiers.toml --topics topics.txt --n 2000 --out t.jsonl
  pocketlm data synth --teacher qwen2.5-coder-1.5b-instruct --task "Route support tickets" \\
      --labels billing,shipping,bug --examples shots.jsonl --n 300 --out tickets.jsonl
  pocketlm data synth --teacher qwen2.5-coder-1.5b-instruct --task "Records with a contact" \\
      --kinds "an email signature,a meeting note" --n 400 --out contacts.jsonl
  pocketlm data curate textbook.jsonl --out clean.jsonl --report report.json
  pocketlm data label mine.jsonl --teacher qwen2.5-coder-1.5b-instruct --task classify \\
      --labels positive,negative --out labelled.jsonl

An interrupted synth or label run continues with --resume. docs/data.md has the defaults
and the thresholds of curate, and why."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, help_text in VERBS.items():
        s = sub.add_parser(verb, help=help_text, description=help_text)
        globals()[f"_{verb}_args"](s)


def _teacher_args(s: argparse.ArgumentParser, remote: bool) -> None:
    what = "store model, GGUF path" + (", or a tier of --tiers" if remote else "")
    s.add_argument("--teacher", required=True, metavar="MODEL", help=f"the teacher: {what}")
    s.add_argument("--tiers", metavar="FILE", help="tiers file where --teacher names a tier")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run's --out")
    s.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: do again the records whose result is an error",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--threads", type=int, metavar="N", help="CPU threads for the engine")
    s.add_argument(
        "--parallel", type=int, default=8, metavar="N", help="records decoded together (8)"
    )
    s.add_argument("--json", action="store_true", help="print the summary as JSON")


def _synth_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--out", required=True, metavar="FILE", help="the records (JSONL)")
    _teacher_args(s, remote=True)
    s.add_argument("--n", type=int, default=100, metavar="N", help="records to write (100)")
    s.add_argument("--topics", metavar="FILE", help="seed topics, one a line (built-in: 30)")
    s.add_argument("--task", metavar="TEXT", help="task mode: what the task is, in a sentence")
    s.add_argument(
        "--labels", help="task mode: A,B,C or a labels file (balanced); none: inputs only"
    )
    s.add_argument("--examples", metavar="FILE", help="task mode: examples (JSONL text/label)")
    s.add_argument(
        "--kinds", help="task mode: kinds of input, A,B,C or a file (each in turn, balanced)"
    )
    s.add_argument("--max-tokens", type=int, default=512, metavar="N", help="longest record (512)")
    s.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature (0.8: varied)"
    )
    s.add_argument("--seed", type=int, default=0, help="the choices and samples (0)")
    _ray_args(s)


def _ray_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run on a Ray cluster (ADDRESS, or a local one); pip install pocketlm[ray]",
    )
    s.add_argument("--ray-workers", type=int, metavar="N", help="Ray workers (default: 1/CPU)")


def _curate_args(s: argparse.ArgumentParser) -> None:
    from pocketlm.services.data.curate import STAGES, Settings
    from pocketlm.services.data.quality import Rules

    d, r = Settings(), Rules()
    s.add_argument("input", metavar="IN", help="JSONL records")
    s.add_argument("--out", required=True, metavar="FILE", help="the kept records (JSONL)")
    s.add_argument("--field", default=d.field, help=f"the field with the text ({d.field})")
    s.add_argument("--report", metavar="FILE", help="write the report (JSON) here")
    s.add_argument(
        "--near-threshold",
        type=float,
        default=d.near_threshold,
        metavar="J",
        help=f"near duplicate: estimated Jaccard of word {d.shingle}-grams >= J "
        f"({d.near_threshold})",
    )
    s.add_argument(
        "--num-perm", type=int, default=d.num_perm, metavar="N", help=f"MinHash permutations "
        f"({d.num_perm})"
    )  # fmt: skip
    s.add_argument(
        "--ngram", type=int, default=d.ngram, metavar="N", help=f"decontamination n-gram "
        f"words ({d.ngram})"
    )  # fmt: skip
    s.add_argument(
        "--decontaminate",
        action="append",
        metavar="FILE",
        help="an evaluation file or folder (repeatable; default: pocketlm's own)",
    )
    s.add_argument("--min-words", type=int, default=r.min_words, help=f"({r.min_words})")
    s.add_argument("--max-words", type=int, default=r.max_words, help=f"({r.max_words})")
    s.add_argument("--skip", metavar="STAGES", help=f"stages not to run: {','.join(STAGES)}")
    s.add_argument("--json", action="store_true", help="print the report as JSON")


def _label_args(s: argparse.ArgumentParser) -> None:
    from pocketlm.services.data.label import TASKS
    from pocketlm.services.tasks.records import FORMATS

    s.add_argument("input", metavar="INPUT", help="your records: JSONL, CSV, text, a folder...")
    s.add_argument("--out", required=True, metavar="FILE", help="the labelled records (JSONL)")
    s.add_argument("--task", required=True, choices=TASKS, help="what the teacher does")
    _teacher_args(s, remote=False)
    s.add_argument("--field", help="the JSONL field or CSV column that holds the text")
    s.add_argument("--input-format", choices=FORMATS, help="input layout (default: detected)")
    s.add_argument("--labels", help="classify: A,B,C or a file ('name: description' lines)")
    s.add_argument("--examples", metavar="FILE", help="classify: examples (JSONL text/label)")
    s.add_argument("--schema", metavar="FILE", help="extract: JSON Schema of the answer")
    s.add_argument("--instruction", help="what the labels mean or what to extract")
    s.add_argument("--max-tokens", type=int, metavar="N", help="extract: longest answer (512)")
    s.add_argument(
        "--grounded",
        action="store_true",
        help="extract: a value the text does not hold is made null (where the schema allows)",
    )
    s.add_argument("--ctx", type=int, default=4096, metavar="N", help="context per record")
    _ray_args(s)


def main(args: argparse.Namespace) -> int:
    return globals()[f"_{args.verb}"](args)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


# -- synth ----------------------------------------------------------------------------------


def _check_retry(args: argparse.Namespace) -> None:
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume", "add --resume")


def _synth(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.services.data import synth

    _check_retry(args)
    spec = synth.SynthSpec(
        out=Path(args.out).expanduser(),
        teacher=args.teacher,
        tiers=_path(args.tiers),
        n=args.n,
        topics=_path(args.topics),
        task=args.task,
        labels=args.labels,
        examples=_path(args.examples),
        kinds=args.kinds,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        resume=args.resume,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        parallel=args.parallel,
        threads=args.threads,
    )
    if args.ray_workers is not None and args.ray_workers < 1:
        raise UsageError("--ray-workers must be at least 1", "give a count")
    progress = RichProgress()
    try:
        if args.ray:
            from pocketlm.services.data.distributed import run_on_ray

            summary = run_on_ray(spec, args.ray, workers=args.ray_workers, progress=progress)
        else:
            summary = synth.run(spec, progress=progress)
    finally:
        progress.close()
    return _print_summary(summary, args.out, args.json)


# -- label ----------------------------------------------------------------------------------


def _label(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.services.data import label

    _check_retry(args)
    for flag in ("parallel", "ctx", "threads", "max_tokens", "ray_workers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1", "give a count")
    needs = {"classify": ("labels", "--labels A,B,C"), "extract": ("schema", "--schema S.json")}
    name, flag = needs[args.task]
    if not getattr(args, name):
        raise UsageError(f"--task {args.task} needs {flag}")
    options = {
        k: getattr(args, k)
        for k in ("labels", "examples", "schema", "instruction", "max_tokens")
        if getattr(args, k) is not None
    }
    if args.grounded:  # label.run refuses it for classify
        options["grounded"] = True
    spec = label.spec_for(
        args.task,
        args.teacher,
        _path(args.tiers),
        input=Path(args.input).expanduser(),
        out=Path(args.out).expanduser(),
        fmt=args.input_format or "auto",
        field=args.field,
        resume=args.resume,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        threads=args.threads,
        parallel=args.parallel,
        ctx=args.ctx,
        options=options,
    )
    progress = RichProgress()
    try:
        summary = label.run(spec, progress=progress, ray=args.ray, ray_workers=args.ray_workers)
    finally:
        progress.close()
    return _print_summary(summary, args.out, args.json)


def _print_summary(summary, out: str, as_json: bool) -> int:
    d = summary.to_dict()
    if as_json:
        print(json.dumps(d, indent=2), file=sys.stderr)
    else:
        line = f"{d['records']} records written to {out} in {d['seconds']:.1f} s"
        line += f", {d['failed']} failed" if d["failed"] else ""
        line += f", {d['skipped']} already there" if d["skipped"] else ""
        if d["generated_tokens"]:
            line += f", {d['generated_tokens']} tokens ({d['tokens_per_s']:.1f} tok/s)"
        print(f"{line}; teacher {d['model']}", file=sys.stderr)
        for name, counts in d["counts"].items():
            if not counts:
                continue
            shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:20])
            print(f"  {name}: {shown}", file=sys.stderr)
        for f in d["failures"][:5]:
            print(f"  failed {f['id']}: {f['error']}", file=sys.stderr)
    return 0 if summary.records == 0 or summary.failed < summary.records else 1


# -- curate ---------------------------------------------------------------------------------


def _curate(args: argparse.Namespace) -> int:
    import dataclasses

    from pocketlm.progress import RichProgress
    from pocketlm.services.data import curate, quality

    skip = frozenset(x.strip() for x in (args.skip or "").split(",") if x.strip())
    if args.min_words < 0 or args.max_words < max(args.min_words, 1):
        raise UsageError("invalid --min-words/--max-words", "give 0 <= min <= max, max >= 1")
    rules = dataclasses.replace(quality.Rules(), min_words=args.min_words, max_words=args.max_words)
    settings = curate.Settings(
        field=args.field,
        near_threshold=args.near_threshold,
        num_perm=args.num_perm,
        ngram=args.ngram,
        rules=rules,
        skip=skip,
    )
    files = [Path(f) for f in args.decontaminate] if args.decontaminate else None
    progress = RichProgress()
    try:
        report = curate.curate(
            Path(args.input).expanduser(), Path(args.out).expanduser(), settings, files, progress
        )
    finally:
        progress.close()
    d = report.to_dict()
    if args.report:
        Path(args.report).expanduser().write_text(json.dumps(d, indent=2, ensure_ascii=False))
    if args.json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        _print_report(d, args.report)
    return 0


def _print_report(d: dict, report_path: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{d['input']} -> {d['output']}")
    for column in ("reason", "records", "share", "example"):
        table.add_column(column, overflow="fold")
    read = max(d["read"], 1)
    table.add_row("kept", str(d["kept"]), f"{d['kept'] / read:.1%}", "")
    for reason, count in d["dropped"].items():
        ex = d["examples"][reason][0]
        example = f"line {ex['line']}: {ex['why']}: {ex['text'][:80]}"
        table.add_row(reason, str(count), f"{count / read:.1%}", example)
    console = Console()
    console.print(table)
    dc = d["decontamination"]
    tail = f"{d['read']} records read, {d['kept']} kept in {d['seconds']:.1f} s"
    if dc:
        tail += f"; checked against {len(dc['files'])} evaluation files ({dc['n']}-grams)"
    if report_path:
        tail += f"; report: {report_path}"
    console.print(tail, highlight=False)
