#!/usr/bin/env python3
"""Fuzz `pocketlm serve` from its own OpenAPI document (schemathesis + hypothesis). One run.

Starts `pocketlm serve --parallel 2 --ctx 512` on a tiny random model (tests/tinymodel.py)
with a throw-away store and POCKETLM_OFFLINE=1 (so /api/pull never reaches a package index),
reads /openapi.json, and for every operation in it sends --examples requests generated from
the schema (valid ones) and as many generated against it (invalid ones). In two requests of
three that carry a "model" field, it is set to the tiny model's path, so generation runs
and not only the 404 path. Requests are sent one at a time, so every traceback the server
logs is attributed to the request that caused it.

Reports, per operation, the requests made and their status codes, then every finding with
the smallest request that produced it, as a curl command (for bugs, shrunk: keys, items and
text are dropped while the same finding still shows):
  - a 5xx response (a server bug whatever the input);
  - a traceback in the server log (e.g. an exception after a 200 had started);
  - a stream that ends without its final event ([DONE]; Ollama: "done": true or "error"),
    or a 200 JSON body that does not parse;
  - a 503 (requests go one at a time, so the server is idle: such a request can never
    succeed), or a 503 without Retry-After;
  - an error body not in the API's shape (OpenAI: {"error": {"message": ...}} under /v1;
    Ollama: {"error": "..."} under /api);
  - a request that timed out (--timeout): a hang if the server is still busy --timeout s
    later (it is then restarted, and the run goes on), or a server that died.
Then checks that /metrics returns to 0 active sequences and 0 queued requests.

Usage: python benchmarks/serve_fuzz.py [--examples 100] [--seed 0] [--timeout 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed
from hypothesis.errors import Unsatisfiable

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import Server, free_port, pocketlm_serve, rss_bytes, scrape  # noqa: E402

from tests.tinymodel import write_tiny_gguf  # noqa: E402

NOT_EXCEPTION = ("The above exception", "During handling", "ERROR:", "WARNING:", "INFO:")


@dataclass
class Finding:
    kind: str
    op: str
    detail: str
    count: int = 0
    smallest: dict | None = None  # transport kwargs of the smallest request seen
    response: str = ""
    reduced: dict | None = None  # after shrinking

    def add(self, request: dict, response: str) -> None:
        self.count += 1
        if self.smallest is None or size(request) < size(self.smallest):
            self.smallest, self.response = request, response


@dataclass
class OpStats:
    status: collections.Counter = field(default_factory=collections.Counter)
    by_mode: collections.Counter = field(default_factory=collections.Counter)
    timeouts: int = 0


REDUCE = ("5xx", "hang", "server traceback", "broken stream", "503 on an idle server",
          "503 without Retry-After", "invalid JSON body")  # fmt: skip


class Fuzzer:
    def __init__(self, server: Server, tiny: Path, log: Path, timeout: float):
        self.server, self.tiny, self.log, self.timeout = server, str(tiny), log, timeout
        self.stats: dict[str, OpStats] = collections.defaultdict(OpStats)
        self.findings: dict[tuple, Finding] = {}
        self.session = requests.Session()
        self.dead = False
        self.restarts = 0  # after a hang

    def classify(self, req: dict) -> tuple[int | None, list[tuple[str, str]], str]:
        """Send one request; returns its status (None: no answer), the problems seen as
        (kind, detail), and the response text."""
        log_at = self.log.stat().st_size
        try:
            r = self.session.request(**req, timeout=self.timeout)
        except requests.Timeout:
            state = self.wait_idle(self.timeout)
            if state == "idle":
                return None, [("timeout", "no answer in --timeout s (idle again later)")], ""
            self.restarts += 1
            self.server.__exit__(None, None, None)
            self.server.__enter__()
            if state == "stuck":
                why = "no answer in --timeout s; then busy, evaluating nothing (restarted it)"
                return None, [("hang", why)], ""
            return None, [("timeout", "no answer in --timeout s; still generating --timeout s "
                                      "later (restarted it)")], ""  # fmt: skip
        except requests.RequestException as e:
            alive = self.server.proc.poll() is None
            self.dead = not alive
            return None, [("connection", f"{type(e).__name__} (server alive: {alive})")], str(e)
        op = f"{req['method']} {req['url'][len(self.server.url) :]}"
        text = r.content.decode("utf-8", "replace")
        problems = []
        tracebacks = new_exceptions(self.log, log_at)
        if r.status_code >= 500 and r.status_code != 503:
            why = "; ".join(tracebacks) or error_message(text)
            problems.append(("5xx", f"HTTP {r.status_code}: {why}"))
            tracebacks = []
        elif r.status_code == 503:  # requests go one at a time: the server is idle
            problems.append(("503 on an idle server", error_message(text)))
            if "retry-after" not in r.headers:
                problems.append(("503 without Retry-After", error_message(text)))
        if 400 <= r.status_code < 500 and (shape := error_shape_problem(op, text)):
            problems.append(("error body shape", shape))
        if r.status_code == 200 and (broken := stream_problem(r.headers.get("content-type", ""),
                                                              text)):  # fmt: skip
            problems.append(("broken stream", broken))
        if r.status_code == 200 and "json" in r.headers.get("content-type", "") \
                and "ndjson" not in r.headers.get("content-type", ""):  # fmt: skip
            try:
                json.loads(text)
            except ValueError:
                problems.append(("invalid JSON body", text[:60]))
        problems += [("server traceback", f"{t} (response {r.status_code})") for t in tracebacks]
        return r.status_code, problems, text

    def wait_idle(self, limit: float) -> str:
        """ "idle" once /metrics shows no active sequence and an empty queue, "stuck" if the
        server is busy but evaluates no token for 3 s, "busy" if neither within ``limit`` s."""
        start, last, still_since = time.monotonic(), None, time.monotonic()
        while time.monotonic() - start < limit and self.server.proc.poll() is None:
            m = scrape(self.server.url)
            if m.get("pocketlm_active_sequences") == 0 and m.get("pocketlm_queue_depth") == 0:
                return "idle"
            done = m.get("pocketlm_prompt_tokens_total", 0) + m.get(
                "pocketlm_generated_tokens_total", 0)  # fmt: skip
            if done != last:
                last, still_since = done, time.monotonic()
            elif time.monotonic() - still_since > 3:
                return "stuck"
            time.sleep(0.5)
        return "busy"

    def send(self, case, model: str | None, mode: str) -> None:
        if self.dead:
            return
        op = case.operation.label
        if model and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = self.tiny
        req = case.as_transport_kwargs(base_url=self.server.url)
        req["headers"] = {k: v for k, v in req["headers"].items() if k.lower() == "content-type"}
        self.stats[op].by_mode[mode] += 1
        status, problems, text = self.classify(req)
        if status is None:
            self.stats[op].timeouts += problems[0][0] in ("timeout", "hang")
        else:
            self.stats[op].status[status] += 1
        for kind, detail in problems:
            key = (kind, op, detail)
            if key not in self.findings:
                self.findings[key] = Finding(kind, op, detail)
            self.findings[key].add(req, text[-600:])

    def run(self, schema, examples: int, seed: int) -> None:
        for result in schema.get_all_operations():
            op = result.ok()
            for mode in schemathesis.GenerationMode:
                started = time.perf_counter()

                @hseed(seed)
                @settings(max_examples=examples, deadline=None, database=None,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))  # fmt: skip
                @given(case=op.as_strategy(mode), model=st.sampled_from([None, "tiny", "tiny"]))
                def fuzz(case, model):
                    self.send(case, model, mode.value)

                note = ""
                try:
                    fuzz()
                except Unsatisfiable:  # e.g. no invalid request exists for a GET without input
                    note = " (the schema admits no such request)"
                n = self.stats[op.label].by_mode[mode.value]
                print(f"  {op.label:28s} {mode.value:8s} {n:4d} requests in "
                      f"{time.perf_counter() - started:5.1f} s{note}", flush=True)  # fmt: skip

    def reduce(self, budget: int, timeout: float) -> None:
        """Shrink the JSON body of each bug's smallest request while it still shows the bug."""
        self.timeout = timeout
        for f in self.findings.values():
            if f.kind not in REDUCE or "json" not in (f.smallest or {}):
                continue
            req, tries = f.smallest, 0

            def still(body) -> bool:
                nonlocal tries
                tries += 1
                _, problems, _ = self.classify({**req, "json": body})
                return (f.kind, f.detail) in problems

            body = req["json"]
            progress = True
            while progress and tries < budget:
                progress = False
                for candidate in simpler(body):
                    if tries >= budget:
                        break
                    if still(candidate):
                        body, progress = candidate, True
                        break
            f.reduced = {**req, "json": body}


