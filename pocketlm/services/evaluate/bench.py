"""Speed benchmark: load time, time to first token, prefill and decode tok/s, peak RSS.

Each run measures one model in a fresh child process (``speed``: what a run does), so a
run's peak RSS is that model's alone and every load starts from nothing in memory. The OS
page cache is not flushed (that needs root), so load times are warm-cache, not cold-disk.
Figures over the runs are given as min, median and max; each model's summary is recorded
in the results database, and ``charts.bench_chart`` draws a report.

Plain decoding reads every weight once per token, plus the KV cache filled so far, so
memory bandwidth / bytes per token bounds single-stream decode speed; the report gives that
bound and the share of it the measured decode reaches.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pocketlm.errors import EngineError, PocketError
from pocketlm.params import LoadParams, context_size, validate
from pocketlm.progress import NullProgress, Progress
from pocketlm.services import results
from pocketlm.services.child import json_child
from pocketlm.store.gguf_check import GGUFInfo, inspect_gguf

if TYPE_CHECKING:
    from pocketlm.store.manifest import Manifest
    from pocketlm.store.store import Store

WARM_CACHE_NOTE = (
    "each run loads the model afresh in a new process, but the file stays in the OS page "
    "cache: load times are warm-cache, not cold-disk"
)


class BenchParams(BaseModel):
    """What to measure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_lengths: tuple[int, ...] = Field(
        (128, 512, 2048),
        description="prompt lengths in tokens to measure prefill at, comma-separated "
        "(capped to the context)",
    )
    decode_tokens: int = Field(128, ge=1, le=1 << 20, description="tokens to decode (greedy)")
    repeat: int = Field(3, ge=1, le=1000, description="runs per model (min, median, max)")

    @field_validator("prompt_lengths", mode="before")
    @classmethod
    def _parse_lengths(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = [int(part) for part in v.split(",") if part.strip()]
            except ValueError:
                raise ValueError("give whole numbers separated by commas, e.g. 128,512") from None
        if isinstance(v, int):
            v = [v]
        if not v:
            raise ValueError("give at least one prompt length")
        if any(not isinstance(n, int) or not 1 <= n <= 1 << 20 for n in v):
            raise ValueError("each prompt length must be between 1 and 1048576 tokens")
        return tuple(sorted(set(v)))


# -- the report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One measured quantity over the runs."""

    values: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def scaled(self, factor: float) -> Figure:
        return Figure(tuple(v * factor for v in self.values))

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min, "median": self.median, "max": self.max, "values": self.values}


@dataclass
class ModelBench:
    """The benchmark of one model: identity, settings used, and figures over the runs."""

    name: str
    path: str
    sha256: str | None  # known for store models; not computed for a bare path
    quantization: str
    size_bytes: int
    tensor_data_bytes: int
    n_ctx: int
    threads: int
    prompt_lengths: tuple[int, ...]  # after capping to the context
    decode_tokens: int  # tokens actually decoded per run
    load_s: Figure
    warmup_s: Figure  # first evaluation after load: pages in the weights, sizes buffers
    prefill_tps: dict[int, Figure]
    ttft_s: dict[int, Figure]  # prefill from an empty cache + first greedy token
    decode_tps: Figure
    base_rss_bytes: Figure  # before the model is loaded (interpreter + engine library)
    peak_rss_bytes: Figure
    bandwidth_bytes_per_s: float
    bytes_per_token: int  # weights + KV cache at the mean fill while decoding
    result_id: int | None = None

    @property
    def decode_bound_tps(self) -> float:
        return self.bandwidth_bytes_per_s / max(self.bytes_per_token, 1)

    @property
    def share_of_bound(self) -> Figure:
        return self.decode_tps.scaled(1 / self.decode_bound_tps)

    def metrics(self) -> dict[str, Any]:
        return {
            "load_s": self.load_s.to_dict(),
            "warmup_s": self.warmup_s.to_dict(),
            "prefill": {
                str(n): {
                    "tok_per_s": self.prefill_tps[n].to_dict(),
                    "ttft_s": self.ttft_s[n].to_dict(),
                }
                for n in self.prompt_lengths
            },
            "decode": {"tokens": self.decode_tokens, "tok_per_s": self.decode_tps.to_dict()},
            "base_rss_bytes": self.base_rss_bytes.to_dict(),
            "peak_rss_bytes": self.peak_rss_bytes.to_dict(),
            "bound": {
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
                "bytes_per_token": self.bytes_per_token,
                "decode_tok_per_s": self.decode_bound_tps,
                "share": self.share_of_bound.to_dict(),
            },
        }

    def settings(self) -> dict[str, Any]:
        return {
            "n_ctx": self.n_ctx,
            "threads": self.threads,
            "prompt_lengths": list(self.prompt_lengths),
            "decode_tokens": self.decode_tokens,
            "runs": len(self.load_s.values),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "quantization": self.quantization,
            "size_bytes": self.size_bytes,
            "tensor_data_bytes": self.tensor_data_bytes,
            **self.settings(),
            **self.metrics(),
            "result_id": self.result_id,
        }


