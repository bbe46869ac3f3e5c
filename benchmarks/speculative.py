#!/usr/bin/env python3
"""Speculative decoding on the ladder's largest model, measured in one run.

For the target model (default qwen2.5-coder-1.5b-instruct), greedy, on three kinds of
prompts of its own (copy-heavy: edit, rewrite or extract from a given text or code; code
generation; open chat), with each mode loaded once side by side:
  plain   --speculate off
  lookup  --lookup (prompt lookup at every step it has a guess)
  draft   --draft qwen2.5-coder-0.5b-instruct (the draft model at every step)
  auto    the default: what pays on this machine (lookup here, and the draft model with
          --speculate auto --draft ..., reported as auto+draft)
prints decode tok/s per kind (tokens after the first over the time after the first,
summed over the kind's prompts), acceptance (accepted / drafted tokens), the ratio to
plain, and whether every output is identical to plain's. The modes of one prompt run back
to back, their order rotated from prompt to prompt, so machine drift hits them alike.

Targets (issue 13): lookup >= 2x plain on copy-heavy prompts; auto >= 0.97x plain on every
kind; outputs identical in every run.

Greedy decoding drafts only where the engine's batches give one-token steps' logits bit for
bit (pocketlm/engine/speculative.py: checked per file when the step costs are measured; on
x86 with pocketlm's engine patches, the ladder's files are), so the greedy run measures the
speed-ups and checks identity; `--temperature 0.7` measures them on sampled decoding.

Usage: python benchmarks/speculative.py [--model M] [--draft D] [--tokens 160] [--rounds 1]
       [--temperature 0.7 --seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_load, threads, wait_quiet  # noqa: E402

CODE = """import json

def load_users(path):
    with open(path) as f:
        data = json.load(f)
    users = []
    for item in data:
        if item.get("active"):
            users.append({"name": item["name"], "email": item["email"], "age": item["age"]})
    return users

def oldest(users):
    best = None
    for u in users:
        if best is None or u["age"] > best["age"]:
            best = u
    return best
"""

LETTER = (
    "Dear Ms. Alvarez,\n\nThank you for your order #48213 placed on March 3. We are sorry "
    "that the blue ceramic teapot arrived with a cracked lid. We have shipped a replacement "
    "lid by express post; it should reach 14 Harbour Street, Portsmouth within three working "
    "days. You do not need to return the damaged lid. If the replacement does not arrive by "
    "March 12, please call our support line on 023 9284 1100 and quote reference RL-5531.\n\n"
    "Kind regards,\nJonas Becker\nCustomer Care, Tideway Homeware"
)

PROMPTS = {
    "copy-heavy": [
        "Add type hints and a docstring to every function of this code. Return the whole "
        "file.\n\n```python\n" + CODE + "```",
        "Rewrite this letter so that it is addressed to Mr. Okafor instead of Ms. Alvarez "
        "and the order number is 50017. Change nothing else; return the whole letter.\n\n" + LETTER,
        "Extract these fields from the letter as JSON: customer, order_number, order_date, "
        "item, problem, address, deadline, phone, reference, sender.\n\n" + LETTER,
    ],
    "code generation": [
        "Write a Python function that parses a CSV file of transactions (date, account, "
        "amount) and returns the balance of each account per month. Include a docstring.",
        "Write a Python class implementing an LRU cache with get and put in O(1), with "
        "type hints and a short usage example.",
    ],
    "open chat": [
        "Why is the sky blue? Explain it to a curious twelve-year-old.",
        "What should I consider when choosing between a laptop and a desktop for work?",
    ],
}


def load(model: str, mode: str, draft: str, n_threads: int):
    import pocketlm

    options = {
        "plain": {"speculate": "off"},
        "lookup": {"lookup": True},
        "draft": {"draft": draft},
        "auto": {},
        "auto+draft": {"speculate": "auto", "draft": draft},
    }[mode]
    return pocketlm.load(model, threads=n_threads, ctx=4096, **options)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--modes", default="plain,lookup,draft,auto,auto+draft")
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0: greedy (outputs must equal plain decoding's); > 0: sampled",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    modes = args.modes.split(",")
    n_threads = threads()
    how = "greedy" if args.temperature <= 0 else f"temperature {args.temperature}, seed {args.seed}"
    print(f"# {args.model}, draft {args.draft}, {n_threads} threads, {how}, {args.tokens} tokens")
    waited = wait_quiet(limit=120)
    print(f"# waited {waited:.0f} s for idle CPUs; {machine_load()}")
    models = {m: load(args.model, m, args.draft, n_threads) for m in modes}
    # per (kind, mode): tokens after the first, seconds after the first, drafted, accepted
    tally = {(k, m): [0, 0.0, 0, 0] for k in PROMPTS for m in modes}
    identical = {m: True for m in modes}
    turn = 0
    for _ in range(args.rounds):
        for kind, prompts in PROMPTS.items():
            for prompt in prompts:
                order = modes[turn % len(modes) :] + modes[: turn % len(modes)]
                turn += 1
                texts = {}
                for mode in order:
                    started = time.perf_counter()
                    done = models[mode].generate(
                        prompt, temperature=args.temperature, seed=args.seed, max_tokens=args.tokens
                    )
                    s = done.stats
                    after_first = time.perf_counter() - started - s.ttft_s
                    t = tally[(kind, mode)]
                    t[0] += s.completion_tokens - 1
                    t[1] += after_first
                    t[2] += s.drafted_tokens
                    t[3] += s.accepted_tokens
                    texts[mode] = done.text
                for mode in modes:
                    if texts[mode] != texts[modes[0]]:
                        identical[mode] = False
                        print(f"# DIFFERENT output: {mode} vs {modes[0]} on {prompt[:40]!r}")
                print(f"# {kind}: {prompt[:50]!r} done", flush=True)
    for m in models.values():
        m.close()
    report(tally, modes, identical, args)
    return 0


def report(tally, modes, identical, args) -> None:
    base = "plain" if "plain" in modes else modes[0]
    rows = []
    print(f"\n{'kind':<16} {'mode':<11} {'tok/s':>7} {'x plain':>8} {'accepted':>14}")
    for kind in PROMPTS:
        ref = tally[(kind, base)]
        ref_tps = ref[0] / max(ref[1], 1e-9)
        for mode in modes:
            n, secs, drafted, accepted = tally[(kind, mode)]
            tps = n / max(secs, 1e-9)
            acc = f"{accepted}/{drafted}" if drafted else "-"
            print(f"{kind:<16} {mode:<11} {tps:7.2f} {tps / ref_tps:8.2f} {acc:>14}")
            rows.append(
                {
                    "kind": kind,
                    "mode": mode,
                    "tps": tps,
                    "ratio": tps / ref_tps,
                    "drafted": drafted,
                    "accepted": accepted,
                }
            )
    print("\nidentical to plain: " + ", ".join(f"{m} {identical[m]}" for m in modes))
    verdicts = []
    for r in rows:
        if r["mode"] == "lookup" and r["kind"] == "copy-heavy":
            verdicts.append(("lookup on copy-heavy >= 2x plain", r["ratio"] >= 2.0, r["ratio"]))
        if r["mode"].startswith("auto"):
            name = f"{r['mode']} on {r['kind']} >= 0.97x plain"
            verdicts.append((name, r["ratio"] >= 0.97, r["ratio"]))
    for name, ok, value in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.2f}")
    if args.temperature <= 0:
        print(f"{'PASS' if all(identical.values()) else 'FAIL'}  outputs identical in every run")
    else:
        print("(sampled: texts may differ from plain's where a batch rounds differently)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "identical": identical}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