def simpler(v):
    """Candidates one step simpler than a JSON value, most drastic first."""
    if isinstance(v, dict):
        for k in v:
            yield {j: x for j, x in v.items() if j != k}
        for k in v:
            for s in simpler(v[k]):
                yield {**v, k: s}
    elif isinstance(v, list):
        for i in range(len(v)):
            yield v[:i] + v[i + 1 :]
        for i in range(len(v)):
            for s in simpler(v[i]):
                yield [*v[:i], s, *v[i + 1 :]]
    elif isinstance(v, str) and v:
        yield ""
        if len(v) > 1:
            yield v[: len(v) // 2]
    elif isinstance(v, bool):
        if v:
            yield False
    elif isinstance(v, (int, float)) and v not in (0, 1):
        yield 0
        yield 1


def size(req: dict) -> int:
    return len(json.dumps(req.get("json"))) if "json" in req else len(req.get("data") or b"")


def curl(req: dict, server: str, tiny: str) -> str:
    """The request as a curl command against $SERVER, with the tiny model's path as $TINY."""
    if "json" in req:
        body = json.dumps(req["json"]).replace("'", "'\\''")
        data = "'" + body.replace(tiny, "'\"$TINY\"'") + "'"
    else:
        data = "$'" + "".join(f"\\x{b:02x}" for b in req.get("data") or b"") + "'"
    url = "$SERVER" + req["url"][len(server) :]
    ctype = req["headers"].get("Content-Type", "application/json")
    return f"curl -s -X {req['method']} {url} -H 'Content-Type: {ctype}' -d {data}"


def normalize(message: str) -> str:
    """A message with its variable parts (numbers, quoted values) blanked, to group by."""
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", message)
    return re.sub(r"\d+", "N", message)[:100]


def error_message(text: str) -> str:
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:80]
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    msg = err.get("message", err) if isinstance(err, dict) else err
    return normalize(str(msg))


