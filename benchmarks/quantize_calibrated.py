"""Calibrated quantization against llama.cpp's default quantizer, type for type.

Every file is made from the same F32 source (the default model dequantized) and measured
against that F32 source on held-out text, with pocketlm's perplexity/KL-divergence code:

    default     llama.cpp's quantizer as `llama_model_quantize` runs it (no importance matrix)
    imatrix     llama.cpp given pocketlm's activation statistics as its importance matrix
    calibrated  the same plus GPTQ: `pocketlm quantize --calibrate`

All three of an experiment have the same tensor types, hence the same tensor bytes (the
calibrated files carry a few metadata keys more). Experiments:

    Q4_0   llama.cpp's Q4_0 file: every matrix Q4_0 (the tied embedding Q8_0)
    Q2_K   ffn_down Q2_K, every other matrix Q8_0: the 2-bit type alone (SmolLM2's other
           matrices have 576 columns, which 256-value K-quant blocks cannot split)
    Q3_K   the same with ffn_down Q3_K
    Q2_K_file  llama.cpp's Q2_K file for SmolLM2: ffn_down Q3_K, the rest Q4_0 (fallbacks)

    .venv/bin/python benchmarks/quantize_calibrated.py                # Q4_0 and Q2_K
    .venv/bin/python benchmarks/quantize_calibrated.py --experiments Q4_0,Q2_K,Q3_K,Q2_K_file

Calibration text: pocketlm/data/calibration.txt (shipped). Held-out text: the docstrings of
standard-library modules and this repository's README and docs (nothing of it in the
calibration text). Expect minutes per file on 2 busy cores: the F32 reference is slow.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_cpp as ll  # noqa: E402
from _common import default_model_path, threads  # noqa: E402

from pocketlm.engine.llama import Model, init_backend  # noqa: E402
from pocketlm.services.evaluate.perplexity import run_perplexity  # noqa: E402
from pocketlm.services.quantize import calibrated  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EVAL_MODULES = (
    "textwrap",
    "shutil",
    "tarfile",
    "zipfile",
    "configparser",
    "difflib",
    "heapq",
    "calendar",
    "enum",
    "typing",
    "inspect",
    "pickle",
    "random",
    "string",
    "socket",
)


@dataclass(frozen=True)
class Experiment:
    file_type: str
    overrides: dict[str, str] | None
    what: str


EXPERIMENTS = {
    "Q4_0": Experiment("Q4_0", None, "every matrix Q4_0"),
    "Q2_K": Experiment("Q2_K", {"ffn_down": "Q2_K", r"blk\.": "Q8_0"}, "ffn_down Q2_K, rest Q8_0"),
    "Q3_K": Experiment(
        "Q3_K_S", {"ffn_down": "Q3_K", r"blk\.": "Q8_0"}, "ffn_down Q3_K, rest Q8_0"
    ),
    "Q2_K_file": Experiment("Q2_K", None, "llama.cpp's Q2_K file"),
}


def docstrings(modules: tuple[str, ...]) -> str:
    """The module docstrings and the longer public docstrings of ``modules``: English prose
    about code, the same on every machine with this Python."""
    out = []
    for name in modules:
        module = importlib.import_module(name)
        if module.__doc__:
            out.append(inspect.cleandoc(module.__doc__))
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200:
                out.append(doc)
    return "\n\n".join(out)


def held_out_text() -> str:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return "\n\n".join([docstrings(EVAL_MODULES), *(p.read_text() for p in docs)])


def measure(path: Path, ref: Model, text: str, args) -> dict:
    model = Model(str(path))
    try:
        r = run_perplexity(
            model,
            text,
            window=512,
            reference=ref,
            threads=args.threads,
            max_tokens=args.eval_tokens,
        )
    finally:
        model.close()
    return {
        "size": path.stat().st_size,
        "kld": r.kld_mean,
        "kld_p99": r.kld_p99,
        "top1": r.top1_agreement,
        "ppl": r.ppl,
        "ppl_ref": r.ppl_ref,
        "tokens": r.tokens,
    }


def run_experiment(
    name: str, f32: Path, stats, calib: str, ref: Model, held_out: str, work: Path, args
) -> dict:
    exp = EXPERIMENTS[name]
    ftype = calibrated.FILE_TYPES[exp.file_type]
    files = {v: work / f"{name}-{v}.gguf" for v in ("default", "imatrix", "calibrated")}
    calibrated._llama_quantize(f32, files["default"], ftype, args.threads, {}, exp.overrides)
    variants = (
        ["default", "calibrated"] if args.no_imatrix else ["default", "imatrix", "calibrated"]
    )
    summary = {}
    for v in variants[1:]:
        t0 = time.perf_counter()
        s = calibrated.quantize_calibrated(
            f32,
            files[v],
            exp.file_type,
            calib,
            threads=args.threads,
            gptq=v == "calibrated",
            overrides=exp.overrides,
            activations=stats,
        )
        summary[v] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "tensors_gptq": s["tensors_gptq"],
            "output_error": s["output_error"],
        }
    out = {"experiment": name, "what": exp.what, "file_type": exp.file_type, "summary": summary}
    for v in variants:
        out[v] = measure(files[v], ref, held_out, args)
        print(f"  {name:9s} {v:10s} " + fmt_row(out[v]), flush=True)
    return out


def fmt_row(r: dict) -> str:
    return (
        f"size {r['size']:>11,d}  KLD {r['kld']:.4f}  p99 {r['kld_p99']:.3f}  "
        f"top-1 {100 * r['top1']:5.1f}%  ppl {r['ppl']:7.3f} (F32 {r['ppl_ref']:.3f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="GGUF to start from (default: the default model)")
    ap.add_argument(
        "--experiments", default="Q4_0,Q2_K", help=f"comma-separated, of {', '.join(EXPERIMENTS)}"
    )
    ap.add_argument("--calibration", type=Path, default=REPO / "pocketlm/data/calibration.txt")
    ap.add_argument("--calib-tokens", type=int, default=calibrated.CALIBRATION_TOKENS)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=threads())
    ap.add_argument("--no-imatrix", action="store_true", help="skip the llama.cpp+imatrix files")
    ap.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        ap.error(
            f"unknown experiment(s) {', '.join(unknown)}: choose from {', '.join(EXPERIMENTS)}"
        )
    init_backend()
    calib, held_out = args.calibration.read_text(), held_out_text()
    overlap = [p for p in held_out.split("\n\n") if len(p) > 80 and p in calib]
    if overlap:
        sys.exit(f"the held-out text shares {len(overlap)} paragraphs with the calibration text")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = args.model or default_model_path()
        f32 = work / "f32.gguf"
        calibrated._llama_quantize(src, f32, ll.LLAMA_FTYPE_ALL_F32, args.threads, {})
        print(
            f"source {src.name} -> F32 reference {f32.stat().st_size:,d} bytes; calibration "
            f"{args.calibration.name}, held-out text {len(held_out):,d} chars",
            flush=True,
        )
        t0 = time.perf_counter()
        stats = calibrated.calibrate(f32, calib, threads=args.threads, max_tokens=args.calib_tokens)
        n_tok = max(s.tokens for s in stats.values())
        print(
            f"activations: {n_tok} calibration tokens, {time.perf_counter() - t0:.0f} s", flush=True
        )
        ref = Model(str(f32))
        results = [run_experiment(n, f32, stats, calib, ref, held_out, work, args) for n in names]
        ref.close()
    print("\nexperiment  what                        variant     KLD      reduction  top-1   ppl")
    for r in results:
        base = r["default"]["kld"]
        for v in ("default", "imatrix", "calibrated"):
            if v in r:
                red = "" if v == "default" else f"{100 * (1 - r[v]['kld'] / base):+.1f}%"
                print(
                    f"{r['experiment']:10s}  {r['what']:26s}  {v:10s}  {r[v]['kld']:.4f}  "
                    f"{red:>9s}  {100 * r[v]['top1']:5.1f}%  {r[v]['ppl']:.3f}  "
                    f"({r[v]['size']:,d} bytes)"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
