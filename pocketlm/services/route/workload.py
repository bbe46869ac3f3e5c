"""A workload of verifiable prompts, and the labels the router learns from.

``generate(n, seed)`` makes ``n`` distinct prompts whose answers a program can check: ten
kinds (arithmetic, word problems, unit conversion, counting, sorting, reversing, weekdays,
multiple choice, field extraction, Python output), each at three levels of difficulty, so
that a 0.5B model gets some right and a 1.5B model more. Each ``Item`` carries its
expected answer and a checker that is lenient on format: it reads the part after the last
``Answer:`` if there is one, else the whole reply, and finds the final number, letter,
word, list or JSON object in it.

``collect`` asks a local and a remote tier every prompt (greedy), checks both answers and
appends one JSONL record per prompt to a file; a run that stops continues where it
stopped (ids already in the file are skipped, lines are written whole).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pocketlm.errors import PocketError, UsageError
from pocketlm.progress import NullProgress, Progress

if TYPE_CHECKING:
    from pocketlm.services.route.hybrid import Answer

ANSWER_LINE = "End your reply with a line 'Answer: X'."
LEVELS = (1, 2, 3)

# -- checkers -------------------------------------------------------------------------------

_MARKER = re.compile(r"answer\s*(?:is)?\s*[:=]", re.IGNORECASE)
# a thousands-grouped number (1,250.40) first, so that its groups are not read separately
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
_LETTER = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")
_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def answer_part(text: str) -> tuple[str, bool]:
    """(the text after the last 'Answer:', True), or (the whole text, False) without one."""
    found = list(_MARKER.finditer(text))
    if not found:
        return text, False
    return text[found[-1].end() :], True


def numbers_in(text: str) -> list[float]:
    return [float(m.group().replace(",", "")) for m in _NUMBER.finditer(text)]


def final_number(text: str) -> float | None:
    """The number after 'Answer:' (the first one there), else the last number of the text."""
    part, marked = answer_part(text)
    found = numbers_in(part.replace("**", ""))
    if not found:
        return None
    return found[0] if marked else found[-1]


def final_letter(text: str) -> str | None:
    """The option letter: the first after 'Answer:', else the one the reply opens with
    ("C) Paris"), else the last one."""
    part, marked = answer_part(text.replace("*", ""))
    found = [
        m
        for m in _LETTER.finditer(part)
        # "A" followed by a lowercase word is the article, not option A
        if not (m.group(1) == "A" and re.match(r"\s+[a-z]", part[m.end() :]))
    ]
    if not found:
        return None
    opens = not part[: found[0].start()].strip(" \n\t(")
    return found[0].group(1) if marked or opens else found[-1].group(1)


def final_word(text: str, vocabulary: Iterable[str] | None = None) -> str | None:
    """The answer word (lower case): the first after 'Answer:', else the last of the reply;
    with a ``vocabulary`` (the weekdays), only words from it count."""
    part, marked = answer_part(text)
    words = [w.lower() for w in _WORD.findall(part)]
    if vocabulary is not None:
        allowed = {v.lower() for v in vocabulary}
        words = [w for w in words if w in allowed]
    if not words:
        return None
    return words[0] if marked else words[-1]


def final_list(text: str, items: Iterable[str]) -> list[str]:
    """The input's items in the order the answer lists them (lower case): the words or
    numbers of the answer part (the last non-empty line without 'Answer:') that are items."""
    part, marked = answer_part(text)
    if not marked:
        lines = [ln for ln in part.splitlines() if ln.strip()]
        part = lines[-1] if lines else ""
    wanted = {str(i).lower() for i in items}
    tokens = re.findall(r"-?\d+(?:\.\d+)?|[A-Za-z]+", part)
    return [t.lower() for t in tokens if t.lower() in wanted]


def first_json_object(text: str) -> dict | None:
    """The first JSON object in the text (inside a code fence or not)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(want, int | float) and not isinstance(want, bool):
        got_n = numbers_in(str(got))
        return len(got_n) == 1 and abs(got_n[0] - want) <= 1e-6 * max(1.0, abs(want))
    norm = lambda v: " ".join(str(v).casefold().split()).strip(" .")  # noqa: E731
    return norm(got) == norm(want)


