"""Speed benchmark: load time, time to first token, prefill and decode tok/s, peak RSS.

Each run measures one model in a fresh child process (``python -m
pocketlm.services.evaluate.bench``), so a run's peak RSS is that model's alone
and every load starts from nothing in memory. The OS page cache is not
flushed (that needs root), so load times are warm-cache, not cold-disk.

A run: load (weights + context); a short warm-up evaluation (it faults in the
memory-mapped weights and sizes the compute buffers); for each prompt length,
a prefill from an empty cache followed by one greedy token (time to first
token); then greedy decoding of a fixed number of tokens, straight through any
end-of-generation token so that every run decodes the same count. Figures over
the runs are given as min, median and max.

Plain decoding reads every weight once per token, plus the KV cache filled so
far, so memory bandwidth / bytes per token bounds single-stream decode speed;
the report gives that bound and the share of it the measured decode reaches.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pocketlm.errors import EngineError, PocketError
from pocketlm.params import DEFAULT_CTX_CAP, LoadParams, validate
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.child import json_child
from pocketlm.services.runtime import peak_rss_bytes
from pocketlm.store.gguf_check import GGUFInfo, inspect_gguf

if TYPE_CHECKING:
    from pocketlm.store.store import Store

DECODE_PROMPT_TOKENS = 16  # decoding starts after this many prompt tokens
WARMUP_TOKENS = 32
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


# -- results ------------------------------------------------------------------------


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
            },  # fmt: skip
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
        return {"n_ctx": self.n_ctx, "threads": self.threads,
                "prompt_lengths": list(self.prompt_lengths), "decode_tokens": self.decode_tokens,
                "runs": len(self.load_s.values)}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "path": self.path, "sha256": self.sha256,
                "quantization": self.quantization, "size_bytes": self.size_bytes,
                "tensor_data_bytes": self.tensor_data_bytes, **self.settings(),
                **self.metrics(), "result_id": self.result_id}  # fmt: skip


@dataclass
class BenchReport:
    params: BenchParams
    load: LoadParams
    models: list[ModelBench] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": {**self.params.model_dump(), **self.load.model_dump()},
                "machine": self.machine, "note": WARM_CACHE_NOTE,
                "models": [m.to_dict() for m in self.models]}  # fmt: skip


# -- the service ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """A resolved, checked model and the run settings derived for it."""

    name: str
    path: Path
    info: GGUFInfo
    sha256: str | None
    quantization: str
    job: dict[str, Any]  # what the child process is asked to measure

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
    from pocketlm.services.results import machine_info
    from pocketlm.store.store import Store

    p = params if isinstance(params, BenchParams) else validate(BenchParams, params or {})
    lp = load if isinstance(load, LoadParams) else validate(LoadParams, load or {})
    if not refs:
        raise PocketError("no model to benchmark", "name one: pocketlm bench MODEL")
    progress = progress or NullProgress()
    store = store or Store()
    targets = [_prepare(ref, store, progress, p, lp) for ref in refs]
    bandwidth = machine.memory_bandwidth()
    report = BenchReport(p, lp, machine=machine_info() | {"bandwidth_bytes_per_s": bandwidth})
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
    from pocketlm.services.runtime import resolve

    path, manifest = resolve(ref, store, progress)
    info = inspect_gguf(path)  # a file that is not GGUF fails here, before llama.cpp sees it
    n_ctx = lp.ctx or min(info.context_length or DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)
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
        sha256=manifest.sha256 if manifest else None,
        quantization=manifest.quantization if manifest else info.file_type,
        job=job,
    )


def _run_child(job: dict[str, Any], on_step: Callable[[int], None]) -> dict[str, Any]:
    """One run in a fresh ``python -m pocketlm.services.evaluate.bench``; its result dict."""
    cmd = [sys.executable, "-m", "pocketlm.services.evaluate.bench"]
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
        raise EngineError(f"benchmark of {job['path']} failed (exit code {child.code}): "
                          f"{child.stderr_tail or 'no message'}")  # fmt: skip
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


def _record(t: _Target, m: ModelBench, p: BenchParams, lp: LoadParams) -> int | None:
    from pocketlm.services.results import Result, ResultsDB

    settings = {**m.settings(), "repeat": p.repeat, "batch": lp.batch,
                "flash_attn": lp.flash_attn, "requested_prompt_lengths": list(p.prompt_lengths),
                "requested_decode_tokens": p.decode_tokens}  # fmt: skip
    row = Result(kind="bench", task="speed", model=m.name, metrics=m.metrics(),
                 settings=settings, model_sha256=t.sha256, quantization=t.quantization)  # fmt: skip
    return ResultsDB().add(row).id


# -- one run (in the child process) -------------------------------------------------------

_PASSAGE = (
    "The keeper of the lighthouse wrote in the log every evening: the direction of the wind, "
    "the height of the waves, the ships that passed the point and the lamps that needed oil. "
    "On quiet nights he added a line about the birds, the fishing boats and the weather."
)


def prompt_tokens(model, n: int) -> list[int]:
    """Exactly ``n`` tokens of deterministic English text (numbered log entries)."""
    entries = n // 40 + 1
    while True:
        text = " ".join(f"Entry {i}. {_PASSAGE}" for i in range(entries))
        tokens = model.tokenize(text, add_special=True)
        if len(tokens) >= n or entries > 4 * n:
            break
        entries *= 2
    if not tokens:
        raise EngineError(f"the model's tokenizer made no tokens of the prompt ({model.path})")
    return (tokens * (n // len(tokens) + 1))[:n]  # the repeat only for a degenerate tokenizer


def measure_run(job: dict[str, Any], on_step: Callable[[], None]) -> dict[str, Any]:
    """Load the model, measure prefill at each length and greedy decode; free it all."""
    from pocketlm.engine.llama import Context, Model, Sampler, init_backend

    init_backend()
    base_rss = _current_rss()
    started = time.perf_counter()
    model = Model(job["path"], use_extra_bufts=job["extra_bufts"])
    ctx = Context(model, n_ctx=job["n_ctx"], n_threads=job["n_threads"],
                  n_batch=job["n_batch"], flash_attn=job["flash_attn"])  # fmt: skip
    load_s = time.perf_counter() - started
    on_step()
    sampler = Sampler.greedy(model.n_vocab)
    try:
        out = {"load_s": load_s, "base_rss_bytes": base_rss}
        out |= _measure_tokens(model, ctx, sampler, job, on_step)
    finally:
        sampler.close()
        ctx.close()
        model.close()
    return out | {"peak_rss_bytes": peak_rss_bytes()}


def _measure_tokens(model, ctx, sampler, job: dict[str, Any], on_step) -> dict[str, Any]:
    n_ctx = min(job["n_ctx"], ctx.n_ctx)  # llama.cpp may round it up
    lengths = [min(n, n_ctx) for n in job["prompt_lengths"]]
    tokens = prompt_tokens(model, max(lengths + [DECODE_PROMPT_TOKENS, WARMUP_TOKENS]))
    warmup_s = _timed(lambda: _warm_up(ctx, sampler, tokens[: min(WARMUP_TOKENS, n_ctx - 1)]))
    on_step()
    prefill = {}
    for n in lengths:
        ctx.reset()
        started = time.perf_counter()
        ctx.prefill(tokens[:n])
        prefilled = time.perf_counter()
        sampler.sample(ctx)
        prefill[str(n)] = {"tok_per_s": n / (prefilled - started),
                           "ttft_s": time.perf_counter() - started}  # fmt: skip
        on_step()
    prompt_n = min(DECODE_PROMPT_TOKENS, n_ctx // 2)
    decoded = min(job["decode_tokens"], n_ctx - prompt_n)
    ctx.reset()
    ctx.prefill(tokens[:prompt_n])
    decode_s = _timed(lambda: _decode(ctx, sampler, decoded))
    on_step()
    return {"n_ctx": n_ctx, "warmup_s": warmup_s, "prefill": prefill,
            "decode_prompt_tokens": prompt_n, "decode_tokens": decoded,
            "decode_tok_per_s": decoded / decode_s}  # fmt: skip


def _warm_up(ctx, sampler, tokens: list[int]) -> None:
    """A short prefill and one decode step: the first evaluations in a process page in the
    weights and size the compute buffers, which the measured ones should not pay for."""
    ctx.prefill(tokens)
    ctx.step(sampler.sample(ctx))


def _decode(ctx, sampler, n: int) -> None:
    """``n`` greedy steps, end-of-generation tokens included: the same work every run."""
    for _ in range(n):
        ctx.step(sampler.sample(ctx))


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return max(time.perf_counter() - started, 1e-9)


def _current_rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


# -- charts -----------------------------------------------------------------------------


def draw_chart(report: BenchReport, path: str | os.PathLike) -> Path:
    """A PNG comparing the models: prefill tok/s per prompt length, and decode tok/s against
    the memory-bandwidth bound; bars are medians, error bars span min to max."""
    from matplotlib.figure import Figure as PlotFigure  # no pyplot: no global state, no display

    fig = PlotFigure(figsize=(11, 4.8), dpi=110, layout="constrained")
    ratios = [len(_all_lengths(report)), 1 + 0.5 * len(report.models)]
    left, right = fig.subplots(1, 2, width_ratios=ratios)
    _prefill_axes(left, report)
    _decode_axes(right, report)
    m = report.machine
    threads = report.models[0].threads
    fig.suptitle(f"pocketlm bench: {m.get('cpu', '?')}, {threads} thread{'s' * (threads > 1)}, "
                 f"median of {report.params.repeat} runs (bars: min-max)", fontsize=10)  # fmt: skip
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _all_lengths(report: BenchReport) -> list[int]:
    return sorted({n for m in report.models for n in m.prompt_lengths})


def _bar_group(ax, x: list[float], figs: list[Figure], width: float, label: str, color) -> None:
    """Bars at the medians, error bars from min to max; the median written at the foot."""
    heights = [f.median for f in figs]
    err = [[f.median - f.min for f in figs], [f.max - f.median for f in figs]]
    ax.bar(x, heights, width, yerr=err, capsize=3, label=label, color=color)
    for xi, f in zip(x, figs):
        ax.annotate(f"{f.median:.0f}", (xi, 0), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=7, color="white", weight="bold")  # fmt: skip


def _prefill_axes(ax, report: BenchReport) -> None:
    lengths = _all_lengths(report)
    width = 0.8 / len(report.models)
    for i, m in enumerate(report.models):
        have = [n for n in lengths if n in m.prefill_tps]
        x = [lengths.index(n) + (i - (len(report.models) - 1) / 2) * width for n in have]
        _bar_group(ax, x, [m.prefill_tps[n] for n in have], width, m.name, f"C{i}")
    ax.set_xticks(range(len(lengths)), [f"{n} tokens" for n in lengths])
    ax.set_title("prefill", fontsize=10)
    ax.set_ylabel("tokens / s")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _decode_axes(ax, report: BenchReport) -> None:
    for i, m in enumerate(report.models):
        _bar_group(ax, [i], [m.decode_tps], 0.6, m.name, f"C{i}")
        bound = m.decode_bound_tps
        ax.hlines(bound, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
        ax.annotate(f"bound {bound:.0f}\n({m.share_of_bound.median:.0%} reached)", (i, bound),
                    textcoords="offset points", xytext=(0, 4), ha="center", va="bottom", fontsize=7,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1})  # fmt: skip
    ax.set_xticks(range(len(report.models)), [m.name for m in report.models], fontsize=7)
    ax.set_title(f"decode, {report.params.decode_tokens} tokens\n(dashed: bandwidth bound)",
                 fontsize=10)  # fmt: skip
    ax.set_ylabel("tokens / s")
    top = max(max(m.decode_tps.max, m.decode_bound_tps) for m in report.models)
    ax.set_ylim(0, top * 1.25)
    ax.grid(axis="y", alpha=0.3)


# -- child entry point ------------------------------------------------------------------


def _child_main() -> int:
    """Read a job (JSON) on stdin; write one JSON line per step, then the result or error."""

    def emit(**msg: Any) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    try:
        result = measure_run(json.loads(sys.stdin.read()), lambda: emit(step=1))
    except PocketError as e:
        emit(error=str(e))
        return 1
    emit(result=result)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
