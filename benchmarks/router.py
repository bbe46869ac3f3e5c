#!/usr/bin/env python3
"""Router figures (issue 15): how much of the gap between a small local model and a larger
remote one a router recovers, per share of prompts sent remote. One run.

Local tier: qwen2.5-coder-0.5b-instruct in this process; remote tier: a real second
`pocketlm serve qwen2.5-coder-1.5b-instruct` on a loopback port, reached as an
OpenAI-compatible endpoint (privacy "allow": the benchmark measures the models, not the
pseudonymiser). Steps, each the package's own code:

1. collect: the verifiable workload (pocketlm.services.route.workload, --n prompts, seeded),
   both tiers answering greedily; resumable (the workload file is kept, --workload);
2. train: the router on a seeded 70/30 split (pocketlm.services.route.router);
3. calibrate on the held-out 30% (pocketlm.services.route.calibrate), and print there:
   local-only and remote-only accuracy, AUROC of the embedding router's score and of the
   cascade score for "the local answer is good enough", and the remote share needed to
   recover 80% of the accuracy gap for router, cascade and random routing;
4. draw the curve (docs/img/router_curve.png);
5. the router head's AUROC by repeated cross-validation over the whole workload (5 x
   4 folds, the C that training chose): one held-out part of ~100 prompts moves the AUROC
   by several points between splits, the mean over 20 folds much less.

Targets: share for 80% of the gap <= 40% (random routing needs 80%); AUROC >= 0.75.

Usage: python benchmarks/router.py [--n 600] [--seed 0] [--workload FILE] [--png FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import Server, free_port, machine_load, pocketlm_serve  # noqa: E402

from pocketlm.progress import RichProgress  # noqa: E402
from pocketlm.services.route import calibrate, router, workload  # noqa: E402
from pocketlm.services.route.embed import NAME, Embedder  # noqa: E402

LOCAL = "qwen2.5-coder-0.5b-instruct"
REMOTE = "qwen2.5-coder-1.5b-instruct"
REPO = Path(__file__).resolve().parents[1]
TARGET_SHARE, TARGET_AUROC = 0.40, 0.75


def tiers_text(port: int) -> str:
    return f"""\
cascade = true

[[tier]]
name = "local"
model = "{LOCAL}"

