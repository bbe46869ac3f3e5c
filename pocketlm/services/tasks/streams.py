"""`pocketlm task logs` and `pocketlm task security`: whole log files read as line streams.

Unlike the per-record tasks, these keep state across lines (templates found so far; the
failures per address), so they read their file once, in order, holding a chunk of lines
at a time, and call the model only where rules cannot decide: a log line that fits no
template found so far (``logs.LogMiner``), an authentication line the rules do not know
but that looks relevant, and the incident summary (``security.SecurityAnalyzer``). The
model is loaded at its first use, so a run that needs none loads none.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.tasks import records as readers
from pocketlm.services.tasks.engine import GREEDY
from pocketlm.services.tasks.job import JobSummary
from pocketlm.services.tasks.output import Output


class LazyEngine:
    """A TaskEngine made at its first use (``get``), closed by ``close`` if it was made."""

    def __init__(self, make: Callable[[], Any]):
        self._make, self.engine = make, None

    def get(self):
        if self.engine is None:
            self.engine = self._make()
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, blank ones included (they keep the numbering); a
    line longer than the record limit is passed on empty, its start kept for the report."""
    readers.check_readable(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder", "give one log file (or concatenate them)")
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty", "give a log file with at least one line")
    for number, text in readers.decoded_lines(path):
        yield number, text if text is not None else ""


# -- logs ---------------------------------------------------------------------------------


def template_asker(lazy: LazyEngine, parallel: int) -> Callable[[list[list[str]]], list[str]]:
    """``LogMiner``'s ``ask``: each group's template written by the model, the groups of a
    chunk decoded together."""
    from pocketlm.services.tasks.logs import template_messages

    params: GenerationParams = GREEDY.model_copy(update={"max_tokens": 96, "stop": ("\n",)})

    def one(group: list[str]) -> str:
        engine = lazy.get()
        return engine.generate(engine.prompt(template_messages(group)), params).text

    def ask(groups: list[list[str]]) -> list[str]:
        lazy.get()  # load once, before the threads
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            return list(pool.map(one, groups))

    return ask


def run_logs(spec, make_engine: Callable[[], Any], progress: Progress | None = None):
    """Parse ``spec.input``'s lines into templates; one output record per line, the report
    in ``spec.options["report"]`` (JSON) and in the summary."""
    from pocketlm.services.tasks.logs import LogMiner

    progress = progress or NullProgress()
    if spec.resume:
        raise UsageError(
            "`task logs` cannot resume: templates depend on every line before",
            "run it again with --overwrite (Drain-only parsing of 1M lines takes ~20 s)",
        )
    source = readers.started(lines(spec.input))  # a bad file fails before anything is written
    out = Output(spec.out, spec.out_format, overwrite=spec.overwrite, columns=_LOG_COLUMNS)
    lazy = LazyEngine(make_engine)
    no_model = spec.options.get("no_model")
    miner = LogMiner(ask=None if no_model else template_asker(lazy, spec.parallel))
    task = progress.task("lines", readers.count_lines(spec.input), unit="lines")
    summary = JobSummary()
    try:
        for parsed in miner.parse(_counted((text for _, text in source), task)):
            out.write(
                {
                    "id": parsed.line,
                    "line": parsed.line,
                    "template": parsed.template,
                    "params": parsed.params,
                    "template_id": parsed.template_id,
                    "level": parsed.level,
                }
            )
            summary.records += 1
    finally:
        out.close()
        engine = lazy.engine
        lazy.close()
    report = miner.report()
    summary.seconds = report.seconds
    summary.model = engine.name if engine else "(none: templates by rules)"
    if engine is not None:
        summary.generated_tokens = engine.counters.generated_tokens
    summary.report_lines = _log_report_lines(report)
    _write_report(spec, report.to_dict())
    return summary


_LOG_COLUMNS = ["line", "template", "params", "template_id", "level"]


def _counted(texts: Iterator[str], task) -> Iterator[str]:
    for text in texts:
        task.advance(1)
        yield text


def _log_report_lines(report) -> list[str]:
    d = report.to_dict()
    out = [
        f"{d['templates_found']} templates over {d['lines']} lines, {d['model_calls']} model "
        f"calls ({1000 * d['model_calls'] / max(d['lines'], 1):.1f} per 1,000 lines), "
        f"{d['seconds_per_1000_lines']:.2f} s per 1,000 lines"
    ]
    for t in report.templates[:10]:
        flags = "".join([" [error]" if t.is_error else "", " [rare]" if t.is_rare else ""])
        out.append(f"{t.count:>7}  {t.template}{flags}")
    rare = [t for t in report.templates[10:] if t.is_rare or t.is_error]
    for t in rare[:10]:
        flags = "".join([" [error]" if t.is_error else "", " [rare]" if t.is_rare else ""])
        out.append(f"{t.count:>7}  {t.template}{flags}")
    return out


def _write_report(spec, report: dict[str, Any]) -> None:
    path = spec.options.get("report")
    if path:
        Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


# -- security -----------------------------------------------------------------------------

EVENT_QUESTION = (
    "Below is one line of a server's authentication or system log. Which kind of security "
    "event is it, if any?"
)


def line_classifier(lazy: LazyEngine) -> Callable[[list[str]], list[tuple[str, float]]]:
    """``SecurityAnalyzer``'s ``classify``: each line's event type (or "none") by label
    scoring, with its probability."""
    from pocketlm.services.tasks.classify import Classifier, Label
    from pocketlm.services.tasks.records import Record
    from pocketlm.services.tasks.security import EVENT_TYPES

    labels = [Label(t) for t in EVENT_TYPES if t != "brute_force"] + [
        Label("none", "not a security event")
    ]
    state: dict[str, Classifier] = {}

    def classify(texts: list[str]) -> list[tuple[str, float]]:
        if "c" not in state:
            state["c"] = Classifier(lazy.get(), labels, task=EVENT_QUESTION)
        c = state["c"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda t: c(Record(id=0, text=t, fields={})), texts))
        return [_confident(r["label"], r["probs"][r["label"]]) for r in results]

    return classify


