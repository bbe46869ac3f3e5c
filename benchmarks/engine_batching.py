#!/usr/bin/env python3
"""How llama.cpp's throughput grows with parallel sequences, on one model: one run.

For 1, 2, 4, 8 and 16 sequences decoding together (one token of each per llama_decode, as
the server steps them; a KV buffer per sequence, 2 threads) prints the engine's tok/s, and
the prefill rate of one 256-token prompt. The default model's weights are Q4_1: with the
stock llama.cpp every token column of a batch unpacks every weight block again
(ggml_vec_dot_q4_1_q8_1), so 8 sequences decode only ~2x faster than one; pocketlm's engine
patch (scripts/engine-patches/0001-q4_1-batched-matmul.patch) unpacks each block once per
4 x 4 tile. --model names another catalog model (pulled if needed): the Qwen2.5-Coder
Q4_K_M files measure patch 0002 (batched Q6_K) and 0003 (the Q4_K gemm).

With --baseline-python PY (an interpreter whose llama-cpp-python is a stock build, e.g. a
venv where `pip install llama-cpp-python==0.3.36` built it with the same -mno-amx-* flags),
both engines are measured: each configuration on both back to back, their order alternating
(shared machines drift by 30% and more within minutes), and the medians of the paired ratios
installed / baseline are printed, with a PNG plot (--plot, default engine_batching.png).

Usage: python benchmarks/engine_batching.py [--model NAME] [--rounds 5] [--baseline-python PY]
       [--plot F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import default_model_path, median, threads  # noqa: E402

SEQS = (1, 2, 4, 8, 16)

CHILD = r"""
import ctypes, json, sys, time
import llama_cpp as ll
quiet = ll.llama_log_callback(lambda *a: None)
ll.llama_log_set(quiet, ctypes.c_void_p(0))
path, n_threads, seqs, steps = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), 64
model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
vocab = ll.llama_model_get_vocab(model)
n_max = max(*seqs, 8)  # at least the server's 8 KV buffers
cp = ll.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 1024 * n_max, 512, 512, n_max
cp.kv_unified, cp.n_threads, cp.n_threads_batch = False, n_threads, n_threads
cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
ctx = ll.llama_init_from_model(model, cp)
mem = ll.llama_get_memory(ctx)
batch = ll.llama_batch_init(512, 0, 1)
def put(i, tok, pos, seq, logits):
    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
    batch.seq_id[i][0], batch.logits[i] = seq, logits
text = b"The lighthouse keeper watched the storm roll in from the sea. " * 24
buf = (ll.llama_token * 1024)()
n = min(ll.llama_tokenize(vocab, text, len(text), buf, 1024, True, False), 256)
out = {}
for i in range(n):
    put(i, buf[i], i, 0, i == n - 1)
batch.n_tokens = n
ll.llama_decode(ctx, batch)  # warm-up
ll.llama_memory_clear(mem, True)
t = time.perf_counter()
assert ll.llama_decode(ctx, batch) == 0
out["prefill"] = n / (time.perf_counter() - t)
for n_seq in seqs:
    ll.llama_memory_clear(mem, True)
    for s in range(n_seq):  # a 32-token prompt each (not timed)
        for i in range(32):
            put(i, buf[(i + 7 * s) % n], i, s, False)
        batch.n_tokens = 32
        assert ll.llama_decode(ctx, batch) == 0
    spent = 0.0
    for step in range(steps):
        for s in range(n_seq):
            put(s, buf[(step + s) % n], 32 + step, s, True)
        batch.n_tokens = n_seq
        t = time.perf_counter()
        assert ll.llama_decode(ctx, batch) == 0
        spent += time.perf_counter() - t
    out[str(n_seq)] = n_seq * steps / spent
print(json.dumps(out))
"""


def measure(python: str, path: Path, n_seq: int) -> dict:
    r = subprocess.run(
        [python, "-c", CHILD, str(path), str(threads()), json.dumps([n_seq])],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(f"error: the engine run failed ({python}): {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="catalog model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-python", help="interpreter with a stock llama-cpp-python build")
    ap.add_argument("--plot", default="engine_batching.png", help="PNG plot (with a baseline)")
    args = ap.parse_args()
    path = default_model_path(args.model)
    engines = {"installed": sys.executable}
    if args.baseline_python:
        engines["baseline"] = args.baseline_python
    print(
        f"model {args.model} ({path.name}), {threads()} threads, {args.rounds} rounds", flush=True
    )
    keys = ["prefill", *map(str, SEQS)]
    runs: dict[str, dict[str, list[float]]] = {e: {k: [] for k in keys} for e in engines}
    for r in range(args.rounds):
        # each configuration runs on both engines back to back (their order alternating), so
        # each pair is measured seconds apart
        for i, n_seq in enumerate(SEQS):
            names = list(engines) if (r + i) % 2 == 0 else list(engines)[::-1]
            for name in names:
                got = measure(engines[name], path, n_seq)
                runs[name][str(n_seq)].append(got[str(n_seq)])
                if n_seq == 1:
                    runs[name]["prefill"].append(got["prefill"])
        for name in engines:
            row = runs[name]
            print(
                f"  round {r + 1} {name:9s}: prefill {row['prefill'][-1]:.0f} tok/s; decode "
                + ", ".join(f"x{s} {row[str(s)][-1]:.0f}" for s in SEQS),
                flush=True,
            )
    med = {e: {k: median(v) for k, v in rows.items()} for e, rows in runs.items()}
    print("\ntok/s, median of the rounds (min-max):")
    print("| engine | prefill (256 tokens) | " + " | ".join(f"{s} seq" for s in SEQS) + " |")
    print("|---|" + "---|" * len(keys))
    for name, rows in runs.items():
        cells = [f"{med[name][k]:.0f} ({min(rows[k]):.0f}-{max(rows[k]):.0f})" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, rows in runs.items():
        per_round = [a / b for a, b in zip(rows["8"], rows["1"])]
        print(
            f"{name}: 8 sequences / 1 = x{med[name]['8'] / med[name]['1']:.2f} "
            f"(median per round x{median(per_round):.2f}), "
            f"16 / 1 = x{med[name]['16'] / med[name]['1']:.2f}"
        )
    if "baseline" in runs:
        ratios = {
            k: median([a / b for a, b in zip(runs["installed"][k], runs["baseline"][k])])
            for k in keys
        }
        print(
            "installed / baseline (median of paired ratios): "
            + ", ".join(
                f"{k if k == 'prefill' else k + ' seq'} x{v:.2f}" for k, v in ratios.items()
            )
        )
        plot(med, Path(args.plot), args.model)
        print(f"plot: {args.plot}")
    return 0


def plot(med: dict, out: Path, model: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = {"baseline": "stock llama.cpp (--baseline-python)", "installed": "installed engine"}
    for name, style in (("baseline", "o--"), ("installed", "o-")):
        ax.plot(SEQS, [med[name][str(s)] for s in SEQS], style, label=labels[name])
    ax.set_xscale("log", base=2)
    ax.set_xticks(SEQS, [str(s) for s in SEQS])
    ax.set_xlabel("sequences decoding together")
    ax.set_ylabel("tok/s (all sequences)")
    ax.set_title(f"{model}, {threads()} threads: decode throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