@dataclass
class BenchReport:
    params: BenchParams
    load: LoadParams
    models: list[ModelBench] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {**self.params.model_dump(), **self.load.model_dump()},
            "machine": self.machine,
            "note": WARM_CACHE_NOTE,
            "models": [m.to_dict() for m in self.models],
        }


# -- the service ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """A resolved, checked model and the run settings derived for it."""

    name: str
    path: Path
    info: GGUFInfo
    manifest: Manifest | None  # None for a bare GGUF path
    job: dict[str, Any]  # what the child process is asked to measure

    @property
    def sha256(self) -> str | None:  # known for store models; not computed for a bare path
        return self.manifest.sha256 if self.manifest else None

    @property
    def quantization(self) -> str:
        return self.manifest.quantization if self.manifest else self.info.file_type

    @property
    def steps(self) -> int:  # progress steps per run: load, warm-up, each prefill, decode
        return 3 + len(self.job["prompt_lengths"])


def bench(
    refs: Sequence[str],
    params: BenchParams | dict[str, Any] | None = None,
    load: LoadParams | dict[str, Any] | None = None,
    *,
    store: Store | None = None,
    progress: Progress | None = None,
    record: bool = True,
) -> BenchReport:
    """Benchmark each model (store name, catalog name or GGUF path) ``params.repeat`` times.

    Every model is resolved and checked before the first run, so a bad name fails at once.
    Each model's summary is recorded in the results database unless ``record`` is False."""
    from pocketlm.services import machine
    from pocketlm.store.store import Store

    p = params if isinstance(params, BenchParams) else validate(BenchParams, params or {})
    lp = load if isinstance(load, LoadParams) else validate(LoadParams, load or {})
    if not refs:
        raise PocketError("no model to benchmark", "name one: pocketlm bench MODEL")
    progress = progress or NullProgress()
    store = store or Store()
    targets = [_prepare(ref, store, progress, p, lp) for ref in refs]
    bandwidth = machine.memory_bandwidth()
    machine_info = results.machine_info() | {"bandwidth_bytes_per_s": bandwidth}
    report = BenchReport(p, lp, machine=machine_info)
    task = progress.task("benchmark", total=sum(t.steps for t in targets) * p.repeat, unit="steps")
    for i, t in enumerate(targets, 1):
        progress.note(f"[{i}/{len(targets)}] {t.name}: {p.repeat} runs")
        runs = [_run_child(t.job, task.advance) for _ in range(p.repeat)]
        report.models.append(_summarize(t, runs, bandwidth))
    if record:
        for t, m in zip(targets, report.models):
            m.result_id = _record(t, m, p, lp)
    return report