def check_number(text: str, want: float, rel_tol: float = 1e-9) -> bool:
    got = final_number(text)
    return got is not None and abs(got - want) <= rel_tol * max(1.0, abs(want))


def check_letter(text: str, want: str) -> bool:
    return final_letter(text) == want


def check_word(text: str, want: str, vocabulary: Iterable[str] | None = None) -> bool:
    return final_word(text, vocabulary) == want.lower()


def check_list(text: str, want: list) -> bool:
    return final_list(text, want) == [str(w).lower() for w in want]


def check_fields(text: str, want: dict) -> bool:
    got = first_json_object(text)
    if got is None:
        return False
    by_key = {str(k).casefold(): v for k, v in got.items()}
    return all(
        k.casefold() in by_key and _same_value(by_key[k.casefold()], v) for k, v in want.items()
    )


# -- items ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One verifiable prompt. ``check(reply) -> bool`` says whether a reply is right."""

    id: str
    kind: str
    level: int
    prompt: str  # the user message
    answer: Any  # JSON-serialisable
    check: Callable[[str], bool] = field(repr=False, compare=False)

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


def _item(kind: str, level: int, prompt: str, answer: Any, check) -> Item:
    # the id is the prompt's hash: the same prompt has the same id whatever the run's n
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:10]
    return Item(f"{kind}-{digest}", kind, level, prompt, answer, check)


def _number_item(kind, level, prompt, value, rel_tol=1e-9) -> Item:
    value = int(value) if float(value).is_integer() else round(value, 6)
    sep = "\n" if "\n" in prompt else " "  # after a code block, on a line of its own
    full = f"{prompt}{sep}{ANSWER_LINE}"
    return _item(kind, level, full, value, lambda t: check_number(t, value, rel_tol))


def arithmetic(rng: random.Random, level: int) -> Item:
    r = rng.randint
    if level == 1:
        a, b = r(10, 99), r(10, 99)
        expr, value = (f"{a} + {b}", a + b) if rng.random() < 0.5 else (f"{a} - {b}", a - b)
    elif level == 2:
        a, b, c = r(12, 99), r(3, 19), r(100, 999)
        expr, value = f"{a} * {b} + {c}", a * b + c
    else:
        a, b, c, d = r(100, 999), r(100, 999), r(11, 49), r(1000, 9999)
        expr, value = f"({a} + {b}) * {c} - {d}", (a + b) * c - d
    return _number_item("arithmetic", level, f"Compute {expr}.", value)


_GOODS = ("pencils", "apples", "stamps", "marbles", "cookies", "tickets", "bottles", "cards")
_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas")