def error_shape_problem(op: str, text: str) -> str | None:
    path = op.split(" ", 1)[1]
    try:
        obj = json.loads(text)
    except ValueError:
        return f"not JSON: {text[:60]!r}"
    keys = sorted(obj) if isinstance(obj, dict) else obj
    if path.startswith("/v1"):
        err = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(err, dict) or not isinstance(err.get("message"), str):
            return f"not OpenAI's error object: keys {keys}"
    elif not isinstance(obj, dict) or not isinstance(obj.get("error"), str):
        return f'not Ollama\'s {{"error": ...}}: keys {keys}'
    return None


def stream_problem(content_type: str, text: str) -> str | None:
    lines = [ln for ln in text.split("\n") if ln.strip()]  # not splitlines: U+0085 is text
    if "text/event-stream" in content_type:
        data = [ln[5:].strip() for ln in lines if ln.startswith("data:")]
        if not data or data[-1] != "[DONE]":
            return "SSE stream ends without data: [DONE]"
    elif "ndjson" in content_type:
        try:
            last = json.loads(lines[-1]) if lines else None
        except ValueError:
            return "NDJSON stream ends with a line that is not JSON"
        if not isinstance(last, dict) or not (last.get("done") or "error" in last
                                               or last.get("status") == "success"):  # fmt: skip
            return "NDJSON stream ends without done / error / success"
    return None


def new_exceptions(log: Path, offset: int) -> list[str]:
    """The exception line (last unindented line) of every traceback written to ``log``
    after ``offset``."""
    time.sleep(0.01)  # the server writes its log right after answering
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    found = []
    for block in text.split("Traceback (most recent call last):")[1:]:
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln[0].isspace()
                 and not ln.startswith(NOT_EXCEPTION)]  # fmt: skip
        if lines:
            name, _, message = lines[-1].partition(":")
            found.append(f"{name}:{normalize(message)}")
    return found


