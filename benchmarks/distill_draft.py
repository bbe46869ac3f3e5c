"""A draft model for speculative decoding, made by pruning and distillation.

The 0.5B model as a draft for the 1.5B one roughly breaks even (it costs about half of
what a target token costs, docs/models.md). A much smaller draft with the same vocabulary
pays if it still guesses well: the recipe prunes Qwen2.5-Coder-0.5B to --layers blocks
and distils it from the 1.5B target on code, every step a pocketlm command:

1. `pocketlm data synth` on programming topics (textbook mode: tutorials, exercises with
   worked solutions...), written by the 0.5B model (faster than the target; the target's
   distributions are what the draft learns);
2. `pocketlm prune qwen2.5-coder-0.5b-instruct --layers N`;
3. `pocketlm distill --teacher qwen2.5-coder-1.5b-instruct --student PRUNED` (logits: the
   target's top-k on every token);
4. `pocketlm quantize DRAFT Q8_0`;
5. benchmarks/speculative.py with --draft DRAFT: decode speed of the 1.5B model with the
   draft against plain decoding (sampled, temperature 0.7) and greedy identity.

Target (issue 16): >= 1.3x on code generation, identical greedy output.

    .venv/bin/python benchmarks/distill_draft.py           (about 50 minutes)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = "qwen2.5-coder-1.5b-instruct"
BASE = "qwen2.5-coder-0.5b-instruct"
CODE_TOPICS = """\
reading and writing CSV files in Python
Python list comprehensions and generator expressions
recursion in Python: factorial, Fibonacci and tree walks
Python dictionaries: counting, grouping and default values
writing unit tests with pytest
string formatting and parsing in Python
sorting with custom keys in Python
binary search and its off-by-one errors
classes, dataclasses and properties in Python
exceptions and context managers in Python
iterators and itertools in Python
regular expressions in Python
JSON encoding and decoding in Python
command line programs with argparse
SQL queries from Python with sqlite3
asynchronous Python with asyncio
type hints in Python
the Python standard library's pathlib
hash maps and sets: when to use which
writing a small HTTP client in Python
"""


def pocketlm(*args: str) -> None:
    print("$ pocketlm " + " ".join(args), flush=True)
    if subprocess.run([sys.executable, "-m", "pocketlm", *args], check=False).returncode:
        sys.exit(f"pocketlm {args[0]} failed")


def exists(name: str) -> bool:
    from pocketlm.store.store import Store

    return Store().find(name) is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=8, help="blocks the draft keeps (8)")
    ap.add_argument("--n", type=int, default=120, help="synthetic code texts (120)")
    ap.add_argument("--minutes", type=float, default=25, help="distillation time budget (25)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/pocketlm/distill-draft")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    clock: dict[str, float] = {}

    def timed(step: str, *cmd: str) -> None:
        t = time.monotonic()
        pocketlm(*cmd)
        clock[step] = clock.get(step, 0) + (time.monotonic() - t) / 60

    topics = work / "topics.txt"
    topics.write_text(CODE_TOPICS)
    synth = work / "code.jsonl"
    timed("synth", "data", "synth", "--teacher", BASE, "--topics", str(topics), "--n",
          str(args.n), "--max-tokens", "384", "--out", str(synth),
          *(["--resume"] if synth.exists() else []))  # fmt: skip
    curated = work / "curated.jsonl"
    curated.unlink(missing_ok=True)
    timed("curate", "data", "curate", str(synth), "--out", str(curated),
          "--skip", "characters,language")  # fmt: skip
    pruned = f"{BASE}-L{args.layers}"
    if not exists(pruned):
        timed("prune", "prune", BASE, "--layers", str(args.layers))
    draft = f"{pruned}-draft"
    for old in (draft, f"{draft}-q8_0"):
        if exists(old):
            pocketlm("rm", old)
    timed("distill", "distill", "--teacher", TARGET, "--student", pruned, "--data", str(curated),
          "--name", draft, "--max-minutes", str(args.minutes), "--epochs", "4", "--lr", "1e-4",
          "--batch-tokens", "2048")  # fmt: skip
    timed("quantize", "quantize", draft, "--type", "Q8_0", "--name", f"{draft}-q8_0")
    print("minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in clock.items()), flush=True)
    bench = [sys.executable, str(HERE / "speculative.py"), "--model", TARGET]
    bench += ["--draft", f"{draft}-q8_0", "--modes", "plain,draft"]
    subprocess.run([*bench, "--temperature", "0.7"], check=True)
    subprocess.run(bench, check=True)  # greedy: identical output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
