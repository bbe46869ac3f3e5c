"""`pocketlm task extract`: a JSON object per record, forced into a schema, then checked.

The schema becomes a grammar (the server's structured-output path: its limits and its
check process, so a hostile schema costs a bounded time), so the model can only write JSON
of the schema's shape; the answer is then parsed and validated with ``jsonschema`` for
what a grammar does not enforce (formats, numeric ranges it approximates). A record whose
answer fails (cut off at the token limit, or invalid) is tried again with sampling (a new
seed per try), then reported as failed with the reason.

Small models often write the *string* "null" (or "None") for a field the text does not
give: where the schema allows null there, it is read as null (``null_strings``), so a
program reading the output, and a student trained on a teacher's answers, sees no text
that the record does not hold.

Grounded extraction (``grounded=True``, ``--grounded``) is for fields a program wants read
from the text, never invented: after decoding, a top-level string value that the record's
text does not hold (case and runs of whitespace ignored) is made null where the schema
allows null there, and the record lists the field in ``ungrounded``. Measured against
constraining the decoding itself to spans of the text (a grammar of the text's suffix
automaton): a model that means to write a value the text lacks is then forced into some
span instead of null, and the check afterwards scored better for every model tried
(docs/tasks.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams
from pocketlm.services.grammar import json_grammar
from pocketlm.services.tasks.engine import GREEDY, TaskEngine
from pocketlm.services.tasks.job import RecordFailed
from pocketlm.services.tasks.records import Record

MAX_SCHEMA_BYTES = 64 * 1024


def load_schema(path: Path) -> dict[str, Any]:
    """A JSON Schema from a file, checked against its metaschema: one-line errors."""
    if not path.is_file():
        raise UsageError(f"no such file: {path}", "give --schema a JSON Schema file")
    if path.stat().st_size > MAX_SCHEMA_BYTES:
        raise UsageError(f"{path} is larger than {MAX_SCHEMA_BYTES // 1024} KiB", "simplify it")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON: {e}", "fix the schema file") from None
    if not isinstance(schema, dict):
        raise UsageError(f"{path} is not a JSON Schema (an object)", "fix the schema file")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(map(str, e.path)) or "the top level"
        raise UsageError(
            f"{path} is not a valid JSON Schema: {e.message} (at {where})", "fix the schema"
        ) from None
    return schema


def instructions(schema: dict[str, Any], task: str | None = None) -> str:
    return (
        (task or "Extract the information from the text.")
        + " Answer with one JSON object that follows this JSON Schema; use null where the"
        " text does not say.\n" + json.dumps(schema, ensure_ascii=False)
    )


class Extractor:
    def __init__(
        self,
        engine: TaskEngine,
        schema: dict[str, Any],
        *,
        task: str | None = None,
        retries: int = 1,
        max_tokens: int = 512,
        grounded: bool = False,
    ):
        self.engine = engine
        self.schema = schema
        self.validator = jsonschema.validators.validator_for(schema)(schema)
        self.grammar = json_grammar(schema, str(engine.path), field="--schema")
        self.system = instructions(schema, task)
        self.retries = retries
        self.max_tokens = max_tokens
        self.grounded = grounded

    def __call__(self, record: Record) -> dict[str, Any]:
        tokens = self.engine.prompt(
            [{"role": "system", "content": self.system}, {"role": "user", "content": record.text}]
        )
        reason = ""
        for attempt in range(self.retries + 1):
            params = self._params(attempt)
            out = self.engine.generate(tokens, params, grammar=self.grammar)
            data, reason = self.check(out.text, out.finish)
            if reason is None:
                result = {"data": data, **({"attempts": attempt + 1} if attempt else {})}
                if self.grounded:
                    result["data"], dropped = grounded(data, record.text, self.schema)
                    if dropped:
                        result["ungrounded"] = dropped
                return result
        raise RecordFailed(f"no valid JSON after {self.retries + 1} tries: {reason}")

    def _params(self, attempt: int) -> GenerationParams:
        if attempt == 0:
            return GREEDY.model_copy(update={"max_tokens": self.max_tokens})
        return GenerationParams(max_tokens=self.max_tokens, temperature=0.7, seed=attempt)

    def check(self, text: str, finish: str) -> tuple[Any, str | None]:
        """(the parsed object, None), or (None, why it is not valid)."""
        if finish == "length":
            return None, f"the answer did not end within {self.max_tokens} tokens"
        if finish not in ("stop",):
            return None, f"generation ended: {finish}"
        try:
            data = null_strings(json.loads(text), self.schema)
        except ValueError as e:
            return None, f"not JSON: {e}"
        errors = sorted(self.validator.iter_errors(data), key=lambda e: list(e.path))
        if errors:
            where = "/".join(map(str, errors[0].path)) or "the top level"
            return None, f"does not match the schema at {where}: {errors[0].message}"
        return data, None


NULL_WORDS = frozenset({"null", "none"})


def null_strings(data: Any, schema: Any, depth: int = 0) -> Any:
    """``data`` with each string "null"/"None" (any case) made null where ``schema`` (its
    ``properties`` and ``items``, followed to a bounded depth) allows null."""
    if depth > 32 or not isinstance(schema, dict):
        return data
    if isinstance(data, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        return {
            k: null_strings(v, props[k], depth + 1) if k in props else v for k, v in data.items()
        }
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        return [null_strings(v, schema["items"], depth + 1) for v in data]
    if isinstance(data, str) and data.strip().lower() in NULL_WORDS and _allows_null(schema):
        return None
    return data


def _allows_null(schema: dict) -> bool:
    kind = schema.get("type")
    return (
        kind == "null"
        or (isinstance(kind, list) and "null" in kind)
        or (isinstance(schema.get("enum"), list) and None in schema["enum"])
        or any(
            isinstance(s, dict) and _allows_null(s)
            for key in ("anyOf", "oneOf")
            for s in schema.get(key) or ()
        )
    )


def grounded(data: Any, text: str, schema: Any) -> tuple[Any, list[str]]:
    """``data`` with each top-level string value that ``text`` does not hold (case and runs
    of whitespace ignored) made null where ``schema`` allows null there, and the names of
    those fields: what a teacher invented rather than read, for training a student that
    should copy."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(data, dict) or not isinstance(props, dict):
        return data, []
    haystack = _plain(text)
    out, dropped = dict(data), []
    for key, value in data.items():
        if isinstance(value, str) and value.strip() and _plain(value) not in haystack:
            if isinstance(props.get(key), dict) and _allows_null(props[key]):
                out[key] = None
                dropped.append(key)
    return out, dropped


def _plain(text: str) -> str:
    return " ".join(text.split()).casefold()
