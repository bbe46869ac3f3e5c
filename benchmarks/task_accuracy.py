"""Accuracy and speed of each `pocketlm task` on its own labelled test files, per ladder model.

    .venv/bin/python benchmarks/task_accuracy.py [--models A,B] [--tasks classify,emails,...]
        [--json results.json]

Test files (benchmarks/data/tasks/, see its README): 60 support tickets (classify, 5
labels), 30 contact records (extract, a 5-field schema), 48 emails (triage: category,
priority, needs_reply, spam), 6 documents (summarize: share of key facts the summary
keeps), a 2,000-line log from pocketlm's generator (logs: grouping and template accuracy
as Loghub-2.0 defines them) and an auth log with a known attack (security: expected events
found, and stray events). Models come from the store (`pocketlm pull` them first). Prints a
Markdown table (the one in docs/tasks.md); run it on a quiet machine, since it also
reports records per second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import TASK_DATA, jsonl, same_field  # noqa: E402
from pocketlm.services.tasks import authgen, loggen  # noqa: E402
from pocketlm.services.tasks.engine import TaskEngine  # noqa: E402
from pocketlm.services.tasks.job import run_job  # noqa: E402
from pocketlm.services.tasks.records import Record, read_records  # noqa: E402

DATA = TASK_DATA
LADDER = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
TASKS = ["classify", "extract", "emails", "summarize", "logs", "security"]


def run_records(work, records: list[Record], parallel: int = 8) -> tuple[list[dict], float]:
    results: list[dict] = []
    started = time.perf_counter()
    run_job(records, work, results.append, workers=2 * parallel)
    return results, time.perf_counter() - started


def classify(engine: TaskEngine) -> dict:
    from pocketlm.services.tasks.classify import Classifier, parse_labels

    rows = jsonl(DATA / "tickets.jsonl")
    work = Classifier(engine, parse_labels(str(DATA / "tickets_labels.txt")))
    records = [Record(r["id"], r["text"], {}) for r in rows]
    out, secs = run_records(work, records)
    right = sum(o.get("label") == r["label"] for o, r in zip(out, rows))
    return {"accuracy": right / len(rows), "n": len(rows), "records_per_s": len(rows) / secs}


def extract(engine: TaskEngine) -> dict:
    from pocketlm.services.tasks.extract import Extractor, load_schema

    rows = jsonl(DATA / "contacts.jsonl")
    work = Extractor(engine, load_schema(DATA / "contacts.schema.json"))
    records = [Record(r["id"], r["text"], {}) for r in rows]
    out, secs = run_records(work, records)
    fields = right_fields = exact = failed = 0
    for o, r in zip(out, rows):
        got = o.get("data")
        failed += got is None
        same = [same_field(got.get(k) if got else None, v) for k, v in r["expected"].items()]
        fields += len(same)
        right_fields += sum(same)
        exact += all(same)
    return {
        "field_accuracy": right_fields / fields,
        "record_exact": exact / len(rows),
        "failed": failed,
        "n": len(rows),
        "records_per_s": len(rows) / secs,
    }


def emails(engine: TaskEngine, calibrate: bool = True) -> dict:
    from pocketlm.services.tasks.emails import EmailTriage

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "emails.jsonl"
        rows = jsonl(DATA / "emails.jsonl")
        path.write_text("\n".join(json.dumps({"id": r["id"], "raw": r["raw"]}) for r in rows))
        records = list(read_records(path, email=True))
    work = EmailTriage(engine, calibrate=calibrate)
    out, secs = run_records(work, records)
    result = {"n": len(rows), "records_per_s": len(rows) / secs}
    for key in ("category", "priority", "needs_reply", "spam"):
        result[key] = sum(o.get(key) == r[key] for o, r in zip(out, rows)) / len(rows)
    tp = sum(bool(o.get("spam")) and r["spam"] for o, r in zip(out, rows))
    fp = sum(bool(o.get("spam")) and not r["spam"] for o, r in zip(out, rows))
    fn = sum(not o.get("spam") and r["spam"] for o, r in zip(out, rows))
    result["spam_f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
    return result


def summarize(engine: TaskEngine) -> dict:
    from pocketlm.services.tasks.summarize import Summarizer

    facts = json.loads((DATA / "documents" / "keypoints.json").read_text())
    records = [Record(name, (DATA / "documents" / name).read_text(), {}) for name in sorted(facts)]
    work = Summarizer(engine, length="4-6 sentences", max_tokens=300)
    out, secs = run_records(work, records)
    kept = total = 0
    for o, rec in zip(out, records):
        summary = _plain(o.get("summary", ""))
        kept += sum(_plain(f) in summary for f in facts[rec.id])
        total += len(facts[rec.id])
    return {"key_facts": kept / total, "n": len(records), "records_per_s": len(records) / secs}


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace(",", ""))


def logs(engine: TaskEngine | None) -> dict:
    from pocketlm.services.tasks.logs import LogMiner, grouping_accuracy, template_accuracy
    from pocketlm.services.tasks.streams import LazyEngine, template_asker

    pairs = loggen.generate(2000, seed=0)
    ask = template_asker(LazyEngine(lambda: engine), 8) if engine else None
    miner = LogMiner(ask=ask)
    started = time.perf_counter()
    parsed = list(miner.parse(line for line, _ in pairs))
    secs = time.perf_counter() - started
    final = {t.id: t.text for t in miner.cache}
    pred = [final[p.template_id] for p in parsed]
    true = [t for _, t in pairs]
    return {
        "grouping_accuracy": grouping_accuracy(pred, true),
        "template_accuracy": template_accuracy(pred, true),
        "model_calls_per_1000": 1000 * miner.model_calls / len(pairs),
        "seconds_per_1000": 1000 * secs / len(pairs),
    }


def security(engine: TaskEngine | None) -> dict:
    from pocketlm.services.tasks.security import SecurityAnalyzer
    from pocketlm.services.tasks.streams import LazyEngine, line_classifier

    found = expected = stray = 0
    for seed in (0, 1, 7):
        lines, truth = authgen.generate(seed=seed)
        classify = line_classifier(LazyEngine(lambda: engine)) if engine else None
        analyzer = SecurityAnalyzer(classify=classify)
        for n, text in enumerate(lines, 1):
            analyzer.feed(n, text)
        events = analyzer.finish()
        keys = {(e.type, e.source_ip, e.user) for e in events}
        want = {(t["type"], t["source_ip"], t["user"]) for t in truth}
        found += len(want & keys)
        expected += len(want)
        known = {n for t in truth for n in t["lines"]}
        stray += sum(not known.intersection(e.lines) for e in events)  # lines of no true event
    return {"events_found": found / expected, "stray_events": stray, "logs": 3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(LADDER))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--no-calibrate", action="store_true", help="emails without calibration")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    for model in args.models.split(","):
        engine = TaskEngine(model, n_seq=8, n_ctx_seq=4096)
        try:
            for task in args.tasks.split(","):
                started = time.perf_counter()
                if task == "emails":
                    r = emails(engine, calibrate=not args.no_calibrate)
                else:
                    r = globals()[task](engine)
                r["seconds"] = time.perf_counter() - started
                results.setdefault(task, {})[model] = r
                print(f"{model} {task}: {json.dumps(_rounded(r))}", flush=True)
        finally:
            engine.close()
    for task in ("logs", "security"):
        if task in args.tasks.split(","):
            results.setdefault(task, {})["(rules only)"] = globals()[task](None)
            print(f"(rules only) {task}: {json.dumps(_rounded(results[task]['(rules only)']))}")
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def table(results: dict[str, dict]) -> str:
    rows = ["| task | measure | " + " | ".join(_models(results)) + " |"]
    rows.append("|---|---|" + "---|" * len(_models(results)))
    for task, per_model in results.items():
        measures = [k for k in next(iter(per_model.values())) if k not in ("n", "logs")]
        for m in measures:
            cells = [_cell(per_model.get(model, {}).get(m)) for model in _models(results)]
            rows.append(f"| {task} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _models(results: dict[str, dict]) -> list[str]:
    seen: list[str] = []
    for per_model in results.values():
        seen += [m for m in per_model if m not in seen]
    return seen


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    raise SystemExit(main())
