"""The quality report of a quantized file, measured against a reference model.

KL divergence, top-1 agreement and perplexity come from the evaluate service's
``run_perplexity`` (the one implementation of those measures), on the first
``eval_tokens`` tokens of a text: by default the calibration text that ships with
pocketlm (``pocketlm/data/calibration.txt``, varied English prose, dialogue and code).
Decode speed comes from the bench service (one short greedy run in a fresh process).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from pocketlm.progress import NullProgress, Progress

if TYPE_CHECKING:
    from pocketlm.engine.llama import Model
    from pocketlm.store.gguf_check import GGUFInfo
    from pocketlm.store.store import Store

DEFAULT_TEXT_LABEL = "calibration.txt"


class QualityParams(BaseModel):
    """How to measure a quantized model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_tokens: int = Field(4096, ge=16, le=1 << 20, description="tokens of the text to score")
    window: int = Field(512, ge=16, le=1 << 16, description="tokens per scoring window")
    decode_tokens: int = Field(
        64, ge=0, le=1 << 16, description="tokens decoded for the speed (0: none)"
    )


@dataclass
class QualityReport:
    """A quantized file against its reference; KL divergence is KL(P_ref || P_quantized)."""

    type: str
    size_bytes: int
    bpw: float  # real bits per weight of the file's tensors
    kld_mean: float
    kld_p99: float
    top1_agreement: float
    ppl: float
    ppl_ref: float
    ppl_delta: float  # ppl - ppl_ref
    decode_tps: float | None  # None: not measured (decode_tokens=0)
    tokens: int  # tokens scored
    window: int
    reference: str
    eval_text: str
    seconds: float  # time spent measuring

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_text_path() -> Path:
    return Path(str(resources.files("pocketlm") / "data" / "calibration.txt"))


def load_text(path: str | Path | None) -> tuple[str, str]:
    """(label, text) of an evaluation or calibration text; None: the shipped one. A ``.jsonl``
    file is a training set (``records_text``): a distilled model is best calibrated on the
    data it learnt its task from."""
    from pocketlm.services.evaluate.perplexity import read_text

    if path is None:
        return DEFAULT_TEXT_LABEL, default_text_path().read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".jsonl":
        return Path(path).name, records_text(Path(path))
    return Path(path).name, read_text(path)


MAX_RECORD_BYTES = 4 * 1024 * 1024  # one JSONL line; a longer one is skipped
MAX_RECORDS_TEXT = 16 * 1024 * 1024  # characters of text read from records (far more than used)


def records_text(path: Path) -> str:
    """The text of a JSONL training set, as ``pocketlm distill`` reads its records: each
    record's input and answer on lines of their own, records apart by a blank line. A record
    of ``pocketlm data label`` (instruction, text, label): the text, then the label (the
    instruction, the same in every record, is left out); prompt and completion; the contents
    of ``messages``; or ``text``. Lines that are not such records are skipped; reading stops
    after MAX_RECORDS_TEXT characters."""
    import json

    from pocketlm.errors import UsageError

    path = path.expanduser()
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "check the path")
    parts: list[str] = []
    size = skipped = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            record = None
            if len(raw) <= MAX_RECORD_BYTES:
                try:
                    record = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    pass
            text = _record_text(record) if isinstance(record, dict) else None
            if text is None:
                skipped += 1
                continue
            parts.append(text)
            size += len(text) + 2
            if size >= MAX_RECORDS_TEXT:
                break
    if not parts:
        raise UsageError(
            f"{path.name} has no training records ({skipped} lines skipped)",
            'each line needs "text" (and "label"), "prompt" and "completion", or "messages"',
        )
    return "\n\n".join(parts)


def _record_text(record: dict[str, Any]) -> str | None:
    def usable(value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    if usable(record.get("prompt")) and usable(record.get("completion")):
        return f"{record['prompt']}\n{record['completion']}"
    messages = record.get("messages")
    if isinstance(messages, list):
        contents = [m.get("content") for m in messages if isinstance(m, dict)]
        contents = [c for c in contents if usable(c)]
        if contents:
            return "\n".join(contents)
    if usable(record.get("text")):
        label = record.get("label")
        return f"{record['text']}\n{label}" if usable(label) else record["text"]
    return None


def measure(
    path: Path,
    info: GGUFInfo,
    reference: Model,
    reference_name: str,
    text: tuple[str, str],
    params: QualityParams,
    *,
    threads: int,
    store: Store | None = None,
    progress: Progress | None = None,
) -> QualityReport:
    """Score the file at ``path`` against ``reference`` on ``text`` (label, content)."""
    from pocketlm.services.evaluate.perplexity import run_perplexity
    from pocketlm.services.runtime import open_engine_model

    progress = progress or NullProgress()
    started = time.perf_counter()
    model = open_engine_model(str(path), store=store, progress=progress)[3]
    try:
        ppl = run_perplexity(
            model,
            text[1],
            window=params.window,
            reference=reference,
            threads=threads,
            max_tokens=params.eval_tokens,
            progress=progress,
        )
    finally:
        model.close()
    speed = (
        decode_speed(path, params.decode_tokens, threads, store) if params.decode_tokens else None
    )
    return QualityReport(
        type=info.file_type,
        size_bytes=info.size_bytes,
        bpw=round(info.bits_per_weight, 3),
        kld_mean=ppl.kld_mean,
        kld_p99=ppl.kld_p99,
        top1_agreement=ppl.top1_agreement,
        ppl=ppl.ppl,
        ppl_ref=ppl.ppl_ref,
        ppl_delta=ppl.ppl - ppl.ppl_ref,
        decode_tps=speed,
        tokens=ppl.tokens,
        window=ppl.window,
        reference=reference_name,
        eval_text=text[0],
        seconds=time.perf_counter() - started,
    )


def decode_speed(path: Path, tokens: int, threads: int, store: Store | None = None) -> float:
    """Greedy decode tok/s after a 16-token prompt: one run of the bench service."""
    from pocketlm.params import LoadParams
    from pocketlm.services.evaluate.bench import BenchParams, bench

    params = BenchParams(prompt_lengths=(16,), decode_tokens=tokens, repeat=1)
    report = bench([str(path)], params, LoadParams(threads=threads), store=store, record=False)
    return report.models[0].decode_tps.median
