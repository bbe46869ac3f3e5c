"""JSON schemas from clients to llama.cpp grammars, prepared where they cannot hurt the server.

A schema (OpenAI's ``response_format``, Ollama's ``format``) becomes a GBNF grammar that
llama.cpp parses and then applies to the whole vocabulary at every draw. Hostile or careless
schemas did real harm when that happened in the server: ``maxLength: 20000`` nested 20,000
groups and llama.cpp's recursive parser overflowed its stack (SIGSEGV, the server gone);
``minItems: 1e9`` wrote the item rule 1e9 times (the kernel killed the server for memory); a
20,000-value enum took 20 s to parse on the scheduler thread while every other sequence
waited, and each draw then checked 20,000 alternatives against every token (seconds per
token, for the whole batch). So a schema goes through three gates:

1. limits checked here, at once: the schema's size, depth, node count, enum/const values,
   anyOf/oneOf/allOf branches, properties, patterns and repetition counts (``Limits``);
2. a child process converts it (bounded repetitions written as llama.cpp's ``{m,n}``, which
   it parses in a loop, not one recursion per count), parses the grammar with the model's
   real vocabulary on a thread with a small stack, and measures what the engine will pay:
   a draw (the first ones, and each large alternation's first), a copy and a parse. It runs
   under an address-space, CPU-time and wall-clock limit: a crash or a timeout there is a
   refusal, not a dead server;
3. only a grammar the child passed is parsed here (off the event loop and off the scheduler
   thread), once per schema and model file: later requests with the same schema reuse it,
   and each sequence samples with a copy (``Grammar.copy``).

Every refusal is a UsageError (HTTP 400) naming the limit and the value.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from pocketlm.engine.llama import Grammar, Model
from pocketlm.errors import UsageError

__all__ = ["Grammar", "GrammarBuilder", "Limits", "json_grammar"]


@dataclass(frozen=True)
class Limits:
    """What a client's JSON schema may cost. The counts are near what OpenAI's structured
    outputs accept (10 levels of nesting, 1,000 enum values in all), so that schemas written
    for it pass; the costs are measured on this machine, with the model's vocabulary."""

    schema_bytes: int = 64 * 1024  # the schema as compact JSON
    depth: int = 32  # JSON nesting of the schema document (10 levels of objects is ~22)
    nodes: int = 10_000  # JSON values in the schema document
    repeat: int = 1024  # maxLength, minItems... and {m,n} in patterns (llama.cpp caps at 2000)
    values: int = 1000  # enum and const values, all together
    branches: int = 256  # anyOf / oneOf / allOf alternatives, all together
    properties: int = 1000  # object properties, all together
    pattern_chars: int = 1024  # one regular expression
    grammar_bytes: int = 128 * 1024  # the GBNF text the schema becomes
    # CPU time of one grammar-constrained draw (see _measure), which the whole batch waits
    # for. A draw checks every token of the vocabulary, and a larger vocabulary comes with a
    # larger, slower model: the limit is per token, and not below step_ms. Measured per token
    # (SmolLM2): a plain JSON object 0.25 us, a small object schema 0.45, the start of a
    # 250-value enum of city names 1.1, of a 1,000-value enum 2.7-4. 2 us is ~100 ms with
    # SmolLM2's 49k tokens: about two decode steps of a full batch, once per such enum.
    step_us_per_token: float = 2.0
    step_ms: float = 10.0
    copy_ms: float = 2.0  # CPU time of one copy, made on the scheduler thread per request
    parse_ms: float = 250.0  # CPU time of one parse, made once in the server
    check_s: float = 30.0  # wall-clock time of the whole check (it runs at a low priority)
    check_cpu_s: int = 10  # CPU time of the child's whole check
    check_mib: int = 1024  # address space the child may add once the vocabulary is loaded
    stack_kib: int = 1024  # the child parses on this stack (a thread's is 8 MiB on Linux)


_REPEATS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_BRANCHES = ("anyOf", "oneOf", "allOf")
_DATA = ("const", "enum", "default", "examples")  # JSON values, not schemas
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
_ANY_OBJECT = {"type": "object"}


