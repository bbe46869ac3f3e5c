#!/usr/bin/env python3
"""What `pocketlm serve` delivers to concurrent clients, against llama.cpp alone: one run.

On the default model (SmolLM2-135M-Instruct Q4_1), prints:
  - aggregate tok/s (completion tokens of all clients / wall time) of 8 concurrent clients,
    each streaming up to 128 tokens of a chat completion (temperature 0.8, distinct seeds),
    against `pocketlm serve --parallel 8`; the same with 1 client alone; the same 8-client
    load against llama-cpp-python's own server (one request at a time) on the same file;
  - the engine's ceiling for 8 sequences: tok/s of llama_decode on 8-token batches (one
    token of each of 8 sequences) in a bare C-API loop, same file, threads and context
    layout as the server (a KV buffer per sequence, flash attention as --flash-attn);
  - the ratios pocketlm x8 / pocketlm x1 (target >= 2), pocketlm x8 / llama_cpp.server x8
    (target >= 2), pocketlm x8 / ceiling (target >= 0.85), and p50/p95 time to first token
    (request sent -> first content chunk, client side) of the 8-client run;
  - prefix cache: time to first token of a chat whose ~1,500-token system prompt the server
    has never seen (a random nonce opens it), then of a second chat with the same system
    prompt and another question, and their ratio (target <= 0.15);
  - what cached prefixes cost: 1-client tok/s on the fresh server, then again after 7 other
    sequences finished ~1,500-token prompts that stay cached.
Each round runs every configuration once the CPUs are idle (other processes would share
them: --max-wait). pocketlm x8, pocketlm x1 and the ceiling run back to back (their order
rotated from round to round), so each round gives paired ratios measured under the same
machine conditions: shared machines drift by 30% and more within minutes, far more than
the differences measured. The verdicts use the median of the per-round ratios; the ratio
of the medians is printed next to it. Token counts are the server's (usage) where it
reports them, else content chunks.

Usage: python benchmarks/serve_throughput.py [--rounds 5] [--tokens 128] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    Server,
    count_tokens,
    default_model_path,
    free_port,
    machine_load,
    median,
    percentile,
    pocketlm_serve,
    spread,
    sse_data,
    threads,
    wait_quiet,
)

MODEL = "smollm2-135m-instruct"
TOPICS = [
    "a lighthouse keeper and a storm",
    "a dragon who collects clocks",
    "two rival bakers in Paris",
    "a robot learning to paint",
    "a ship lost in the ice",
    "a detective in a floating city",
    "a garden that grows at night",
    "a musician who hears colours",
]
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.1}
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CEILING = r"""
import ctypes, json, sys, time
import llama_cpp as ll
quiet = ll.llama_log_callback(lambda *a: None)
ll.llama_log_set(quiet, ctypes.c_void_p(0))
path, prompts, n_threads, steps, n_ctx_seq, flash = sys.argv[1], json.loads(sys.argv[2]), \
    int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "on"
n_seq = len(prompts)
model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
vocab = ll.llama_model_get_vocab(model)
cp = ll.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx_seq * n_seq, 512, 512, n_seq
cp.kv_unified, cp.n_threads, cp.n_threads_batch = False, n_threads, n_threads  # as the server
cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else \
    ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
ctx = ll.llama_init_from_model(model, cp)
batch = ll.llama_batch_init(512, 0, 1)
def put(i, tok, pos, seq, logits):
    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
    batch.seq_id[i][0], batch.logits[i] = seq, logits
pos = []
for s, text in enumerate(prompts):  # prefill each sequence (not timed)
    data = text.encode()
    buf = (ll.llama_token * 512)()
    n = ll.llama_tokenize(vocab, data, len(data), buf, 512, False, True)
    for i in range(n):
        put(i, buf[i], i, s, i == n - 1)
    batch.n_tokens = n
    assert ll.llama_decode(ctx, batch) == 0
    pos.append(n)
samplers = []
for s in range(n_seq):
    sm = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(sm, ll.llama_sampler_init_greedy())
    samplers.append(sm)