def word_problem(rng: random.Random, level: int) -> Item:
    r, name, goods = rng.randint, rng.choice(_NAMES), rng.choice(_GOODS)
    if level == 1:
        a, b = r(5, 40), r(2, 30)
        text = f"{name} has {a} {goods} and gets {b} more. How many {goods} does {name} have?"
        value = a + b
    elif level == 2:
        boxes, per, given = r(3, 9), r(4, 12), r(1, 10)
        text = (
            f"{name} buys {boxes} boxes of {goods} with {per} in each box, then gives "
            f"{given} away. How many {goods} are left?"
        )
        value = boxes * per - given
    else:
        price, n, share = r(15, 95), r(3, 8), r(2, 4)
        paid = (price * n // 100 + 1) * 100 + 100 * r(0, 2)
        text = (
            f"{goods.capitalize()} cost {price} cents each. {name} buys {n} of them, pays with "
            f"{paid} cents and shares the change equally among {share} friends, keeping the "
            "remainder. How many cents does each friend get?"
        )
        value = (paid - price * n) // share
    return _number_item("word_problem", level, text, value)


# (unit, factor to the target unit, target) at three levels of difficulty
_UNITS = {
    1: [("kilometres", 1000, "metres"), ("hours", 60, "minutes"), ("kilograms", 1000, "grams")],
    2: [("inches", 2.54, "centimetres"), ("days", 24, "hours"), ("litres", 1000, "millilitres")],
    3: [("kilometres per hour", 1 / 3.6, "metres per second"), ("miles", 1.609344, "kilometres")],
}


def unit_conversion(rng: random.Random, level: int) -> Item:
    unit, factor, target = rng.choice(_UNITS[level])
    amount = rng.randint(2, 40) if level == 1 else round(rng.uniform(1.5, 90), 1)
    if level == 3 and unit.startswith("kilometres per"):
        amount = 18 * rng.randint(1, 10)  # a whole number of metres per second
    text = f"Convert {amount:g} {unit} to {target}."
    if level == 3:
        text += " Round to two decimals."
    return _number_item("units", level, text, amount * factor, rel_tol=0.01)


_WORDS = (
    "banana river pepper letter balloon mississippi committee bookkeeper coffee parallel "
    "strawberry hippopotamus accommodate assessment tomorrow cinnamon engineer"
).split()
_SENTENCE_WORDS = "the a small red quick dog cat runs over under old house near blue tree".split()


def counting(rng: random.Random, level: int) -> Item:
    if level == 1:
        words = [rng.choice(_SENTENCE_WORDS) for _ in range(rng.randint(4, 9))]
        text = f'How many words are in this sentence: "{" ".join(words)}"?'
        value = len(words)
    elif level == 2:
        word = rng.choice(_WORDS)
        letter = rng.choice(sorted(set(word)))
        text = f"How many times does the letter '{letter}' appear in the word '{word}'?"
        value = word.count(letter)
    else:
        xs = [rng.randint(1, 99) for _ in range(rng.randint(8, 12))]
        bound = rng.randint(30, 70)
        text = f"How many of these numbers are greater than {bound}: {', '.join(map(str, xs))}?"
        value = sum(x > bound for x in xs)
    return _number_item("counting", level, text, value)


_SORT_WORDS = (
    "pear apple grape melon lemon cherry plum kiwi mango peach orange lime fig date".split()
)


def sorting(rng: random.Random, level: int) -> Item:
    if level == 3:
        items = rng.sample(_SORT_WORDS, 5)
        text = f"Sort these words alphabetically: {', '.join(items)}."
        want: list = sorted(items)
    else:
        items = rng.sample(range(1, 100), 4 if level == 1 else 6)
        order = "ascending" if level == 1 else "descending"
        text = f"Sort these numbers in {order} order: {', '.join(map(str, items))}."
        want = sorted(items, reverse=level == 2)
    prompt = f"{text} {ANSWER_LINE}"
    return _item("sorting", level, prompt, want, lambda t: check_list(t, want))


def reversing(rng: random.Random, level: int) -> Item:
    if level == 1:
        items = rng.sample(_SORT_WORDS, 4)
        text = f"Write these words in reverse order: {', '.join(items)}."
        want = items[::-1]
        prompt = f"{text} {ANSWER_LINE}"
        return _item("reversing", level, prompt, want, lambda t: check_list(t, want))
    word = rng.choice([w for w in _WORDS if (len(w) <= 6) == (level == 2)])
    prompt = f"Spell the word '{word}' backwards, as one word. {ANSWER_LINE}"
    rev = word[::-1]
    return _item("reversing", level, prompt, rev, lambda t: check_word(t, rev))


def weekday(rng: random.Random, level: int) -> Item:
    start = rng.randrange(7)
    if level == 1:
        days = rng.randint(2, 4)
        text = f"Today is {WEEKDAYS[start]}. What day of the week is it in {days} days?"
    elif level == 2:
        days = rng.randint(8, 30)
        text = f"Today is {WEEKDAYS[start]}. What day of the week will it be in {days} days?"
    else:
        days = -rng.randint(20, 200)
        text = f"Today is {WEEKDAYS[start]}. What day of the week was it {-days} days ago?"
    want = WEEKDAYS[(start + days) % 7]
    prompt = f"{text} {ANSWER_LINE}"
    return _item("weekday", level, prompt, want, lambda t: check_word(t, want, WEEKDAYS))


# facts a program can check: well-known capitals, then chemical symbols
_CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Portugal": "Lisbon",
    "Poland": "Warsaw",
    "Argentina": "Buenos Aires",
    "Turkey": "Ankara",
    "Vietnam": "Hanoi",
    "Peru": "Lima",
    "Finland": "Helsinki",
    "Hungary": "Budapest",
    "Morocco": "Rabat",
    "New Zealand": "Wellington",
    "Switzerland": "Bern",
    "Nigeria": "Abuja",
    "Pakistan": "Islamabad",
    "Kazakhstan": "Astana",
    "Mongolia": "Ulaanbaatar",
    "Bolivia": "Sucre",
    "Slovenia": "Ljubljana",
    "Latvia": "Riga",
}
_SYMBOLS = {
    "sodium": "Na",
    "potassium": "K",
    "iron": "Fe",
    "silver": "Ag",
    "gold": "Au",
    "lead": "Pb",
    "tin": "Sn",
    "copper": "Cu",
    "mercury": "Hg",
    "tungsten": "W",
    "antimony": "Sb",
    "helium": "He",
    "calcium": "Ca",
    "zinc": "Zn",
    "magnesium": "Mg",
    "chlorine": "Cl",
}