class _Refused(Exception):
    """Why a schema is refused, without the field name (the same verdict serves OpenAI's
    ``response_format`` and Ollama's ``format``). ``final``: the same schema will always be
    refused (a wall-clock timeout may be the machine's load: not final)."""

    def __init__(self, reason: str, hint: str, final: bool = True):
        super().__init__(reason)
        self.reason, self.hint, self.final = reason, hint, final

    def error(self, field: str) -> UsageError:
        return UsageError(f"invalid value for '{field}': {self.reason}", self.hint, param=field)


def _over(what: str, limit: int, hint: str) -> _Refused:
    return _Refused(f"{what} exceeds pocketlm's limit of {limit} for grammars", hint)


# -- gate 1: limits on the schema itself ---------------------------------------------------

# keyword -> (what its value adds to, the Limits field that caps the total, hint)
_TOTALS = {
    "enum": ("enum/const values", "values", "use fewer enum values"),
    "const": ("enum/const values", "values", "use fewer enum values"),
    **{k: ("anyOf/oneOf/allOf branches", "branches", "use fewer alternatives") for k in _BRANCHES},
    "properties": ("properties", "properties", "use fewer properties"),
}


def check_schema(schema: Any, limits: Limits) -> str:
    """The schema as compact JSON (the cache key) once it is within ``limits``; raises
    _Refused naming the first limit it exceeds. Costs one walk over the document."""
    if not isinstance(schema, dict):
        raise _Refused(
            f"a JSON schema must be an object, not {type(schema).__name__}",
            'send {"type": "object", ...}',
        )
    nodes = deepest = 0
    totals: collections.Counter[str] = collections.Counter()
    todo: list[tuple[Any, int, bool]] = [(schema, 1, False)]  # node, depth, is a JSON value
    while todo:
        node, depth, is_data = todo.pop()
        nodes += 1
        if nodes > limits.nodes:
            raise _over(
                f"the JSON schema's count of nodes (more than {limits.nodes} JSON values)",
                limits.nodes,
                "send a smaller schema",
            )
        deepest = max(deepest, depth)
        if isinstance(node, list):
            todo.extend((item, depth + 1, is_data) for item in node)
        elif isinstance(node, dict):
            for key, value in node.items():
                todo.append((value, depth + 1, is_data or key in _DATA))
                if not is_data:
                    _check_keyword(key, value, totals, limits)
    if deepest > limits.depth:
        raise _over(
            f"the JSON schema's nesting depth ({deepest} levels)",
            limits.depth,
            "flatten the schema",
        )
    # ASCII: a lone surrogate stays an escape, and the child reads it as the client sent it
    text = json.dumps(schema, separators=(",", ":"))
    if len(text) > limits.schema_bytes:
        raise _over(
            f"the JSON schema's size ({len(text)} bytes)",
            limits.schema_bytes,
            "send a smaller schema",
        )
    return text


def _check_keyword(key: str, value: Any, totals: collections.Counter, limits: Limits) -> None:
    """One keyword of a (sub)schema. A keyword whose value has another type (a property
    named "maxLength" maps to a schema) is left to the converter."""
    if key in _REPEATS and isinstance(value, int | float):
        _check_count(key, value, limits)
    elif key == "pattern" and isinstance(value, str):
        _check_pattern(value, limits)
    elif key == "$ref" and isinstance(value, str) and not value.startswith("#"):
        raise _Refused(
            f"$ref {value[:200]!r} is not a reference inside the schema",
            'pocketlm fetches no schemas: use "#/$defs/..."',
        )
    elif key in _TOTALS and (key == "const" or isinstance(value, list | dict)):
        what, field, hint = _TOTALS[key]
        totals[what] += 1 if key == "const" else len(value)
        limit = getattr(limits, field)
        if totals[what] > limit:
            raise _over(f"the JSON schema's count of {what} ({totals[what]})", limit, hint)


