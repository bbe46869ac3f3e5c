"""The local results database: every measurement pocketlm makes, with what it was made on.

One SQLite file in the store (``$POCKETLM_HOME/results.db``). A row (``Result``) records the
model's checksum and quantization, the task, the settings, the machine, and the metrics, so
that `pocketlm eval --history` and `--compare` can put runs side by side. Every service
writes its rows through ``record``.
"""

from __future__ import annotations

import json
import platform
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketlm import __version__, config
from pocketlm.errors import UsageError

if TYPE_CHECKING:
    from pocketlm.store.manifest import Manifest
    from pocketlm.store.store import Store

FILE_NAME = "results.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,          -- eval | perplexity | kld | generation | needle | bench | quantize
    task TEXT NOT NULL,          -- file name or task name
    model TEXT NOT NULL,
    model_sha256 TEXT,
    quantization TEXT,
    settings TEXT NOT NULL,      -- JSON
    machine TEXT NOT NULL,       -- JSON
    metrics TEXT NOT NULL        -- JSON
);
CREATE INDEX IF NOT EXISTS results_model ON results (model, task);
"""


_JSON = ("settings", "machine", "metrics")  # columns stored as JSON text
_COLUMNS = ("created_at", "kind", "task", "model", "model_sha256", "quantization", *_JSON)


@dataclass
class Result:
    """One row of the results database."""

    kind: str
    task: str
    model: str
    metrics: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    model_sha256: str | None = None
    quantization: str | None = None
    machine: dict[str, Any] = field(default_factory=lambda: machine_info())
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info() -> dict[str, Any]:
    from pocketlm.engine.probe import _cpu_signature
    from pocketlm.services import machine

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in _cpu_signature().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    physical, logical = machine.cores()
    return {
        "cpu": cpu,
        "cores": physical,
        "threads": logical,
        "ram_bytes": machine.ram()[0],
        "system": platform.system(),
        "pocketlm": __version__,
    }


def record(
    kind: str,
    task: str,
    model: str,
    metrics: dict[str, Any],
    settings: dict[str, Any] | None = None,
    *,
    manifest: Manifest | None = None,
    file_type: str | None = None,
    db: ResultsDB | None = None,
) -> int:
    """Add one measurement of ``model`` to the results database (``db``, default the store's)
    and return its row id. A store model is identified by its ``manifest`` (checksum and
    quantization); a bare file by its GGUF ``file_type`` alone."""
    row = Result(
        kind=kind,
        task=task,
        model=model,
        metrics=metrics,
        settings=settings or {},
        model_sha256=manifest.sha256 if manifest else None,
        quantization=manifest.quantization if manifest else file_type,
    )
    return (db or ResultsDB()).add(row).id


def compare(
    refs: Sequence[str], *, task: str | None = None, db: ResultsDB | None = None
) -> list[Result]:
    """The rows to put side by side: each of ``refs`` is a row id, or a model name (all its
    rows, of ``task`` if given)."""
    db = db or ResultsDB()
    ids = [int(x) for x in refs if x.isdigit()]
    rows = db.query(ids=ids) if ids else []
    for name in (x for x in refs if not x.isdigit()):
        rows += db.query(model=name, task=task)
    if not rows:
        raise UsageError("no results match", "list them with: pocketlm eval --history")
    return rows


class ResultsDB:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else config.home() / FILE_NAME

    @classmethod
    def of(cls, store: Store) -> ResultsDB:
        """The database of ``store`` (which may live elsewhere than the default store)."""
        return cls(store.root / FILE_NAME)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.executescript(SCHEMA)
        return conn

    def add(self, r: Result) -> Result:
        """Write ``r`` (use ``record``, which fills in the model's identity); sets its id."""
        values = [json.dumps(getattr(r, c)) if c in _JSON else getattr(r, c) for c in _COLUMNS]
        with self._connect() as conn:
            cur = conn.execute(
                f"INSERT INTO results ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                values,
            )
            r.id = cur.lastrowid
        return r

    def query(
        self,
        *,
        model: str | None = None,
        task: str | None = None,
        kind: str | None = None,
        ids: list[int] | None = None,
    ) -> list[Result]:
        where, args = [], []
        for column, value in (("model", model), ("task", task), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args += ids
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [_row(values) for values in rows]


def _row(values: tuple) -> Result:
    """A Result from a row selected as (id, *_COLUMNS)."""
    fields = {c: json.loads(v) if c in _JSON else v for c, v in zip(_COLUMNS, values[1:])}
    return Result(id=values[0], **fields)
