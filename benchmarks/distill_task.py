"""A narrow task learnt from a teacher: students within reach of the 1.5B model, faster.

Two tasks (``--task``), each with a hand-written, labelled test set held out
(benchmarks/data/tasks/, README.md there):

- ``classify``: support tickets in 5 classes (tickets.jsonl: 60 tickets, 12 a class);
  accuracy. One ticket is 1.7 points.
- ``extract``: a contact record (name, company, email, phone, city) from a signature, a
  note, a business card or a sentence (contacts.jsonl: 30 records, 150 fields); the share
  of fields right (as benchmarks/task_accuracy.py scores them). One field is 0.7 points.

Every step is a pocketlm command as a user would run it:

1. `pocketlm data synth --task`: the teacher writes the task's inputs (an unlabelled
   training set: for tickets, the labels it wrote them for are thrown away; for contacts,
   records of 6 kinds, contact_kinds.txt, shown 3 of the 6 hand-written
   contact_examples.jsonl, none of them from the test set);
2. `pocketlm data curate`: duplicates and near-duplicates dropped, and anything that
   overlaps the test set (decontamination);
3. `pocketlm data label --task classify|extract`: the teacher labels them (its values as it
   wrote them; --grounded-labels: labelled with `--grounded`, a value the record does not
   hold made null. The 0.5B student learnt less from those: 0.793 at F16 against 0.840 and
   0.847 from the plain labels, docs/distill.md);
4. `pocketlm distill`: the Qwen students (the 0.5B; a pruned 0.5B with --students) learn
   the teacher's token distributions on its answers (logits, LoRA); the 135M student
   (another vocabulary) learns its answers (sequence level). Tickets use `--balance` (the
   teacher's labels are skewed, and a student trained on the skew answers the majority
   label). A student the store already holds from the same teacher, data (sha256) and
   recipe is reused (--retrain: train again);
5. `pocketlm quantize STUDENT --type Q4_0 --calibrate LABELLED.jsonl`: the students as they
   would be deployed. Q4_0 because it decodes fastest on this CPU (llama.cpp repacks it
   for AVX2: the 0.5B student at 70 tok/s, 48 at Q4_K_M), calibrated (an importance matrix)
   on the task's own training text because uncalibrated it lost the student 23 points of
   the 0.5B's 85 (Q4_K_M lost 9; docs/distill.md);
6. `pocketlm task` on the test set with the teacher and each student, before, after
   (F16) and deployed, and `pocketlm bench` for decode speed. Contacts are scored with
   `--grounded`, every model alike (teacher included).

Target (issue 16): a student within 2 points of the teacher at >= 2x its decode speed.

    .venv/bin/python benchmarks/distill_task.py --task extract   (about 75 minutes)
    .venv/bin/python benchmarks/distill_task.py --task classify  (about 60 minutes)

Steps 1-3 are cached in --work (synth and label resume): a second run trains again only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import TASK_DATA as DATA  # noqa: E402
from benchmarks._common import same_field  # noqa: E402

TEACHER = "qwen2.5-coder-1.5b-instruct"
PRUNED = "qwen2.5-coder-0.5b-instruct-L12-distilled"  # benchmarks/distill_general.py's


class Task:
    """What differs between the two tasks: data, pocketlm options, scoring, recipes."""

    def __init__(self, name: str):
        self.name = name
        if name == "classify":
            self.test, labels = DATA / "tickets.jsonl", str(DATA / "tickets_labels.txt")
            self.synth = ["--task", TICKETS, "--labels", labels]
            self.options = ["classify", "--labels", labels]
            self.train = ["--seq-len", "384", "--batch-tokens", "64", "--balance"]
            self.curate = ["--min-words", "5"]
            self.lora = ["--lora", "--epochs", "3", "--lr", "3e-4", "--max-minutes", "12"]
            self.full = ["--epochs", "5", "--lr", "1e-4", "--max-minutes", "10"]
        else:
            self.test = DATA / "contacts.jsonl"
            self.synth = ["--task", CONTACTS, "--kinds", str(DATA / "contact_kinds.txt"),
                          "--examples", str(DATA / "contact_examples.jsonl")]  # fmt: skip
            self.options = ["extract", "--schema", str(DATA / "contacts.schema.json"),
                            "--instruction", CONVENTIONS, "--grounded"]  # fmt: skip
            self.train = ["--seq-len", "768", "--batch-tokens", "512"]
            # a signature is a few words, mostly not prose: no word, letter or language filter
            self.curate = ["--min-words", "2", "--skip", "characters,language"]
            self.lora = ["--lora", "--epochs", "2", "--lr", "3e-4", "--max-minutes", "20"]
            self.full = ["--epochs", "3", "--lr", "1e-4", "--max-minutes", "15"]

    def recipe(self, student: str) -> list[str]:
        """The 135M model is trained in full (it is small); the Qwen students with LoRA."""
        return self.full if student.startswith("smollm2") else self.lora

    def score(self, predictions: Path) -> float:
        gold = {r["id"]: r for r in map(json.loads, self.test.read_text().splitlines())}
        pred = {r["id"]: r for r in map(json.loads, predictions.read_text().splitlines())}
        if self.name == "classify":
            return sum(pred.get(i, {}).get("label") == g["label"] for i, g in gold.items()) / len(
                gold
            )
        from pocketlm.services.tasks.extract import null_strings

        schema = json.loads((DATA / "contacts.schema.json").read_text())
        right = total = 0
        for i, g in gold.items():
            # predictions made before `task extract` read "null" strings as null: read so too
            got = null_strings(pred.get(i, {}).get("data") or {}, schema)
            for field, want in g["expected"].items():
                total += 1
                right += same_field(got.get(field), want)
        return right / total


TICKETS = (
    "Write one message that a customer of a smart-home company (cameras, sensors, a mobile "
    "app, subscriptions) sends to its support team."
)
CONTACTS = (
    "Write a short free-text record that gives one invented person's contact details, of the "
    "kind found in an inbox, a notebook or a CRM: the person's name and some of the company "
    "they work for, an email address, a phone number and the city. Leave some of those out. "
    "Invent specific, realistic details (names from many countries, example.com addresses, "
    "555 phone numbers); never write placeholders such as [Your Name]."
)
CONVENTIONS = (
    "Extract the contact details of the person the text is about. name: the person's name "
    "without titles or degrees (Dr., Prof., MD), in normal capitalisation even when the text "
    "is in capitals. phone: written exactly as in the text; a phone, not a fax. city: the "
    "city alone, without state, postcode or country. Nothing is inferred from an email "
    "domain, and a website is not an email address."
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


def trained(name: str, data_sha: str, recipe: list[str]) -> bool:
    """Whether the store holds ``name`` distilled from TEACHER on this data with ``recipe``
    (its manifest records them): then it is not trained again."""
    from pocketlm.store.store import Store

    found = Store().find(name)
    if found is None or found.teacher != TEACHER or found.data_sha256 != data_sha:
        return False
    flags: dict[str, str | bool] = {}
    for i, arg in enumerate(recipe):
        if arg.startswith("--"):
            has_value = i + 1 < len(recipe) and not recipe[i + 1].startswith("--")
            flags[arg] = recipe[i + 1] if has_value else True
    want = {
        "lora": "--lora" in flags,
        "balance": "--balance" in flags,
        "epochs": float(flags.get("--epochs", 0)),
        "lr": float(flags.get("--lr", 0)),
        "seq_len": int(flags.get("--seq-len", 0)),
        "batch_tokens": int(flags.get("--batch-tokens", 0)),
    }
    got = found.recipe or {}
    return all(got.get(k) == v for k, v in want.items())


def accuracy(task: Task, model: str, work: Path) -> float:
    out = work / f"pred-{model}.jsonl"
    out.unlink(missing_ok=True)
    pocketlm("task", task.options[0], str(task.test), *task.options[1:], "--model", model,
             "--out", str(out))  # fmt: skip
    return task.score(out)


def decode_speed(models: list[str]) -> dict[str, float]:
    out = pocketlm(
        "bench", *models, "--prompt-lengths", "128", "--repeat", "3", "--json", capture=True
    )
    return {m["model"]: m["decode"]["tok_per_s"]["median"] for m in json.loads(out)["models"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=("classify", "extract"), default="extract")
    ap.add_argument("--n", type=int, default=300, help="synthetic inputs (300)")
    ap.add_argument("--work", type=Path, help="(default: ~/.cache/pocketlm/distill-TASK)")
    ap.add_argument(
        "--students",
        default="qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct",
        help="store models to distil into, comma-separated (%(default)s; also "
        f"{PRUNED}, from benchmarks/distill_general.py)",
    )
    ap.add_argument("--retrain", action="store_true", help="distil even if the store has it")
    ap.add_argument(
        "--grounded-labels",
        action="store_true",
        help="extract: label with --grounded (a value the record does not hold made null)",
    )
    args = ap.parse_args()
    task = Task(args.task)
    work = args.work or Path.home() / f".cache/pocketlm/distill-{args.task}"
    work.mkdir(parents=True, exist_ok=True)
    clock: dict[str, float] = {}

    def timed(step: str, fn, *a):
        t = time.monotonic()
        out = fn(*a)
        clock[step] = clock.get(step, 0) + (time.monotonic() - t) / 60
        return out

    synth = work / "synth.jsonl"
    resume = ["--resume"] if synth.exists() else []
    timed("synth", pocketlm, "data", "synth", "--teacher", TEACHER, *task.synth, "--n", str(args.n),
          "--max-tokens", "96", "--out", str(synth), *resume)  # fmt: skip
    curated = work / "curated.jsonl"
    curated.unlink(missing_ok=True)
    timed("curate", pocketlm, "data", "curate", str(synth), "--out", str(curated),
          "--decontaminate", str(task.test), *task.curate,
          "--report", str(work / "curate-report.json"))  # fmt: skip
    unlabelled = work / "unlabelled.jsonl"
    rows = [json.loads(line) for line in curated.read_text().splitlines() if line.strip()]
    unlabelled.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    grounded = "--grounded" in task.options and args.grounded_labels
    labelled = work / ("labelled-grounded.jsonl" if grounded else "labelled.jsonl")
    label_options = [o for o in task.options if grounded or o != "--grounded"]
    resume = ["--resume"] if labelled.exists() else []  # the same curated records: reused
    timed("label", pocketlm, "data", "label", str(unlabelled), "--teacher", TEACHER,
          "--task", *label_options, "--out", str(labelled), *resume)  # fmt: skip
    data_sha = hashlib.sha256(labelled.read_bytes()).hexdigest()

    results = {TEACHER: {"accuracy": timed("test", accuracy, task, TEACHER, work)}}
    deployed = [TEACHER]
    for student in args.students.split(","):
        name, deploy = f"{student}-{args.task}", f"{student}-{args.task}-q4_0"
        if exists(deploy):
            pocketlm("rm", deploy)
        before = timed("test", accuracy, task, student, work)
        recipe = [*task.train, *task.recipe(student)]
        if args.retrain or not trained(name, data_sha, recipe):
            if exists(name):
                pocketlm("rm", name)
            timed("distill", pocketlm, "distill", "--teacher", TEACHER, "--student", student,
                  "--data", str(labelled), "--name", name, *recipe, "--restart")  # fmt: skip
        else:
            print(f"reusing {name}: distilled from {TEACHER} on the same data and recipe")
        f16 = timed("test", accuracy, task, name, work)
        timed("quantize", pocketlm, "quantize", name, "--type", "Q4_0", "--calibrate",
              str(labelled), "--decode-tokens", "0", "--name", deploy)  # fmt: skip
        after = timed("test", accuracy, task, deploy, work)
        results[student] = {"before": before, "f16": f16, "accuracy": after, "model": deploy}
        deployed.append(deploy)
    speed = timed("bench", decode_speed, deployed)
    teacher_acc, teacher_tps = results[TEACHER]["accuracy"], speed[TEACHER]
    measure = "accuracy" if args.task == "classify" else "fields right"
    print()
    print(f"{len(rows)} synthetic inputs labelled by {TEACHER}; test: {task.test.name}, {measure}")
    print(f"{'model':42} {'before':>7} {'F16':>7} {'after':>7} {'decode tok/s':>13} {'speedup':>8}")
    print(f"{TEACHER:42} {'':>7} {'':>7} {teacher_acc:7.3f} {teacher_tps:13.1f} {1:8.2f}")
    verdicts = []
    for student, r in results.items():
        if student == TEACHER:
            continue
        tps = speed[r["model"]]
        print(f"{r['model']:42} {r['before']:7.3f} {r['f16']:7.3f} {r['accuracy']:7.3f} "
              f"{tps:13.1f} {tps / teacher_tps:8.2f}")  # fmt: skip
        ok = r["accuracy"] >= teacher_acc - 0.02 and tps >= 2 * teacher_tps
        verdicts.append(f"{student}: {'met' if ok else 'NOT met'}")
    print("target (within 2 points of the teacher at >= 2x decode): " + "; ".join(verdicts))
    print("minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in clock.items()))
    (work / "result.json").write_text(json.dumps({"results": results, "speed": speed}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
