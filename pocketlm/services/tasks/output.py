"""A job's output file: one line per record, whole lines only, resumable.

JSONL (the default) or CSV. Each record's line is written in one call and flushed, so an
interrupted run (Ctrl-C arrives between Python operations, not inside a write) leaves whole
lines; a line cut short by a crash or a full disk is removed when the run resumes, and its
record is done again. Results are in input order, one per record, so resuming skips as many
records as there are lines, checking that their ids are the ones written (the same input).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from pocketlm.errors import UsageError

FORMATS = ("jsonl", "csv")


def output_format(path: Path | None, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(
                f"unknown output format '{fmt}'", f"choose one of: {', '.join(FORMATS)}"
            )
        return fmt
    return "csv" if path is not None and path.suffix.lower() == ".csv" else "jsonl"


class Output:
    """Writes result records (dicts with an ``id``) to ``path`` (None: stdout)."""

    def __init__(
        self,
        path: Path | None,
        fmt: str = "jsonl",
        *,
        resume: bool = False,
        overwrite: bool = False,
        columns: Iterable[str] = (),
    ):
        self.path, self.fmt = path, fmt
        self.done: list[str] = []  # ids already written (resuming), in order
        self._columns = ["id", *[c for c in columns if c != "id"]]
        self._csv_header = True
        self._file: TextIO = sys.stdout if path is None else self._open(resume, overwrite)

    def _open(self, resume: bool, overwrite: bool) -> TextIO:
        path = self.path
        exists = path.exists() and path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise UsageError(
                f"{path} already holds results",
                "pass --resume to continue that run, or --overwrite to start again",
            )
        if path.parent and not path.parent.exists():
            raise UsageError(f"no such directory: {path.parent}", "create it first")
        if exists and resume:
            self._trim_partial_line(path)
            self.done = self._read_ids(path)
            self._csv_header = False
            return path.open("a", encoding="utf-8", newline="")
        return path.open("w", encoding="utf-8", newline="")

    @staticmethod
    def _trim_partial_line(path: Path) -> None:
        """Drop a last line with no newline (a record cut short): it is done again."""
        with path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos, step = size, 1 << 16
            while pos > 0:
                start = max(0, pos - step)
                f.seek(start)
                chunk = f.read(pos - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    f.truncate(start + cut + 1)
                    return
                pos = start
            f.truncate(0)

    def _read_ids(self, path: Path) -> list[str]:
        ids: list[str] = []
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            if self.fmt == "csv":
                return [str(row.get("id")) for row in csv.DictReader(f)]
            for n, line in enumerate(f, 1):
                try:
                    ids.append(str(json.loads(line)["id"]))
                except (ValueError, KeyError, TypeError):
                    raise UsageError(
                        f"{path} line {n} is not a result record of pocketlm task",
                        "give --out a new file, or --overwrite to replace this one",
                    ) from None
        return ids

    def write(self, result: dict[str, Any]) -> None:
        text = self._csv(result) if self.fmt == "csv" else json.dumps(result, ensure_ascii=False)
        self._file.write(text if self.fmt == "csv" else text + "\n")  # one call: whole lines
        self._file.flush()

    def _csv(self, result: dict[str, Any]) -> str:
        buf = io.StringIO()
        for key in result:
            if key not in self._columns:
                self._columns.append(key)
        w = csv.writer(buf, lineterminator="\n")
        if self._csv_header:
            w.writerow(self._columns)
            self._csv_header = False
        w.writerow([_cell(result.get(c)) for c in self._columns])
        return buf.getvalue()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
