"""pocketlm route VERB: teach the hybrid router when the local answer is good enough."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pocketlm.errors import UsageError

INTERMIXED = False  # VERB is a subcommand
HELP = "train the hybrid router: collect a workload, train, calibrate the threshold"

VERBS = {
    "collect": "ask a local and a remote tier verifiable prompts; record which was right",
    "train": "learn P(local answer good enough) from a collected workload",
    "calibrate": "pick the router's threshold for a remote share or an accuracy; draw the curve",
}

EXAMPLES = """examples:
  pocketlm route collect --tiers tiers.toml --n 600 --out workload.jsonl
  pocketlm route train workload.jsonl                      (writes ~/.pocketlm/router.json)
  pocketlm route calibrate workload.jsonl --remote-share 0.3 --plot router.png
  pocketlm route calibrate workload.jsonl --min-quality 0.6 --router my-router.json

A workload record says, for one prompt, whether each tier's answer was right. The label the
router learns: the local answer is good enough when it is right, or when the remote one is
not right either. Training holds out 30% of the workload; calibrating on the same workload
uses only that held-out part."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, help_text in VERBS.items():
        s = sub.add_parser(verb, help=help_text, description=help_text)
        globals()[f"_{verb}_args"](s)


def _collect_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--tiers", required=True, metavar="FILE", help="the tiers file (TOML)")
    s.add_argument("--local", metavar="TIER", help="the tier to route from (default: first local)")
    s.add_argument(
        "--remote", metavar="TIER", help="the tier to escalate to (default: first remote)"
    )
    s.add_argument("--out", required=True, metavar="FILE", help="workload JSONL (appended to)")
    s.add_argument("--n", type=int, default=600, metavar="N", help="prompts (default 600)")
    s.add_argument("--seed", type=int, default=0, help="which prompts (default 0)")
    s.add_argument("--kinds", help="only these prompt kinds, e.g. arithmetic,choice")
    s.add_argument(
        "--max-tokens", type=int, default=96, metavar="N", help="longest answer (default 96)"
    )
    s.add_argument(
        "--concurrency", type=int, default=4, metavar="N", help="prompts in flight (default 4)"
    )


def _train_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("workload", metavar="WORKLOAD", help="JSONL from pocketlm route collect")
    s.add_argument("--out", metavar="FILE", help="router file (default: the store's router.json)")
    s.add_argument(
        "--test-share", type=float, default=0.3, help="held out to measure (default 0.3)"
    )
    s.add_argument("--seed", type=int, default=0, help="the held-out draw (default 0)")
    _embed_args(s)


def _calibrate_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("workload", metavar="WORKLOAD", help="JSONL from pocketlm route collect")
    s.add_argument("--router", metavar="FILE", help="router file (default: the store's)")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--remote-share", type=float, metavar="R", help="send R (0..1) remote")
    target.add_argument(
        "--min-quality", type=float, metavar="Q", help="the least remote share reaching accuracy Q"
    )
    s.add_argument("--plot", metavar="PNG", help="draw the quality-vs-remote-share curve here")
    s.add_argument(
        "--gap", type=float, default=0.8, help="report the share recovering this much of the gap"
    )
    _embed_args(s)


def _embed_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--threads", type=int, metavar="N", help="CPU threads for the embedder")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    return globals()[f"_{args.verb}"](args)


def _at_least_1(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"invalid --{name.replace('_', '-')} {value}: must be at least 1")


def default_router_path() -> Path:
    """Where ``train`` writes and ``calibrate`` and the hybrid server read: the store's."""
    from pocketlm import config

    return config.home() / "router.json"


# -- collect --------------------------------------------------------------------------------


