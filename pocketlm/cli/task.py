"""pocketlm task VERB INPUT: routine work over a user's files (one result line per record)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

INTERMIXED = False  # VERB is a subcommand
HELP = "routine work over files: classify, extract, summarize, emails, logs, security"

VERBS = {
    "classify": "a label and the probability of every label, for each record",
    "extract": "a JSON object following your JSON Schema, for each record",
    "summarize": "one summary per document (long ones in parts, then as a whole)",
    "emails": "mailbox triage: category, priority, needs_reply, spam with reason, summary",
    "logs": "log lines into templates with their variable parts; counts, errors, rare ones",
    "security": "security events from auth/server logs, with an incident summary",
}

EXAMPLES = """examples:
  pocketlm task classify reviews.jsonl --labels positive,negative,neutral --out labels.jsonl
  pocketlm task classify tickets.csv --field body --labels labels.txt --examples shots.jsonl
  pocketlm task extract invoices/ --schema invoice.schema.json --out invoices.jsonl
  pocketlm task summarize reports/ --out summaries.jsonl
  pocketlm task emails ~/Mail/INBOX --out triage.jsonl      (mbox, Maildir, .eml, JSONL)
  pocketlm task logs /var/log/app.log --out parsed.jsonl --report templates.json
  pocketlm task security /var/log/auth.log --out events.jsonl

Inputs: JSONL, CSV (--field picks the column), text (one record per line), a directory of
files, mbox, Maildir, .eml, syslog/auth.log lines (--input-format forces one). Results:
one JSONL line per record, in input order, with the record's id (its own "id" field, else
its position); --format csv for CSV. An interrupted run continues with --resume."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, help_text in VERBS.items():
        s = sub.add_parser(verb, help=help_text, description=help_text)
        s.add_argument("input", metavar="INPUT", help="file or directory to read")
        _common(s)
        globals()[f"_{verb}_args"](s)


def _common(s: argparse.ArgumentParser) -> None:
    from pocketlm.services.tasks.records import FORMATS

    s.add_argument("--out", metavar="FILE", help="results file (default: standard output)")
    s.add_argument("--format", choices=("jsonl", "csv"), help="results format (default: jsonl)")
    s.add_argument("--input-format", choices=FORMATS, help="input layout (default: detected)")
    s.add_argument("--field", help="the JSONL field or CSV column that holds the text")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run's --out")
    s.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: do again the records whose result is an error",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--model", help="store model or GGUF path (default: the task's own)")
    s.add_argument("--threads", type=int, metavar="N", help="CPU threads for the engine")
    s.add_argument(
        "--parallel", type=int, default=8, metavar="N", help="records decoded together (8)"
    )
    s.add_argument("--ctx", type=int, default=4096, metavar="N", help="context per record")
    s.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run on a Ray cluster (ADDRESS, or a local one); pip install pocketlm[ray]",
    )
    s.add_argument("--ray-workers", type=int, metavar="N", help="Ray workers (default: 1/CPU)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")


def _classify_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--labels", required=True, help="A,B,C or a file ('name: description' lines)")
    s.add_argument("--examples", metavar="FILE", help="few-shot examples (JSONL text/label)")
    s.add_argument("--instruction", help="what the labels mean, in a sentence")
    s.add_argument(
        "--calibrate",
        action="store_true",
        help="divide out the model's bias toward some labels (contextual calibration)",
    )


def _extract_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--schema", required=True, metavar="FILE", help="JSON Schema of the answer")
    s.add_argument("--instruction", help="what to extract, in a sentence")
    s.add_argument("--max-tokens", type=int, metavar="N", help="longest answer (512)")
    s.add_argument(
        "--grounded",
        action="store_true",
        help="a string value the text does not hold is made null (where the schema allows)",
    )


def _summarize_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--length", help="how long, e.g. 'one sentence' (2-3 sentences)")
    s.add_argument("--max-tokens", type=int, metavar="N", help="longest summary (200)")


def _emails_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--categories", help="A,B,C or a file (default: a built-in set)")


def _logs_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--report", metavar="FILE", help="write the template report (JSON) here")
    s.add_argument("--no-model", action="store_true", help="templates without the model")


def _security_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--report", metavar="FILE", help="write the incident report (JSON) here")
    s.add_argument("--no-model", action="store_true", help="rules only, no model")
    s.add_argument(
        "--threshold", type=int, default=5, metavar="N", help="failures that make a brute force"
    )


_OPTIONS = (
    "labels examples instruction calibrate schema max_tokens grounded length categories "
    "report no_model threshold"
).split()


def spec_from(args: argparse.Namespace):
    from pocketlm.errors import UsageError
    from pocketlm.services.tasks.output import output_format
    from pocketlm.services.tasks.runner import JobSpec

    for flag in ("parallel", "ctx", "threads", "max_tokens", "ray_workers"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1", "give a count")
    out = Path(args.out) if args.out else None
    return JobSpec(
        verb=args.verb,
        input=Path(args.input).expanduser(),
        out=out,
        out_format=output_format(out, args.format),
        fmt=args.input_format or "auto",
        field=args.field,
        resume=args.resume,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        model=args.model,
        threads=args.threads,
        parallel=args.parallel,
        ctx=args.ctx,
        options={k: getattr(args, k) for k in _OPTIONS if getattr(args, k, None) is not None},
    )


def main(args: argparse.Namespace) -> int:
    from pocketlm.errors import UsageError
    from pocketlm.progress import RichProgress
    from pocketlm.services.tasks import runner

    spec = spec_from(args)
    if spec.resume and spec.out is None:
        raise UsageError("--resume needs --out", "give the results file of the run to continue")
    if spec.retry_failed and not spec.resume:
        raise UsageError("--retry-failed goes with --resume", "add --resume")
    progress = RichProgress()
    try:
        if args.ray:
            from pocketlm.services.tasks.distributed import run_on_ray

            summary = run_on_ray(spec, args.ray, workers=args.ray_workers, progress=progress)
        else:
            summary = runner.run(spec, progress=progress)
    finally:
        progress.close()
    _print_summary(summary, args.json)
    return 0 if summary.records == 0 or summary.failed < summary.records else 1


def _print_summary(summary, as_json: bool) -> None:
    d = summary.to_dict()
    if as_json:
        print(json.dumps(d, indent=2), file=sys.stderr)
        return
    line = (
        f"{d['records']} records in {d['seconds']:.1f} s ({d['records_per_s']:.2f}/s)"
        f", {d['failed']} failed"
    )
    if d["skipped"]:
        line += f", {d['skipped']} already done"
    if d["generated_tokens"]:
        line += f", {d['generated_tokens']} tokens generated ({d['tokens_per_s']:.1f} tok/s)"
    print(f"{line}; model {d['model']}", file=sys.stderr)
    for name, counts in d["counts"].items():
        if not counts:
            continue
        shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:20])
        print(f"  {name}: {shown}", file=sys.stderr)
    for f in d["failures"][:5]:
        print(f"  failed {f['id']}: {f['error']}", file=sys.stderr)
    for line in getattr(summary, "report_lines", []):
        print(f"  {line}", file=sys.stderr)