def _choice_prompt(rng: random.Random, question: str, right: str, wrong: list[str]):
    options = [right, *rng.sample(wrong, 3)]
    rng.shuffle(options)
    letter = "ABCD"[options.index(right)]
    lines = "\n".join(f"{'ABCD'[i]}) {o}" for i, o in enumerate(options))
    prompt = f"{question}\n{lines}\nAnswer with the letter of the right option. {ANSWER_LINE}"
    return prompt, letter


def multiple_choice(rng: random.Random, level: int) -> Item:
    if level < 3:
        # level 1: the first (best-known) capitals, level 2: the rest
        names = list(_CAPITALS)[:12] if level == 1 else list(_CAPITALS)[12:]
        country = rng.choice(names)
        right = _CAPITALS[country]
        wrong = [c for c in _CAPITALS.values() if c != right]
        question = f"What is the capital of {country}?"
    else:
        element = rng.choice(list(_SYMBOLS))
        right = _SYMBOLS[element]
        wrong = [s for s in _SYMBOLS.values() if s != right]
        question = f"What is the chemical symbol of {element}?"
    prompt, letter = _choice_prompt(rng, question, right, wrong)
    return _item("choice", level, prompt, letter, lambda t: check_letter(t, letter))


_COMPANIES = ("Acme GmbH", "Nordlicht AG", "Blue Harbor Ltd", "Kestrel & Sons", "Orbitex SA")
_CITIES = ("Lyon", "Graz", "Leeds", "Porto", "Turku", "Brno", "Ghent", "Malmo")


