"""`pocketlm data curate`: a JSONL file of training records, cleaned, with a report of what
was dropped and why.

Each record's text goes through, in order (the first that fails names the reason):
quality filters (``quality``), decontamination against evaluation sets (``decontam``),
exact duplicates (the same normalised words as an earlier kept record), near duplicates
(MinHash LSH from ``datasketch``: estimated Jaccard similarity of word 5-gram shingles at
least 0.8 with an earlier kept record, 128 permutations). The first of each group of
duplicates is the one kept.

The input is read a line at a time and kept lines are written as they were read (every
field, input order); memory holds a 16-byte fingerprint and the LSH index entries of each
kept record, not the records. The output appears only when the run ends well (written
beside it, then renamed).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.data import decontam, quality
from pocketlm.services.data.text import digest, shingles, words

STAGES = ("exact", "near", *quality.CHECKS, "contamination")  # what --skip may name
EXAMPLES = 3  # per reason, in the report
EXAMPLE_CHARS = 200


@dataclass(frozen=True)
class Settings:
    field: str = "text"
    near_threshold: float = 0.8  # estimated Jaccard similarity of shingle sets
    num_perm: int = 128  # MinHash permutations
    shingle: int = 5  # words per shingle
    ngram: int = 13  # words per decontamination n-gram
    rules: quality.Rules = quality.Rules()
    skip: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(self.skip - set(STAGES))
        if unknown:
            raise UsageError(
                f"unknown stage {', '.join(unknown)}", f"skip some of: {', '.join(STAGES)}"
            )
        if not 0 < self.near_threshold <= 1:
            raise UsageError(f"invalid near-duplicate threshold {self.near_threshold}", "0..1")
        for name in ("num_perm", "shingle", "ngram"):
            if getattr(self, name) < 1:
                raise UsageError(f"invalid {name} {getattr(self, name)}", "must be at least 1")


@dataclass
class Report:
    input: str
    output: str
    settings: dict[str, Any]
    decontamination: dict[str, Any] | None = None
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0

    def drop(self, reason: str, line: int, record: Any, text: str, detail: str) -> None:
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            rid = record.get("id") if isinstance(record, dict) else None
            cut = text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"
            shown.append({"line": line, "id": rid, "text": cut, "why": detail})

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(self.dropped.most_common()),
            "examples": self.examples,
            "settings": self.settings,
            "decontamination": self.decontamination,
            "seconds": round(self.seconds, 3),
        }


def curate(
    src: Path,
    out: Path,
    settings: Settings = Settings(),
    eval_files: list[Path] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Write the records of ``src`` that pass every stage to ``out``; the report says what
    was dropped and why. ``eval_files``: None for pocketlm's own (``decontam.default_files``)."""
    started = time.perf_counter()
    _check_input(src, out, settings.field)
    index = None
    if "contamination" not in settings.skip:
        files = decontam.default_files() if eval_files is None else eval_files
        index = decontam.build(files, n=settings.ngram)
    report = Report(str(src), str(out), _settings_dict(settings), index and index.to_dict())
    sieve = _Sieve(settings, index, report)
    task = (progress or NullProgress()).task("curate", _count_lines(src), unit="records")
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for n, line, record in _records(src, report):
                task.advance(1)
                if sieve.keep(n, record):
                    f.write(line if line.endswith("\n") else line + "\n")
                    report.kept += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - started
    return report


def _settings_dict(s: Settings) -> dict[str, Any]:
    return {
        "field": s.field,
        "near_duplicates": {
            "method": "MinHash LSH (datasketch)",
            "threshold": s.near_threshold,
            "num_perm": s.num_perm,
            "shingle_words": s.shingle,
        },
        "decontamination_ngram": s.ngram,
        "quality": dict(s.rules.__dict__),
        "skipped": sorted(s.skip),
    }


class _Sieve:
    """The stages, and what they remember of the records kept so far: a fingerprint each
    (exact duplicates) and the MinHash LSH index (near duplicates)."""

    def __init__(self, settings: Settings, index: decontam.EvalIndex | None, report: Report):
        from datasketch import MinHash, MinHashLSH

        self.s, self.index, self.report = settings, index, report
        self.seen: dict[bytes, int] = {}  # fingerprint -> line kept
        try:
            self.lsh = MinHashLSH(threshold=settings.near_threshold, num_perm=settings.num_perm)
        except ValueError as e:  # too few permutations for the threshold's bands
            raise UsageError(
                f"no LSH for threshold {settings.near_threshold} with {settings.num_perm} "
                f"permutations ({e})",
                "lower --near-threshold or raise --num-perm",
            ) from None
        self._empty = MinHash(num_perm=settings.num_perm, seed=1)  # its permutations: once

    def keep(self, n: int, record: dict[str, Any]) -> bool:
        s, drop = self.s, self.report.drop
        text = _text(record, s.field)
        if text is None:
            drop("no_text", n, record, json.dumps(record), f"no text in the '{s.field}' field")
            return False
        if verdict := quality.check(text, s.rules, s.skip):
            drop(verdict[0], n, record, text, verdict[1])
            return False
        ws = words(text)
        if self.index is not None and (hit := self.index.match(ws)):
            drop("contaminated", n, record, text, f"{hit[1]!r} is in {Path(hit[0]).name}")
            return False
        key = digest(ws)
        if "exact" not in s.skip:
            if key in self.seen:
                drop("exact_duplicate", n, record, text, f"same as line {self.seen[key]}")
                return False
            self.seen[key] = n
        if "near" not in s.skip:
            m = self._empty.copy()
            m.update_batch(shingles(ws, s.shingle))
            if similar := self.lsh.query(m):
                drop("near_duplicate", n, record, text, f"like line {min(similar)}")
                return False
            self.lsh.insert(n, m)
        return True


# -- reading --------------------------------------------------------------------------------


def _check_input(src: Path, out: Path, field_name: str) -> None:
    """A missing, empty or non-JSONL input, or one where no record has text in
    ``field_name``, fails here, before anything is written (read up to the first usable
    record: usually the first line)."""
    if not src.is_file():
        what = "is a folder, not a file" if src.is_dir() else "does not exist"
        raise UsageError(f"{src} {what}", "give a JSONL file of records")
    if out.exists() and out.resolve() == src.resolve():
        raise UsageError("--out is the input file", "write the curated records to a new file")
    if not out.parent.is_dir():
        raise UsageError(f"no such directory: {out.parent}", "create it first")
    first = None
    with src.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            record = _json(line)
            if first is None and not isinstance(record, dict):
                raise UsageError(
                    f"{src} is not JSONL: its first line is not a JSON object",
                    'give one JSON object per line, e.g. {"text": "..."}',
                )
            first = first or record
            if isinstance(record, dict) and _text(record, field_name):
                return
    if first is None:
        raise UsageError(f"{src} is empty", "give a JSONL file with one record per line")
    raise UsageError(
        f"no record of {src} has text in the '{field_name}' field (the first has: "
        f"{', '.join(list(first)[:10]) or 'no fields'})",
        "name the field that holds the text with --field",
    )


def _text(record: dict[str, Any], field_name: str) -> str | None:
    text = record.get(field_name)
    return text if isinstance(text, str) and text.strip() else None


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _records(src: Path, report: Report) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, line, record) of each non-empty line; a line that is not a JSON object
    is dropped as ``not_json``."""
    with src.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.read += 1
            record = _json(line)
            if isinstance(record, dict):
                yield n, line, record
            else:
                report.drop("not_json", n, None, line.strip(), "not a JSON object")


def _count_lines(src: Path) -> int:
    from pocketlm.services.tasks.records import count_lines

    return count_lines(src)