decode_s = 0.0
for step in range(steps):
    for s in range(n_seq):
        # step 0: the prefills' logits are gone (one batch each): start from a newline
        tok = ll.llama_sampler_sample(samplers[s], ctx, s) if step else 198
        put(s, tok, pos[s], s, True)
        pos[s] += 1
    batch.n_tokens = n_seq
    t = time.perf_counter()
    assert ll.llama_decode(ctx, batch) == 0
    decode_s += time.perf_counter() - t
print(json.dumps({"tps": n_seq * steps / decode_s, "tokens": n_seq * steps}))
"""


def chat_body(
    model: str,
    question: str,
    seed: int,
    max_tokens: int,
    system: str | None = None,
    usage: bool = True,
) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "seed": seed,
        **SAMPLING,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def story(i: int) -> str:
    return (
        f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}. Describe every "
        "character and every place, and do not stop early."
    )


async def stream_chat(client: aiohttp.ClientSession, url: str, body: dict) -> dict:
    """One streamed chat completion: tokens received, time to first content, end time."""
    sent = time.perf_counter()
    first, chunks, usage, text = None, 0, None, ""
    async with client.post(url + "/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.read())[:300]!r}")
        async for line in r.content:  # SSE lines
            data = sse_data(line.decode())
            if not data or data == "[DONE]":
                continue
            obj = json.loads(data)
            usage = obj.get("usage") or usage
            for choice in obj.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    chunks += 1
                    text += piece
                    if first is None:
                        first = time.perf_counter() - sent
    tokens = usage["completion_tokens"] if usage else chunks
    return {
        "tokens": tokens,
        "chunks": chunks,
        "ttft": first,
        "sent": sent,
        "end": time.perf_counter(),
        "usage": usage,
        "text": text,
    }


def session(n: int = 4) -> aiohttp.ClientSession:
    """The load generator's HTTP client. It runs on the cores the servers use, so it should
    cost little: aiohttp (C parser) took 0.09 CPU-s for 8 x 128 streamed tokens where httpx
    took 0.25."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=n + 4), timeout=aiohttp.ClientTimeout(total=600)
    )


async def concurrent_load(
    url: str, model: str, n: int, max_tokens: int, seed0: int, usage: bool
) -> dict:
    async with session(n) as client:
        bodies = [chat_body(model, story(i), seed0 + i, max_tokens, usage=usage) for i in range(n)]
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(client, url, b) for b in bodies))
        wall = time.perf_counter() - start
    tokens = [r["tokens"] for r in results]
    return {
        "tps": sum(tokens) / wall,
        "wall": wall,
        "tokens": tokens,
        "ttft": [r["ttft"] for r in results if r["ttft"] is not None],
    }


def filler(model_path: Path, target: int) -> str:
    """Deterministic prose of about ``target`` tokens (checked with the model's tokenizer)."""
    rng = random.Random(1500)
    nouns = (
        "river mountain harbour engine lantern archive orchard market bridge council "
        "tower garden library compass winter signal valley forest"
    ).split()
    verbs = "guards records crosses repairs watches measures follows describes".split()
    adjs = "old quiet northern busy careful distant narrow bright".split()
    sentences: list[str] = []
    text = ""
    while count_tokens(model_path, text) < target:
        for _ in range(10):
            sentences.append(
                f"The {rng.choice(adjs)} {rng.choice(nouns)} "
                f"{rng.choice(verbs)} the {rng.choice(adjs)} {rng.choice(nouns)} "
                f"near the {rng.choice(nouns)}."
            )
        text = "Background notes for this conversation. " + " ".join(sentences)
    while count_tokens(model_path, text) > target + 10 and sentences:
        sentences.pop()
        text = "Background notes for this conversation. " + " ".join(sentences)
    return text


async def prefix_pair(url: str, model: str, notes: str) -> dict:
    """TTFT of a chat with an unseen ~1,500-token system prompt, then of a second chat
    that shares it (a different question)."""
    system = f"Session {secrets.token_hex(8)}. Use these notes when you answer.\n{notes}"
    async with session() as client:
        a = await stream_chat(
            client, url, chat_body(model, "What does the old river guard?", 1, 8, system)
        )
        b = await stream_chat(
            client, url, chat_body(model, "Name one thing near the tower.", 2, 8, system)
        )
    return {
        "first": a["ttft"],
        "second": b["ttft"],
        "prompt_tokens": (a["usage"] or {}).get("prompt_tokens"),
    }