def _check_count(key: str, value: int | float, limits: Limits) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value != int(value) or value < 0:
        raise _Refused(f"{key} must be a whole number of 0 or more, not {value!r}", f"fix {key}")
    if value > limits.repeat:
        raise _over(f"{key} {int(value)}", limits.repeat, "lower it")


def _check_pattern(pattern: str, limits: Limits) -> None:
    if len(pattern) > limits.pattern_chars:
        raise _over(
            f"a pattern's length ({len(pattern)} characters)",
            limits.pattern_chars,
            "shorten the pattern",
        )
    for match in _QUANTIFIER.finditer(pattern):
        for number in match.groups():
            if number and int(number) > limits.repeat:
                raise _over(f"the pattern quantifier {match.group(0)}", limits.repeat, "lower it")


# -- gate 3: the cache, and the grammar parsed in this process ---------------------------------


class GrammarBuilder:
    """Schemas to Grammars for one set of limits, with an LRU cache of verdicts (grammars and
    refusals) keyed by model file and schema. Thread-safe; ``build`` blocks."""

    def __init__(self, limits: Limits = Limits(), *, cache_size: int = 64):
        self.limits = limits
        self.cache_size = cache_size
        self.checks_run = 0  # child processes started (a cache hit starts none)
        self._lock = threading.Lock()
        self._verdicts: collections.OrderedDict[tuple, Grammar | _Refused] = (
            collections.OrderedDict()
        )
        self._pending: dict[tuple, concurrent.futures.Future] = {}
        # One check at a time: the cores belong to the engine, and a flood of distinct
        # schemas must not become a flood of processes.
        self._checks = threading.Semaphore(1)
        self._vocab_lock = threading.Lock()
        self._vocabs: weakref.WeakValueDictionary[tuple, Model] = weakref.WeakValueDictionary()

    def build(
        self, schema: dict | None, model_path: str, *, field: str = "response_format"
    ) -> Grammar:
        """A Grammar admitting only JSON that matches ``schema`` (None: any JSON object) for
        the model at ``model_path``; raises UsageError naming ``field``."""
        try:
            text = check_schema(_ANY_OBJECT if schema is None else schema, self.limits)
            return self._cached((_file_key(model_path), text), model_path)
        except _Refused as e:
            raise e.error(field) from None

    def _cached(self, key: tuple, model_path: str) -> Grammar:
        with self._lock:
            verdict = self._verdicts.get(key)
            pending = self._pending.get(key)
            mine = verdict is None and pending is None
            if verdict is not None:
                self._verdicts.move_to_end(key)
            elif mine:
                pending = self._pending[key] = concurrent.futures.Future()
        if mine:
            verdict = self._decide(key, model_path, pending)
        elif verdict is None:  # another thread is checking the same schema: share its verdict
            verdict = pending.result()
        if isinstance(verdict, _Refused):
            raise verdict
        return verdict

    def _decide(
        self, key: tuple, model_path: str, pending: concurrent.futures.Future
    ) -> Grammar | _Refused:
        try:
            verdict = self._prepare(key, model_path)
        except _Refused as e:
            verdict = e
        except BaseException as e:  # no verdict (a process could not start...): not cached
            with self._lock:
                del self._pending[key]
            pending.set_exception(e)
            raise
        with self._lock:
            del self._pending[key]
            if not isinstance(verdict, _Refused) or verdict.final:
                self._verdicts[key] = verdict
                while len(self._verdicts) > self.cache_size:
                    self._verdicts.popitem(last=False)
        pending.set_result(verdict)
        return verdict

    def _prepare(self, key: tuple, model_path: str) -> Grammar:
        with self._checks:
            self.checks_run += 1
            found = run_check(key[1], model_path, self.limits)
        try:
            return Grammar(found["gbnf"], self._vocab(key[0], model_path))
        except Exception as e:  # the child parsed it: this would be a bug, not the schema's
            raise _Refused(
                f"the JSON schema's grammar could not be parsed ({e})", "simplify the schema"
            ) from None

    def _vocab(self, file_key: tuple, model_path: str) -> Model:
        """The model's vocabulary alone (~15 MB for 49k tokens), shared by its Grammars and
        freed with the last of them."""
        with self._vocab_lock:  # not self._lock: cache hits need not wait for a load
            model = self._vocabs.get(file_key)
            if model is None:
                model = Model(model_path, vocab_only=True)
                weakref.finalize(model, _free_model, model._ptr)
                self._vocabs[file_key] = model
            return model


