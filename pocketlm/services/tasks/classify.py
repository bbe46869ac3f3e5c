"""`pocketlm task classify`: a label for each record, with the probability of every label.

The probabilities come from scoring, not from free generation: the model reads the
instructions, the examples and the record once, and the log-likelihood of each label's
tokens as its answer (followed by the end of the answer, so that a label that begins
another is told apart) is computed in the same pass, as multiple-choice benchmarks do. A
softmax over the labels gives ``probs``; the answer is the likeliest label.

Calibration (``calibrate=True``): small models prefer some labels whatever the input
(the first listed, the shortest). Contextual calibration (Zhao et al., 2021) measures that
preference on a content-free input ("N/A") and divides it out of every record's
probabilities before they are renormalised.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pocketlm.errors import UsageError
from pocketlm.services.tasks.engine import TaskEngine
from pocketlm.services.tasks.records import Record

MAX_LABELS = 100
MAX_LABELS_BYTES = 256 * 1024  # 100 labels with a long description each
MAX_EXAMPLES = 64
CONTENT_FREE = "N/A"


@dataclass(frozen=True)
class Label:
    name: str
    description: str = ""


def parse_labels(spec: str) -> list[Label]:
    """``A,B,C``, or a file: one label per line (``name: description``), or JSON (a list of
    names, of {"name", "description"} objects, or a {name: description} object)."""
    if names_file(spec):
        labels = _labels_file(Path(spec).expanduser())
    else:
        labels = [Label(x.strip()) for x in spec.split(",") if x.strip()]
    names = [label.name for label in labels]
    if len(labels) < 2:
        raise UsageError(
            f"a classification needs at least 2 labels, got {len(labels)}",
            "give --labels A,B,C or a labels file (one 'name: description' per line)",
        )
    if len(labels) > MAX_LABELS:
        raise UsageError(f"{len(labels)} labels; at most {MAX_LABELS}", "group them")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"labels given twice: {', '.join(dup)}", "give each label once")
    return labels


def names_file(spec: str) -> bool:
    """Whether an ``A,B,C``-or-a-file option names a file (a long list is not a path)."""
    try:
        return Path(spec).expanduser().is_file()
    except OSError:  # a name too long for the file system: a list
        return False


def _labels_file(path: Path) -> list[Label]:
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise UsageError(
            f"{path} is larger than {MAX_LABELS_BYTES // 1024} KiB", "give at most 100 labels"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UsageError(f"{path} is not valid JSON: {e}", "fix the labels file") from None
        if isinstance(data, dict):
            return [Label(str(k), str(v)) for k, v in data.items()]
        if isinstance(data, list):
            return [
                Label(str(x["name"]), str(x.get("description", "")))
                if isinstance(x, dict) and "name" in x
                else Label(str(x))
                for x in data
            ]
        raise UsageError(f"{path}: expected a list or an object of labels", "fix the labels file")
    labels = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, desc = line.partition(":")
            labels.append(Label(name.strip(), desc.strip()))
    return labels


def load_examples(path: Path, labels: Sequence[Label]) -> list[tuple[str, str]]:
    """(text, label) pairs from a JSONL file ({"text", "label"}) or a CSV file with
    ``text`` and ``label`` columns; every label must be one of ``labels``."""
    names = {label.name for label in labels}
    pairs = []
    for n, row in example_rows(path):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or label not in names:
            raise UsageError(
                f"{path} example {n}: needs a 'text' and a 'label' from: {', '.join(names)}",
                "fix the examples file",
            )
        pairs.append((text, label))
    return pairs


def example_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(number, row) of an examples file: JSONL objects, or a CSV file's rows (by header);
    at most ``MAX_EXAMPLES``."""
    if not path.is_file():
        raise UsageError(f"no such file: {path}", "give --examples a JSONL or CSV file")
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = csv.DictReader(f) if path.suffix.lower() == ".csv" else _jsonl(f, path)
        for n, row in enumerate(rows, 1):
            if n > MAX_EXAMPLES:
                raise UsageError(f"{path}: more than {MAX_EXAMPLES} examples", "keep the best")
            yield n, row


def _jsonl(f, path: Path) -> Iterator[dict]:
    for n, line in enumerate(f, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise UsageError(f"{path} line {n} is not a JSON object", "fix the examples file")
            yield row


def instructions(labels: Sequence[Label], task: str | None = None) -> str:
    lines = [task or "Classify the text into exactly one of these labels."]
    for label in labels:
        lines.append(f"- {label.name}" + (f": {label.description}" if label.description else ""))
    lines.append("Answer with the label only.")
    return "\n".join(lines)


class Classifier:
    """Scores ``labels`` as the answer for each record's text (see the module docstring)."""

    def __init__(
        self,
        engine: TaskEngine,
        labels: Sequence[Label],
        *,
        examples: Sequence[tuple[str, str]] = (),
        task: str | None = None,
        calibrate: bool = False,
    ):
        self.engine = engine
        self.labels = list(labels)
        self.system = instructions(labels, task)
        self.examples = list(examples)
        self._choices = engine.label_tokens([label.name for label in labels])
        self._longest = max(map(len, self._choices.continuations))
        self._prior: list[float] | None = None
        self._room = engine.n_ctx_seq - len(engine.prompt(self.messages(""))) - self._longest - 8
        engine.cache_prefix(self._shared_prefix())
        if calibrate:
            self._prior = self.probabilities(CONTENT_FREE)[0]

    def messages(self, text: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}]
        for ex_text, ex_label in self.examples:
            msgs += [
                {"role": "user", "content": ex_text},
                {"role": "assistant", "content": ex_label},
            ]
        return msgs + [{"role": "user", "content": text}]

    def _shared_prefix(self) -> list[int]:
        a, b = self.engine.prompt(self.messages("a")), self.engine.prompt(self.messages("b"))
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return a[:n]

    def probabilities(self, text: str) -> tuple[list[float], bool]:
        """(probability of each label, whether the text was cut to fit the context)."""
        text, cut = self._fit(text)
        prompt = self.engine.prompt(self.messages(text))
        logprobs = self.engine.score(prompt, self._choices.continuations)
        return self._choices.probs(logprobs, self._prior), cut

    def _fit(self, text: str) -> tuple[str, bool]:
        """The text, its end cut off when the record would not fit the scorer's context."""
        tokens = self.engine.tokenize(text)
        if len(tokens) <= self._room:
            return text, False
        return self.engine.detokenize(tokens[: max(self._room, 1)]), True

    def __call__(self, record: Record) -> dict:
        probs, cut = self.probabilities(record.text)
        best = max(range(len(probs)), key=probs.__getitem__)
        out = {
            "label": self.labels[best].name,
            "probs": {label.name: round(p, 4) for label, p in zip(self.labels, probs)},
        }
        if cut:
            out["truncated"] = True
        return out