async def cached_prefixes_cost(
    url: str, model: str, notes: str, n_fill: int, tokens: int
) -> tuple[float, float]:
    """1-client tok/s on a fresh server, then again once ``n_fill`` other sequences have
    finished ~1,500-token prompts (their KV stays cached for prefix reuse)."""
    before = (await concurrent_load(url, model, 1, tokens, 7, True))["tps"]
    async with session() as client:
        await asyncio.gather(
            *(
                stream_chat(
                    client,
                    url,
                    chat_body(model, "Hello.", i, 1, f"Session {secrets.token_hex(8)}.\n{notes}"),
                )
                for i in range(n_fill)
            )
        )
    after = (await concurrent_load(url, model, 1, tokens, 7, True))["tps"]
    return before, after


def ceiling(path: Path, n_seq: int, steps: int, n_ctx_seq: int, flash: str) -> float:
    prompts = [
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{story(i)}"
        "<|im_end|>\n<|im_start|>assistant\n"
        for i in range(n_seq)
    ]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CEILING,
            str(path),
            json.dumps(prompts),
            str(threads()),
            str(steps),
            str(n_ctx_seq),
            flash,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)["tps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens of each client")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (and --parallel)")
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    ap.add_argument(
        "--flash-attn",
        choices=("on", "off"),
        default="off",
        help="the server's --flash-attn (the ceiling uses the same)",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=600,
        help="before each measurement, wait up to this many seconds for other "
        "processes to leave the CPUs idle (0: do not wait)",
    )
    args = ap.parse_args()
    path = default_model_path()
    n, th = args.clients, threads()
    notes = filler(path, args.prefix_tokens)
    log_dir = Path(tempfile.mkdtemp(prefix="serve_throughput-"))
    p_port, l_port = free_port(), free_port()
    fa = ["--flash-attn"] if args.flash_attn == "on" else []
    pocket = Server(
        pocketlm_serve(
            MODEL, p_port, "--parallel", str(n), "--queue", "16", "--threads", str(th), *fa
        ),
        p_port,
        log=log_dir / "pocketlm.log",
    )
    llama = Server(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(path),
            "--model_alias",
            MODEL,
            "--n_ctx",
            "4096",
            "--n_threads",
            str(th),
            "--n_threads_batch",
            str(th),
            "--port",
            str(l_port),
            "--host",
            "127.0.0.1",
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
        ],
        l_port,
        log=log_dir / "llama_cpp_server.log",
    )
    print(
        f"model {path.name}, {th} threads, {n} clients x up to {args.tokens} tokens, "
        f"{args.rounds} rounds, flash attention {args.flash_attn}; server logs in {log_dir}",
        flush=True,
    )
    print(
        f"system prompt for the prefix test: {count_tokens(path, notes)} tokens of filler "
        "(+ a nonce line)",
        flush=True,
    )
    res: dict[str, list] = {
        k: [] for k in ("pocketlm x8", "pocketlm x1", "llama_cpp.server x8", "ceiling", "prefix")
    }
    with pocket, llama:
        asyncio.run(concurrent_load(pocket.url, MODEL, 2, 8, 0, True))  # warm-up
        asyncio.run(concurrent_load(llama.url, MODEL, 1, 8, 0, False))
        wait_quiet(args.max_wait)
        clean, cached = asyncio.run(
            cached_prefixes_cost(pocket.url, MODEL, notes, n - 1, args.tokens)
        )
        print(
            f"  1 client on a fresh server {clean:.1f} tok/s; after {n - 1} other sequences "
            f"finished {args.prefix_tokens}-token prompts (kept for prefix reuse) "
            f"{cached:.1f} tok/s (x{cached / clean:.2f})",
            flush=True,
        )
        runs = {
            "pocketlm x8": lambda r: asyncio.run(
                concurrent_load(pocket.url, MODEL, n, args.tokens, 100 * r, True)
            ),
            "pocketlm x1": lambda r: asyncio.run(
                concurrent_load(pocket.url, MODEL, 1, args.tokens, 100 * r, True)
            ),
            "llama_cpp.server x8": lambda r: asyncio.run(
                concurrent_load(llama.url, MODEL, n, args.tokens, 100 * r, False)
            ),
            "ceiling": lambda r: ceiling(path, n, args.tokens, 4096, args.flash_attn),
            "prefix": lambda r: asyncio.run(prefix_pair(pocket.url, MODEL, notes)),
        }
        paired, rest = ["pocketlm x8", "pocketlm x1", "ceiling"], ["llama_cpp.server x8", "prefix"]
        waited = 0.0
        tps_keys = ("pocketlm x8", "pocketlm x1", "llama_cpp.server x8")
        for r in range(args.rounds):
            first = r % len(paired)
            order = paired[first:] + paired[:first] + (rest if r % 2 == 0 else rest[::-1])
            for name in order:
                if name in rest or name == order[0]:
                    waited += wait_quiet(args.max_wait)
                res[name].append(runs[name](r))
            line = ", ".join(f"{k} {res[k][-1]['tps']:.1f}" for k in tps_keys)
            pre = res["prefix"][-1]
            print(
                f"  round {r + 1}/{args.rounds} ({' > '.join(order)}): {line}, "
                f"ceiling {res['ceiling'][-1]:.1f} tok/s; prefix TTFT "
                f"{pre['first']:.3f} -> {pre['second']:.3f} s",
                flush=True,
            )
            for k in ("pocketlm x8", "llama_cpp.server x8"):
                ttft = res[k][-1]["ttft"]
                print(
                    f"      {k} tokens per client: {res[k][-1]['tokens']}, TTFT median "
                    f"{median(ttft):.3f} s, max {max(ttft):.3f} s"
                )
    print(f"\nat the end: {machine_load()}; waited {waited:.0f} s in all for idle CPUs")
    report(res, args)
    print(
        f"\n1 client, fresh server: {clean:.1f} tok/s; with {n - 1} finished "
        f"{args.prefix_tokens}-token prompts cached: {cached:.1f} tok/s (x{cached / clean:.2f})"
    )
    return 0


