#!/usr/bin/env python3
"""`pocketlm serve` against llama.cpp's own server (llama-server), on the same GGUF file.

For each model (default: the ladder models that are in the store, $POCKETLM_HOME), both
servers get the same file, the same threads, the same number of slots and the same
per-sequence context, and the same streaming client (OpenAI chat completions, stream=true,
the same prompts, temperature 0, max_tokens fixed). Prints per model:
  - aggregate completion tok/s (completion tokens of all clients / wall time) of 8
    concurrent clients (x8), each streaming one prompt, and of 1 client (x1) sending the
    same 8 prompts one after another, for each server;
  - the ratios pocketlm / llama-server (targets: x8 >= 1.3, x1 >= 1.0), the median of the
    per-round ratios (the ratio of the medians next to it);
  - outputs: pocketlm's greedy output for each prompt with 1 client must equal its output
    with 8 clients (its own one-sequence decoding), in every round; whether llama-server's
    greedy output equals pocketlm's, and its own x1 and x8 each other, is informative (it
    tells an engine whose kernels compute one token and a batch of tokens in different
    orders, which parts greedy outputs at near-ties, from a server that differs); prompts
    whose outputs part are listed, and every output is saved next to the server logs.
pocketlm serve runs with its defaults (speculative decoding included) unless
--pocketlm-args adds options, e.g. --pocketlm-args "--speculate off".
Each round runs the x8 pair and the x1 pair, each pair back to back (pocketlm, then
llama-server or the reverse), once the CPUs are idle (--max-wait); the order of the
servers and of the pairs rotates from round to round, so every round gives paired ratios
measured under the same machine conditions (shared machines drift by 30% and more within
minutes). Token counts are the server's (usage) where it reports them, else content chunks.
llama-server accepts ignore_eos but pocketlm does not, so neither gets it: the prompts ask
for long stories instead (the completion tokens of each prompt are printed).

llama-server is built once, into ~/.cache/pocketlm/llama-server/<version>/<baseline>/, from
the same llama.cpp source the engine was built from (the vendored tree of the
llama-cpp-python sdist) and with the same compiler flags scripts/install_engine.py uses on
this machine (see cmake_options); about 5-10 minutes on 2 cores. --baseline stock (the
default) builds that source as it is: llama.cpp's kernels, what llama-server, Ollama and
LM Studio users run, so the ratios count pocketlm's engine patches (scripts/engine-patches)
as its own, like its scheduler. --baseline patched applies those patches to llama-server
too: both servers then run the same kernels, and the ratios measure the servers alone.
Both servers listen on 127.0.0.1 only and are stopped at exit.

Usage: POCKETLM_HOME=~/.cache/pocketlm/test-store \\
       python benchmarks/vs_llama_server.py [--models a,b] [--rounds 3] [--tokens 128]
                                            [--baseline stock|patched]
       python benchmarks/vs_llama_server.py --build-only     # just build llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    Server,
    free_port,
    machine_load,
    median,
    pocketlm_serve,
    spread,
    wait_quiet,
)
from serve_throughput import chat_body, story, stream_chat  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LADDER = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
SERVERS = ("pocketlm", "llama-server")
TARGETS = {"many": 1.3, "one": 1.0}  # pocketlm / llama-server, --clients clients and 1
BATCH = 512  # prompt tokens per step, set on both servers (pocketlm's default)
# temperature 0 is greedy on both; repeat_penalty 1 switches off pocketlm's default penalty
# (1.1; llama-server's default is 1), so that both pick the likeliest token at every step.
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0}


def _install_engine():
    """scripts/install_engine.py as a module: its version, flags, source download and
    patches are what the engine was built with, so llama-server is built from them too."""
    spec = importlib.util.spec_from_file_location(
        "install_engine", ROOT / "scripts" / "install_engine.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ie = _install_engine()


BASELINES = ("stock", "patched")  # llama-server from llama.cpp as vendored / with our patches


def cache_dir(baseline: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pocketlm" / "llama-server" / ie.VERSION / baseline


def baseline_patches(baseline: str) -> list[Path]:
    """The engine patches llama-server is built with: none for the stock baseline."""
    return list(ie.PATCHES) if baseline == "patched" else []


def cmake_options() -> list[str]:
    """CMake options of the llama-server build. What the engine build does (through
    llama-cpp-python's CMakeLists and install_engine.CMAKE_ARGS), llama-server does too:
    Release, GGML_NATIVE left at its default (on: -march=native) with AMX switched off by
    the compiler flags of install_engine.build_flags(), OpenMP, CPU repacking and llamafile
    at their defaults. What differs: a static build (one self-contained binary to cache;
    the engine is shared libraries, which llama-cpp-python needs), and the web UI,
    OpenSSL and curl left out (loopback HTTP only; LLAMA_CURL is deprecated in this
    llama.cpp, which downloads through cpp-httplib, so it is not passed)."""
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",  # else the UI is downloaded at build time
        "-DLLAMA_OPENSSL=OFF",
    ]


def build_key(flags: list[str], baseline: str) -> dict:
    """What the cached binary was built from; a different key means a rebuild."""
    return {
        "version": ie.VERSION,
        "flags": flags,
        "cmake": cmake_options(),
        "patches": {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in baseline_patches(baseline)
        },
        "cpu": hashlib.sha256(ie.cpu_signature().encode()).hexdigest()[:16],
    }


def build_llama_server(baseline: str, force: bool = False) -> Path:
    """The llama-server binary, built into cache_dir(baseline) unless it is already there."""
    out = cache_dir(baseline)
    binary, info = out / "llama-server", out / "build.json"
    flags = ie.build_flags()
    key = build_key(flags, baseline)
    if not force and binary.is_file() and info.is_file():
        if json.loads(info.read_text()).get("key") == key:
            print(f"llama-server {ie.VERSION} ({baseline}): built earlier ({binary})", flush=True)
            return binary
        print("llama-server: the cached build used other flags or patches: rebuilding")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            sys.exit(f"error: building llama-server needs {tool} (apt-get install cmake g++)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=out.parent))
    log = out.parent / f"build-{baseline}.log"
    start = time.monotonic()
    try:
        print(f"llama-server {ie.VERSION}: downloading the {ie.ENGINE} source", flush=True)
        src = ie.fetch_source(tmp) / "vendor" / "llama.cpp"
        root = src.parent.parent
        for patch in baseline_patches(baseline):  # as install_engine applies them
            print(f"  applying {patch.name}", flush=True)
            ie.apply_patch(root, patch.read_text())
        env = dict(os.environ)
        env["CFLAGS"] = " ".join([env.get("CFLAGS", ""), *flags]).strip()
        env["CXXFLAGS"] = " ".join([env.get("CXXFLAGS", ""), *flags]).strip()
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        build = tmp / "build"
        print(f"  configuring (flags: {' '.join(flags) or '(native)'}; log: {log})", flush=True)
        with open(log, "w") as logf:
            _run(["cmake", "-S", str(src), "-B", str(build), *gen, *cmake_options()], env, logf)
            print("  compiling llama-server (about 5-10 minutes on 2 cores)", flush=True)
            jobs = str(os.cpu_count() or 1)  # 2 on the build machine
            _run(
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
                env,
                logf,
                progress=True,
            )
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", tmp / "llama-server")
        os.replace(tmp / "llama-server", binary)  # a complete binary only
        info.write_text(json.dumps({"key": key, "seconds": time.monotonic() - start}, indent=1))
    except ie.PatchError as e:
        sys.exit(f"error: engine patch does not apply to {ie.ENGINE} {ie.VERSION}: {e}")
    except subprocess.CalledProcessError:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(
            "error: building llama-server failed; last lines of the log:\n  " + "\n  ".join(tail)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"llama-server built in {time.monotonic() - start:.0f} s: {binary}", flush=True)
    return binary


def _run(argv: list[str], env: dict, logf, progress: bool = False) -> None:
    """Run a build step, its output to ``logf``; ``progress``: a bar from ninja/make steps."""
    logf.write(f"$ {' '.join(argv)}\n")
    logf.flush()
    bar = ie._Bar() if progress else None
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    try:
        for line in proc.stdout:
            logf.write(line)
            if bar and (m := ie._STEP.search(line)):  # ninja: [57/140], make: [ 40%]
                done, total = m.group(1, 2)
                bar(int(done) * 100 // int(total) if total else int(done))
        proc.wait()
    finally:
        if proc.poll() is None:  # Ctrl-C: stop the compiler too
            proc.kill()
            proc.wait()
    if bar:
        print(flush=True)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv)


# -- the two servers ---------------------------------------------------------------------------


def llama_server_argv(binary: Path, path: Path, name: str, port: int, n: int, ctx: int, th: int):
    """llama-server configured as `pocketlm serve --parallel n --threads th` serves a model
    whose sequences hold ``ctx`` tokens each (each flag: what it matches). Each server's
    prompt caching stays at its defaults (llama-server: slots picked by prompt similarity,
    idle slots saved to a RAM cache of 8192 MiB; pocketlm: its prefix cache, --cache-ram
    1024), as does the KV type (f16 on both)."""
    return [
        str(binary),
        "-m", str(path),  # the store's blob, the file pocketlm loads
        "--alias", name,  # the model name clients send, as pocketlm serves it
        "--host", "127.0.0.1",
        "--port", str(port),
        "-t", str(th),  # --threads: pocketlm sets n_threads ...
        "-tb", str(th),  # ... and n_threads_batch to it
        "-np", str(n),  # --parallel: sequences decoded together (slots)
        "-c", str(n * ctx),  # the KV of n sequences of ctx tokens (pocketlm: n_ctx = n x ctx)
        "--no-kv-unified",  # a KV buffer per sequence, ctx cells each (pocketlm: kv_unified
        # off); unified, any slot could fill all n x ctx cells, and attention would span them
        "--cont-batching",  # requests join the running batch (pocketlm's scheduler does)
        "-b", str(BATCH),  # --batch: n_batch (llama-server's default is 2048) ...
        "-ub", str(min(BATCH, 512)),  # ... and n_ubatch = min(batch, 512)
        "-fa", "off",  # --no-flash-attn, pocketlm's default (llama-server's is auto)
    ]  # fmt: skip


def pocketlm_argv(name: str, port: int, n: int, th: int, extra: str = "") -> list[str]:
    """`pocketlm serve`, its defaults pinned where llama-server is set to match them;
    ``extra``: more options (e.g. "--speculate off")."""
    return pocketlm_serve(
        name,
        port,
        "--parallel", str(n),
        "--queue", str(2 * n),
        "--threads", str(th),
        "--batch", str(BATCH),
        "--no-flash-attn",
        *shlex.split(extra),
    )  # fmt: skip


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """``with server``, but also stopping the process when its start is interrupted:
    Server.__enter__ leaves it running if Ctrl-C (or an error) comes while it waits for
    the server to answer, and a with-block does not call __exit__ then."""
    try:
        server.__enter__()
    except BaseException:
        server.__exit__(None, None, None)
        raise
    try:
        yield server
    finally:
        server.__exit__(None, None, None)


def pocketlm_ctx(url: str, name: str) -> int:
    """Tokens each sequence of pocketlm's server holds (its per-sequence context)."""
    for m in httpx.get(url + "/api/ps", timeout=10).json()["models"]:
        if m["name"] == name:
            return m["context_length"]
    raise RuntimeError(f"pocketlm does not serve {name} (see its log)")


def llama_ctx(url: str) -> tuple[int, int]:
    """(slots, tokens per slot) as llama-server reports them."""
    props = httpx.get(url + "/props", timeout=10).json()
    return props["total_slots"], props["default_generation_settings"]["n_ctx"]


# -- the load ------------------------------------------------------------------------------


def client_session(n: int) -> aiohttp.ClientSession:
    """serve_throughput's client, but a new connection for each request: llama-server
    answers "Keep-Alive" yet closes the connection after a streamed response, and aiohttp
    then fails to write the next request on it (curl notices and reconnects). Both servers
    get the same client; a loopback connect costs ~0.1 ms a request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=n + 4, force_close=True),
        timeout=aiohttp.ClientTimeout(total=600),
    )


def greedy_body(model: str, i: int, max_tokens: int) -> dict:
    body = chat_body(model, story(i), seed=i, max_tokens=max_tokens)  # include_usage on
    body.update(GREEDY)
    return body


async def load(url: str, model: str, clients: int, prompts: int, max_tokens: int) -> dict:
    """``prompts`` chats (story 0, 1, ...) by ``clients`` concurrent clients, each sending
    its next prompt when its last one finished; aggregate tok/s and each prompt's output."""
    todo = list(range(prompts))
    done: dict[int, dict] = {}
    async with client_session(clients) as client:

        async def client_loop() -> None:
            while todo:
                i = todo.pop(0)
                done[i] = await stream_chat(client, url, greedy_body(model, i, max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        wall = time.perf_counter() - start
    runs = [done[i] for i in range(prompts)]
    return {
        "tps": sum(r["tokens"] for r in runs) / wall,
        "tokens": [r["tokens"] for r in runs],
        "texts": [r["text"] for r in runs],
        "prompt_tokens": [(r["usage"] or {}).get("prompt_tokens") for r in runs],
        "usage": all(r["usage"] for r in runs),
    }


def measure(urls: dict[str, str], model: str, args) -> tuple[dict[str, list[dict]], float]:
    """Per configuration ("pocketlm x8", ...), one load result per round; seconds waited."""
    n = args.clients
    res: dict[str, list[dict]] = {f"{s} x{c}": [] for c in (n, 1) for s in SERVERS}
    waited = 0.0
    for r in range(args.rounds):
        servers = SERVERS if r % 2 == 0 else SERVERS[::-1]
        pairs = (n, 1) if (r // 2) % 2 == 0 else (1, n)
        for c in pairs:
            waited += wait_quiet(args.max_wait)  # then the pair back to back
            for s in servers:
                res[f"{s} x{c}"].append(asyncio.run(load(urls[s], model, c, n, args.tokens)))
        last = {k: runs[-1]["tps"] for k, runs in res.items()}
        line = "; ".join(
            f"x{c} {last[f'pocketlm x{c}']:.1f} vs {last[f'llama-server x{c}']:.1f}" for c in (n, 1)
        )
        print(
            f"  round {r + 1}/{args.rounds} ({' > '.join(servers)}, x{pairs[0]} first): "
            f"tok/s pocketlm vs llama-server: {line}",
            flush=True,
        )
    return res, waited


def bench_model(name: str, binary: Path, args, log_dir: Path) -> dict:
    """Start both servers on ``name``'s file, measure, print the model's report."""
    from pocketlm.store.store import Store

    path = Store().get(name).path
    n, th = args.clients, args.threads
    p_port = free_port()
    p_argv = pocketlm_argv(name, p_port, n, th, args.pocketlm_args)
    pocket = Server(p_argv, p_port, log=log_dir / f"{name}.pocketlm.log", start_timeout=300)
    with running(pocket):
        ctx = pocketlm_ctx(pocket.url, name)
        l_port = free_port()
        argv = llama_server_argv(binary, path, name, l_port, n, ctx, th)
        llama = Server(
            argv,
            l_port,
            log=log_dir / f"{name}.llama-server.log",
            ready_path="/health",
            start_timeout=300,
        )
        with running(llama):
            slots, l_ctx = llama_ctx(llama.url)
            print(
                f"\n{name}: {Path(path).name} ({Path(path).stat().st_size / 1e6:.0f} MB); "
                f"pocketlm: {n} sequences x {ctx} tokens; llama-server: {slots} slots x "
                f"{l_ctx} tokens\n  pocketlm {' '.join(p_argv[3:])}\n"
                f"  llama-server {' '.join(argv[1:])}",
                flush=True,
            )
            if (slots, l_ctx) != (n, ctx):
                print("  WARNING: llama-server's slots differ from pocketlm's (see above)")
            urls = {"pocketlm": pocket.url, "llama-server": llama.url}
            for url in urls.values():  # warm-up: first allocations, page cache
                asyncio.run(load(url, name, 2, 2, 8))
            res, waited = measure(urls, name, args)
    print(f"  {machine_load()}; waited {waited:.0f} s for idle CPUs")
    outputs = {k: [run["texts"] for run in runs] for k, runs in res.items()}
    (log_dir / f"{name}.outputs.json").write_text(json.dumps(outputs, indent=1))
    return report(name, res, args)


# -- the report ------------------------------------------------------------------------------


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def same_outputs(runs: list[dict], ref: list[str]) -> int:
    """Prompts whose output is ``ref``'s in every run."""
    return sum(all(run["texts"][i] == want for run in runs) for i, want in enumerate(ref))


def output_groups(res: dict[str, list[dict]], i: int) -> list[str]:
    """Prompt ``i``'s runs grouped by output ("pocketlm x1 r1, ..."), each group after the
    first with the character where it departs from the first."""
    groups: dict[str, list[str]] = {}
    for k, runs in res.items():
        for r, run in enumerate(runs):
            groups.setdefault(run["texts"][i], []).append(f"{k} r{r + 1}")
    texts = list(groups)
    return [
        ", ".join(groups[t]) + (f" (from character {first_difference(t, texts[0])})" if j else "")
        for j, t in enumerate(texts)
    ]


def report(name: str, res: dict[str, list[dict]], args) -> dict:
    n = args.clients
    tps = {k: [x["tps"] for x in runs] for k, runs in res.items()}
    print("  aggregate tok/s (median, min, max):")
    for k, xs in tps.items():
        print(f"    {k:18s} {spread(xs)}")
    out = {"model": name}
    print("  pocketlm / llama-server: median of the per-round ratios [ratio of the medians]")
    for c, load_name in ((n, "many"), (1, "one")):
        p, q = tps[f"pocketlm x{c}"], tps[f"llama-server x{c}"]
        per_round = [a / b for a, b in zip(p, q)]
        ratio, target = median(per_round), TARGETS[load_name]
        out[load_name] = (median(p), median(q), ratio)
        print(
            f"    x{c:<3d} {ratio:5.2f} [{median(p) / median(q):.2f}] (target >= {target}: "
            f"{'ok' if ratio >= target else 'MISSED'}) (rounds: "
            f"{', '.join(f'{x:.2f}' for x in per_round)})"
        )
    ref = res["pocketlm x1"][0]["texts"]
    same = same_outputs(res[f"pocketlm x{n}"] + res["pocketlm x1"], ref)
    out["identical"] = same == n
    print(
        f"  pocketlm greedy output, 1 client = {n} clients, every round: {same}/{n} prompts "
        f"({'ok' if same == n else 'DIFFERS'})"
    )
    l_runs = res[f"llama-server x{n}"] + res["llama-server x1"]
    print(
        f"  llama-server = pocketlm (greedy, every run): {same_outputs(l_runs, ref)}/{n} "
        f"prompts; llama-server x1 = its x{n}, every round: "
        f"{same_outputs(l_runs, l_runs[-1]['texts'])}/{n} (informative)"
    )
    for i in range(n):
        if len(groups := output_groups(res, i)) > 1:
            print(f"    prompt {i}: " + " | ".join(groups))
    for k in (f"pocketlm x{n}", f"llama-server x{n}"):
        run = res[k][0]
        counted = "usage" if run["usage"] else "content chunks"
        print(
            f"  {k:18s} round 1: completion tokens per prompt ({counted}) {run['tokens']}, "
            f"prompt tokens {run['prompt_tokens']}"
        )
    return out


def summary(rows: list[dict], args) -> None:
    n = args.clients
    print(
        f"\nsummary against llama-server {args.baseline} (tok/s medians; ratio = median of "
        f"per-round ratios, {args.rounds} rounds)"
    )
    print(
        f"  {'model':30s} {'pocketlm x' + str(n):>12s} {'llama x' + str(n):>10s} {'ratio':>6s}"
        f" {'pocketlm x1':>12s} {'llama x1':>9s} {'ratio':>6s}  x1 = x{n} (pocketlm)"
    )
    for row in rows:
        (p8, l8, r8), (p1, l1, r1) = row["many"], row["one"]
        print(
            f"  {row['model']:30s} {p8:12.1f} {l8:10.1f} {r8:6.2f} {p1:12.1f} {l1:9.1f} "
            f"{r1:6.2f}  {'yes' if row['identical'] else 'NO'}"
        )
    print(f"  targets: x{n} ratio >= {TARGETS['many']}, x1 ratio >= {TARGETS['one']}")


def pick_models(names: str | None) -> list[str]:
    from pocketlm.errors import PocketError
    from pocketlm.store.store import Store

    store = Store()
    if names is None:
        found = [m for m in LADDER if store.find(m) is not None]
        if not found:
            sys.exit(
                f"error: none of {', '.join(LADDER)} is in the store ({store.root}); run "
                f"`pocketlm pull {LADDER[0]}`, or set POCKETLM_HOME to a store that has them"
            )
        return found
    chosen = [m.strip() for m in names.split(",") if m.strip()]
    for m in chosen:
        try:
            store.get(m)
        except PocketError as e:
            sys.exit(f"error: {e} (store: {store.root})")
    return chosen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help=f"comma-separated store names (default: {','.join(LADDER)}"
                    ", those in the store)")  # fmt: skip
    ap.add_argument(
        "--rounds", type=int, default=3, help="paired rounds (the ratios: their median)"
    )
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens of each request")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (and slots)")
    ap.add_argument("--threads", type=int, default=2, help="threads of each server")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=600,
        help="before each pair of runs, wait up to this many seconds for other processes "
        "to leave the CPUs idle (0: do not wait)",
    )
    ap.add_argument(
        "--pocketlm-args",
        default="",
        help='more options for `pocketlm serve` (e.g. "--speculate off"); default: none',
    )
    ap.add_argument(
        "--baseline",
        choices=BASELINES,
        default="stock",
        help="llama-server from llama.cpp as vendored (stock, default: what its users run) or "
        "with pocketlm's engine patches (patched: the same kernels, the servers alone)",
    )
    ap.add_argument("--build-only", action="store_true", help="build llama-server, then stop")
    ap.add_argument("--rebuild", action="store_true", help="build llama-server again")
    args = ap.parse_args()
    for flag, least in (("rounds", 1), ("tokens", 1), ("clients", 2), ("threads", 1)):
        if getattr(args, flag) < least:
            ap.error(f"--{flag} must be at least {least}")
    models = [] if args.build_only else pick_models(args.models)
    binary = build_llama_server(args.baseline, args.rebuild)
    if args.build_only:
        return 0
    log_dir = Path(tempfile.mkdtemp(prefix="vs_llama_server-"))
    print(
        f"{', '.join(models)}: llama-server {args.baseline}; {args.threads} threads, "
        f"{args.clients} slots; x{args.clients}: "
        f"{args.clients} clients at once, x1: 1 client, the same {args.clients} prompts; "
        f"temperature 0, max_tokens {args.tokens}; {args.rounds} rounds; server logs in "
        f"{log_dir}",
        flush=True,
    )
    rows = [bench_model(m, binary, args, log_dir) for m in models]
    summary(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
