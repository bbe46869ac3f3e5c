"""Each chart drawn from a made-up report: a PNG file of the chart's size, with content."""

from __future__ import annotations

import pytest
from PIL import Image

from pocketlm.errors import PocketError
from pocketlm.params import LoadParams
from pocketlm.services import charts
from pocketlm.services.evaluate.bench import BenchParams, BenchReport, Figure, ModelBench
from pocketlm.services.evaluate.needle import NeedleReport
from pocketlm.services.quantize.budget import BudgetChoice, Candidate
from pocketlm.services.quantize.quantize import Quantized
from pocketlm.services.quantize.report import QualityReport
from pocketlm.store.manifest import Manifest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def figure(*values: float) -> Figure:
    return Figure(tuple(values))


def model_bench(name: str, speed: float) -> ModelBench:
    return ModelBench(
        name=name,
        path=f"/m/{name}.gguf",
        sha256=None,
        quantization="Q8_0",
        size_bytes=10**8,
        tensor_data_bytes=9 * 10**7,
        n_ctx=2048,
        threads=2,
        prompt_lengths=(128, 512),
        decode_tokens=64,
        load_s=figure(0.1, 0.2),
        warmup_s=figure(0.01, 0.02),
        prefill_tps={128: figure(900, 1000), 512: figure(700, 800)},
        ttft_s={128: figure(0.13, 0.14), 512: figure(0.6, 0.7)},
        decode_tps=figure(speed, speed * 1.1),
        base_rss_bytes=figure(5e7, 5e7),
        peak_rss_bytes=figure(2e8, 2.1e8),
        bandwidth_bytes_per_s=2e10,
        bytes_per_token=10**8,
    )


def quality(qtype: str, size: int, kld: float) -> QualityReport:
    return QualityReport(
        type=qtype,
        size_bytes=size,
        bpw=4.5,
        kld_mean=kld,
        kld_p99=kld * 9,
        top1_agreement=0.9,
        ppl=10.0,
        ppl_ref=9.5,
        ppl_delta=0.5,
        decode_tps=None,
        tokens=512,
        window=256,
        reference="wide",
        eval_text="calibration.txt",
        seconds=1.0,
    )


def check_png(path, width: int, height: int) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (width, height)
        assert sum(1 for n in img.convert("L").histogram() if n) > 10  # drawn on, not blank


def test_bench_chart(tmp_path):
    report = BenchReport(
        BenchParams(repeat=2),
        LoadParams(),
        machine={"cpu": "Test CPU"},
        models=[model_bench("a", 150.0), model_bench("b", 90.0)],
    )
    path = charts.bench_chart(report, tmp_path / "bench.png")
    assert path == tmp_path / "bench.png"
    check_png(path, 1210, 528)  # 11 x 4.8 inches at 110 dpi


def test_needle_heatmap_makes_its_folder(tmp_path):
    report = NeedleReport(
        lengths=[256, 512, 1024],
        depths=[0.0, 0.5, 1.0],
        recall=[[1.0, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 0.0, 1.0]],
        edges_recall=0.67,
        middle_recall=0.17,
        start_recall=0.67,
        end_recall=0.67,
        mean_recall=0.5,
        trials=2,
        seed=0,
        model="tiny",
        n_ctx=2048,
        prompt_format="chat",
        haystack="generated",
        seconds=1.0,
    )
    path = charts.needle_heatmap(report, tmp_path / "new" / "needle.png")
    check_png(path, 480, 274)  # (max(4.8, 1.8 + 0.9 * 3) x (1.6 + 0.38 * 3)) inches at 100 dpi


def test_budget_chart(tmp_path):
    manifest = Manifest(
        name="wide-q4_k_m",
        path="/m/w.gguf",
        source="derived:quantize:wide",
        sha256="00" * 32,
        size_bytes=5 * 10**6,
        architecture="llama",
        parameter_count=10**6,
        quantization="Q4_K_M",
        bits_per_weight=4.9,
    )
    cands = [
        Candidate("Q5_K_M", 6 * 10**6, 6 * 10**6, False, quality("Q5_K_M", 6 * 10**6, 0.01)),
        Candidate("Q4_K_M", 5 * 10**6, 5 * 10**6, True, quality("Q4_K_M", 5 * 10**6, 0.02)),
        Candidate("Q2_0", 3 * 10**6, 3 * 10**6, True, quality("Q2_0", 3 * 10**6, 0.0)),
        Candidate("IQ1_S", 2 * 10**6, error="cannot"),
    ]
    winner = Quantized(manifest, "wide", False, None, cands[1].quality, seconds=3.0)
    choice = BudgetChoice(5_500_000, "wide", "wide", cands, {}, {}, winner, seconds=3.0)
    check_png(charts.budget_chart(choice, tmp_path / "budget.png"), 880, 550)  # 8 x 5 at 110 dpi


def test_an_unwritable_path_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    report = BenchReport(BenchParams(), LoadParams(), models=[model_bench("a", 100.0)])
    with pytest.raises(PocketError, match="cannot write"):
        charts.bench_chart(report, blocker / "chart.png")
