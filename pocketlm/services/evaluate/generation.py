"""Generation tasks: a prompt, the model's greedy answer, scored by exact match, a regular
expression, or a field of a JSON object in the answer.

File: JSONL, one task a line: {"prompt": ..., and one of
  "answer": "Paris"                        exact match (case, surrounding space and
                                           repeated whitespace ignored)
  "regex": "\\\\bParis\\\\b"                   re.search in the answer
  "json_field": "city", "answer": "Paris"  the answer parsed as JSON, field compared
 optional "system", "max_tokens"}
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.progress import NullProgress, Progress


@dataclass(frozen=True)
class GenTask:
    prompt: str
    answer: str | None = None
    regex: str | None = None
    json_field: str | None = None
    system: str | None = None
    max_tokens: int = 64

    @property
    def scorer(self) -> str:
        return "regex" if self.regex else "json" if self.json_field else "exact"


@dataclass
class GenReport:
    n: int
    accuracy: float
    by_scorer: dict[str, float]
    seconds: float
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first few misses

    def to_dict(self) -> dict:
        return asdict(self)


def load_tasks(path: str | Path) -> list[GenTask]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "check the path")
    tasks = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            task = GenTask(**{k: r[k] for k in GenTask.__dataclass_fields__ if k in r})
        except (json.JSONDecodeError, TypeError) as e:
            raise UsageError(f"{path.name} line {n}: not a generation task ({e})") from None
        if not task.prompt or (task.answer is None and task.regex is None):
            raise UsageError(f"{path.name} line {n}: needs 'prompt' and 'answer' or 'regex'")
        if task.regex:
            try:
                re.compile(task.regex)
            except re.error as e:
                raise UsageError(f"{path.name} line {n}: invalid regex ({e})") from None
        tasks.append(task)
    if not tasks:
        raise UsageError(f"{path.name} holds no tasks")
    return tasks


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _json_value(text: str, dotted: str) -> Any:
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def score(task: GenTask, output: str) -> bool:
    if task.regex:
        return re.search(task.regex, output) is not None
    if task.json_field:
        value = _json_value(output, task.json_field)
        return value is not None and _normal(str(value)) == _normal(str(task.answer))
    return _normal(output) == _normal(task.answer or "")


def run_generation(model, tasks: list[GenTask], *, progress: Progress | None = None) -> GenReport:
    """``model``: a pocketlm.services.runtime.LoadedModel. Greedy decoding: deterministic."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    bar = progress.task("generating", len(tasks), unit="items")
    hits: dict[str, list[bool]] = {}
    failures = []
    for task in tasks:
        out = model.generate(
            task.prompt,
            system=task.system,
            temperature=0.0,
            repeat_penalty=1.0,
            max_tokens=task.max_tokens,
        ).text
        ok = score(task, out)
        hits.setdefault(task.scorer, []).append(ok)
        if not ok and len(failures) < 5:
            failures.append(
                {"prompt": task.prompt, "expected": task.answer or task.regex, "got": out}
            )
        bar.advance(1)
    flat = [h for v in hits.values() for h in v]
    return GenReport(
        n=len(flat),
        accuracy=sum(flat) / len(flat),
        by_scorer={k: sum(v) / len(v) for k, v in hits.items()},
        seconds=time.perf_counter() - started,
        failures=failures,
    )