def _free_model(ptr) -> None:
    import llama_cpp as ll

    ll.llama_model_free(ptr)


def _file_key(path: str) -> tuple:
    """A model file's identity: a file replaced under the same name is another vocabulary."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


_default = GrammarBuilder()


def json_grammar(
    schema: dict | None, model_path: str, *, field: str = "response_format"
) -> Grammar:
    """A grammar admitting only JSON that matches ``schema`` (None: any JSON object, for
    OpenAI's json_object and Ollama's "json"), for the model at ``model_path``; pass it as
    ``Request(grammar=...)``. Blocking (a new schema starts a check process: run it off the
    event loop); raises UsageError naming ``field`` and the limit a schema exceeds."""
    return _default.build(schema, model_path, field=field)


# -- gate 2: the child process ------------------------------------------------------------


# The check process: at a lower priority from its first line, before its imports (~0.3 s of
# CPU), so that the engine's threads keep the cores they share with it.
_CHILD = (
    "import os; hasattr(os, 'nice') and os.nice(10); "
    "from pocketlm.services.grammar import _child; _child()"
)


def run_check(schema_json: str, model_path: str, limits: Limits) -> dict[str, Any]:
    """Convert, parse and measure ``schema_json``'s grammar in a child process (``_child``);
    its findings (``gbnf`` and the costs), or _Refused."""
    job = json.dumps(
        {"schema": schema_json, "model": model_path, "limits": dataclasses.asdict(limits)}
    )
    unsafe = "the JSON schema's grammar could not be built safely"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=job,
            capture_output=True,
            text=True,
            timeout=limits.check_s,
        )
    except subprocess.TimeoutExpired:
        raise _Refused(
            f"{unsafe} (it took longer than {limits.check_s:g} s)",
            "simplify the schema",
            final=False,
        ) from None
    try:
        found = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (IndexError, ValueError):
        found = None
    if proc.returncode < 0:
        sig = _signal_name(-proc.returncode)
        why = (
            f"it used more than {limits.check_cpu_s} s of CPU time"
            if sig == "SIGXCPU"
            else f"the check crashed with {sig}"
        )
        raise _Refused(f"{unsafe} ({why})", "simplify the schema")
    if not isinstance(found, dict):  # not the schema's doing, as far as we know: not cached
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1][:300]
        raise _Refused(f"{unsafe} (the check failed: {tail})", "simplify the schema", final=False)
    if "refused" in found:
        raise _Refused(found["refused"], found["hint"])
    return found


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _child() -> None:
    """The check process: a job (JSON) on stdin, findings (JSON) as the last line of stdout."""
    job = json.loads(sys.stdin.read())
    try:
        found = _check(job["schema"], job["model"], Limits(**job["limits"]))
    except _Refused as e:
        found = {"refused": e.reason, "hint": e.hint}
    print(json.dumps(found), flush=True)


def _check(schema_json: str, model_path: str, limits: Limits) -> dict[str, Any]:
    import psutil

    _set_limit("RLIMIT_CORE", 0)  # a crash here is expected, not to be debugged
    _set_limit("RLIMIT_CPU", limits.check_cpu_s, limits.check_cpu_s + 1)  # then SIGXCPU
    model = Model(model_path, vocab_only=True)
    # The address space may grow by check_mib from here: what the vocabulary and the
    # libraries took is not the schema's.
    _set_limit("RLIMIT_AS", psutil.Process().memory_info().vms + limits.check_mib * 2**20)
    try:
        gbnf = _to_gbnf(schema_json)
    except MemoryError:
        raise _Refused(
            f"the JSON schema's grammar needs more than {limits.check_mib} MiB",
            "simplify the schema",
        ) from None
    except Exception as e:  # the converter raises plain exceptions on what it cannot map
        raise _Refused(
            f"the JSON schema cannot be turned into a grammar: {e}"[:500],
            "use the JSON Schema subset pocketlm supports",
        ) from None
    try:
        size = len(gbnf.encode())
    except UnicodeEncodeError:  # JSON's "\ud800"
        raise _Refused(
            "the JSON schema has text that is not valid Unicode (a lone surrogate)",
            "send UTF-8 text",
        ) from None
    if size > limits.grammar_bytes:
        raise _over(
            f"the JSON schema's grammar size ({size} bytes)",
            limits.grammar_bytes,
            "simplify the schema",
        )
    costs = _on_small_stack(lambda: _measure(gbnf, model, limits), limits.stack_kib * 1024)
    return {"gbnf": gbnf, **costs}


def _set_limit(name: str, soft: int, hard: int | None = None) -> None:
    """A resource limit on this process where the platform has it (Windows has no
    ``resource`` module; macOS refuses some limits): the timeout still holds there."""
    try:
        import resource

        resource.setrlimit(getattr(resource, name), (soft, soft if hard is None else hard))
    except (ImportError, AttributeError, ValueError, OSError):
        pass


def _on_small_stack(fn, stack_bytes: int):
    """``fn()`` on a thread with a ``stack_bytes`` stack: a grammar whose parse needs more
    would crash here, not in the server's larger stacks."""
    box: list = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:  # re-raised on the calling thread
            box.append((False, e))

    old = threading.stack_size(stack_bytes)
    try:
        thread = threading.Thread(target=run, name="grammar-check")
        thread.start()
    finally:
        threading.stack_size(old)
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _to_gbnf(schema_json: str) -> str:
    """llama-cpp-python's converter, with bounded repetitions written as ``{m,n}``: its own
    nested groups ("(a (a (a)?)?)?") are as deep as the count, and llama.cpp parses each
    level by recursion (a maxLength of 20,000 overflowed the stack), and its minimum copies
    were as long as the count (minItems 1e9: gigabytes). This is llama.cpp's current
    json_schema_to_grammar.py rule."""
    from llama_cpp import llama_grammar

    llama_grammar._build_repetition = _build_repetition  # this process only: it converts
    sys.setrecursionlimit(10_000)  # the converter recurses per nesting level and property
    return llama_grammar.json_schema_to_gbnf(schema_json)


