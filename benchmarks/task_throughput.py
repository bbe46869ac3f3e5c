"""Records per second of `pocketlm task classify` and `extract` against a plain loop that sends
the same prompts one at a time through llama-cpp-python on the same model, and the log
parser's figures on 2,000 lines of its own generator.

    .venv/bin/python benchmarks/task_throughput.py [--model NAME] [--threads N]

The loop is what a user would write with llama-cpp-python: one ``Llama``, then for each
record ``create_chat_completion`` with the task's system prompt and the record (greedy;
classify: the label, up to 8 tokens; extract: ``response_format`` with the JSON Schema,
which llama-cpp-python turns into a grammar). It keeps llama-cpp-python's prefix reuse:
the shared system prompt is not evaluated again. pocketlm runs the same records with the
same instructions through `pocketlm task` (label scoring; 8 sequences decoded together).
Times cover the records only (each model loaded before it is timed); the sides alternate for
``--rounds`` rounds and each keeps its best. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import TASK_DATA, jsonl, machine_load, threads  # noqa: E402
from pocketlm.services.tasks import classify as cls  # noqa: E402
from pocketlm.services.tasks import extract as ext  # noqa: E402
from pocketlm.services.tasks import loggen  # noqa: E402
from pocketlm.services.tasks.engine import TaskEngine  # noqa: E402
from pocketlm.services.tasks.job import run_job  # noqa: E402
from pocketlm.services.tasks.records import Record  # noqa: E402

DATA = TASK_DATA


def plain_loop(llm, system: str, texts: list[str], **kwargs) -> tuple[list[str], float]:
    answers = []
    started = time.perf_counter()
    for text in texts:
        out = llm.create_chat_completion(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            temperature=0.0,
            **kwargs,
        )
        answers.append(out["choices"][0]["message"]["content"])
    return answers, time.perf_counter() - started


def ours(work, texts: list[str], parallel: int) -> tuple[list[dict], float]:
    results: list[dict] = []
    started = time.perf_counter()
    run_job([Record(i, t, {}) for i, t in enumerate(texts, 1)], work, results.append,
            workers=2 * parallel)  # fmt: skip
    return results, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--threads", type=int, default=threads())
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    args = ap.parse_args()
    from llama_cpp import Llama

    from pocketlm.store.refs import resolve

    path = str(resolve(args.model, pull_missing=True).path)
    tickets = jsonl(DATA / "tickets.jsonl")
    contacts = jsonl(DATA / "contacts.jsonl")
    labels = cls.parse_labels(str(DATA / "tickets_labels.txt"))
    schema = ext.load_schema(DATA / "contacts.schema.json")
    print(f"model {args.model}, {args.threads} threads; {machine_load()}")

    texts_c = [t["text"] for t in tickets]
    texts_e = [c["text"] for c in contacts]
    # Rounds alternate the two sides, so that a machine that slows down for a while (a
    # shared host) slows both; each side's best round is kept. One model is loaded at a
    # time: with the task engine still loaded, the loop ran 30% slower.
    secs: dict[str, list[float]] = {
        k: [] for k in ("ours_c", "base_c", "read_c", "ours_e", "base_e")
    }
    for r in range(args.rounds):
        engine = TaskEngine(path, n_seq=args.parallel, n_ctx_seq=4096, threads=args.threads)
        try:
            classifier = cls.Classifier(engine, labels)
            extractor = ext.Extractor(engine, schema)
            got_c, t = ours(classifier, texts_c, args.parallel)
            secs["ours_c"].append(t)
            got_e, t = ours(extractor, texts_e, args.parallel)
            secs["ours_e"].append(t)
        finally:
            engine.close()
        llm = Llama(path, n_ctx=4096, n_threads=args.threads, n_batch=512, verbose=False)
        base_c_answers, t = plain_loop(llm, classifier.system, texts_c, max_tokens=8)
        secs["base_c"].append(t)
        # The same loop stopped at its first token: it reads each record and draws from the
        # logits that reading gives, with no decoding step. What any classifier must do.
        secs["read_c"].append(plain_loop(llm, classifier.system, texts_c, max_tokens=1)[1])
        base_e_answers, t = plain_loop(
            llm,
            extractor.system,
            texts_e,
            max_tokens=512,
            response_format={"type": "json_object", "schema": schema},
        )
        secs["base_e"].append(t)
        llm.close()
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in secs.items()))
    ours_c, base_c, read_c, ours_e, base_e = (min(v) for v in secs.values())
    acc_ours = sum(g["label"] == t["label"] for g, t in zip(got_c, tickets)) / len(tickets)
    acc_base = sum(
        a.strip().lower().startswith(t["label"]) for a, t in zip(base_c_answers, tickets)
    ) / len(tickets)
    print()
    print("| task | records | pocketlm task rec/s | plain llama-cpp-python loop rec/s | ratio |")
    print("|---|---|---|---|---|")
    for name, n, a, b in [
        ("classify", len(texts_c), ours_c, base_c),
        ("extract", len(texts_e), ours_e, base_e),
    ]:
        print(f"| {name} | {n} | {n / a:.2f} | {n / b:.2f} | {b / a:.2f}x |")
    print(
        f"\nclassify, the loop stopped at its first token (reading the records, no decoding "
        f"step): {read_c:.1f} s; a classifier that read them as fast and did nothing else "
        f"would be {base_c / read_c:.2f}x the loop"
    )
    print(f"classify accuracy on the tickets: pocketlm {acc_ours:.3f}, loop {acc_base:.3f}")
    valid = sum(_valid_json(a) for a in base_e_answers)
    failed = sum("error" in g for g in got_e)
    print(f"extract: loop {valid}/{len(texts_e)} valid JSON; pocketlm {failed} failed")
    print()
    logs(path, args.threads)
    return 0


def _valid_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def logs(path: str, n_threads: int) -> None:
    from pocketlm.services.tasks.logs import LogMiner, grouping_accuracy, template_accuracy
    from pocketlm.services.tasks.streams import LazyEngine, template_asker

    pairs = loggen.generate(2000, seed=0)
    for label, with_model in (("rules only (Drain)", False), ("with the model", True)):
        engine = (
            TaskEngine(path, n_seq=8, n_ctx_seq=2048, threads=n_threads) if with_model else None
        )
        try:
            miner = LogMiner(ask=template_asker(LazyEngine(lambda: engine), 8) if engine else None)
            started = time.perf_counter()
            parsed = list(miner.parse(line for line, _ in pairs))
            secs = time.perf_counter() - started
        finally:
            if engine:
                engine.close()
        final = {t.id: t.text for t in miner.cache}
        pred, true = [final[p.template_id] for p in parsed], [t for _, t in pairs]
        print(
            f"logs, 2,000 generated lines, {label}: grouping accuracy "
            f"{grouping_accuracy(pred, true):.3f}, template accuracy "
            f"{template_accuracy(pred, true):.3f}, {miner.model_calls / 2:.1f} model calls "
            f"per 1,000 lines, {secs / 2:.2f} s per 1,000 lines"
        )


if __name__ == "__main__":
    raise SystemExit(main())
