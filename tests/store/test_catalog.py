"""The catalog of models pocketlm can pull: its entries are consistent, and an unknown
name is an error naming the close ones."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pocketlm import config
from pocketlm.errors import ModelNotFoundError
from pocketlm.store import catalog
from pocketlm.store.names import valid_name

ENTRIES = list(catalog.CATALOG.values())
IDS = [e.name for e in ENTRIES]
PINNED = re.compile(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+")


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_entry_is_consistent(entry):
    assert catalog.CATALOG[entry.name] is entry
    assert valid_name(entry.name)
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.size_bytes > 0
    assert entry.description and entry.license and entry.homepage.startswith("https://")
    assert isinstance(entry.chat, bool)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_entry_lists_exactly_pinned_packages_and_gguf_members(entry):
    assert entry.packages and all(PINNED.fullmatch(p) for p in entry.packages)
    assert len(set(entry.packages)) == len(entry.packages)
    assert entry.members and all(".gguf" in m and not m.startswith("/") for m in entry.members)


def test_the_default_model_is_in_the_catalog():
    assert config.DEFAULT_MODEL in catalog.CATALOG


# pull compares the entry with hashlib's hexdigest: anything but 64 lowercase hex digits
# could never match, and every pull of the entry would fail its checksum
@pytest.mark.parametrize(
    "sha256",
    ["0" * 63, "0" * 65, "z" * 64, "A" * 64],
    ids=["63 digits", "65 digits", "not hex", "uppercase"],
)
def test_an_entry_without_a_hex_sha256_is_refused(sha256):
    entry = ENTRIES[0]
    with pytest.raises(ValueError, match="64 hex digits"):
        dataclasses.replace(entry, sha256=sha256)


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ENTRIES[0].size_bytes = 1  # type: ignore[misc]


def test_get_a_known_name():
    assert catalog.get("gemma3-270m").chat is False


def test_get_of_an_unknown_name_suggests_the_close_one():
    with pytest.raises(ModelNotFoundError) as e:
        catalog.get("smollm2-135m")
    assert e.value.message == "unknown model 'smollm2-135m'"
    assert e.value.hint == "did you mean 'smollm2-135m-instruct'?"
    assert e.value.http_status == 404


def test_get_of_a_far_name_lists_every_model():
    with pytest.raises(ModelNotFoundError) as e:
        catalog.get("zzz")
    assert e.value.hint == (
        "known models: gemma3-270m, smollm2-135m-instruct (see `pocketlm list --catalog`)"
    )


def test_get_of_odd_text_is_one_line():
    with pytest.raises(ModelNotFoundError) as e:
        catalog.get("a\nb\x00" + "c" * 300)
    text = str(e.value)
    assert text.isprintable() and "... (304 characters)" in text


def test_suggest_names_up_to_three_close_names_in_order():
    known = {"llama-7b", "llama-8b", "llama-9b", "llama-13b", "phi-2"}
    hint = catalog.suggest("llama-b", known)
    assert hint.startswith("did you mean ") and hint.endswith("?")
    assert hint.count("' or '") == 2 and "phi-2" not in hint


def test_suggest_with_nothing_close_lists_the_known_names_sorted():
    assert catalog.suggest("xyz", ["b-model", "a-model"]).startswith(
        "known models: a-model, b-model "
    )
