"""Every PNG chart pocketlm draws, one function each, from a service's report.

- ``bench_chart``: prefill and decode speed per model, against the bandwidth bound
  (``pocketlm bench --chart``).
- ``needle_heatmap``: needle recall over context length x depth (``pocketlm eval --needle
  --heatmap``).
- ``budget_chart``: file size against KL divergence per quantization type, with the budget
  (``pocketlm quantize --budget``).

matplotlib without pyplot: each chart is its own Figure on an Agg canvas (no global state, no
display), written to a PNG file whose folder is made if needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pocketlm.errors import PocketError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pocketlm.services.evaluate.bench import BenchReport
    from pocketlm.services.evaluate.bench import Figure as Measured
    from pocketlm.services.evaluate.needle import NeedleReport
    from pocketlm.services.quantize.budget import BudgetChoice

KLD_FLOOR = 1e-6  # where a (near-)lossless type sits on the budget chart's log scale


def _figure(width: float, height: float, dpi: int, layout: str | None = "constrained") -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    except OSError as e:
        raise PocketError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


# -- bench ----------------------------------------------------------------------------------


def bench_chart(report: BenchReport, path: str | os.PathLike) -> Path:
    """A PNG comparing the models: prefill tok/s per prompt length, and decode tok/s against
    the memory-bandwidth bound; bars are medians, error bars span min to max."""
    fig = _figure(11, 4.8, dpi=110)
    ratios = [len(_all_lengths(report)), 1 + 0.5 * len(report.models)]
    left, right = fig.subplots(1, 2, width_ratios=ratios)
    _prefill_axes(left, report)
    _decode_axes(right, report)
    m = report.machine
    threads = report.models[0].threads
    fig.suptitle(
        f"pocketlm bench: {m.get('cpu', '?')}, {threads} thread{'s' * (threads > 1)}, "
        f"median of {report.params.repeat} runs (bars: min-max)",
        fontsize=10,
    )
    return _save(fig, path)


def _all_lengths(report: BenchReport) -> list[int]:
    return sorted({n for m in report.models for n in m.prompt_lengths})


def _bar_group(
    ax: Axes, x: list[float], figs: list[Measured], width: float, label: str, color: str
) -> None:
    """Bars at the medians, error bars from min to max; the median written at the foot."""
    heights = [f.median for f in figs]
    err = [[f.median - f.min for f in figs], [f.max - f.median for f in figs]]
    ax.bar(x, heights, width, yerr=err, capsize=3, label=label, color=color)
    for xi, f in zip(x, figs):
        ax.annotate(
            f"{f.median:.0f}",
            (xi, 0),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=7,
            color="white",
            weight="bold",
        )


def _prefill_axes(ax: Axes, report: BenchReport) -> None:
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


def _decode_axes(ax: Axes, report: BenchReport) -> None:
    for i, m in enumerate(report.models):
        _bar_group(ax, [i], [m.decode_tps], 0.6, m.name, f"C{i}")
        bound = m.decode_bound_tps
        ax.hlines(bound, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
        ax.annotate(
            f"bound {bound:.0f}\n({m.share_of_bound.median:.0%} reached)",
            (i, bound),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            va="bottom",
            fontsize=7,
            bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )
    ax.set_xticks(range(len(report.models)), [m.name for m in report.models], fontsize=7)
    ax.set_title(
        f"decode, {report.params.decode_tokens} tokens\n(dashed: bandwidth bound)", fontsize=10
    )
    ax.set_ylabel("tokens / s")
    top = max(max(m.decode_tps.max, m.decode_bound_tps) for m in report.models)
    ax.set_ylim(0, top * 1.25)
    ax.grid(axis="y", alpha=0.3)


# -- needle ---------------------------------------------------------------------------------


def needle_heatmap(report: NeedleReport, path: str | os.PathLike) -> Path:
    """Recall as a depth x length grid (green: found, red: missed) in a PNG file."""
    # rows: depths (start at the top), columns: lengths; depths are uneven, so rows are labels
    grid = [
        [report.recall[j][i] for j in range(len(report.lengths))] for i in range(len(report.depths))
    ]
    fig = _figure(
        max(4.8, 1.8 + 0.9 * len(report.lengths)),
        1.6 + 0.38 * len(report.depths),
        dpi=100,
        layout="tight",
    )
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(report.lengths)), [_tokens_label(n) for n in report.lengths])
    ax.set_yticks(range(len(report.depths)), [f"{d * 100:g}%" for d in report.depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, r in enumerate(row):
            ax.text(j, i, f"{r:.2g}", ha="center", va="center", fontsize=8)
    name = report.model if len(report.model) <= 40 else report.model[:39] + "…"
    ax.set_title(
        f"{name}: needle recall, {report.trials} trial(s)\n"
        f"edges {_num(report.edges_recall)} (start {_num(report.start_recall)}, end "
        f"{_num(report.end_recall)}), middle {_num(report.middle_recall)}",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.05, label="recall")
    return _save(fig, path)


def _tokens_label(n: int) -> str:
    return f"{n / 1024:g}k" if n >= 1024 and n % 256 == 0 else str(n)


# -- quantization budget --------------------------------------------------------------------


def budget_chart(choice: BudgetChoice, path: str | os.PathLike) -> Path:
    """A PNG of file size against mean KL divergence (log scale) for every type measured,
    with the budget as a vertical line and the winner ringed."""
    from matplotlib.ticker import FuncFormatter

    fig = _figure(8, 5, dpi=110)
    ax = fig.subplots()
    measured = [c for c in choice.candidates if c.quality is not None]
    points = [(c.size_bytes / 1e6, max(c.quality.kld_mean, KLD_FLOOR)) for c in measured]
    for i, (c, (x, y)) in enumerate(zip(measured, points)):
        ax.scatter([x], [y], color="C0" if c.fits else "C7", zorder=3)
        ax.annotate(
            c.type, (x, y), textcoords="offset points", xytext=(10, 8 - 16 * (i % 2)), fontsize=8
        )
        if c.type == choice.winner.quality.type:
            ax.scatter(
                [x],
                [y],
                s=220,
                facecolors="none",
                edgecolors="C3",
                linewidths=2,
                zorder=4,
                label=f"chosen: {c.type}",
            )
    budget_mb = choice.budget_bytes / 1e6
    ax.axvline(budget_mb, color="C3", linestyle="--", label=f"budget {budget_mb:.1f} MB")
    xs, ys = [x for x, _ in points] + [budget_mb], [y for _, y in points]
    ax.set_xlim(min(xs) * 0.95, max(xs) * 1.05)
    ax.set_yscale("log")
    ax.set_ylim(min(ys) / 3, max(ys) * 3)  # at least a decade, so the log axis has ticks
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel(f"mean KL divergence vs {choice.reference} (log)")
    q = choice.winner.quality
    ax.set_title(
        f"{choice.parent}: file size against KL divergence, budget {budget_mb:g} MB\n"
        f"({q.tokens} tokens of {q.eval_text}; grey: over the budget)",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
