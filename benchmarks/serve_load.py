#!/usr/bin/env python3
"""`pocketlm serve` under overload: many clients, a full queue, clients that hang up. One run.

Starts `pocketlm serve --parallel 8 --queue 16` on the default model, warms it up with the
same load, then lets 64 clients loop for 60 s, each sending a random mix of streaming and
non-streaming chat and text completions (OpenAI and Ollama routes, short max_tokens), some
of them hanging up mid-stream on purpose. A client that gets 503 waits a random part of its
Retry-After. Prints a table per kind of request, then checks:
  - no 5xx other than 503, and every 503 carries Retry-After;
  - no hung connection (client timeout 60 s) and no stream that ends without its final
    event ([DONE], or Ollama's "done": true) unless the client hung up;
  - the server's RSS (VmRSS) after the run is within 5% of its RSS after the warm-up, less
    what the prefix cache's RAM tier holds (it fills up to --cache-ram by design, and
    /metrics reports it as pocketlm_prompt_cache_ram_bytes);
  - /metrics returns to pocketlm_active_sequences 0 and pocketlm_queue_depth 0;
  - the server's own request counters match what the clients saw.

Usage: python benchmarks/serve_load.py [--clients 64] [--seconds 60] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    Server,
    default_model_path,
    free_port,
    machine_load,
    percentile,
    pocketlm_serve,
    rss_bytes,
    scrape,
    sse_data,
    threads,
)

MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "Tell me about the sea.",
    "What is a lighthouse?",
    "Write a haiku about snow.",
    "Name three colours.",
    "Why is the sky blue?",
    "Describe a busy market.",
    "Give me a recipe for bread.",
    "What do cats like?",
]
# kind: (weight, route, streaming, hang up after a few chunks)
KINDS = {
    "chat stream": (25, "/v1/chat/completions", True, False),
    "chat": (15, "/v1/chat/completions", False, False),
    "completion stream": (15, "/v1/completions", True, False),
    "completion": (10, "/v1/completions", False, False),
    "chat stream, hang up": (15, "/v1/chat/completions", True, True),
    "ollama chat stream": (10, "/api/chat", True, False),
    "ollama generate stream, hang up": (5, "/api/generate", True, True),
    "ollama generate": (5, "/api/generate", False, False),
}


@dataclass
class Tally:
    sent: int = 0
    status: collections.Counter = field(default_factory=collections.Counter)
    timeouts: int = 0
    conn_errors: int = 0
    hung_up: int = 0  # on purpose
    truncated: int = 0  # stream ended without its final event
    stream_errors: int = 0  # an error event inside a 200 stream
    no_retry_after: int = 0
    tokens: int = 0
    latency: list[float] = field(default_factory=list)  # of 200s that completed
    examples: list[str] = field(default_factory=list)  # bodies of 5xx, errors

    def note(self, what: str) -> None:
        if len(self.examples) < 3:
            self.examples.append(what[:400])


def body_for(kind: str, rng: random.Random) -> dict:
    _, route, stream, _ = KINDS[kind]
    q = rng.choice(QUESTIONS)
    n = rng.randint(4, 24)
    if route == "/v1/chat/completions":
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": q}],
            "max_tokens": n,
            "stream": stream,
            "seed": rng.randrange(2**31),
        }
    if route == "/v1/completions":
        return {
            "model": MODEL,
            "prompt": f"Question: {q}\nAnswer:",
            "max_tokens": n,
            "stream": stream,
            "seed": rng.randrange(2**31),
        }
    if route == "/api/chat":
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": q}],
            "stream": stream,
            "options": {"num_predict": n, "seed": rng.randrange(2**31)},
        }
    return {
        "model": MODEL,
        "prompt": q,
        "stream": stream,
        "options": {"num_predict": n, "seed": rng.randrange(2**31)},
    }


async def one_request(
    client: httpx.AsyncClient, url: str, kind: str, rng: random.Random, t: Tally
) -> float:
    """Send one request of ``kind``; returns seconds to wait before the next (503)."""
    _, route, stream, hang_up = KINDS[kind]
    body = body_for(kind, rng)
    ollama = route.startswith("/api")
    start = time.perf_counter()
    t.sent += 1
    try:
        async with client.stream("POST", url + route, json=body) as r:
            t.status[r.status_code] += 1
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                if r.status_code == 503:
                    retry = r.headers.get("retry-after")
                    if retry is None:
                        t.no_retry_after += 1
                        t.note(f"503 without Retry-After: {text}")
                    return rng.uniform(0, float(retry or 1))
                t.note(f"{r.status_code} on {route} {json.dumps(body)}: {text}")
                return 0.0
            if not stream:
                obj = json.loads(await r.aread())
                t.tokens += (
                    (obj.get("usage") or {}).get("completion_tokens") or obj.get("eval_count") or 0
                )
                t.latency.append(time.perf_counter() - start)
                return 0.0
            chunks, pieces, finished, stop_after = 0, 0, False, rng.randint(1, 4)
            async for line in r.aiter_lines():
                data = line.strip() if ollama else sse_data(line)
                if not data:
                    continue
                if data == "[DONE]":
                    finished = True
                    break
                obj = json.loads(data)
                if "error" in obj:
                    t.stream_errors += 1
                    t.note(f"error event on {route} {json.dumps(body)}: {data}")
                    continue
                chunks += 1
                choice = (obj.get("choices") or [{}])[0]
                pieces += bool(choice.get("text") or (choice.get("delta") or {}).get("content"))
                if ollama and obj.get("done"):
                    t.tokens += obj.get("eval_count", 0)
                    finished = True
                    break
                if hang_up and chunks >= stop_after:
                    t.hung_up += 1
                    return 0.0  # leaving the block closes the connection mid-stream
            if not ollama:
                t.tokens += pieces  # a content chunk per token (pieces of UTF-8 may merge)
            if finished:
                t.latency.append(time.perf_counter() - start)
            else:
                t.truncated += 1
                t.note(f"stream ended without its final event on {route} {json.dumps(body)}")
    except httpx.TimeoutException:
        t.timeouts += 1
        t.note(f"timeout on {route} {json.dumps(body)}")
    except httpx.HTTPError as e:
        t.conn_errors += 1
        t.note(f"{type(e).__name__} on {route} {json.dumps(body)}: {e}")
    return 0.0


async def client_loop(
    i: int, url: str, deadline: float, tallies: dict[str, Tally], timeout: float
) -> None:
    rng = random.Random(i)
    kinds, weights = list(KINDS), [k[0] for k in KINDS.values()]
    async with httpx.AsyncClient(timeout=timeout) as client:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            wait = await one_request(client, url, kind, rng, tallies[kind])
            if wait:
                await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0)))


async def run_load(url: str, n: int, seconds: float, timeout: float) -> dict[str, Tally]:
    tallies = {k: Tally() for k in KINDS}
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client_loop(i, url, deadline, tallies, timeout) for i in range(n)))
    return tallies


def wait_idle(url: str, limit: float = 30.0) -> float | None:
    """Seconds until active sequences and queue depth are both 0; None if never."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        m = scrape(url)
        if m.get("pocketlm_active_sequences") == 0 and m.get("pocketlm_queue_depth") == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def server_status_counts(before: dict, after: dict) -> collections.Counter:
    """Requests per status the server counted on the generation routes between two scrapes."""
    counts: collections.Counter = collections.Counter()
    routes = {r for _, r, _, _ in KINDS.values()}
    for key, value in after.items():
        if not key.startswith("pocketlm_requests_total{"):
            continue
        labels = dict(p.split("=", 1) for p in key[key.index("{") + 1 : -1].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("path") in routes:
            counts[int(labels["status"])] += value - before.get(key, 0)
    return counts


def counts_agree(server: collections.Counter, clients: collections.Counter, unseen: int) -> bool:
    extra = {k: server[k] - clients[k] for k in set(server) | set(clients)}
    return all(v >= 0 for v in extra.values()) and sum(extra.values()) <= unseen


def table(tallies: dict[str, Tally]) -> None:
    head = (
        f"{'kind':32s} {'sent':>5s} {'200':>5s} {'503':>5s} {'4xx':>4s} {'5xx':>4s} "
        f"{'t/o':>4s} {'conn':>4s} {'hung':>5s} {'trunc':>5s} {'err':>4s} {'tokens':>6s} "
        f"{'p50 s':>6s} {'p95 s':>6s}"
    )
    print(head)
    print("-" * len(head))
    total = Tally()
    for kind, t in [*tallies.items(), ("total", total)]:
        if kind != "total":
            total.status.update(t.status)
            for f in (
                "sent",
                "timeouts",
                "conn_errors",
                "hung_up",
                "truncated",
                "stream_errors",
                "tokens",
                "no_retry_after",
            ):
                setattr(total, f, getattr(total, f) + getattr(t, f))
            total.latency += t.latency
        s4 = sum(v for k, v in t.status.items() if 400 <= k < 500)
        s5 = sum(v for k, v in t.status.items() if k >= 500 and k != 503)
        print(
            f"{kind:32s} {t.sent:5d} {t.status[200]:5d} {t.status[503]:5d} {s4:4d} {s5:4d} "
            f"{t.timeouts:4d} {t.conn_errors:4d} {t.hung_up:5d} {t.truncated:5d} "
            f"{t.stream_errors:4d} {t.tokens:6d} {percentile(t.latency, 50):6.2f} "
            f"{percentile(t.latency, 95):6.2f}"
        )
    tallies["total"] = total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=20, help="seconds of the same load first")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=60, help="client timeout (s)")
    args = ap.parse_args()
    default_model_path()  # pulled, if it is not
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="serve_load-")) / "pocketlm.log"
    argv = pocketlm_serve(
        MODEL,
        port,
        "--parallel",
        str(args.parallel),
        "--queue",
        str(args.queue),
        "--threads",
        str(threads()),
    )
    print(
        f"{' '.join(argv[1:])}\n{args.clients} clients, {args.warmup:.0f} s warm-up, then "
        f"{args.seconds:.0f} s; client timeout {args.timeout:.0f} s; server log {log}; "
        f"{machine_load()}",
        flush=True,
    )
    with Server(argv, port, log=log) as server:
        asyncio.run(run_load(server.url, args.clients, args.warmup, args.timeout))
        idle_warm = wait_idle(server.url)
        rss0, m0 = rss_bytes(server.pid), scrape(server.url)
        start = time.perf_counter()
        tallies = asyncio.run(run_load(server.url, args.clients, args.seconds, args.timeout))
        wall = time.perf_counter() - start
        idle = wait_idle(server.url)
        rss1, m1 = rss_bytes(server.pid), scrape(server.url)
        alive = server.proc.poll() is None
        after = (
            httpx.post(
                server.url + "/v1/chat/completions",
                timeout=60,
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 4,
                },
            ).status_code
            if alive
            else None
        )
    print(
        f"\nrun took {wall:.1f} s (the last requests finish after the deadline); {machine_load()}\n"
    )
    table(tallies)
    total = tallies.pop("total")
    bad5 = sum(v for k, v in total.status.items() if k >= 500 and k != 503)
    counted = server_status_counts(m0, m1)
    client_seen = collections.Counter(total.status)
    cache0, cache1 = (m.get("pocketlm_prompt_cache_ram_bytes", 0.0) for m in (m0, m1))
    growth = ((rss1 - cache1) - (rss0 - cache0)) / (rss0 - cache0)
    unseen = total.timeouts + total.conn_errors
    checks = [
        ("no 5xx other than 503", bad5 == 0, f"{bad5} such responses"),
        (
            "every 503 carries Retry-After",
            total.no_retry_after == 0,
            f"{total.status[503]} x 503, {total.no_retry_after} without it",
        ),
        ("no hung connection (client timeout)", total.timeouts == 0, f"{total.timeouts} timeouts"),
        ("no connection error", total.conn_errors == 0, f"{total.conn_errors} errors"),
        (
            "no stream cut short by the server",
            total.truncated == 0,
            f"{total.truncated} streams without their final event",
        ),
        (
            "no error event inside a 200 stream",
            total.stream_errors == 0,
            f"{total.stream_errors} error events",
        ),
        (
            "RSS less the RAM tier's entries within 5% (after warm-up -> after run)",
            abs(growth) <= 0.05,
            f"{(rss0 - cache0) / 2**20:.1f} -> {(rss1 - cache1) / 2**20:.1f} MiB "
            f"({100 * growth:+.1f}%); RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB, RAM tier "
            f"{cache0 / 2**20:.1f} -> {cache1 / 2**20:.1f} MiB",
        ),
        (
            "/metrics back to 0 active, 0 queued",
            idle is not None,
            f"after {idle:.1f} s"
            if idle is not None
            else f"active {m1.get('pocketlm_active_sequences')}, "
            f"queue {m1.get('pocketlm_queue_depth')} after 30 s",
        ),
        (
            "server counted what the clients saw (requests that timed out or broke may count "
            "on the server only)",
            counts_agree(counted, client_seen, unseen),
            f"server {dict(sorted(counted.items()))}, clients {dict(sorted(client_seen.items()))}",
        ),
        ("server alive and answering after the run", after == 200, f"status {after}"),
    ]
    print(
        f"\nwarm-up load went idle after {idle_warm} s; tokens generated during the run: "
        f"{m1.get('pocketlm_generated_tokens_total', 0) - m0.get('pocketlm_generated_tokens_total', 0):.0f} "  # noqa: E501
        f"({total.tokens} seen by clients that read to the end)\n"
    )
    for name, ok, detail in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")
    examples = [e for t in tallies.values() for e in t.examples]
    if examples:
        print("\nexamples of failures:")
        for e in examples:
            print("  " + e)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
