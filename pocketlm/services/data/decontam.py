"""Decontamination: training text that shares a word n-gram with an evaluation set is dropped,
so that a model is not measured on what it was trained on.

The evaluation texts are normalised like the training text (``text.words``) and every
``n``-gram of them (default 13 words, as GPT-3's and Llama's decontamination used) is kept
as a hash. A training text is contaminated when one of its n-grams is among them. An
evaluation text shorter than ``n`` words (a short question) but of at least ``min_words``
is matched whole: the training text contaminated when it holds those words in a row.

By default the evaluation files that come with pocketlm are used: the text quantization
quality reports measure perplexity and KL divergence on (``pocketlm/data/calibration.txt``)
and, in a source checkout, the labelled task sets of ``benchmarks/data/tasks``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.services.data.text import ngrams, words

MAX_FILE_BYTES = 512 << 20  # an evaluation file larger than this is not one
_TEXT_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".md"}


def default_files() -> list[Path]:
    """The evaluation files shipped with pocketlm that exist here."""
    shipped = [Path(str(resources.files("pocketlm") / "data" / "calibration.txt"))]
    tasks = Path(__file__).resolve().parents[3] / "benchmarks" / "data" / "tasks"
    sets = sorted(tasks.glob("*.jsonl")) + sorted(tasks.glob("documents/*.txt"))
    return [p for p in shipped + sets if p.is_file()]


@dataclass
class EvalIndex:
    """The n-grams of the evaluation texts: hash -> index of the file it came from."""

    n: int = 13
    min_words: int = 8
    files: list[str] = field(default_factory=list)
    grams: dict[int, int] = field(default_factory=dict)
    whole: dict[int, dict[int, int]] = field(default_factory=dict)  # length -> hash -> file
    texts: int = 0

    def add(self, text: str, file_index: int) -> None:
        ws = words(text)
        if len(ws) >= self.n:
            for gram in ngrams(ws, self.n):
                self.grams.setdefault(hash(gram), file_index)
        elif len(ws) >= self.min_words:
            self.whole.setdefault(len(ws), {}).setdefault(hash(tuple(ws)), file_index)
        self.texts += 1

    def match(self, ws: list[str]) -> tuple[str, str] | None:
        """(evaluation file, the shared words) for a training text's words, or None."""
        for gram in ngrams(ws, self.n):
            if (i := self.grams.get(hash(gram))) is not None:
                return self.files[i], " ".join(gram)
        for length, table in self.whole.items():
            for gram in ngrams(ws, length):
                if (i := table.get(hash(gram))) is not None:
                    return self.files[i], " ".join(gram)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "n": self.n,
            "texts": self.texts,
            "ngrams": len(self.grams),
            "short_texts": sum(map(len, self.whole.values())),
        }


def build(paths: Iterable[Path], n: int = 13, min_words: int = 8) -> EvalIndex:
    """The index of the evaluation texts in ``paths`` (files or folders of them)."""
    index = EvalIndex(n=n, min_words=min(min_words, n))
    for path in _files(paths):
        index.files.append(str(path))
        for text in _texts(path):
            index.add(text, len(index.files) - 1)
    return index


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in _TEXT_SUFFIXES)
        elif path.is_file():
            if path.stat().st_size > MAX_FILE_BYTES:
                raise UsageError(f"evaluation file {path} is over 512 MiB", "is it the right file?")
            yield path
        else:
            raise UsageError(f"no such evaluation file: {path}", "check the --decontaminate path")


def _texts(path: Path) -> Iterator[str]:
    """The texts of an evaluation file: per JSON record or CSV row its strings one by one
    and joined (a question with its choices); a text file whole."""
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            if suffix in (".jsonl", ".ndjson"):
                for line in f:
                    yield from _record_texts(_json(line))
            elif suffix == ".json":
                yield from _strings(_json(f.read()))
            elif suffix in (".csv", ".tsv"):
                for row in csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","):
                    yield from _record_texts(row)
            else:
                yield f.read()
    except OSError as e:
        raise UsageError(f"cannot read evaluation file {path}: {e.strerror}") from None


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text  # not JSON: its words count as text


def _record_texts(record: Any) -> list[str]:
    strings = list(_strings(record))
    return strings + (["\n".join(strings)] if len(strings) > 1 else [])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
