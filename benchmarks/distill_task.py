"""A narrow task learnt from a teacher: students within reach of the 1.5B model, faster.

The task: support tickets in 5 classes (benchmarks/data/tasks/tickets.jsonl, 60 tickets
hand-written for pocketlm, labelled: the held-out test set). Every step is a pocketlm
command as a user would run it:

1. `pocketlm data synth --task`: the teacher writes tickets (an unlabelled training set:
   the labels it wrote them for are thrown away);
2. `pocketlm data curate`: duplicates and near-duplicates dropped, and anything that
   overlaps the test tickets (decontamination);
3. `pocketlm data label --task classify`: the teacher labels them (label scoring);
4. `pocketlm distill --balance`: the 0.5B student learns the teacher's label distributions
   (logits, LoRA); the 135M student (another vocabulary) learns its labels (sequence
   level); each label seen equally often (the teacher's labels are skewed, and a student
   trained on the skew answers the majority label for everything);
5. `pocketlm quantize STUDENT Q4_K_M`: the students as they would be deployed;
6. `pocketlm task classify` on the test tickets with the teacher and each student, before
   and after, and `pocketlm bench` for decode speed.

Target (issue 16): a student within 2 points of the teacher's accuracy at >= 2x its
decode speed. 60 test tickets: one ticket is 1.7 points.

    .venv/bin/python benchmarks/distill_task.py    (about 60 minutes; 40 with the labels cached)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "tasks"
TEACHER = "qwen2.5-coder-1.5b-instruct"
LORA = ["--lora", "--epochs", "3", "--lr", "3e-4", "--max-minutes", "12"]
STUDENTS = {
    "qwen2.5-coder-0.5b-instruct": LORA,
    "smollm2-135m-instruct": ["--epochs", "5", "--lr", "1e-4", "--max-minutes", "10"],
}
# any other store model given with --students (a pruned 0.5B, say) trains as the 0.5B does
TASK = (
    "Write one message that a customer of a smart-home company (cameras, sensors, a mobile "
    "app, subscriptions) sends to its support team."
)


def pocketlm(*args: str, capture: bool = False) -> str:
    print("$ pocketlm " + " ".join(args), flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        check=False,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"pocketlm {args[0]} failed with exit code {proc.returncode}")
    return proc.stdout or ""


def exists(name: str) -> bool:
    from pocketlm.store.store import Store

    return Store().find(name) is not None


def accuracy(model: str, work: Path) -> float:
    out = work / f"pred-{model}.jsonl"
    out.unlink(missing_ok=True)
    labels = str(DATA / "tickets_labels.txt")
    test = DATA / "tickets.jsonl"
    pocketlm("task", "classify", str(test), "--labels", labels, "--model", model, "--out", str(out))
    gold = {r["id"]: r["label"] for r in map(json.loads, test.read_text().splitlines())}
    pred = {r["id"]: r.get("label") for r in map(json.loads, out.read_text().splitlines())}
    return sum(pred.get(i) == g for i, g in gold.items()) / len(gold)


def decode_speed(models: list[str]) -> dict[str, float]:
    out = pocketlm(
        "bench", *models, "--prompt-lengths", "128", "--repeat", "3", "--json", capture=True
    )
    return {m["model"]: m["decode"]["tok_per_s"]["median"] for m in json.loads(out)["models"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="synthetic tickets (300)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/pocketlm/distill-task")
    ap.add_argument(
        "--students",
        default=",".join(STUDENTS),
        help="store models to distil into, comma-separated (%(default)s)",
    )
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    clock: dict[str, float] = {}
    labels = str(DATA / "tickets_labels.txt")

    def timed(step: str, fn, *a):
        t = time.monotonic()
        out = fn(*a)
        clock[step] = clock.get(step, 0) + (time.monotonic() - t) / 60
        return out

    synth = work / "synth.jsonl"
    resume = ["--resume"] if synth.exists() else []
    timed("synth", pocketlm, "data", "synth", "--teacher", TEACHER, "--task", TASK,
          "--labels", labels, "--n", str(args.n), "--max-tokens", "96", "--out", str(synth),
          *resume)  # fmt: skip
    curated = work / "curated.jsonl"
    curated.unlink(missing_ok=True)
    timed("curate", pocketlm, "data", "curate", str(synth), "--out", str(curated),
          "--decontaminate", str(DATA / "tickets.jsonl"), "--min-words", "5",
          "--report", str(work / "curate-report.json"))  # fmt: skip
    unlabelled = work / "unlabelled.jsonl"
    rows = [json.loads(line) for line in curated.read_text().splitlines() if line.strip()]
    unlabelled.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    labelled = work / "labelled.jsonl"
    resume = ["--resume"] if labelled.exists() else []  # the same curated records: reused
    timed("label", pocketlm, "data", "label", str(unlabelled), "--teacher", TEACHER,
          "--task", "classify", "--labels", labels, "--out", str(labelled), *resume)  # fmt: skip

    results = {TEACHER: {"accuracy": timed("test", accuracy, TEACHER, work)}}
    deployed = [TEACHER]
    for student in args.students.split(","):
        name = f"{student}-tickets"
        for old in (name, f"{name}-q4_k_m"):
            if exists(old):
                pocketlm("rm", old)
        before = timed("test", accuracy, student, work)
        timed("distill", pocketlm, "distill", "--teacher", TEACHER, "--student", student,
              "--data", str(labelled), "--name", name, "--seq-len", "384",
              "--batch-tokens", "64", "--balance", *STUDENTS.get(student, LORA))  # fmt: skip
        timed(
            "quantize", pocketlm, "quantize", name, "--type", "Q4_K_M", "--name", f"{name}-q4_k_m"
        )
        after = timed("test", accuracy, f"{name}-q4_k_m", work)
        results[student] = {"before": before, "accuracy": after, "model": f"{name}-q4_k_m"}
        deployed.append(f"{name}-q4_k_m")
    speed = timed("bench", decode_speed, deployed)
    teacher_acc, teacher_tps = results[TEACHER]["accuracy"], speed[TEACHER]
    print()
    print(f"{len(rows)} synthetic tickets labelled by {TEACHER}; test: 60 hand-written tickets")
    print(f"{'model':44} {'before':>7} {'after':>7} {'decode tok/s':>13} {'speedup':>8}")
    print(f"{TEACHER:44} {'':>7} {teacher_acc:7.3f} {teacher_tps:13.1f} {1:8.2f}")
    verdicts = []
    for student, r in results.items():
        if student == TEACHER:
            continue
        tps = speed[r["model"]]
        print(f"{r['model']:44} {r['before']:7.3f} {r['accuracy']:7.3f} {tps:13.1f} "
              f"{tps / teacher_tps:8.2f}")  # fmt: skip
        ok = r["accuracy"] >= teacher_acc - 0.02 and tps >= 2 * teacher_tps
        verdicts.append(f"{student}: {'met' if ok else 'NOT met'}")
    print("target (within 2 points of the teacher at >= 2x decode): " + "; ".join(verdicts))
    print("minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in clock.items()))
    (work / "result.json").write_text(json.dumps({"results": results, "speed": speed}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
