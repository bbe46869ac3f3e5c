"""A job's output file: one line per record, whole lines only, resumable.

JSONL (the default) or CSV. Each record's line is written in one call and flushed, so an
interrupted run (Ctrl-C arrives between Python operations, not inside a write) leaves whole
lines; a line cut short by a crash or a full disk is removed when the run resumes, and its
record is done again. Results are in input order, one per record, so resuming skips as many
records as there are lines, checking that their ids are the ones written (the same input).
Resuming with ``retry_failed`` also does again the records whose result is an error; their
new results take their lines' places when the output is closed (also on Ctrl-C: the file is
rewritten whole, then renamed over the old one), so the file stays in input order and
resumes again like any other.
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
        retry_failed: bool = False,
    ):
        self.path, self.fmt = path, fmt
        self.done: list[str] = []  # ids already written (resuming), in order
        self.retry: set[str] = set()  # of those, the ones to do again (retry_failed)
        self._redone: dict[str, dict[str, Any]] = {}  # id -> its new result
        self._retry_failed = retry_failed
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
            self.done, failed = self._read_ids(path)
            if self._retry_failed:
                self.retry = failed
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

    def _read_ids(self, path: Path) -> tuple[list[str], set[str]]:
        """The ids of the results in ``path``, in order, and those of the ones that are
        errors."""
        ids: list[str] = []
        failed: set[str] = set()
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            if self.fmt == "csv":
                for row in csv.DictReader(f):
                    ids.append(str(row.get("id")))
                    if row.get("error"):
                        failed.add(ids[-1])
                return ids, failed
            for n, line in enumerate(f, 1):
                try:
                    result = json.loads(line)
                    ids.append(str(result["id"]))
                except (ValueError, KeyError, TypeError):
                    raise UsageError(
                        f"{path} line {n} is not a result record of pocketlm task",
                        "give --out a new file, or --overwrite to replace this one",
                    ) from None
                if "error" in result:
                    failed.add(ids[-1])
        return ids, failed

    def write(self, result: dict[str, Any]) -> None:
        if self.retry and str(result.get("id")) in self.retry:
            self._redone[str(result["id"])] = result  # put in its line's place at close
            return
        text = self._csv(result) if self.fmt == "csv" else json.dumps(result, ensure_ascii=False)
        self._file.write(text if self.fmt == "csv" else text + "\n")  # one call: whole lines
        self._file.flush()

    def _put_redone(self) -> None:
        """Rewrite the file with each redone record's new result in its failed line's place
        (to a scratch file, renamed over the file: the file is whole at every moment)."""
        path, redone = self.path, self._redone
        tmp = path.with_name(f".{path.name}.retry")
        enc = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
        with path.open(**enc) as f, tmp.open("w", **enc) as out:
            if self.fmt == "csv":
                rows, w = csv.reader(f), csv.writer(out, lineterminator="\n")
                header = next(rows, [])
                w.writerow(header)
                at = header.index("id") if "id" in header else None
                for row in rows:
                    new = redone.get(row[at]) if at is not None and at < len(row) else None
                    w.writerow(row if new is None else [_cell(new.get(c)) for c in header])
            else:
                for line in f:
                    new = redone.get(str(json.loads(line).get("id")))
                    out.write(line if new is None else json.dumps(new, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

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
            if self._redone:
                self._put_redone()
                self._redone = {}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
