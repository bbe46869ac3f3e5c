"""Multiple-choice benchmark files in the layouts people have on disk.

Every reader yields ``MCItem``s: a context and its choices (continuations) as
lm-evaluation-harness builds them for that task, and the index of the right choice.

- ``jsonl``: {"question" or "context", "choices": [...], "answer": index | choice text | letter}
  ("question" is asked as "Question: ...\\nAnswer:" with " choice" continuations; "context"
  is used verbatim, choices too)
- ``piqa``: PIQA's own JSONL ({"goal", "sol1", "sol2"}) plus a labels file, one 0/1 a line
- ``hellaswag``: HellaSwag JSONL ({"activity_label", "ctx_a", "ctx_b", "endings", "label"})
- ``arc``: ARC JSONL, AI2's ({"question": {"stem", "choices": [{"text", "label"}]},
  "answerKey"}) or Hugging Face's ({"question", "choices": {"text", "label"}, "answerKey"})
- ``mmlu``: MMLU CSV (question, A, B, C, D, answer letter; no header)
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pocketlm.errors import UsageError, option

FORMATS = ("jsonl", "piqa", "hellaswag", "arc", "mmlu")


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: tuple[str, ...]
    answer: int
    preamble: str = ""  # said once before any few-shot examples (MMLU's subject line)

    def example(self) -> str:
        """This item with its right answer, as a few-shot example."""
        return self.context + self.choices[self.answer]


def detect_format(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "mmlu"
    first = _first_record(path)
    if {"goal", "sol1", "sol2"} <= first.keys():
        return "piqa"
    if "endings" in first and ("ctx" in first or "ctx_a" in first):
        return "hellaswag"
    if "answerKey" in first:
        return "arc"
    if "choices" in first:
        return "jsonl"
    raise UsageError(
        f"cannot tell the layout of {path.name} (fields: {', '.join(first)})",
        f"pass {option('format')}, one of {', '.join(FORMATS)}",
    )


def load(
    path: str | Path, fmt: str | None = None, labels: str | Path | None = None
) -> list[MCItem]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "check the path")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    reader = {
        "jsonl": _generic,
        "piqa": _piqa,
        "hellaswag": _hellaswag,
        "arc": _arc,
        "mmlu": _mmlu,
    }[fmt]
    items = list(reader(path, labels) if fmt == "piqa" else reader(path))
    if not items:
        raise UsageError(f"{path.name} holds no items")
    return items


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UsageError(f"{path.name} line {n} is not JSON ({e.msg})") from None
                    if not isinstance(record, dict):
                        raise UsageError(f"{path.name} line {n} is not a JSON object")
                    yield n, record
    except UnicodeDecodeError:
        raise UsageError(f"{path.name} is not UTF-8 text") from None


def _first_record(path: Path) -> dict:
    for _, record in _records(path):
        return record
    raise UsageError(f"{path.name} holds no items")


def _field(path: Path, n: int, record: dict, *names: str):
    for name in names:
        if name in record:
            return record[name]
    raise UsageError(f"{path.name} line {n} has no '{names[0]}' field")


def _answer_index(path: Path, n: int, answer, choices, labels=None) -> int:
    if isinstance(answer, bool) or answer is None:
        raise UsageError(f"{path.name} line {n}: invalid answer {answer!r}")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit() and not labels):
        index = int(answer)
    elif labels and answer in labels:
        index = list(labels).index(answer)
    elif isinstance(answer, str) and answer in choices:
        index = list(choices).index(answer)
    elif isinstance(answer, str) and len(answer) == 1 and answer.upper() in "ABCDEFGHIJ":
        index = "ABCDEFGHIJ".index(answer.upper())
    else:
        raise UsageError(f"{path.name} line {n}: answer {answer!r} matches no choice")
    if not 0 <= index < len(choices):
        raise UsageError(f"{path.name} line {n}: answer {answer!r} is out of range")
    return index


def _generic(path: Path) -> Iterator[MCItem]:
    for n, r in _records(path):
        choices = _field(path, n, r, "choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise UsageError(f"{path.name} line {n}: 'choices' must be a list of 2 or more")
        answer = _answer_index(path, n, _field(path, n, r, "answer", "label", "gold"), choices)
        if "question" in r:
            yield MCItem(
                f"Question: {r['question']}\nAnswer:", tuple(f" {c}" for c in choices), answer
            )
        else:
            yield MCItem(str(_field(path, n, r, "context")), tuple(map(str, choices)), answer)


def _piqa(path: Path, labels: str | Path | None) -> Iterator[MCItem]:
    label_list = None
    if labels is not None:
        lines = Path(labels).read_text(encoding="utf-8").split()
        if any(x not in ("0", "1") for x in lines):
            raise UsageError(f"{Path(labels).name}: PIQA labels must be 0 or 1, one a line")
        label_list = [int(x) for x in lines]
    records = list(_records(path))
    if label_list is None and not all("label" in r for _, r in records):
        raise UsageError(
            f"{path.name} has no labels", f"pass the labels file: {option('labels', 'FILE')}"
        )
    if label_list is not None and len(label_list) != len(records):
        raise UsageError(
            f"{len(label_list)} labels for {len(records)} PIQA items",
            "give the labels file that belongs to this split",
        )
    for i, (n, r) in enumerate(records):
        goal = _field(path, n, r, "goal")
        sols = (f" {_field(path, n, r, 'sol1')}", f" {_field(path, n, r, 'sol2')}")
        label = label_list[i] if label_list is not None else int(r["label"])
        yield MCItem(f"Question: {goal}\nAnswer:", sols, label)


def _hellaswag_clean(text: str) -> str:  # lm-evaluation-harness's preprocess
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(path: Path) -> Iterator[MCItem]:
    for n, r in _records(path):
        ctx = r["ctx_a"] + " " + r.get("ctx_b", "").capitalize() if "ctx_a" in r else r["ctx"]
        query = _hellaswag_clean(r.get("activity_label", "") + ": " + ctx)
        endings = _field(path, n, r, "endings")
        label = _answer_index(path, n, _field(path, n, r, "label"), endings)
        yield MCItem(query, tuple(" " + _hellaswag_clean(e) for e in endings), label)


def _arc(path: Path) -> Iterator[MCItem]:
    for n, r in _records(path):
        q = _field(path, n, r, "question")
        if isinstance(q, dict):  # AI2's layout
            stem, raw = q["stem"], q["choices"]
            texts, labels = [c["text"] for c in raw], [c["label"] for c in raw]
        else:  # Hugging Face's
            stem, texts, labels = q, r["choices"]["text"], r["choices"]["label"]
        answer = _answer_index(path, n, str(_field(path, n, r, "answerKey")), texts, labels)
        yield MCItem(f"Question: {stem}\nAnswer:", tuple(f" {t}" for t in texts), answer)


def _mmlu(path: Path) -> Iterator[MCItem]:
    subject = re.sub(r"_(test|val|dev)$", "", path.stem).replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if len(row) != 6:
                    raise UsageError(f"{path.name} row {n}: expected question,A,B,C,D,answer")
                q, a, b, c, d, answer = row
                context = f"{q.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"
                index = _answer_index(path, n, answer.strip(), [" A", " B", " C", " D"])
                yield MCItem(context, (" A", " B", " C", " D"), index, preamble=head)
    except UnicodeDecodeError:
        raise UsageError(f"{path.name} is not UTF-8 text") from None