def _build_repetition(
    item_rule: str,
    min_items: int,
    max_items: int | None,
    separator_rule: str | None = None,
    item_rule_is_literal: bool = False,
) -> str:
    if max_items == 0:
        return ""
    if min_items == 0 and max_items == 1:
        return f"{item_rule}?"
    if not separator_rule:
        if min_items == 1 and max_items is None:
            return f"{item_rule}+"
        if min_items == 0 and max_items is None:
            return f"{item_rule}*"
        return f"{item_rule}{{{min_items},{'' if max_items is None else max_items}}}"
    rest = _build_repetition(
        f"({separator_rule} {item_rule})",
        max(min_items - 1, 0),
        None if max_items is None else max_items - 1,
    )
    result = f"{item_rule} {rest}"
    return f"({result})?" if min_items == 0 else result


def _measure(gbnf: str, model: Model, limits: Limits) -> dict[str, float]:
    """What the engine will pay for this grammar, in CPU milliseconds (CPU time: the child
    shares the cores with the server): a parse, a copy, and the draws. A draw applies the
    grammar to every token of the vocabulary; its cost grows with the alternatives open at
    that point (each of an enum's values, at its start). Measured: the first draws from the
    start (a random walk through tokens the grammar allows) and the first draw of each of
    the rules with the most alternatives (an enum deep inside an object). Refuses past the
    first cost over its limit, so that a hostile grammar costs one slow draw, not many."""
    import llama_cpp as ll

    from pocketlm.engine.llama import last_log_error

    parse_ms, root = _timed(
        lambda: ll.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    )
    if not root:
        raise _Refused(
            f"llama.cpp cannot parse the JSON schema's grammar ({last_log_error()})",
            "simplify the schema",
        )
    _within("a parse", parse_ms, limits.parse_ms)
    copy_ms = min(
        _timed(lambda: ll.llama_sampler_free(ll.llama_sampler_clone(root)))[0] for _ in range(3)
    )
    _within("a copy per request", copy_ms, limits.copy_ms)
    draws = _Draws(model, max(limits.step_ms, limits.step_us_per_token * model.n_vocab / 1e3))
    step_ms = draws.walk(root, steps=8)
    ll.llama_sampler_free(root)
    for name in _widest_rules(gbnf, count=8):
        g = ll.llama_sampler_init_grammar(model.vocab, gbnf.encode(), name.encode())
        if g:
            step_ms = max(step_ms, draws.walk(g, steps=1))
            ll.llama_sampler_free(g)
    return {"parse_ms": parse_ms, "copy_ms": copy_ms, "step_ms": step_ms}


