"""`pocketlm data synth`: a teacher writes training data, one JSONL record per prompt.

Two modes:

- ``textbook``: seed topics crossed with audiences and formats (``topics``), as Cosmopedia
  and phi-1 built theirs: record i writes about topic i (the topics in a seeded order, all
  of them before any comes again) for an audience and in a format chosen at random.
- ``task``: examples for a narrow task from its description and a few examples: with labels,
  record i is written for label i mod L (the labels balanced); without (an extraction
  task's inputs, which ``pocketlm data label`` then answers), just a new input. With
  ``kinds`` (an email signature, a meeting note...), each label's records go through the
  kinds in turn. Each in a random style.

Every choice comes from ``random.Random`` seeded with (--seed, i), and so does the sampling
seed of record i: a run is repeatable, and ``--resume`` writes exactly the records an
uninterrupted run would have. The teacher's records decode together (``teacher``), they are
written in order as whole lines (``tasks.output.Output``), and the job is ``pocketlm
task``'s (``tasks.job.run_job``): the same progress with ETA, summary and failures.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError, option
from pocketlm.params import GenerationParams
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.data import topics as seeds
from pocketlm.services.data.teacher import Teacher, open_teacher
from pocketlm.services.tasks.job import JobSummary, RecordFailed, run_job
from pocketlm.services.tasks.output import Output
from pocketlm.services.tasks.records import Record

MODES = ("textbook", "task")
MAX_TOPICS = 100_000
MAX_TOPICS_BYTES = 16 << 20  # 100,000 topics of ~160 bytes
SHOWN_EXAMPLES = 3  # examples in each task prompt (a seeded sample of the file's)
PROMPT_ROOM = 1024  # tokens of context for the prompt, above --max-tokens

TEXTBOOK = (
    'Write {what}. The topic is "{topic}" and the readers are {audience}. Write for them: '
    "choose the words, depth and examples they need. Be accurate and self-contained, and do "
    "not mention these instructions. Write only the {format}."
)
TASK = (
    "{task}\nThe labels:\n{labels}\n{examples}\n"
    'Write one new, realistic input for this task whose correct label is "{label}". '
    "{kind}Make it {style}. Write only the input text itself, without its label or any comment."
)
INPUT = (
    "{task}\n{examples}\nWrite one new, realistic input for this task. {kind}Make it {style}. "
    "Write only the input text itself, without any comment."
)
MAX_KINDS = 1000
MAX_KINDS_BYTES = 256 * 1024


@dataclass(frozen=True)
class SynthSpec:
    """One `pocketlm data synth` run (see the module docstring for the modes)."""

    out: Path
    teacher: str
    tiers: Path | None = None
    n: int = 100
    topics: Path | None = None  # textbook mode; None: topics.TOPICS
    task: str | None = None  # task mode
    labels: str | None = None  # A,B,C or a labels file (as `pocketlm task classify`)
    examples: Path | None = None  # JSONL {"text", "label"} ({"text"} without labels)
    kinds: str | None = None  # A,B,C or a file, one kind of input a line
    max_tokens: int = 512
    temperature: float = 0.8
    seed: int = 0
    resume: bool = False
    retry_failed: bool = False  # resuming: records the teacher failed are written again
    overwrite: bool = False
    parallel: int = 8
    threads: int | None = None

    @property
    def mode(self) -> str:
        return "task" if self.task is not None else "textbook"

    def __post_init__(self) -> None:
        for name in ("n", "max_tokens", "parallel", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"invalid {option(name, value)}: must be at least 1")
        if not 0 <= self.temperature <= 5:
            raise UsageError(f"invalid {option('temperature', self.temperature)}", "give 0 to 5")
        if not 0 <= self.seed < 2**31:
            raise UsageError(f"invalid {option('seed', self.seed)}", "give 0 to 2147483647")
        task, labels, topics = option("task"), option("labels"), option("topics")
        if self.task is None and (self.labels or self.examples or self.kinds):
            raise UsageError(
                f"{labels}, {option('examples')} and {option('kinds')} are for {task}",
                f"add {task}",
            )
        if self.task is not None and self.topics:
            raise UsageError(f"{topics} is for textbook data, not {task}", "drop one")
        if self.task is not None and not self.task.strip():
            raise UsageError(f"{task} needs a description of the task, in a sentence")


@dataclass(frozen=True)
class Plan:
    """What each record of a run asks for (a function of the spec alone: ``records``)."""

    spec: SynthSpec
    topics: tuple[str, ...] = ()
    labels: tuple[Any, ...] = ()  # classify.Label
    examples: tuple[tuple[str, str | None], ...] = ()
    kinds: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: SynthSpec) -> Plan:
        """The plan, its files read and checked (before a model loads)."""
        if spec.mode == "textbook":
            return cls(spec, topics=_read_topics(spec.topics))
        from pocketlm.services.tasks import classify

        kinds = _read_kinds(spec.kinds) if spec.kinds else ()
        if not spec.labels:
            examples = _input_examples(spec.examples) if spec.examples else []
            return cls(spec, examples=tuple(examples), kinds=kinds)
        labels = classify.parse_labels(spec.labels)
        examples = classify.load_examples(spec.examples, labels) if spec.examples else []
        return cls(spec, labels=tuple(labels), examples=tuple(examples), kinds=kinds)

    def records(self) -> Iterator[Record]:
        """Record i (from 1): its prompt in ``text``, its seeds in ``fields``."""
        order = list(self.topics)
        random.Random(f"{self.spec.seed}:topics").shuffle(order)
        for i in range(1, self.spec.n + 1):
            rng = random.Random(f"{self.spec.seed}:{i}")
            if self.spec.mode == "textbook":
                fields = self._textbook(order[(i - 1) % len(order)], rng)
            else:
                fields = self._task(i - 1, rng)
            fields["sample_seed"] = rng.randrange(2**31)
            yield Record(i, fields.pop("prompt"), fields)

    def _textbook(self, topic: str, rng: random.Random) -> dict[str, Any]:
        audience = rng.choice(seeds.AUDIENCES)
        fmt = rng.choice(list(seeds.FORMATS))
        what = seeds.FORMATS[fmt]
        prompt = TEXTBOOK.format(what=what, topic=topic, audience=audience, format=fmt)
        return {"prompt": prompt, "topic": topic, "audience": audience, "format": fmt}

    def _task(self, i: int, rng: random.Random) -> dict[str, Any]:
        """Record i+1's prompt: for label i mod L (when there are labels), of kind
        (i div L) mod K (when there are kinds: every label goes through them all)."""
        style = rng.choice(seeds.STYLES)
        shown = rng.sample(self.examples, min(SHOWN_EXAMPLES, len(self.examples)))
        examples = "".join(
            f"\nText: {t}\n" + (f"Label: {lab}\n" if lab is not None else "") for t, lab in shown
        )
        fields: dict[str, Any] = {}
        if self.kinds:
            fields["kind"] = self.kinds[(i // max(len(self.labels), 1)) % len(self.kinds)]
        common = {
            "task": self.spec.task.strip(),
            "examples": f"\nExamples:{examples}" if shown else "",
            "kind": f"It is {fields['kind']}. " if self.kinds else "",
            "style": style,
        }
        if not self.labels:
            return {"prompt": INPUT.format(**common), **fields, "style": style}
        label = self.labels[i % len(self.labels)]
        names = "\n".join(
            f"- {x.name}" + (f": {x.description}" if x.description else "") for x in self.labels
        )
        prompt = TASK.format(labels=names, label=label.name, **common)
        return {"prompt": prompt, "label": label.name, **fields, "style": style}


def _read_kinds(kinds: str) -> tuple[str, ...]:
    """A,B,C, or a file with one kind of input a line (``#`` comments)."""
    from pocketlm.services.tasks.classify import names_file

    if names_file(kinds):
        found = _lines(Path(kinds).expanduser(), MAX_KINDS_BYTES, "give fewer kinds")
    else:
        found = [k.strip() for k in kinds.split(",") if k.strip()]
    if not found:
        raise UsageError(f"{option('kinds', kinds)} names no kind of input", "give A,B,C or a file")
    if len(found) > MAX_KINDS:
        raise UsageError(f"{option('kinds')}: over {MAX_KINDS} kinds", "give fewer")
    return tuple(dict.fromkeys(found))


def _input_examples(path: Path) -> list[tuple[str, None]]:
    """Example inputs for a task without labels: JSONL ``{"text"}`` lines (or CSV ``text``)."""
    from pocketlm.services.tasks.classify import example_rows

    texts = []
    for n, row in example_rows(path):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise UsageError(f"{path} example {n}: needs a 'text'", "fix the examples file")
        texts.append((row["text"], None))
    return texts


def _read_topics(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return seeds.TOPICS
    if not path.is_file():
        raise UsageError(f"no such topics file: {path}", "give a text file, one topic per line")
    topics = _lines(path, MAX_TOPICS_BYTES, "give fewer topics")
    if not topics:
        raise UsageError(f"{path} holds no topics", "write one seed topic per line")
    if len(topics) > MAX_TOPICS:
        raise UsageError(f"{path} holds over {MAX_TOPICS} topics", "give fewer")
    return tuple(dict.fromkeys(topics))


def _lines(path: Path, max_bytes: int, hint: str) -> list[str]:
    """A file's items, one a line: stripped, blank lines and ``#`` comments left out; a file
    over ``max_bytes`` is refused before it is read (one line of it could fill memory)."""
    if path.stat().st_size > max_bytes:
        raise UsageError(f"{path} is over {max_bytes >> 10:,} KiB", hint)
    with path.open(encoding="utf-8", errors="replace") as f:
        return [t.strip() for t in f if t.strip() and not t.lstrip().startswith("#")]


class Writer:
    """The per-record work: record i's prompt through the teacher, into a training record."""

    def __init__(self, spec: SynthSpec, teacher: Teacher):
        self.spec, self.teacher = spec, teacher

    def __call__(self, record: Record) -> dict[str, Any]:
        s, fields = self.spec, dict(record.fields)
        params = GenerationParams(
            max_tokens=s.max_tokens, temperature=s.temperature, seed=fields["sample_seed"]
        )
        out = self.teacher.write(record.text, params)
        if out.finish not in ("stop", "length"):
            raise RecordFailed(f"the teacher failed: {out.error or out.finish}")
        if not out.text:
            raise RecordFailed("the teacher wrote nothing")
        label = {"label": fields.pop("label")} if "label" in fields else {}
        return {
            "text": out.text,
            **label,
            "prompt": record.text,
            "teacher": self.teacher.name,
            "mode": s.mode,
            **fields,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "seed": s.seed,
            "finish": out.finish,
        }


def run(spec: SynthSpec, progress: Progress | None = None) -> JobSummary:
    """Write ``spec.n`` records to ``spec.out`` (continuing it with ``spec.resume``)."""
    progress = progress or NullProgress()
    plan = Plan.of(spec)
    out = open_output(spec)
    try:
        teacher = open_teacher(
            spec.teacher,
            spec.tiers,
            parallel=spec.parallel,
            ctx=spec.max_tokens + PROMPT_ROOM,
            threads=spec.threads,
            progress=progress,
        )
    except BaseException:
        out.close()
        raise
    try:
        try:
            summary = run_job(
                plan.records(),
                Writer(spec, teacher),
                out.write,
                workers=2 * spec.parallel,
                done=out.done,
                retry=out.retry,
                count_fields=count_fields(spec),
                total=spec.n,
                progress=progress,
            )
        finally:
            out.close()
        summary.model = teacher.name
        summary.add_tokens(teacher.counters)
        return summary
    finally:
        teacher.close()


def count_fields(spec: SynthSpec) -> tuple[str, ...]:
    """The fields the summary counts: how the records spread over labels, kinds or formats."""
    if spec.mode == "textbook":
        return ("format",)
    return ("label",) * bool(spec.labels) + ("kind",) * bool(spec.kinds) or ("style",)


def open_output(spec: SynthSpec) -> Output:
    """The records file, opened as ``spec`` asks (new, resumed, retried or overwritten)."""
    check_resume(spec)
    return Output(
        spec.out,
        "jsonl",
        resume=spec.resume,
        overwrite=spec.overwrite,
        retry_failed=spec.retry_failed,
    )


def check_resume(spec: SynthSpec) -> None:
    """A run resumed with other settings would mix two datasets in one file: refused."""
    if not (spec.resume and spec.out.is_file()):
        return
    with spec.out.open(encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), None)
    try:
        written = json.loads(first) if first else {}
    except ValueError:
        written = {}
    ours = {"mode": spec.mode, "seed": spec.seed, "max_tokens": spec.max_tokens}
    for key, value in ours.items():
        if key in written and written[key] != value:
            raise UsageError(
                f"{spec.out} was written with {key} {written[key]!r}, this run has {value!r}",
                "resume with the same settings, or pass --overwrite to start again",
            )
