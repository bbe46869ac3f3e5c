"""Privacy detector quality and speed on a held-out synthetic corpus (issue 15's targets).

    .venv/bin/python benchmarks/privacy_detector.py [--texts 1000] [--seed 1515]

Generates labelled texts with Faker (pocketlm/services/privacy/corpus.py: names, addresses
and companies in seven locales, checksum-valid cards, IBANs and national ids, keys, DOBs,
in emails, chats, tickets, log lines and CSV rows, a fifth with no entity), runs the
detector on them and prints recall, precision and support per entity type, overall
precision and texts per second. Exits 1 when a target is missed: recall >= 0.99 for the
pattern types, >= 0.90 for PERSON, >= 0.80 for ADDRESS and ORGANIZATION, precision >= 0.90
overall. The table in docs/privacy.md comes from this script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.services.privacy import corpus, quality  # noqa: E402
from pocketlm.services.privacy.detect import shared  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texts", type=int, default=1000, help="texts to generate (1000)")
    p.add_argument("--seed", type=int, default=1515, help="corpus seed (1515)")
    args = p.parse_args()

    examples = corpus.generate(args.texts, seed=args.seed)
    start = time.perf_counter()
    detector = shared()
    detector.find("warm up")
    built = time.perf_counter() - start
    start = time.perf_counter()
    rows = quality.score(detector, examples)
    elapsed = time.perf_counter() - start
    chars = sum(len(e.text) for e in examples)
    print(quality.table(rows))
    print(
        f"\n{len(examples)} texts (seed {args.seed}), {chars / len(examples):.0f} characters "
        f"each on average: {len(examples) / elapsed:.0f} texts/s, "
        f"{chars / elapsed / 1000:.0f} k characters/s; detector built in {built:.1f} s"
    )
    missed = quality.misses(rows)
    for line in missed:
        print(f"MISSED: {line}")
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
