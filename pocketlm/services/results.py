"""The local results database: every measurement pocketlm makes, with what it was made on.

One SQLite file in the store (``$POCKETLM_HOME/results.db``). A row records the model's
checksum and quantization, the task, the settings, the machine, and the metrics, so that
`pocketlm eval --history` and `--compare` can put runs side by side.
"""

from __future__ import annotations

import json
import platform
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pocketlm import __version__, config

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,          -- eval | perplexity | kld | generation | needle | bench
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


@dataclass
class Result:
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
    return {"cpu": cpu, "cores": physical, "threads": logical, "ram_bytes": machine.ram()[0],
            "system": platform.system(), "pocketlm": __version__}  # fmt: skip


class ResultsDB:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else config.home() / "results.db"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.executescript(SCHEMA)
        return conn

    def add(self, r: Result) -> Result:
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO results (created_at, kind, task, model, model_sha256, quantization,"
                " settings, machine, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (r.created_at, r.kind, r.task, r.model, r.model_sha256, r.quantization,
                 json.dumps(r.settings), json.dumps(r.machine), json.dumps(r.metrics)),
            )  # fmt: skip
            r.id = cur.lastrowid
        return r

    def query(self, *, model: str | None = None, task: str | None = None,
              kind: str | None = None, ids: list[int] | None = None) -> list[Result]:  # fmt: skip
        where, args = [], []
        for column, value in (("model", model), ("task", task), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args += ids
        sql = "SELECT id, created_at, kind, task, model, model_sha256, quantization, settings," \
              " machine, metrics FROM results"  # fmt: skip
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [
            Result(
                id=r[0],
                created_at=r[1],
                kind=r[2],
                task=r[3],
                model=r[4],
                model_sha256=r[5],
                quantization=r[6],
                settings=json.loads(r[7]),
                machine=json.loads(r[8]),
                metrics=json.loads(r[9]),
            )
            for r in rows
        ]
