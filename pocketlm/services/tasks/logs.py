"""Log lines into templates with their variable parts: the core of ``pocketlm task logs``.

The design is LILAC's (an adaptive parsing cache in front of a model) with Drain as the
fallback; templates write variable parts as ``<*>``, as Loghub-2.0's ground truth does.

1. ``split_header`` cuts off a header it recognises and keeps the level: a template covers
   the content only, as Loghub's do.
2. ``TemplateCache.match`` fits the content to a template found before. Most lines end
   here, without the model.
3. Lines that fit none wait for the end of their chunk, are grouped Drain-style
   (``group_lines``), and the representative lines of every group go to the model in one
   batch (``ask``). An answer is kept only when it matches every line of its group
   (``parse_answer``); otherwise the group's Drain template is used. The group's lines
   are then matched again.

Masking (``MASKS``) finds what a regex can tell is variable: numbers, addresses, ids,
paths with digits, durations. Plain words that vary (user, host, service names, free text)
are what Drain (by comparing lines) and the model (by reading them) find. When two
templates match a line, the one added first wins, so a line's template never changes.
"""

from __future__ import annotations

import re
import time
from bisect import insort
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

WILDCARD = "<*>"
CHUNK = 256  # lines held at a time: the unmatched ones among them go to the model together
SIMILARITY = 0.5  # Drain: share of a group's constant tokens a line must repeat to join it
REPRESENTATIVES = 3  # lines of a group shown to the model
RARE_SHARE = 0.001  # a template is rare when count <= max(1, RARE_SHARE * lines)

# A batch of groups (each: up to REPRESENTATIVES contents) -> one answer each, None if none.
Ask = Callable[[list[list[str]]], list[str | None]]

# --- header --------------------------------------------------------------------------------

_LEVELS = {
    "TRACE": "TRACE",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "NOTICE": "NOTICE",
    "WARN": "WARN",
    "WARNING": "WARN",
    "ERR": "ERROR",
    "ERROR": "ERROR",
    "SEVERE": "ERROR",
    "CRIT": "CRITICAL",
    "CRITICAL": "CRITICAL",
    "FATAL": "FATAL",
    "ALERT": "ALERT",
    "EMERG": "EMERG",
}
ERROR_LEVELS = frozenset({"ERROR", "CRITICAL", "FATAL", "ALERT", "EMERG"})
_L = "|".join(sorted(_LEVELS, key=len, reverse=True))
_HEADERS = tuple(
    re.compile(p)
    for p in (
        # syslog "Mar  6 10:00:01 host sshd[812]: ", a kernel line's "[  12.345678] " too
        r"[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d \S+ [^\s:\[]+(?:\[\d+\])?: (?:\[ *\d+\.\d+\] )?"
        r"(?P<content>.*)",
        # ISO time stamp, then a level, a [thread] and a dotted logger name, each optional
        r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)? +"
        rf"(?:\[?(?P<level>{_L})\]?:? +)?(?:\[[^\]]*\] +)?(?:[\w$]+(?:\.[\w$]+)+(?::| -) +)?"
        r"(?P<content>.*)",
        # HDFS "081109 203615 148 INFO dfs.DataNode$PacketResponder: "
        rf"\d{{6}} \d{{6}} \d+ (?P<level>{_L}) [\w$.]+: (?P<content>.*)",
        # Apache error log "[Sun Dec 04 04:47:44 2005] [error] " (2.4: "[core:error] [pid 1] ")
        r"\[[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)? \d{4}\] "
        r"\[(?:\w+:)?(?P<level>\w+)\] (?:\[pid \d+(?::tid \d+)?\] )?(?P<content>.*)",
        # access log (common/combined format) 'host ident user [10/Oct/2000:13:55:36 -0700] '
        r"\S+ \S+ \S+ \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] (?P<content>.*)",
        # a bare level "ERROR: ...", "[WARN] ..."
        rf"\[?(?P<level>{_L})\]?:? +(?P<content>.*)",
    )
)


def split_header(line: str) -> tuple[str | None, str]:
    """``(level, content)`` of a log line: the header it recognises cut off (syslog, ISO
    time stamp with level/thread/logger, HDFS, Apache error and access logs, a bare level);
    the whole line is the content when none fits."""
    line = line.rstrip("\r\n")
    for header in _HEADERS:
        m = header.match(line)
        if m and m["content"].strip():
            level = m.groupdict().get("level")
            return (_LEVELS.get(level.upper()) if level else None), m["content"]
    return None, line