def _prepare(ref: str, store: Store, progress: Progress, p: BenchParams, lp: LoadParams) -> _Target:
    from pocketlm.engine import probe
    from pocketlm.services.machine import default_threads
    from pocketlm.store.refs import resolve

    m = resolve(ref, store, pull_missing=True, progress=progress)
    path, manifest = m.path, m.manifest
    info = inspect_gguf(path)  # a file that is not GGUF fails here, before llama.cpp sees it
    n_ctx = context_size(lp.ctx, info.context_length)
    job = {
        "path": str(path),
        "extra_bufts": probe.extra_bufts_safe(str(path)),
        "n_ctx": n_ctx,
        "n_threads": lp.threads or default_threads(),
        "n_batch": min(lp.batch, n_ctx),
        "flash_attn": lp.flash_attn,
        "prompt_lengths": sorted({min(n, n_ctx) for n in p.prompt_lengths}),
        "decode_tokens": p.decode_tokens,
    }
    return _Target(
        name=manifest.name if manifest else path.name,
        path=path,
        info=info,
        manifest=manifest,
        job=job,
    )


def _run_child(job: dict[str, Any], on_step: Callable[[int], None]) -> dict[str, Any]:
    """One run in a fresh ``python -m pocketlm.services.evaluate.speed``; its result dict."""
    cmd = [sys.executable, "-m", "pocketlm.services.evaluate.speed"]
    result, error = None, None
    with json_child(cmd, job) as child:
        for msg in child.messages():
            if "step" in msg:
                on_step(1)
            result = msg.get("result", result)
            error = msg.get("error", error)
    if error:
        raise EngineError(error)
    if child.code != 0 or result is None:
        raise EngineError(
            f"benchmark of {job['path']} failed (exit code {child.code}): "
            f"{child.stderr_tail or 'no message'}"
        )
    return result


def _summarize(t: _Target, runs: list[dict[str, Any]], bandwidth: float) -> ModelBench:
    from pocketlm.services.fit import kv_bytes_per_token

    lengths = tuple(int(n) for n in runs[0]["prefill"])
    decoded = runs[0]["decode_tokens"]
    mean_fill = runs[0]["decode_prompt_tokens"] + decoded / 2
    return ModelBench(
        name=t.name,
        path=str(t.path),
        sha256=t.sha256,
        quantization=t.quantization,
        size_bytes=t.info.size_bytes,
        tensor_data_bytes=t.info.tensor_data_bytes,
        n_ctx=runs[0]["n_ctx"],
        threads=t.job["n_threads"],
        prompt_lengths=lengths,
        decode_tokens=decoded,
        load_s=_figure(runs, "load_s"),
        warmup_s=_figure(runs, "warmup_s"),
        prefill_tps={n: _figure(runs, "prefill", str(n), "tok_per_s") for n in lengths},
        ttft_s={n: _figure(runs, "prefill", str(n), "ttft_s") for n in lengths},
        decode_tps=_figure(runs, "decode_tok_per_s"),
        base_rss_bytes=_figure(runs, "base_rss_bytes"),
        peak_rss_bytes=_figure(runs, "peak_rss_bytes"),
        bandwidth_bytes_per_s=bandwidth,
        bytes_per_token=t.info.tensor_data_bytes + int(kv_bytes_per_token(t.info) * mean_fill),
    )


def _figure(runs: list[dict[str, Any]], *keys: str) -> Figure:
    """The value at ``keys`` (a path into each run's nested dict) over all runs."""
    values = []
    for run in runs:
        for key in keys:
            run = run[key]
        values.append(float(run))
    return Figure(tuple(values))


def _record(t: _Target, m: ModelBench, p: BenchParams, lp: LoadParams) -> int:
    settings = {
        **m.settings(),
        "repeat": p.repeat,
        "batch": lp.batch,
        "flash_attn": lp.flash_attn,
        "requested_prompt_lengths": list(p.prompt_lengths),
        "requested_decode_tokens": p.decode_tokens,
    }
    return results.record(
        "bench",
        "speed",
        m.name,
        m.metrics(),
        settings,
        manifest=t.manifest,
        file_type=t.info.file_type,
    )
