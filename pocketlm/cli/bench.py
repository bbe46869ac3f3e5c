"""pocketlm bench [MODEL...]: load time, first token, prefill and decode speed, peak memory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pocketlm import config
from pocketlm.cli.flags import add_flags, collect
from pocketlm.cli.fmt import human_bytes, table
from pocketlm.errors import PocketError, UsageError
from pocketlm.params import LoadParams, validate

HELP = "measure models' speed: load, first token, prefill and decode tok/s, peak memory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pocketlm.services.evaluate.bench import BenchParams

    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="model names or GGUF paths, compared side by side (default: "
        "$POCKETLM_MODEL, or the largest model this machine runs well)",
    )
    group = p.add_argument_group(BenchParams.__doc__.strip().rstrip(".").lower())
    fields = BenchParams.model_fields
    for name, kind, metavar in (
        ("prompt_lengths", str, "N,N,..."),
        ("decode_tokens", int, "N"),
        ("repeat", int, "N"),
    ):
        default = fields[name].default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            metavar=metavar,
            help=f"{fields[name].description} (default: {shown})",
        )
    add_flags(p, LoadParams, only=("ctx", "threads", "batch", "flash_attn"))
    out = p.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    out.add_argument("--out", metavar="FILE.json", help="also write the JSON object to FILE")
    out.add_argument(
        "--chart",
        metavar="FILE.png",
        help="also draw a PNG chart comparing "
        "the models: prefill and decode tok/s, the bandwidth bound (drawn only "
        "when asked)",
    )
    p.epilog = (
        "Each run loads the model in a fresh process (peak RSS is that model's own); the OS "
        "page cache is not flushed, so load times are warm-cache. Every model's summary is "
        "recorded in the results database."
    )


def main(args: argparse.Namespace) -> int:
    from pocketlm.services.charts import bench_chart
    from pocketlm.services.evaluate.bench import BenchParams, bench

    values = {k: getattr(args, k) for k in BenchParams.model_fields if getattr(args, k) is not None}
    params = validate(BenchParams, values, flag_names=True)
    load = collect(args, LoadParams)
    out = _output_path(args.out, ".json", "--out")
    chart = _output_path(args.chart, ".png", "--chart")
    from pocketlm.progress import RichProgress

    progress = RichProgress()
    try:
        report = bench(args.models or [config.default_model()], params, load, progress=progress)
    finally:
        progress.close()
    data = report.to_dict()
    if out:
        _write(out, json.dumps(data, indent=2) + "\n")
    if chart:
        bench_chart(report, chart)
    if args.json:
        print(json.dumps(data))
    else:
        print(format_report(report))
    for path in (out, chart):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _output_path(value: str | None, suffix: str, flag: str) -> Path | None:
    """Check an output file's name and folder before the (long) measurement starts."""
    if value is None:
        return None
    from pocketlm.store.pull import user_path

    path = user_path(value)
    if path.suffix.lower() != suffix:
        raise UsageError(f"invalid {flag} {value!r}: the file name must end in {suffix}")
    if not path.parent.is_dir():
        raise UsageError(f"invalid {flag} {value!r}: folder {path.parent} does not exist")
    return path


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise PocketError(f"cannot write {path}: {e.strerror or e}") from None


# -- the table ---------------------------------------------------------------------------


def format_report(report) -> str:
    """Metrics as rows, models as columns; each cell is 'median (min-max)'."""
    ms, budget = report.models, report.params.decode_tokens
    rows = [
        ["quantization, file", *(f"{m.quantization}, {human_bytes(m.size_bytes)}" for m in ms)],
        ["context, threads", *(f"{m.n_ctx}, {m.threads}" for m in ms)],
        ["load ms", *(_cell(m.load_s, 1000) for m in ms)],
    ]
    for n in sorted({n for m in ms for n in m.prompt_lengths}):
        rows.append([f"prefill tok/s @{n}", *(_maybe(m.prefill_tps.get(n)) for m in ms)])
        rows.append([f"first token ms @{n}", *(_maybe(m.ttft_s.get(n), 1000) for m in ms)])
    rows += [
        ["decode tok/s", *(_cell(m.decode_tps) + _capped(m.decode_tokens, budget) for m in ms)],
        ["decode bound tok/s", *(_num(m.decode_bound_tps) for m in ms)],
        ["share of bound", *(_share(m) for m in ms)],
        ["peak RSS MiB", *(_cell(m.peak_rss_bytes, 1 / 2**20) for m in ms)],
    ]
    bw = report.machine.get("bandwidth_bytes_per_s", 0)
    notes = [
        f"median (min-max) of {report.params.repeat} runs; decode: {budget} greedy tokens, "
        "end tokens ignored",
        f"bound: memory bandwidth {bw / 1e9:.1f} GB/s / bytes read per token (weights + KV cache)",
        "note: each run loads the model in a fresh process, but the file stays in the OS page "
        "cache: load times are warm-cache, not cold-disk",
    ]
    return table(rows, ["", *(m.name for m in ms)]) + "\n\n" + "\n".join(notes)


def _capped(decoded: int, budget: int) -> str:
    return f" [{decoded} tok: context full]" if decoded < budget else ""


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _cell(fig, scale: float = 1.0) -> str:
    f = fig.scaled(scale)
    return f"{_num(f.median)} ({_num(f.min)}-{_num(f.max)})"


def _maybe(fig, scale: float = 1.0) -> str:
    return _cell(fig, scale) if fig is not None else "-"


def _share(m) -> str:
    s = m.share_of_bound
    return f"{s.median:.0%} ({s.min:.0%}-{s.max:.0%})"