[[tier]]
name = "remote"
url = "http://127.0.0.1:{port}/v1"
model = "{REMOTE}"
privacy = "allow"
timeout_s = 600
retries = 1
"""


def pull(name: str) -> None:
    subprocess.run([sys.executable, "-m", "pocketlm", "pull", name], check=True)


async def collect(args, tiers: Path) -> workload.CollectSummary:
    from pocketlm.services.route.hybrid import Hybrid

    items = workload.generate(args.n, seed=args.seed)
    progress = RichProgress()
    try:
        async with Hybrid.open(tiers) as hybrid:
            return await workload.collect(
                items,
                hybrid.answer,
                "local",
                "remote",
                args.workload,
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
                progress=progress,
            )
    finally:
        progress.close()


def run_remote_and_collect(args) -> workload.CollectSummary:
    port = free_port()
    argv = pocketlm_serve(REMOTE, port, "--parallel", str(args.concurrency), "--ctx", "2048")
    log = Path(tempfile.gettempdir()) / "pocketlm-router-remote.log"
    with tempfile.TemporaryDirectory() as tmp, Server(argv, port, log=log, start_timeout=300):
        # the benchmark's escalations are not the user's: their audit log goes with the run
        os.environ["POCKETLM_AUDIT_LOG"] = str(Path(tmp) / "audit.jsonl")
        tiers = Path(tmp) / "tiers.toml"
        tiers.write_text(tiers_text(port))
        return asyncio.run(collect(args, tiers))


def cross_validated_auroc(records, embed, C: float, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of the router head's AUROC over 5 x 4 folds."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    texts = [r["prompt"] for r in records]
    x = router.router_inputs(embed(texts), texts)
    y = np.array([router.good_enough(r) for r in records], dtype=int)
    aurocs = []
    folds = RepeatedStratifiedKFold(n_splits=4, n_repeats=5, random_state=seed)
    for tr, te in folds.split(x, y):
        mean, scale = router.standardise_features(x[tr], len(router.PROMPT_FEATURES))
        head = LogisticRegression(C=C, max_iter=5000).fit((x[tr] - mean) / scale, y[tr])
        aurocs.append(roc_auc_score(y[te], head.predict_proba((x[te] - mean) / scale)[:, 1]))
    return float(np.mean(aurocs)), float(np.std(aurocs))


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(args, summary, collect_s: float) -> int:
    records = workload.read_records(args.workload)
    embedder = Embedder(threads=args.threads)
    model, trained = router.train(
        records,
        embedder.encode,
        test_share=0.3,
        seed=args.seed,
        source=router.file_source(args.workload),
        embedder=NAME,
    )
    held = calibrate.held_out(model, records, router.file_source(args.workload))
    scores = calibrate.model_scores(model, held, embedder.encode)
    cal = calibrate.calibrate(held, scores, remote_share=args.remote_share)
    png = calibrate.curve_chart(
        cal,
        args.png,
        title=f"{LOCAL} local, {REMOTE} remote\n{cal.n} held-out prompts "
        f"(local {cal.local_accuracy:.1%}, remote {cal.remote_accuracy:.1%})",
    )
    if args.router_out:
        calibrate.apply(model, cal).save(args.router_out)
    print(f"\n{machine_load()}")
    print(
        f"workload: {len(records)} prompts in {args.workload}; this run asked "
        f"{summary.written} ({summary.skipped} already there) in {collect_s:.0f} s"
        + (
            f" ({collect_s / summary.written:.2f} s per prompt, both tiers)"
            if summary.written
            else ""
        )
    )
    print(f"trained on {trained.n_train}, measured on {cal.n} held-out prompts (seed {args.seed})")
    print(f"  accuracy local only  {cal.local_accuracy:.1%}")
    print(f"  accuracy remote only {cal.remote_accuracy:.1%}")
    ok = True
    for name in ("router", "cascade"):
        auroc = cal.auroc.get(name)
        if auroc is None:
            print(f"  AUROC {name}: -")
            continue
        met = auroc >= TARGET_AUROC
        ok &= met or name == "cascade"  # the target is the router's; the cascade is reported
        print(f"  AUROC {name:8s} {auroc:.3f}  (target >= {TARGET_AUROC}: {verdict(met)})")
    cv_mean, cv_sd = cross_validated_auroc(records, embedder.encode, trained.C, args.seed)
    print(f"  AUROC router, 5 x 4-fold cross-validation: {cv_mean:.3f} +/- {cv_sd:.3f}")
    for name, share in cal.share_for_gap.items():
        line = f"  remote share for 80% of the gap, {name:8s} {share:.0%}"
        if name != "random":
            met = share <= TARGET_SHARE
            ok &= met or name == "cascade"
            line += f"  (target <= {TARGET_SHARE:.0%}: {verdict(met)})"
        print(line)
    for name, p in cal.chosen.items():
        print(
            f"  at remote share {args.remote_share:g}, {name}: threshold {p.threshold:.4f}, "
            f"{p.share:.0%} remote, accuracy {p.quality:.1%}"
        )
    print(f"curve: {png}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=600, help="prompts in the workload (600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=96, help="longest answer (96)")
    p.add_argument("--concurrency", type=int, default=4, help="prompts in flight (4)")
    p.add_argument("--threads", type=int, default=1, help="embedder threads (1)")
    p.add_argument("--remote-share", type=float, default=0.3, help="the point to mark (0.3)")
    p.add_argument(
        "--workload",
        type=Path,
        default=Path.home() / ".cache" / "pocketlm" / "router-bench" / "workload-seed0.jsonl",
        help="the workload file, kept between runs (a rerun asks only new prompts)",
    )
    p.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "router_curve.png")
    p.add_argument("--router-out", type=Path, help="also save the calibrated router here")
    args = p.parse_args()
    for name in (LOCAL, REMOTE):
        pull(name)
    start = time.perf_counter()
    summary = run_remote_and_collect(args)
    collect_s = time.perf_counter() - start
    if summary.failed:
        print(f"{len(summary.failed)} prompts failed (rerun to retry them), e.g.:", file=sys.stderr)
        for item_id, error in list(summary.failed.items())[:3]:
            print(f"  {item_id}: {error}", file=sys.stderr)
    return report(args, summary, collect_s)


if __name__ == "__main__":
    sys.exit(main())