def report(res: dict, args) -> None:
    tps = {
        k: [x["tps"] for x in res[k]] for k in ("pocketlm x8", "pocketlm x1", "llama_cpp.server x8")
    }
    tps["ceiling (bare 8-token batches)"] = res["ceiling"]
    print("\naggregate tok/s (median, min, max):")
    for k, xs in tps.items():
        print(f"  {k:32s} {spread(xs)}")

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    x8 = tps["pocketlm x8"]
    print("\nratios: median of the per-round ratios [ratio of the medians] (per round)")
    for label, other, target in (
        ("pocketlm x8 / pocketlm x1", tps["pocketlm x1"], 2.0),
        ("pocketlm x8 / llama_cpp.server x8", tps["llama_cpp.server x8"], 2.0),
        ("pocketlm x8 / ceiling", res["ceiling"], 0.85),
    ):
        per_round = [a / b for a, b in zip(x8, other)]
        ratio = median(per_round)
        rounds = ", ".join(f"{x:.2f}" for x in per_round)
        print(
            f"  {label:34s} {ratio:5.2f} [{median(x8) / median(other):.2f}] "
            f"(target >= {target}: {verdict(ratio >= target)}) ({rounds})"
        )
    for k in ("pocketlm x8", "pocketlm x1", "llama_cpp.server x8"):
        ttft = [t for x in res[k] for t in x["ttft"]]
        toks = [t for x in res[k] for t in x["tokens"]]
        print(
            f"{k:20s} TTFT p50 {percentile(ttft, 50):.3f} s, p95 {percentile(ttft, 95):.3f} s "
            f"(n={len(ttft)}); tokens per client: median {median(toks):.0f}, "
            f"min {min(toks)}, max {max(toks)}"
        )
    first = [x["first"] for x in res["prefix"]]
    second = [x["second"] for x in res["prefix"]]
    ratio = median(second) / median(first)
    print(f"\nprefix cache ({res['prefix'][0]['prompt_tokens']} prompt tokens in the first chat):")
    print(f"  TTFT, system prompt never seen  (s): {spread(first)}")
    print(f"  TTFT, same system prompt again  (s): {spread(second)}")
    print(f"  ratio second / first: {ratio:.3f}  (target <= 0.15: {verdict(ratio <= 0.15)})")


if __name__ == "__main__":
    sys.exit(main())
