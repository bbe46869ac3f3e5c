"""Training data for distillation: JSONL records -> token sequences with a loss mask.

Three record shapes, found per record:

- ``{"prompt": ..., "completion": ...}`` (what ``pocketlm data label`` and ``data synth
  --task`` write): the prompt goes through the student's chat template as a user turn, the
  completion is the assistant's answer; only the completion's tokens are trained on.
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: a conversation; the last
  assistant turn is trained on.
- ``{"instruction": ..., "text": ..., "label": ...}`` (what ``pocketlm data label``
  writes): the conversation ``pocketlm task`` prompts with (the instruction as the system
  turn, the record as the user's) answered by the label.
- ``{"text": ...}`` (or ``--field``): plain text, every token trained on; texts are packed
  into sequences of ``seq_len`` tokens (a text longer than that spans several).

Tokens come from llama.cpp's tokenizer of the student's GGUF: the same tokens the runtime
will see, and the ones the teacher's distributions are computed over.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.engine.llama import Model
from pocketlm.errors import UsageError
from pocketlm.services.chat_template import chat_tokens

MAX_LINE_BYTES = 4 * 1024 * 1024  # one record; a longer line is skipped and counted


@dataclass
class Example:
    """One training sequence: tokens and, per token, whether predicting it is trained."""

    tokens: list[int]
    trained: list[bool]  # trained[i]: the loss includes the prediction of tokens[i]

    @property
    def n_trained(self) -> int:
        return sum(self.trained[1:])

    @property
    def first_row(self) -> int:
        """The first position whose prediction is trained (row i predicts token i + 1);
        the last position when none is."""
        trained = self.trained[1:]
        return trained.index(True) if True in trained else len(self.tokens) - 1


@dataclass
class Dataset:
    train: list[Example]
    held_out: list[Example]
    sha256: str  # of the data file's bytes: recorded in the model's manifest
    records: int  # records read
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records skipped
    truncated: int = 0  # sequences cut at seq_len

    @property
    def train_tokens(self) -> int:
        return sum(s.n_trained for s in self.train)


def load(
    path: Path,
    vocab: Model,
    *,
    seq_len: int,
    field_name: str | None = None,
    held_out_share: float = 0.05,
    seed: int = 0,
) -> Dataset:
    """Read, tokenize and split ``path`` with ``vocab`` (the student's engine Model, loaded
    vocab-only). Raises UsageError when nothing usable is in it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{path} does not exist", "give the JSONL file of training records")
    digest = hashlib.sha256()
    sequences: list[Example] = []
    skipped: dict[str, int] = {}
    n_records = truncated = 0
    plain: list[list[int]] = []
    template = vocab.chat_template()
    eos = [vocab.eos] if vocab.eos >= 0 else []
    for n_records, raw in enumerate(_lines(path, digest), start=1):  # noqa: B007
        record, reason = _parse(raw, field_name)
        if record is None:
            _count(skipped, reason)
            continue
        if "text" in record:
            plain.append(vocab.tokenize(record["text"], add_special=False) + eos)
            continue
        seq = _chat_example(record["messages"], vocab, template, eos)
        if seq is None:
            _count(skipped, "chat record but the student has no chat template")
            continue
        if len(seq.tokens) > seq_len:
            seq = Example(seq.tokens[:seq_len], seq.trained[:seq_len])
            truncated += 1
        if seq.n_trained:
            sequences.append(seq)
        else:
            _count(skipped, "the answer starts past --seq-len")
    sequences.extend(_pack(plain, seq_len))
    if not sequences:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items()) or "the file is empty"
        raise UsageError(
            f"{path.name} has no usable training records ({reasons})",
            'each line needs "text", "prompt" and "completion", or "messages"',
        )
    train, held_out = split(sequences, held_out_share, seed)
    return Dataset(train, held_out, digest.hexdigest(), n_records, skipped, truncated)