def extraction(rng: random.Random, level: int) -> Item:
    number, company, city = rng.randint(1000, 9999), rng.choice(_COMPANIES), rng.choice(_CITIES)
    total = round(rng.randint(1000, 500000) / 100, 2)
    items, day = rng.randint(2, 40), rng.randint(1, 28)
    text = f"Invoice {number} from {company}, {city}, for {items} items, total {total:,.2f} EUR."
    want: dict = {"invoice": number, "company": company}
    if level >= 2:
        want["total"] = total
    if level == 3:
        text = (
            f"Ref. {rng.randint(10, 99)}-{rng.randint(100, 999)}. On {day} May, {company} "
            f"({city}) sent invoice no. {number}: {items} items, {total:,.2f} EUR in total, "
            f"due within {rng.randint(10, 60)} days."
        )
        want["city"] = city
        want["items"] = items
    keys = ", ".join(f'"{k}"' for k in want)
    prompt = (
        f"Text: {text}\nExtract the fields {keys} from the text. Reply with one JSON object "
        "and nothing else."
    )
    return _item("extraction", level, prompt, want, lambda t: check_fields(t, want))


def code_output(rng: random.Random, level: int) -> Item:
    """Python whose printed value is computed here by the same steps (a test runs the code
    to check that the two agree)."""
    r = rng.randint
    if level == 1:
        a, b, c = r(2, 20), r(2, 9), r(2, 9)
        code, value = f"print({a} + {b} * {c})", a + b * c
    elif level == 2:
        n, k = r(4, 9), r(2, 5)
        code = f"s = 0\nfor i in range({n}):\n    s += i * {k}\nprint(s)"
        value = sum(i * k for i in range(n))
    else:
        x, steps = r(6, 40), r(3, 6)
        code = (
            f"x = {x}\nfor _ in range({steps}):\n    if x % 2 == 0:\n        x = x // 2\n"
            "    else:\n        x = 3 * x + 1\nprint(x)"
        )
        value = x
        for _ in range(steps):
            value = value // 2 if value % 2 == 0 else 3 * value + 1
    text = f"What does this Python program print?\n```python\n{code}\n```"
    return _number_item("code", level, text, value)


KINDS: dict[str, Callable[[random.Random, int], Item]] = {
    "arithmetic": arithmetic,
    "word_problem": word_problem,
    "units": unit_conversion,
    "counting": counting,
    "sorting": sorting,
    "reversing": reversing,
    "weekday": weekday,
    "choice": multiple_choice,
    "extraction": extraction,
    "code": code_output,
}


def generate(n: int = 400, seed: int = 0, kinds: Iterable[str] | None = None) -> list[Item]:
    """``n`` distinct items, kinds and levels taken in turn; the same seed gives the same
    items, and a smaller ``n`` a prefix of a larger one's. Fewer than ``n`` when the kinds
    run out of distinct prompts (the fact questions are finite)."""
    names = list(kinds or KINDS)
    for name in names:
        if name not in KINDS:
            raise UsageError(f"unknown prompt kind '{name}'", f"kinds: {', '.join(KINDS)}")
    rng = random.Random(seed)
    slots = [(k, lv) for lv in LEVELS for k in names]
    items: list[Item] = []
    seen: set[str] = set()
    misses = 0
    while len(items) < n and misses < 50 * len(slots):
        kind, level = slots[(len(items) + misses) % len(slots)]
        item = KINDS[kind](rng, level)
        # the question without its option order, so that the same fact is not asked twice
        key = re.sub(r"\n[A-D]\) .*", "", item.prompt)
        if key in seen:
            misses += 1
            continue
        seen.add(key)
        items.append(item)
    return items


# -- collecting answers ---------------------------------------------------------------------


class AnswerFn(Protocol):
    """``Hybrid.answer``: a tier's greedy answer to a conversation."""

    async def __call__(
        self, tier: str, messages: list[dict], max_tokens: int, temperature: float = 0.0
    ) -> Answer: ...


@dataclass
class CollectSummary:
    written: int
    skipped: int  # already in the file
    failed: dict[str, str]  # id -> error
    seconds: float
    local_accuracy: float | None
    remote_accuracy: float | None


