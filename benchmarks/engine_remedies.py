#!/usr/bin/env python3
"""Which AMX remedy decodes faster? Measured in one run, on the default model and a Q4_0 copy.

On this machine's CPU (AMX advertised under virtualization) a default llama.cpp build
segfaults at the first batched decode. Two remedies work (shared/docs/FACTS.md):
  1. build without AMX (pocketlm's install: -march=native plus -mno-amx-*), keeping
     llama.cpp's extra buffer types, i.e. CPU weight repacking;
  2. a default native build, loading models with use_extra_bufts = False (no AMX, and no
     repacking either).
Remedy 2 runs the same kernels as remedy 1 with repacking switched off, so this script
measures both on the installed engine: extra buffer types on (remedy 1) and off (remedy 2).
With --native-python PY (an interpreter whose llama-cpp-python is a default native build),
remedy 2 is also measured on that real build.

Usage: python benchmarks/engine_remedies.py [--rounds 3] [--native-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import default_model_path, median, spread, threads  # noqa: E402

CHILD = r"""
import ctypes, json, sys, time
import llama_cpp as ll
quiet = ll.llama_log_callback(lambda *a: None)
ll.llama_log_set(quiet, ctypes.c_void_p(0))
path, extra, n_threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
mp = ll.llama_model_default_params()
mp.use_extra_bufts = extra
model = ll.llama_model_load_from_file(path.encode(), mp)
vocab = ll.llama_model_get_vocab(model)
cp = ll.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 2048, 512, n_threads, n_threads
cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
ctx = ll.llama_init_from_model(model, cp)
text = b"The lighthouse keeper watched the storm roll in from the sea. " * 24
buf = (ll.llama_token * 1024)()
n = ll.llama_tokenize(vocab, text, len(text), buf, 1024, True, False)
t = time.perf_counter()
ll.llama_decode(ctx, ll.llama_batch_get_one(buf, n))
prefill = n / (time.perf_counter() - t)
smpl = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
ll.llama_sampler_chain_add(smpl, ll.llama_sampler_init_greedy())
one = (ll.llama_token * 1)()
steps = 128
t = time.perf_counter()
for _ in range(steps):
    one[0] = ll.llama_sampler_sample(smpl, ctx, -1)
    ll.llama_decode(ctx, ll.llama_batch_get_one(one, 1))
decode = steps / (time.perf_counter() - t)
print(json.dumps({"prefill": prefill, "decode": decode, "prompt": n}))
"""


def measure(python: str, path: Path, extra: bool) -> dict | None:
    proc = subprocess.run(
        [python, "-c", CHILD, str(path), str(int(extra)), str(threads())],
        capture_output=True,
        text=True,
    )
    if proc.returncode < 0:
        return None  # killed by a signal: this configuration crashes here
    proc.check_returncode()
    return json.loads(proc.stdout)


def q4_0_copy(src: Path, dst: Path) -> Path:
    import llama_cpp as ll

    from pocketlm.engine.llama import init_backend

    init_backend()  # llama.cpp's log goes to pocketlm's (silent) handler
    params = ll.llama_model_quantize_default_params()
    params.ftype = ll.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise SystemExit(f"error: quantizing to Q4_0 failed ({rc})")
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--native-python", help="interpreter with a default (native) build")
    args = ap.parse_args()
    src = default_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "SmolLM2-135M Q4_1 (default)": src,
            "same model requantized to Q4_0": q4_0_copy(src, Path(tmp, "q4_0.gguf")),
        }
        configs = {
            "remedy 1: no-AMX build, repacking on": (sys.executable, True),
            "remedy 2: no extra buffer types": (sys.executable, False),
        }
        if args.native_python:
            configs["remedy 2 on a default native build"] = (args.native_python, False)
            configs["default native build, as is"] = (args.native_python, True)
        results = {(m, c): {"prefill": [], "decode": []} for m in models for c in configs}
        crashed = set()
        for r in range(args.rounds):
            for m, path in models.items():
                for c, (py, extra) in configs.items():
                    if (m, c) in crashed:
                        continue
                    out = measure(py, path, extra)
                    if out is None:
                        crashed.add((m, c))
                        continue
                    results[m, c]["prefill"].append(out["prefill"])
                    results[m, c]["decode"].append(out["decode"])
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
    print(f"\n{threads()} threads; tok/s as median (min, max) over {args.rounds} runs")
    for m in models:
        print(f"\n{m}:")
        for c in configs:
            if (m, c) in crashed:
                print(f"  {c:40s} CRASHED (killed by a signal)")
                continue
            x = results[m, c]
            print(f"  {c:40s} decode  {spread(x['decode'])}")
            print(f"  {'':40s} prefill {spread(x['prefill'])}")
        one = median(results[m, list(configs)[0]]["decode"])
        two = median(results[m, list(configs)[1]]["decode"])
        p1 = median(results[m, list(configs)[0]]["prefill"])
        p2 = median(results[m, list(configs)[1]]["prefill"])
        print(f"  remedy 1 / remedy 2: decode x{one / two:.2f}, prefill x{p1 / p2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