# --- masking -------------------------------------------------------------------------------

# What is masked before lines are grouped (in this order: the first that fits a place wins).
# Words are never masked: user, host and service names are left to Drain and the model.
MASKS: tuple[tuple[str, str], ...] = (
    ("UUID", r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"),
    ("date 2024-03-06", r"(?<!\d)\d{4}-\d\d-\d\d(?!\d)"),
    ("time 10:00:01.123", r"(?<!\d)\d{1,2}:\d\d:\d\d(?:[.,]\d+)?(?!\d)"),
    ("IPv4, :port too", r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?!\w|\.\d)"),
    ("IPv6, MAC", r"(?<![\w:])(?=[\w:]*\d)(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])"),
    ("hex number 0x1f", r"\b0[xX][0-9a-fA-F]+\b"),
    ("hex id, 8+ digits", r"(?<![\w-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}(?![\w-])"),
    (  # not /10.0.0.1:50010, which is /<*> as Loghub writes it
        "path holding a digit",
        r"(?<![\w./])(?!/\d{1,3}(?:\.\d{1,3}){3}(?!\d))(?=[\w.@%+~/-]*\d)"
        r"(?:~|\.{1,2})?(?:/[\w.@%+-]+)+/?",
    ),
    (
        "size or duration 12ms 1.5s 64kB",
        r"(?<![\w.])\d+(?:\.\d+)?(?:[num]s|µs|s|min|m|h|d|[kKMGT]i?B|[KMGT])(?!\w)",
    ),
    ("value of key=value", r"(?<=[\w.-]=)[^\s,;&\"')\]}]+"),
    (  # not after a letter (ssh2) or a slash (HTTP/1.1)
        "number, also after _ or - (blk_<*>)",
        r"(?<![A-Za-z0-9./])[-+]?\d+(?:\.\d+)*(?![A-Za-z0-9])",
    ),
)
_MASK = re.compile("|".join(f"(?:{pattern})" for _, pattern in MASKS))
_RUN = re.compile(r"(?:<\*>){2,}")  # <*><*> -> <*>
_SPACED_RUN = re.compile(r"<\*>(?:\s*<\*>)+")  # <*> <*> -> <*>, for comparing templates only


def mask(text: str) -> str:
    """``text`` with the variables ``MASKS`` finds replaced by ``<*>``."""
    return _RUN.sub(WILDCARD, _MASK.sub(WILDCARD, text))


def normalize_template(template: str) -> str:
    """Single spaces, and ``<*>`` runs with nothing between them as one ``<*>``."""
    return _RUN.sub(WILDCARD, " ".join(template.split()))


def _squash(text: str) -> str:
    return " ".join(text.split())


def _pattern(template: str, spans: bool) -> re.Pattern[str]:
    """The regex of a template: ``<*>`` within one token, or across tokens when ``spans``."""
    var = "(.*?)" if spans else r"(\S*?)"
    return re.compile(var.join(re.escape(part) for part in template.split(WILDCARD)))


# --- the template cache --------------------------------------------------------------------


@dataclass(eq=False)
class Template:
    """A template found so far. ``spans``: its ``<*>`` may cover several tokens (set when a
    line it was made for needs that). ``source``: "model" or "drain"."""

    id: int
    text: str
    spans: bool = False
    source: str = "drain"
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pattern = _pattern(self.text, self.spans)

    @property
    def tokens(self) -> list[str]:
        return self.text.split(" ")

    @property
    def key(self) -> tuple[int | None, str | None]:
        """(token count, None when ``<*>`` spans), (first token, None when variable)."""
        tokens = self.tokens
        count = None if self.spans else len(tokens)
        return count, (None if WILDCARD in tokens[0] else tokens[0])


class TemplateCache:
    """The templates found so far, matched without the model.

    A content is tried only against the templates that could fit it, indexed by token count
    and first token: those with its count (or a ``<*>`` that spans) whose first token is its
    own (or variable). When several fit, the one added first wins, so the template of a
    line never changes as templates are added; a new template that covers an older one
    widens the older in place (which keeps its id) instead of being added.
    """

    def __init__(self) -> None:
        self._templates: list[Template] = []  # template id - 1
        self._buckets: defaultdict[tuple, list[int]] = defaultdict(list)
        self._by_text: dict[str, Template] = {}

    def __len__(self) -> int:
        return len(self._templates)

    def __iter__(self) -> Iterator[Template]:
        return iter(self._templates)

    def get(self, template_id: int) -> Template:
        return self._templates[template_id - 1]

    def match(self, content: str) -> tuple[Template, list[str]] | None:
        """The first-added template that matches ``content``, with its variable parts."""
        text = _squash(content)
        if not text:
            return None
        n, first = text.count(" ") + 1, text.split(" ", 1)[0]
        keys = ((n, first), (n, None), (None, first), (None, None))
        found = [bucket for key in keys if (bucket := self._buckets.get(key))]
        ids = found[0] if len(found) == 1 else sorted(chain.from_iterable(found))
        for template_id in ids:
            template = self._templates[template_id - 1]
            if m := template.pattern.fullmatch(text):
                return template, list(m.groups())
        return None

    def add(self, text: str, lines: Sequence[str] = (), source: str = "drain") -> Template:
        """The template for ``text``, made for ``lines`` (contents): one already there, an
        older one widened to it, or a new one. Its ``<*>`` spans tokens when a line needs it."""
        text = normalize_template(text)
        strict = _pattern(text, spans=False)
        spans = any(strict.fullmatch(_squash(line)) is None for line in lines)
        if (same := self._by_text.get(text)) is not None:
            if spans and not same.spans:
                self._reset(same, text, spans=True, source=same.source)
            return same
        new = Template(len(self._templates) + 1, text, spans, source)
        head = new.key[1]  # a constant first token can only cover templates that start so
        for old in self._templates:  # oldest first: it keeps its id, it wins its lines
            if head is not None and old.key[1] != head:
                continue
            if new.pattern.fullmatch(old.text):
                self._reset(old, text, spans=spans or old.spans, source=source)
                return old
        self._templates.append(new)
        self._by_text[text] = new
        insort(self._buckets[new.key], new.id)
        return new

    def closest(self, tokens: list[str], threshold: float = SIMILARITY) -> Template | None:
        """The Drain template most like ``tokens`` (same length and first token), if any."""
        head = None if WILDCARD in tokens[0] else tokens[0]
        scored = [
            (similarity(t.tokens, tokens), -t.id, t)
            for t in map(self.get, self._buckets.get((len(tokens), head), ()))
            if t.source == "drain"
        ]
        score, _, best = max(scored, key=lambda s: s[:2], default=(0.0, 0, None))
        return best if score >= threshold else None

    def _reset(self, template: Template, text: str, spans: bool, source: str) -> None:
        self._buckets[template.key].remove(template.id)
        del self._by_text[template.text]
        template.text, template.spans, template.source = text, spans, source
        template.pattern = _pattern(text, spans)
        self._by_text[text] = template
        insort(self._buckets[template.key], template.id)


# --- Drain-style grouping ------------------------------------------------------------------


def similarity(template: Sequence[str], tokens: Sequence[str]) -> float:
    """Drain's similarity: the share of the template's constant tokens that ``tokens``
    repeat at the same place (1 when it has none)."""
    pairs = [(a, b) for a, b in zip(template, tokens) if a != WILDCARD]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else 1.0


def merge_tokens(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """Drain's template of two token lists: tokens that differ become ``<*>``, keeping the
    brackets, quotes and punctuation both have around it (``alice.``, ``bob.`` -> ``<*>.``)."""
    return [x if x == y else _merge_token(x, y) for x, y in zip(a, b)]


def _merge_token(a: str, b: str) -> str:
    head = _shared(a, b, "([{\"'")
    tail = _shared(a[head:][::-1], b[head:][::-1], ")]}\"'.,:;!?")
    return a[:head] + WILDCARD + a[len(a) - tail :]


def _shared(a: str, b: str, chars: str) -> int:
    """Length of the start ``a`` and ``b`` share, made of ``chars`` only."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n] and a[n] in chars:
        n += 1
    return n


@dataclass
class Group:
    """Contents that look alike (same token count and first token after masking, Drain
    similarity >= ``SIMILARITY``), with their Drain template as tokens."""

    tokens: list[str]
    lines: list[str] = field(default_factory=list)
    masked: list[list[str]] = field(default_factory=list)

    def add(self, line: str, tokens: list[str]) -> None:
        self.tokens = merge_tokens(self.tokens, tokens)
        self.lines.append(line)
        self.masked.append(tokens)

    def representatives(self, k: int = REPRESENTATIVES) -> list[str]:
        """Up to ``k`` distinct lines: the first, then lines that differ from it in places
        the ones chosen do not show yet (what varies is what the model must see), then any."""
        chosen, seen = [0], set()
        for i, tokens in enumerate(self.masked):
            differ = {p for p, (a, b) in enumerate(zip(tokens, self.masked[0])) if a != b}
            if len(chosen) < k and differ - seen:
                chosen.append(i)
                seen |= differ
        for i, line in enumerate(self.lines):
            if len(chosen) < k and i not in chosen and line not in {self.lines[j] for j in chosen}:
                chosen.append(i)
        return [self.lines[i] for i in sorted(chosen)]


def group_lines(contents: Iterable[str], threshold: float = SIMILARITY) -> list[Group]:
    """Drain's grouping with its prefix tree one level deep: a line joins the most similar
    group of the same token count and first token (after masking), if similar enough.

    One level, not Drain's usual two: a deeper tree splits on a name in second place
    ("Cache users refreshed"), which similarity handles; and a chunk's groups are few, so a
    dict does what the tree is for."""
    groups: list[Group] = []
    by_key: defaultdict[tuple[int, str], list[Group]] = defaultdict(list)
    for content in contents:
        line, tokens = _squash(content), mask(content).split()
        if not tokens:
            continue
        near = by_key[len(tokens), tokens[0]]
        best = max(near, key=lambda g: similarity(g.tokens, tokens), default=None)
        if best is None or similarity(best.tokens, tokens) < threshold:
            best = Group(tokens)
            near.append(best)
            groups.append(best)
        best.add(line, tokens)
    return groups


# --- the model -----------------------------------------------------------------------------

SYSTEM = (
    "You turn log lines into their log template. Replace every variable part with <*>: "
    "numbers, ids, addresses, ports, paths, durations, and names of users, hosts, services "
    "or files, and free text that would change from one event to the next. Keep the "
    "constant words and punctuation exactly as they are; when a variable is glued to "
    "constant text, replace only the variable (blk_<*>). All lines share one template. "
    "Answer with the template only, on one line."
)
EXAMPLES: tuple[tuple[tuple[str, ...], str], ...] = (  # Loghub-style (lines, template)
    (
        ("jk2_init() Found child 6725 in scoreboard slot 10",),
        "jk2_init() Found child <*> in scoreboard slot <*>",
    ),
    (
        ("Removed user mysql from group docker", "Removed user ftp from group audio"),
        "Removed user <*> from group <*>",
    ),
    (
        ("Stopped target Sound Card.", "Stopped target Timers."),
        "Stopped target <*>.",
    ),
    (
        ("Verification succeeded for blk_-4980916519894289629",),
        "Verification succeeded for blk_<*>",
    ),
)


def template_messages(lines: list[str]) -> list[dict[str, str]]:
    """Chat messages asking for the template of one group's lines (contents, no header)."""
    messages = [{"role": "system", "content": SYSTEM}]
    for example, template in EXAMPLES:
        messages.append({"role": "user", "content": _ask_text(example)})
        messages.append({"role": "assistant", "content": template})
    messages.append({"role": "user", "content": _ask_text(lines)})
    return messages


def _ask_text(lines: Iterable[str]) -> str:
    return "Log lines:\n" + "\n".join(_squash(line) for line in lines)


_PREFIX = re.compile(r"^(?:the\s+)?(?:log\s+)?template(?:\s+is)?\s*[:=-]\s*", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>|<\*+>|\{\{?\w*\}?\}")  # <NUM>, <**>, {var}


def parse_answer(answer: str, lines: Sequence[str]) -> str | None:
    """The template in a model's answer, if one of its lines (cleaned: code fences, a
    "Template:" prefix, surrounding quotes, other placeholder styles, masking) fits every
    one of ``lines`` (see ``_fits``); None otherwise, and for templates without a constant
    word, which would match anything."""
    contents = [_squash(line) for line in lines]
    for raw in answer.splitlines():
        raw = _PREFIX.sub("", raw.strip()).strip().strip("`").strip()
        candidates = [raw]
        if len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "\"'":
            candidates.append(raw[1:-1])
        for candidate in candidates:
            template = normalize_template(mask(_PLACEHOLDER.sub(WILDCARD, candidate)))
            if not re.search(r"[A-Za-z]{2}", template.replace(WILDCARD, " ")):
                continue
            if _fits(template, contents):
                return template
    return None


def _fits(template: str, contents: list[str]) -> bool:
    """Whether ``template`` matches every content: each ``<*>`` within a token, or else
    across tokens, but then no ``<*>`` may cover a token every line has in the same place
    while its values differ: that is a constant the template left out (``port <*>`` for
    "port 22 ssh2" and "port 2222 ssh2")."""
    strict = _pattern(template, spans=False)
    if all(strict.fullmatch(line) for line in contents):
        return True
    loose = _pattern(template, spans=True)
    found = [loose.fullmatch(line) for line in contents]
    if not all(found):
        return False
    for values in zip(*(m.groups() for m in found)):
        if len(set(values)) > 1 and all(" " in v.strip() for v in values):
            tokens = [v.split() for v in values]
            if len({t[0] for t in tokens}) == 1 or len({t[-1] for t in tokens}) == 1:
                return False
    return True


# --- the miner -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parsed:
    """One parsed line: its number (1-based, blank lines counted), template and variables."""

    line: int
    template: str  # as it was when the line was parsed (a Drain template may widen later)
    params: list[str]
    template_id: int
    level: str | None


@dataclass
class _Tally:
    first_line: int
    count: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)
    levels: Counter = field(default_factory=Counter)


class LogMiner:
    """Parses log lines into templates; ``report()`` sums them up.

    ``ask`` answers a batch of groups (each a list of up to 3 contents) with one template
    each, or None; the caller builds the prompts with ``template_messages`` and may run
    them in parallel. With ``ask=None`` the miner is Drain only.
    """

    def __init__(self, ask: Ask | None = None, chunk: int = CHUNK):
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 line, not {chunk}")
        self.ask = ask
        self.chunk = chunk
        self.cache = TemplateCache()
        self.model_calls = 0  # groups asked about
        self._tallies: dict[int, _Tally] = {}
        self._numbered = 0
        self._seconds = 0.0

    def parse(self, lines: Iterable[str]) -> Iterator[Parsed]:
        """Parsed lines in input order, holding at most ``chunk`` lines at a time. Blank
        lines yield nothing; numbering goes on across calls."""
        batch: list[tuple[int, str]] = []
        for raw in lines:
            self._numbered += 1
            batch.append((self._numbered, raw))
            if len(batch) == self.chunk:
                yield from self._parse_chunk(batch)
                batch = []
        if batch:
            yield from self._parse_chunk(batch)

    def report(self) -> LogReport:
        lines = sum(t.count for t in self._tallies.values())
        rare = max(1.0, RARE_SHARE * lines)
        stats = [
            TemplateStats(
                id=i,
                template=self.cache.get(i).text,
                count=t.count,
                first_line=t.first_line,
                examples=list(t.examples),
                levels=dict(t.levels),
                is_error=is_error(self.cache.get(i).text, t.levels),
                is_rare=t.count <= rare,
            )
            for i, t in self._tallies.items()
        ]
        stats.sort(key=lambda s: (-s.count, s.id))
        return LogReport(stats, lines, self.model_calls, self._seconds)

    def _parse_chunk(self, batch: list[tuple[int, str]]) -> list[Parsed]:
        start = time.perf_counter()
        rows = [(n, raw.rstrip("\r\n"), *split_header(raw)) for n, raw in batch if raw.strip()]
        found = [self.cache.match(content) for *_, content in rows]
        missing = [i for i, fit in enumerate(found) if fit is None]
        if missing:
            self._learn([rows[i][3] for i in missing])
            for i in missing:
                found[i] = self.cache.match(rows[i][3]) or self._fit(rows[i][3])
        out = [self._record(row, *fit) for row, fit in zip(rows, found)]
        self._seconds += time.perf_counter() - start
        return out

    def _learn(self, contents: list[str]) -> None:
        groups = group_lines(contents)
        for group, answer in zip(groups, self._answers(groups)):
            template = None if answer is None else parse_answer(answer, group.lines)
            if template is not None:
                self.cache.add(template, group.lines, source="model")
            elif not all(self.cache.match(line) for line in group.lines):
                self._add_drain(group)

    def _answers(self, groups: list[Group]) -> list[str | None]:
        if self.ask is None or not groups:
            return [None] * len(groups)
        answers = list(self.ask([g.representatives() for g in groups]))
        if len(answers) != len(groups):
            raise ValueError(f"ask gave {len(answers)} answers for {len(groups)} groups")
        self.model_calls += len(groups)
        return answers

    def _add_drain(self, group: Group) -> None:
        """The group's Drain template, merged with the most similar Drain template found
        in an earlier chunk, as Drain's clusters live on."""
        tokens = group.tokens
        if (old := self.cache.closest(tokens)) is not None:
            tokens = merge_tokens(old.tokens, tokens)
        self.cache.add(" ".join(tokens), group.lines, source="drain")

    def _fit(self, content: str) -> tuple[Template, list[str]]:
        """A template for a line that still fits none (its own masked text); never expected."""
        self.cache.add(mask(content), [content])
        found = self.cache.match(content)
        if found is None:
            raise RuntimeError(f"no template fits the log line {content!r}")
        return found

    def _record(self, row: tuple, template: Template, params: list[str]) -> Parsed:
        number, raw, level, _ = row
        tally = self._tallies.get(template.id)
        if tally is None:
            tally = self._tallies[template.id] = _Tally(first_line=number)
        tally.count += 1
        if len(tally.examples) < REPRESENTATIVES:
            tally.examples.append((number, raw))
        if level:
            tally.levels[level] += 1
        return Parsed(number, template.text, params, template.id, level)


# --- the report ----------------------------------------------------------------------------

_ERROR_WORDS = re.compile(
    r"(?i:\b(?:errors?|fatal|critical|panic|fail(?:s|ed|ure|ures)?|denied|refused|killed"
    r"|unable|cannot|timed out|out of memory)\b)|[Ee]xception|[a-z]Error\b"
)


def is_error(template: str, levels: Iterable[str] = ()) -> bool:
    """An error template: a line of it had an error level, or its words say so (error,
    fatal, critical, exception, failed/failure, denied, refused, killed, timed out...)."""
    return any(level in ERROR_LEVELS for level in levels) or bool(_ERROR_WORDS.search(template))


@dataclass
class TemplateStats:
    id: int
    template: str
    count: int
    first_line: int
    examples: list[tuple[int, str]]  # up to 3 (line number, line)
    levels: dict[str, int]
    is_error: bool
    is_rare: bool  # count <= max(1, 0.1% of the lines)


@dataclass
class LogReport:
    templates: list[TemplateStats]  # most frequent first
    lines: int
    model_calls: int
    seconds: float

    @property
    def seconds_per_1000_lines(self) -> float:
        return 1000 * self.seconds / self.lines if self.lines else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "templates_found": len(self.templates),
            "model_calls": self.model_calls,
            "seconds": round(self.seconds, 4),
            "seconds_per_1000_lines": round(self.seconds_per_1000_lines, 4),
            "templates": [
                {
                    **vars(s),
                    "examples": [{"line": n, "text": text} for n, text in s.examples],
                }
                for s in self.templates
            ],
        }


# --- accuracy, as Loghub-2.0 measures it ---------------------------------------------------


def grouping_accuracy(pred_templates: list[str], true_templates: list[str]) -> float:
    """GA: the share of lines grouped right. A line is right when the lines that share its
    predicted template are exactly those that share its true template."""
    _check_lengths(pred_templates, true_templates)
    pred_sizes = Counter(pred_templates)
    by_true: defaultdict[str, list[str]] = defaultdict(list)
    for pred, true in zip(pred_templates, true_templates):
        by_true[true].append(pred)
    right = sum(
        len(preds)
        for preds in by_true.values()
        if len(set(preds)) == 1 and pred_sizes[preds[0]] == len(preds)
    )
    return right / len(true_templates)


def template_accuracy(pred_templates: list[str], true_templates: list[str]) -> float:
    """PA: the share of lines whose predicted template is the true one, both normalised:
    whitespace runs as one space, and consecutive ``<*>`` (nothing or only spaces between
    them) as one ``<*>``, since one ``<*>`` may cover several tokens: ``from <*> <*>`` and
    ``from <*>`` are the same template. Loghub-2.0 compares the strings exactly, after
    correcting both with similar rules."""
    _check_lengths(pred_templates, true_templates)
    same = sum(_canonical(p) == _canonical(t) for p, t in zip(pred_templates, true_templates))
    return same / len(true_templates)


def _canonical(template: str) -> str:
    return _SPACED_RUN.sub(WILDCARD, _squash(template))


def _check_lengths(pred: list[str], true: list[str]) -> None:
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predicted templates for {len(true)} true ones")
    if not true:
        raise ValueError("no lines to measure")