def done_ids(path: Path) -> set[str]:
    """Ids of the records already in ``path``; a last line cut short by a crash is dropped
    (the file is truncated after the last whole line, so that appending stays valid)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    ids = set()
    for n, line in enumerate(whole.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(
                f"{path}:{n}: not a workload record", "give another --out, or fix that line"
            ) from None
    return ids


async def _ask(answer_fn: AnswerFn, tier: str, item: Item, max_tokens: int):
    start = time.perf_counter()
    answer = await answer_fn(tier, item.messages, max_tokens, 0.0)
    return answer, time.perf_counter() - start


def record(item: Item, local: Answer, remote: Answer, seconds: tuple[float, float]) -> dict:
    """The JSONL record of one prompt: both answers, whether each is right, the local
    answer's token log-probabilities (the cascade's signal)."""
    return {
        "id": item.id,
        "kind": item.kind,
        "level": item.level,
        "prompt": item.prompt,
        "expected": item.answer,
        "local_tier": local.tier,
        "remote_tier": remote.tier,
        "local_ok": bool(item.check(local.text)),
        "remote_ok": bool(item.check(remote.text)),
        "local_answer": local.text,
        "remote_answer": remote.text,
        "local_mean_logprob": local.mean_logprob,
        "local_min_logprob": local.min_logprob,
        "local_tokens": local.tokens_out,
        "remote_tokens": remote.tokens_out,
        "local_tokens_in": local.tokens_in,
        "remote_tokens_in": remote.tokens_in,
        "local_s": round(seconds[0], 4),
        "remote_s": round(seconds[1], 4),
    }


async def collect(
    items: list[Item],
    answer_fn: AnswerFn,
    local: str,
    remote: str,
    out_path: str | os.PathLike,
    *,
    concurrency: int = 4,
    max_tokens: int = 96,
    progress: Progress | None = None,
) -> CollectSummary:
    """Ask both tiers every item not yet in ``out_path`` and append its record there.
    A prompt whose tier fails is reported in ``failed`` and not written (a rerun retries it)."""
    if concurrency < 1:
        raise UsageError(f"invalid concurrency {concurrency}: must be at least 1")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(path)
    todo = [it for it in items if it.id not in done]
    bar = (progress or NullProgress()).task("asking both tiers", len(todo), unit="prompts")
    gate = asyncio.Semaphore(concurrency)
    failed: dict[str, str] = {}
    oks: list[tuple[bool, bool]] = []
    start = time.perf_counter()
    with open(path, "a", encoding="utf-8") as out:

        async def one(item: Item) -> None:
            async with gate:
                try:
                    (la, ls), (ra, rs) = await asyncio.gather(
                        _ask(answer_fn, local, item, max_tokens),
                        _ask(answer_fn, remote, item, max_tokens),
                    )
                except PocketError as e:
                    failed[item.id] = str(e)
                else:
                    rec = record(item, la, ra, (ls, rs))
                    # one write per line, flushed: a crash leaves whole lines (and at most
                    # one cut line, which done_ids drops)
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    out.flush()
                    oks.append((rec["local_ok"], rec["remote_ok"]))
                bar.advance(1)

        await asyncio.gather(*(one(it) for it in todo))
    n = len(oks)
    return CollectSummary(
        written=n,
        skipped=len(items) - len(todo),
        failed=failed,
        seconds=time.perf_counter() - start,
        local_accuracy=sum(a for a, _ in oks) / n if n else None,
        remote_accuracy=sum(b for _, b in oks) / n if n else None,
    )


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a workload file; errors name the file, line and missing field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"workload '{path}' not found", "make one with pocketlm route collect"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read workload '{path}': {e}") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}:{n}: not a JSON line", "fix or remove that line") from None
        missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise UsageError(
                f"{path}:{n}: record without field '{missing[0]}'",
                "make the workload with pocketlm route collect",
            )
        records.append(rec)
    if not records:
        raise UsageError(f"workload '{path}' has no records", "run pocketlm route collect")
    return records


REQUIRED = ("id", "prompt", "local_ok", "remote_ok")
