"""pocketlm distill: train a small student on a teacher's knowledge, on this machine."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "make a small model learn from a larger one on your data (knowledge distillation)"

EXAMPLES = """examples:
  pocketlm distill --teacher qwen2.5-coder-1.5b-instruct --student qwen2.5-coder-0.5b-instruct \\
      --data labelled.jsonl --name tickets-0.5b --lora --max-minutes 30
  pocketlm distill --teacher qwen2.5-coder-0.5b-instruct --student qwen-0.5b-L12 \\
      --data curated.jsonl --name qwen-0.5b-L12-healed --max-minutes 40
  pocketlm distill ... --resume          (continue an interrupted run from its checkpoint)
  pocketlm distill ... --restart         (discard an interrupted run and start over)

Data: JSONL, one record per line: {"prompt": ..., "completion": ...} (the completion is
learned; what `pocketlm data label` and `data synth --task` write), {"messages": [...]}, or
{"text": ...} (or --field NAME) for plain text. When teacher and student share a vocabulary
(the Qwen2.5 ladder) the student learns the teacher's top-k token distributions (forward KL
or JSD, plus --ce-weight of cross-entropy on the text); otherwise it learns the text, which
should be the teacher's own outputs. The result is a store model like any other: run,
quantize, serve and package it. docs/distill.md has the recipes and the figures."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pocketlm.services.distill.losses import LOSSES
    from pocketlm.services.distill.train import MODES

    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--student", required=True, metavar="MODEL", help="the store model to train")
    p.add_argument("--teacher", metavar="MODEL", help="the store model to learn from")
    p.add_argument("--data", required=True, metavar="FILE", help="training records (JSONL)")
    p.add_argument("--name", help="name of the result (default: STUDENT-distilled)")
    p.add_argument("--field", metavar="NAME", help="train on this JSONL field as plain text")
    p.add_argument(
        "--mode", choices=MODES, default="auto", help="logits, sequence, or auto (default)"
    )
    p.add_argument("--loss", choices=LOSSES, default="kl", help="divergence (default kl)")
    p.add_argument("--top-k", type=int, default=16, metavar="K", help="teacher's top-k (16)")
    p.add_argument(
        "--ce-weight", type=float, default=0.1, metavar="W", help="weight of cross-entropy (0.1)"
    )
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged at the end)")
    p.add_argument("--lora-rank", type=int, default=16, metavar="R", help="LoRA rank (16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-5, LoRA 5e-4)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (1)")
    p.add_argument("--seq-len", type=int, default=512, metavar="N", help="tokens (512)")
    p.add_argument(
        "--batch-tokens", type=int, default=4096, metavar="N", help="tokens per step (4096)"
    )
    p.add_argument("--max-minutes", type=float, metavar="M", help="time budget for training")
    p.add_argument("--token-budget", type=int, metavar="N", help="stop after N trained tokens")
    p.add_argument(
        "--held-out", type=float, default=0.05, metavar="SHARE", help="held-out share (0.05)"
    )
    p.add_argument("--eval-every", type=int, default=25, metavar="STEPS", help="(25)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0, metavar="M", help="(10)")
    p.add_argument(
        "--train-embeddings", action="store_true", help="train the embeddings too (frozen)"
    )
    p.add_argument(
        "--balance",
        action="store_true",
        help="see each label equally often: answers that repeat (the labels of classify "
        "records) are drawn to their median count, larger ones subsampled, smaller repeated",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads (default: the physical cores)")
    p.add_argument("--resume", action="store_true", help="continue the run's last checkpoint")
    p.add_argument(
        "--restart", action="store_true", help="discard an earlier run's checkpoint and start over"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.services.distill.train import Recipe, distill
    from pocketlm.store.manifest import check_name

    name = args.name or f"{args.student}-distilled"
    check_name(name)
    recipe = Recipe(
        student=args.student,
        teacher=args.teacher,
        data=args.data,
        name=name,
        mode=args.mode,
        loss=args.loss,
        top_k=args.top_k,
        ce_weight=args.ce_weight,
        lora=args.lora,
        lora_rank=args.lora_rank,
        lr=args.lr,
        epochs=args.epochs,
        seq_len=args.seq_len,
        batch_tokens=args.batch_tokens,
        max_minutes=args.max_minutes,
        token_budget=args.token_budget,
        held_out_share=args.held_out,
        eval_every=args.eval_every,
        checkpoint_minutes=args.checkpoint_minutes,
        train_embeddings=args.train_embeddings,
        field=args.field,
        balance=args.balance,
        seed=args.seed,
    )
    progress = RichProgress()
    try:
        result = distill(
            recipe,
            resume=args.resume,
            restart=args.restart,
            threads=args.threads,
            progress=progress,
        )
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    before, after = result.before, result.after
    lines = [
        f"{result.manifest.name}: {result.state.step} steps, {result.state.tokens} tokens in "
        f"{result.state.seconds / 60:.1f} min ({result.mode} distillation, "
        f"stopped by {result.stopped_by})",
    ]
    if after.held_out_div is not None and before.held_out_div is not None:
        drop = 1 - after.held_out_div / before.held_out_div if before.held_out_div else 0.0
        lines.append(
            f"held-out divergence to the teacher: {before.held_out_div:.4f} -> "
            f"{after.held_out_div:.4f} ({drop:.0%} lower)"
        )
    if after.held_out_ce is not None and before.held_out_ce is not None:
        lines.append(f"held-out cross-entropy: {before.held_out_ce:.4f} -> {after.held_out_ce:.4f}")
    if result.plot:
        lines.append(f"loss curve: {result.plot}")
    lines.append(f"run it: pocketlm run {result.manifest.name}")
    print("\n".join(lines), file=sys.stdout)
    return 0