def report(fz: Fuzzer) -> None:
    print(f"\n{'operation':28s} {'sent':>5s} {'valid':>5s} {'invalid':>7s} {'2xx':>5s} "
          f"{'400':>4s} {'404':>4s} {'4xx':>4s} {'503':>4s} {'5xx':>4s} {'t/o':>4s}")  # fmt: skip
    cols = ("sent", "valid", "invalid", "2xx", "400", "404", "4xx", "503", "5xx", "t/o")
    total: collections.Counter = collections.Counter()
    for op, s in [*fz.stats.items(), ("total", None)]:
        if s is None:
            row = total
        else:
            row = collections.Counter({
                "sent": sum(s.by_mode.values()), "valid": s.by_mode["positive"],
                "invalid": s.by_mode["negative"], "400": s.status[400], "404": s.status[404],
                "503": s.status[503], "t/o": s.timeouts,
            })  # fmt: skip
            for k, v in s.status.items():
                if 200 <= k < 300:
                    row["2xx"] += v
                elif 400 <= k < 500 and k not in (400, 404):
                    row["4xx"] += v
                elif k >= 500 and k != 503:
                    row["5xx"] += v
            total.update(row)
        print(f"{op:28s} " + " ".join(f"{row[k]:>{max(len(k), 4)}d}" for k in cols))
    order = ["5xx", "hang", "connection", "timeout", "server traceback", "broken stream",
             "invalid JSON body", "503 on an idle server", "503 without Retry-After",
             "error body shape"]  # fmt: skip
    findings = sorted(fz.findings.values(), key=lambda f: (order.index(f.kind), f.op))
    print(f"\n{len(findings)} distinct findings (SERVER: the server's URL, TINY: the model path):")
    for f in findings:
        print(f"\n[{f.kind}] {f.op}: {f.detail}  (x{f.count})")
        if f.reduced is not None:
            print(f"  reduced request: {curl(f.reduced, fz.server.url, fz.tiny)}")
        elif f.smallest is not None:
            shown = curl(f.smallest, fz.server.url, fz.tiny)
            print(f"  smallest request: {shown[:600]}{' ...' if len(shown) > 600 else ''}")
        print(f"  response: {f.response[:300]!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=100, help="per operation and mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30, help="seconds per request")
    ap.add_argument("--reduce-budget", type=int, default=150,
                    help="requests spent shrinking each bug's request")  # fmt: skip
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve_fuzz-"))
    tiny = write_tiny_gguf(tmp / "tiny.gguf", seed=1)
    env = {**os.environ, "POCKETLM_HOME": str(tmp / "home"), "POCKETLM_OFFLINE": "1",
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}  # fmt: skip
    port, log = free_port(), tmp / "server.log"
    argv = pocketlm_serve(str(tiny), port, "--parallel", "2", "--ctx", "512")
    print(f"{' '.join(argv[1:])}\nPOCKETLM_HOME={tmp / 'home'} POCKETLM_OFFLINE=1; "
          f"{args.examples} valid + {args.examples} invalid requests per operation at most, "
          f"seed {args.seed}; server log {log}", flush=True)  # fmt: skip
    with Server(argv, port, env=env, log=log) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        rss0 = rss_bytes(server.pid)
        fz = Fuzzer(server, tiny, log, args.timeout)
        started = time.perf_counter()
        fz.run(schema, args.examples, args.seed)
        wall = time.perf_counter() - started
        alive = server.proc.poll() is None
        idle = alive and fz.wait_idle(10) == "idle"
        rss1 = rss_bytes(server.pid) if alive else 0
        restarts = fz.restarts
        fz.reduce(args.reduce_budget, min(args.timeout, 10))
    report(fz)
    print(f"\nfuzzing took {wall:.0f} s and {restarts} restarts after a hang; server alive "
          f"after it: {alive}; /metrics back to 0 active and 0 queued: {idle}; RSS "
          f"{rss0 / 2**20:.0f} MiB at start, {rss1 / 2**20:.0f} MiB at the end (of the "
          f"{'last' if restarts else 'same'} process)")  # fmt: skip
    bugs = ("5xx", "hang", "connection", "timeout", "server traceback", "broken stream")
    return 1 if any(f.kind in bugs for f in fz.findings.values()) or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