def _timed(fn) -> tuple[float, Any]:
    import time

    t0 = time.thread_time()
    value = fn()
    return (time.thread_time() - t0) * 1e3, value


def _within(what: str, ms: float, limit_ms: float, why: str = "") -> None:
    if ms > limit_ms:
        raise _Refused(
            f"the JSON schema's grammar takes {ms:.0f} ms of CPU for {what}, over "
            f"pocketlm's limit of {limit_ms:.3g} ms{why}",
            "use fewer enum values or alternatives",
        )


class _Draws:
    """Grammar-constrained draws against the real vocabulary, without a model: the logits
    are all equal, so the grammar alone decides what is allowed."""

    def __init__(self, model: Model, limit_ms: float):
        import ctypes

        import llama_cpp as ll
        import numpy as np

        self.model = model
        n = model.n_vocab
        self.limit_ms = limit_ms
        self.why = f" for a vocabulary of {n} tokens"
        # llama_token_data: {int32 id; float logit; float p}
        self.data = np.zeros(n, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        self.data["id"] = np.arange(n)
        ptr = self.data.ctypes.data_as(ctypes.POINTER(ll.llama_token_data))
        self.array = ll.llama_token_data_array(data=ptr, size=n, selected=-1, sorted=False)
        self.rng = np.random.default_rng(0)

    def walk(self, g, *, steps: int) -> float:
        """Up to ``steps`` draws from ``g``'s state, each a token the grammar allows (not an
        end of generation); the slowest draw's CPU time (ms)."""
        import llama_cpp as ll
        import numpy as np

        worst = 0.0
        for _ in range(steps):
            ms = min(self._apply(g) for _ in range(2))  # the lower of two: noise only adds
            allowed = self.rng.permutation(np.flatnonzero(self.data["logit"] > -np.inf))
            token = next((int(t) for t in allowed if not self.model.is_eog(int(t))), None)
            if token is not None:
                ms += _timed(lambda: ll.llama_sampler_accept(g, token))[0]
            worst = max(worst, ms)
            _within("a draw", worst, self.limit_ms, self.why)
            if token is None:  # the grammar is complete
                break
        return worst

    def _apply(self, g) -> float:
        import ctypes

        import llama_cpp as ll

        self.data["logit"] = 0.0
        self.array.size, self.array.selected, self.array.sorted = len(self.data), -1, False
        return _timed(lambda: ll.llama_sampler_apply(g, ctypes.byref(self.array)))[0]


def _widest_rules(gbnf: str, count: int) -> list[str]:
    """The ``count`` rules with the most alternatives (at least 4), widest first: where a draw
    has the most to check."""
    widths = {}
    for line in gbnf.splitlines():
        name, sep, body = line.partition(" ::= ")
        if sep and name != "root":
            widths[name] = _alternatives(body)
    wide = sorted((n for n, w in widths.items() if w >= 4), key=lambda n: -widths[n])
    return wide[:count]


def _alternatives(body: str) -> int:
    """Top-level alternatives of a GBNF rule body (``|`` outside groups, strings and
    character classes)."""
    n, depth, i = 1, 0, 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 1
        elif c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < len(body) and body[i] != close:
                i += 2 if body[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            n += 1
        i += 1
    return n