def _collect(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.services.route import tiers as tiers_mod
    from pocketlm.services.route import workload

    _at_least_1(args, "n", "max_tokens", "concurrency")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    items = workload.generate(args.n, seed=args.seed, kinds=kinds)
    local, remote = pick_tiers(tiers_mod.load(args.tiers), args.local, args.remote)
    progress = RichProgress()
    try:
        summary = asyncio.run(_ask_all(args, items, local, remote, progress))
    finally:
        progress.close()
    print(_collect_line(summary, args.out, local, remote))
    for item_id, error in list(summary.failed.items())[:5]:
        print(f"  failed {item_id}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


def pick_tiers(tiers, local: str | None, remote: str | None) -> tuple[str, str]:
    """The two tiers to compare: as named, else the first local and the first remote one
    (or, without a remote tier, the largest local one)."""
    names = [t.name for t in tiers.tiers]
    for flag, name in (("--local", local), ("--remote", remote)):
        if name is not None and name not in names:
            raise UsageError(f"unknown tier '{name}' for {flag}", f"tiers: {', '.join(names)}")
    local = local or (tiers.local[0].name if tiers.local else names[0])
    if remote is None:
        others = [t.name for t in tiers.remote] + [t.name for t in reversed(tiers.local)]
        remote = next((n for n in others if n != local), None)
    if remote is None or remote == local:
        raise UsageError(
            "collecting needs two different tiers", "add a remote tier, or name them with --remote"
        )
    return local, remote


async def _ask_all(args, items, local: str, remote: str, progress):
    from pocketlm.services.route import workload
    from pocketlm.services.route.hybrid import Hybrid

    async with Hybrid.open(args.tiers) as hybrid:
        return await workload.collect(
            items,
            hybrid.answer,
            local,
            remote,
            Path(args.out).expanduser(),
            concurrency=args.concurrency,
            max_tokens=args.max_tokens,
            progress=progress,
        )


def _collect_line(s, out: str, local: str, remote: str) -> str:
    rate = s.written / s.seconds if s.seconds else 0.0
    line = f"{s.written} prompts asked in {s.seconds:.1f} s ({rate:.2f}/s), written to {out}"
    if s.written:
        line += (
            f"; accuracy {local} {s.local_accuracy:.1%}, {remote} {s.remote_accuracy:.1%}"
            " (this run's prompts)"
        )
    if s.skipped:
        line += f"; {s.skipped} already there"
    if s.failed:
        line += f"; {len(s.failed)} failed (run again to retry them)"
    return line


# -- train ----------------------------------------------------------------------------------


def _embedder(args: argparse.Namespace):
    from pocketlm.services.route.embed import Embedder

    _at_least_1(args, "threads")
    return Embedder(threads=args.threads)


def _train(args: argparse.Namespace) -> int:
    from pocketlm.services.route import router, workload
    from pocketlm.services.route.embed import NAME

    records = workload.read_records(args.workload)
    embedder = _embedder(args)
    model, report = router.train(
        records,
        embedder.encode,
        test_share=args.test_share,
        seed=args.seed,
        source=router.file_source(args.workload),
        embedder=NAME,
    )
    path = model.save(Path(args.out) if args.out else default_router_path())
    if args.json:
        print(json.dumps({"router": str(path), **report.to_dict()}))
        return 0
    print(
        f"router trained on {report.n_train} prompts, measured on {report.n_test} held out: "
        f"AUROC {_num(report.auroc_router)} (embedding), {_num(report.auroc_cascade)} "
        f"(cascade); held-out accuracy local {report.local_accuracy:.1%}, remote "
        f"{report.remote_accuracy:.1%}; written to {path}"
    )
    print(f"next: pocketlm route calibrate {args.workload} --remote-share 0.3 --router {path}")
    return 0


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# -- calibrate ------------------------------------------------------------------------------


def _calibrate(args: argparse.Namespace) -> int:
    from pocketlm.services.route import calibrate as cal_mod
    from pocketlm.services.route import workload
    from pocketlm.services.route.router import RouterModel, file_source

    if not 0 < args.gap <= 1:
        raise UsageError(f"invalid --gap {args.gap}: give a fraction above 0, at most 1")
    path = Path(args.router).expanduser() if args.router else default_router_path()
    model = RouterModel.load(path)
    records = workload.read_records(args.workload)
    held = cal_mod.held_out(model, records, file_source(args.workload))
    _check_embedder(model, path)
    scores = cal_mod.model_scores(model, held, _embedder(args).encode)
    cal = cal_mod.calibrate(
        held, scores, remote_share=args.remote_share, min_quality=args.min_quality, gap=args.gap
    )
    cal_mod.apply(model, cal).save(path)
    if args.plot:
        cal_mod.curve_chart(cal, args.plot)
    if args.json:
        print(json.dumps({"router": str(path), "plot": args.plot, **cal.to_dict()}))
        return 0
    print(calibration_report(cal, len(records), path, args.plot))
    return 0


def _check_embedder(model, path: Path) -> None:
    from pocketlm.services.route.embed import DIM, NAME

    name = model.meta.get("embedder", NAME)
    if name != NAME or model.dim != DIM:
        raise UsageError(
            f"router file '{path}' was trained on embeddings of {name} ({model.dim} numbers)",
            f"this pocketlm embeds with {NAME} ({DIM}): retrain with pocketlm route train",
        )


def calibration_report(cal, n_all: int, path: Path, plot: str | None) -> str:
    """The calibration in a few lines: the data, each score's figures, the chosen points."""
    subset = f" held out (of {n_all})" if cal.n < n_all else ""
    lines = [
        f"calibrated on {cal.n} prompts{subset}: accuracy local only "
        f"{cal.local_accuracy:.1%}, remote only {cal.remote_accuracy:.1%}"
    ]
    for name, share in cal.share_for_gap.items():
        auroc = cal.auroc.get(name)
        head = f"  {name}: " + (f"AUROC {auroc:.3f}, " if auroc is not None else "")
        need = "-" if share is None else f"{share:.0%}"
        lines.append(f"{head}{cal.gap:.0%} of the gap at {need} remote")
    for name, p in cal.chosen.items():
        lines.append(
            f"  chosen for {cal.target} ({name}): threshold {p.threshold:.4f} -> "
            f"{p.share:.0%} remote, accuracy {p.quality:.1%}"
        )
    lines.append(f"thresholds written to {path}" + (f"; curve: {plot}" if plot else ""))
    return "\n".join(lines)
