"""Manifests and the name rules: what a model record holds, how it reads back, and how a
broken one is reported."""

from __future__ import annotations

import json

import pytest

from pocketlm.errors import PocketError, UsageError
from pocketlm.store.manifest import Manifest
from pocketlm.store.names import NAME_RULES, check_name, name_problem, shown, valid_name


def manifest(**changes) -> Manifest:
    fields = dict(
        name="m",
        path="/models/m.gguf",
        source="file:///models/m.gguf",
        sha256="ab" * 32,
        size_bytes=1234,
        architecture="llama",
        parameter_count=135_000_000,
        quantization="Q4_1",
        bits_per_weight=5.0,
    )
    return Manifest(**{**fields, **changes})


# -- names ----------------------------------------------------------------------------------


def test_check_name_returns_a_valid_name():
    assert check_name("smollm2-135m-instruct:q4_0") == "smollm2-135m-instruct:q4_0"


@pytest.mark.parametrize("name", ["a/b", "-a", "", "a b", "x" * 101])
def test_check_name_refuses_with_the_rules_as_hint(name):
    with pytest.raises(UsageError) as e:
        check_name(name)
    assert e.value.message == f"invalid model name '{shown(name)}'"
    assert e.value.hint == NAME_RULES


def test_a_name_of_many_colons_is_refused_for_its_file_name_length():
    name = "a" + ":" * 99  # 100 characters, but 298 bytes percent-encoded
    assert not valid_name(name)
    assert "':'" in name_problem(name)
    assert valid_name("a" + ":" * 50)


@pytest.mark.parametrize(
    "text, seen",
    [
        ("plain", "plain"),
        ("a\nb", "a\\nb"),  # a newline would break the one-line message
        ("é", "\\xe9"),
        ("a\x00b", "a\\x00b"),
        ("a\ud800b", "a\\ud800b"),  # a lone surrogate cannot even be printed
    ],
)
def test_shown_escapes_what_a_terminal_would_not_show_as_typed(text, seen):
    assert shown(text) == seen


def test_shown_cuts_long_text_and_says_how_long_it_was():
    assert shown("x" * 300) == "x" * 100 + "... (300 characters)"
    assert shown("A" * 100) == "A" * 100  # a valid name is never cut


# -- manifests ------------------------------------------------------------------------------


def test_manifest_round_trips_through_json(tmp_path):
    m = manifest(context_length=8192, chat_template="{{ x }}", license="MIT", parent="base")
    path = tmp_path / "m.json"
    path.write_text(m.to_json(), encoding="utf-8")
    assert Manifest.read(path) == m
    assert Manifest.model_validate(json.loads(m.to_json())) == m


def test_manifest_json_keeps_non_ascii_text_and_ends_with_a_newline():
    text = manifest(description="modèle français").to_json()
    assert "modèle français" in text and text.endswith("}\n")


def test_manifest_keeps_fields_it_does_not_know(tmp_path):
    """A manifest written by a newer pocketlm reads back with its extra fields intact."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**manifest().model_dump(), "future_field": [1, 2]}))
    assert json.loads(Manifest.read(path).to_json())["future_field"] == [1, 2]


def test_manifest_defaults():
    m = manifest()
    assert (m.chat, m.imported, m.context_length, m.parent) == (True, False, None, None)
    assert m.created_at[:2] == "20" and "T" in m.created_at
    assert m.file().name == "m.gguf"


def test_summary_holds_the_listed_fields():
    assert manifest().summary() == {
        "name": "m",
        "size_bytes": 1234,
        "quantization": "Q4_1",
        "parameter_count": 135_000_000,
        "architecture": "llama",
        "source": "file:///models/m.gguf",
    }


UNREADABLE = {
    "not json": b"{not json",
    "a field missing": json.dumps({"name": "m"}).encode(),
    "a list": b"[1, 2]",
    "not utf-8": b'{"name": "\xff"}',
    "empty": b"",
}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unreadable_manifest_is_one_line_naming_the_file_and_the_fix(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(PocketError) as e:
        Manifest.read(path)
    text = str(e.value)
    assert "\n" not in text
    assert e.value.message.startswith(f"manifest {path} is unreadable (")
    assert f"rm '{path}'" in e.value.hint


def test_a_missing_manifest_is_unreadable_too(tmp_path):
    with pytest.raises(PocketError, match="is unreadable"):
        Manifest.read(tmp_path / "gone.json")