def _confident(label: str, p: float) -> tuple[str, float]:
    """A model label is an event only when the model is sure (CONFIDENT): at the analyzer's
    own 0.5, Qwen2.5-Coder-0.5B added 6 events on lines of no true event over 3 generated
    logs; at 0.8, none (and every expected event is still found)."""
    return (label, p) if p >= CONFIDENT else ("none", 1.0 - p)


CONFIDENT = 0.8


def run_security(spec, make_engine: Callable[[], Any], progress: Progress | None = None):
    """Security events from ``spec.input``: one output record per event, then the incident
    summary (the model's, or the rules' with --no-model) in the summary and the report."""
    from pocketlm.services.tasks.security import SecurityAnalyzer

    progress = progress or NullProgress()
    if spec.resume:
        raise UsageError(
            "`task security` cannot resume: events depend on every line before",
            "run it again with --overwrite",
        )
    source = readers.started(lines(spec.input))
    out = Output(spec.out, spec.out_format, overwrite=spec.overwrite, columns=_EVENT_COLUMNS)
    lazy = LazyEngine(make_engine)
    no_model = spec.options.get("no_model")
    analyzer = SecurityAnalyzer(
        brute_force_failures=spec.options.get("threshold") or 5,
        classify=None if no_model else line_classifier(lazy),
    )
    task = progress.task("lines", readers.count_lines(spec.input), unit="lines")
    summary = JobSummary(counts={"type": collections.Counter()})
    started = time.perf_counter()
    try:
        for number, text in source:
            analyzer.feed(number, text)
            task.advance(1)
        events = analyzer.finish()
        for i, event in enumerate(events, 1):
            out.write({"id": i, **event.to_dict()})
            summary.records += 1
            summary.counts["type"][event.type] += 1
        incident = analyzer.fallback_summary(events)
        if not no_model and events:
            incident = _incident(lazy.get(), analyzer.incident_messages(events)) or incident
    finally:
        out.close()
        engine = lazy.engine
        lazy.close()
    summary.seconds = time.perf_counter() - started
    summary.model = engine.name if engine else "(none: rules only)"
    summary.report_lines = ["incident summary:", *incident.splitlines()]
    by_type = dict(summary.counts["type"])
    _write_report(spec, {"events": len(events), "incident_summary": incident, "by_type": by_type})
    return summary


_EVENT_COLUMNS = ["type", "severity", "source_ip", "user", "host", "time", "lines", "summary"]


def _incident(engine, messages: list[dict[str, str]]) -> str:
    params: GenerationParams = GREEDY.model_copy(update={"max_tokens": 320})
    out = engine.generate(engine.prompt(messages), params)
    return out.text.strip() if out.finish in ("stop", "length") else ""