def split(
    sequences: Sequence[Example], share: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded split; at least one sequence held out when there are two or more."""
    order = list(range(len(sequences)))
    random.Random(seed).shuffle(order)
    n_held = 0 if len(sequences) < 2 or share <= 0 else max(1, round(len(sequences) * share))
    held = sorted(order[:n_held])
    kept = sorted(order[n_held:])
    return [sequences[i] for i in kept], [sequences[i] for i in held]


def balance(
    examples: Sequence[Example], seed: int
) -> tuple[list[Example], dict[tuple[int, ...], tuple[int, int]]]:
    """Examples whose answers repeat (a label: the trained tokens of the example) drawn to
    the same count each: the median of those answers' counts, larger ones subsampled and
    smaller ones repeated (every example of a small answer as often as the others, then a
    seeded few once more). Examples whose answer is their own (free text) are kept as they
    are. Returns the examples, in a seeded order, and per repeated answer (its tokens) the
    counts (before, after)."""
    groups: dict[tuple[int, ...], list[Example]] = {}
    for ex in examples:
        answer = tuple(t for t, on in zip(ex.tokens[1:], ex.trained[1:], strict=True) if on)
        groups.setdefault(answer, []).append(ex)
    labels = {a: g for a, g in groups.items() if len(g) >= 2}
    if len(labels) < 2:
        return list(examples), {}
    sizes = sorted(len(g) for g in labels.values())
    target = sizes[len(sizes) // 2]
    rng = random.Random(seed)
    out: list[Example] = [g[0] for a, g in groups.items() if a not in labels]
    counts = {}
    for answer, group in labels.items():
        whole, rest = divmod(target, len(group))
        out += group * whole + rng.sample(group, rest)
        counts[answer] = (len(group), target)
    rng.shuffle(out)
    return out, counts


def _count(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def _lines(path: Path, digest) -> Iterator[bytes]:
    with path.open("rb") as f:
        for line in f:
            digest.update(line)
            if line.strip():
                yield line


def _parse(raw: bytes, field_name: str | None) -> tuple[dict[str, Any] | None, str]:
    """(a normalised record: {"text"} or {"messages"}, or None and why it was skipped)."""
    if len(raw) > MAX_LINE_BYTES:
        return None, "longer than 4 MiB"
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "not JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    if field_name is not None:
        text = record.get(field_name)
        return ({"text": text}, "") if _usable(text) else (None, f"no {field_name!r} text")
    if _usable(record.get("prompt")) and _usable(record.get("completion")):
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
        return {"messages": messages}, ""
    messages = record.get("messages")
    if isinstance(messages, list) and _valid_messages(messages):
        return {"messages": messages}, ""
    if _usable(record.get("instruction")) and _usable(record.get("text")):
        if _usable(record.get("label")):  # `pocketlm data label`: the task's own prompt
            messages = [
                {"role": "system", "content": record["instruction"]},
                {"role": "user", "content": record["text"]},
                {"role": "assistant", "content": record["label"]},
            ]
            return {"messages": messages}, ""
    if _usable(record.get("text")):
        return {"text": record["text"]}, ""
    return None, "no text, prompt/completion or messages"


def _usable(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _valid_messages(messages: list) -> bool:
    ok = all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    return ok and any(m["role"] == "assistant" for m in messages)


def _chat_example(
    messages: list[dict[str, str]], vocab: Model, template: str | None, eos: list[int]
) -> Example | None:
    """Tokens of the conversation as the runtime prompts it; trained: the last assistant
    turn and its end token."""
    if template is None:
        return None
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    context = chat_tokens(vocab, template, messages[:last])
    answer = vocab.tokenize(messages[last]["content"], add_special=False) + eos
    tokens = context + answer
    return Example(tokens, [False] * len(context) + [True] * len(answer))


def _pack(texts: list[list[int]], seq_len: int) -> list[Example]:
    """Plain texts concatenated and cut into sequences of seq_len tokens (the last shorter)."""
    stream = [t for tokens in texts for t in tokens]
    out = []
    for at in range(0, len(stream), seq_len):
        chunk = stream[at : at + seq_len]
        if len(chunk) >= 2:
            out.append(Example(chunk, [True] * len(chunk)))
    return out
