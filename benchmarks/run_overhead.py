#!/usr/bin/env python3
"""What pocketlm costs on top of llama.cpp: decode speed and start-up, measured in one run.

Prints, for one model (--model, default the 135M test model; greedy decoding, the same
chat-formatted prompt):
  - decode tok/s of `pocketlm run` (its own --json stats: tokens after the first over the
    time after the first, in a fresh process),
  - decode tok/s of two bare llama-cpp-python loops on the same file, measured the same way:
    the high-level `Llama.generate` iterator and a minimal loop over the C API
    (llama_decode + llama_sampler_sample),
  - the ratio of pocketlm to the faster bare loop (target: >= 0.97),
  - time from process start to the first byte of the answer on stdout for
    `pocketlm run MODEL` with the model already pulled (target: < 1.5 s), and for
    `pocketlm run` with no model named (the default follows the machine: on a 2-core
    machine the 1.5B, whose load and prefill take longer).
Runs alternate between the contenders so that machine noise hits all of them alike.

Usage: python benchmarks/run_overhead.py [--model M] [--rounds 5] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import default_model_path, median, spread, threads  # noqa: E402

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."

BARE = r"""
import json, sys, time, ctypes
import llama_cpp as ll
path, prompt_tokens, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[5]
n_max, n_threads = int(sys.argv[3]), int(sys.argv[4])
quiet = ll.llama_log_callback(lambda *a: None)  # kept referenced: llama.cpp calls it later
ll.llama_log_set(quiet, ctypes.c_void_p(0))
times = []
if mode == "high":
    from llama_cpp import Llama
    llm = Llama(path, n_ctx=4096, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    vocab = ll.llama_model_get_vocab(llm.model)
    for tok in llm.generate(prompt_tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
        times.append(time.perf_counter())
        if ll.llama_vocab_is_eog(vocab, tok) or len(times) >= n_max:
            break
else:
    mp = ll.llama_model_default_params()
    model = ll.llama_model_load_from_file(path.encode(), mp)
    vocab = ll.llama_model_get_vocab(model)
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 4096, 512, n_threads, n_threads
    cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama() sets it
    ctx = ll.llama_init_from_model(model, cp)
    smpl = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(smpl, ll.llama_sampler_init_greedy())
    arr = (ll.llama_token * len(prompt_tokens))(*prompt_tokens)
    ll.llama_decode(ctx, ll.llama_batch_get_one(arr, len(prompt_tokens)))
    one = (ll.llama_token * 1)()
    buf = ctypes.create_string_buffer(64)
    while True:
        tok = ll.llama_sampler_sample(smpl, ctx, -1)
        times.append(time.perf_counter())
        if ll.llama_vocab_is_eog(vocab, tok) or len(times) >= n_max:
            break
        ll.llama_token_to_piece(vocab, tok, buf, 64, 0, False)
        one[0] = tok
        ll.llama_decode(ctx, ll.llama_batch_get_one(one, 1))
n = len(times)
print(json.dumps({"tokens": n, "decode_tps": (n - 1) / (times[-1] - times[0]) if n > 1 else 0}))
"""


def pocketlm_decode(model: str, n_tokens: int) -> tuple[float, int]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pocketlm",
            "run",
            model,
            PROMPT,
            "--json",
            "--temperature",
            "0",
            "--repeat-penalty",
            "1",
            "--max-tokens",
            str(n_tokens),
            "--threads",
            str(threads()),
        ],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    stats = json.loads(out.stdout)["stats"]
    return stats["decode_tps"], stats["completion_tokens"]


def bare_decode(path, prompt_tokens, n_tokens: int, mode: str) -> tuple[float, int]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            BARE,
            str(path),
            json.dumps(prompt_tokens),
            str(n_tokens),
            str(threads()),
            mode,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout)
    return r["decode_tps"], r["tokens"]


def time_to_first_byte(model: str | None) -> float:
    """Process start to the first byte of the answer; ``model`` None: no model named (the
    default follows the machine)."""
    start = time.perf_counter()
    named = [model] if model else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketlm", "run", *named, "Say hello.", "--max-tokens", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    proc.stdout.read(1)
    first = time.perf_counter() - start
    proc.communicate()
    return first


def prompt_tokens(path) -> list[int]:
    import pocketlm

    with pocketlm.load(str(path), ctx=512) as m:
        return m._chat_tokens([{"role": "user", "content": PROMPT}])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="a catalog model: pocketlm and the bare loops run its file",
    )
    args = ap.parse_args()
    path = default_model_path(args.model)
    tokens = prompt_tokens(path)
    print(
        f"model {path.name}, prompt {len(tokens)} tokens, greedy, up to {args.tokens} tokens, "
        f"{threads()} threads, {args.rounds} rounds (alternating)"
    )
    results: dict[str, list[float]] = {
        "pocketlm run": [],
        "bare Llama.generate": [],
        "bare C-API loop": [],
    }
    counts = {}
    for r in range(args.rounds):
        for name, fn in (
            ("pocketlm run", lambda: pocketlm_decode(args.model, args.tokens)),
            ("bare Llama.generate", lambda: bare_decode(path, tokens, args.tokens, "high")),
            ("bare C-API loop", lambda: bare_decode(path, tokens, args.tokens, "low")),
        ):
            tps, n = fn()
            results[name].append(tps)
            counts[name] = n
        print(
            f"  round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()),
            flush=True,
        )
    print("\ndecode tok/s (median, min, max):")
    for name, xs in results.items():
        print(f"  {name:22s} {spread(xs)}   [{counts[name]} tokens]")
    best_bare = max(median(results["bare Llama.generate"]), median(results["bare C-API loop"]))
    ratio = median(results["pocketlm run"]) / best_bare
    print(
        f"ratio pocketlm / fastest bare loop: {ratio:.3f}  "
        f"(pocketlm costs {100 * (1 - ratio):+.1f}% of decode speed; target: at most 3%)"
    )
    for model, label in ((args.model, f"`pocketlm run {args.model}`"), (None, "`pocketlm run`")):
        ttfb = [time_to_first_byte(model) for _ in range(args.rounds)]
        print(
            f"process start -> first answer byte of {label} (s): median {median(ttfb):.3f} "
            f"(min {min(ttfb):.3f}, max {max(ttfb):.3f}); target < 1.5 s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
