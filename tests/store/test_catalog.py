"""The catalog of models pocketlm can pull: its entries are consistent, files extend it, a
broken file is a one-line error naming the file, entry and field, and an unknown name is an
error naming the close ones."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from pocketlm import config
from pocketlm.errors import ModelNotFoundError, UsageError
from pocketlm.store import catalog
from pocketlm.store.gguf_check import inspect_gguf
from pocketlm.store.names import valid_name
from pocketlm.store.store import Store
from tests.conftest import shared_store_root

ENTRIES = list(catalog.BUILT_INS)
IDS = [e.name for e in ENTRIES]
PINNED = re.compile(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+")


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_entry_is_consistent(entry):
    assert catalog.entries()[entry.name] is entry
    assert valid_name(entry.name) and entry.origin == catalog.BUILT_IN
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.size_bytes > 0
    assert entry.description and entry.license and entry.homepage.startswith("https://")
    assert isinstance(entry.chat, bool)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_entry_lists_exactly_pinned_packages_and_one_member_each(entry):
    assert entry.packages and all(PINNED.fullmatch(p) for p in entry.packages)
    assert len(set(entry.packages)) == len(entry.packages)
    assert len(entry.members) == len(entry.packages)
    assert all(m and not m.startswith("/") for m in entry.members)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_entry_records_the_shape_fit_and_the_ladder_need(entry):
    shape = entry.shape
    assert shape is not None
    assert all(getattr(shape, f.name) for f in dataclasses.fields(shape))
    assert shape.tensor_data_bytes < entry.size_bytes  # the file adds its header


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_built_in_shapes_are_those_of_the_real_files(entry):
    manifest = Store(shared_store_root()).find(entry.name)
    if manifest is None or manifest.sha256 != entry.sha256:
        pytest.skip(f"{entry.name} is not pulled into the shared test store")
    assert catalog.Shape.of(inspect_gguf(manifest.path)) == entry.shape


def test_the_small_model_is_in_the_catalog():
    assert catalog.get(config.SMALL_MODEL).chat is True


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
        "known models: gemma3-270m, qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct, "
        "smollm2-135m-instruct (see `pocketlm list --catalog`)"
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


# -- catalog files --------------------------------------------------------------------------

SHA = "ab" * 32
ACME = f"""
[[model]]
name = "acme-support-135m"
description = "Acme's support bot"
packages = ["acme-support-135m-part1==1.0.0", "acme-support-135m-part2==1.0.0"]
members = ["acme_support_135m_part1/data/part01.bin", "acme_support_135m_part2/data/part02.bin"]
sha256 = "{SHA}"
size_bytes = 98362432
license = "Apache-2.0"
chat = true
index_url = "http://mirror.example/simple/"
parent = "smollm2-135m-instruct"
architecture = "llama"
parameters = 134515008
quantization = "Q4_0"
context_length = 8192
n_layer = 30
n_embd = 576
n_head = 9
n_head_kv = 3
head_dim_k = 64
head_dim_v = 64
vocab_size = 49152
tensor_data_bytes = 90000000
"""
MINIMAL = f"""
[[model]]
name = "{{name}}"
description = "{{description}}"
packages = ["p==1.0"]
members = ["p/m.bin"]
sha256 = "{SHA}"
size_bytes = 10
license = "MIT"
chat = false
"""


def test_a_file_in_the_store_root_adds_entries_with_every_field(isolated_store):
    isolated_store.mkdir()
    (isolated_store / "catalog.toml").write_text(ACME)
    e = catalog.get("acme-support-135m")
    assert e.origin == str(isolated_store / "catalog.toml")
    assert e.packages == ("acme-support-135m-part1==1.0.0", "acme-support-135m-part2==1.0.0")
    assert e.members[1] == "acme_support_135m_part2/data/part02.bin"
    assert (e.sha256, e.size_bytes, e.license, e.chat) == (SHA, 98362432, "Apache-2.0", True)
    assert (e.index_url, e.parent, e.homepage) == (
        "http://mirror.example/simple/",
        "smollm2-135m-instruct",
        "",
    )
    assert e.shape == catalog.Shape(
        architecture="llama",
        parameters=134515008,
        quantization="Q4_0",
        context_length=8192,
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_head_kv=3,
        head_dim_k=64,
        head_dim_v=64,
        vocab_size=49152,
        tensor_data_bytes=90000000,
    )
    assert list(catalog.entries())[:4] == IDS  # the built-ins first, then the file's


def test_the_file_of_the_given_store_root_is_read(tmp_path):
    (tmp_path / "catalog.toml").write_text(MINIMAL.format(name="elsewhere", description="x"))
    assert "elsewhere" in catalog.entries(tmp_path)
    assert "elsewhere" not in catalog.entries()


def test_a_later_entry_replaces_an_earlier_one_and_the_variable_is_read_each_time(
    isolated_store, tmp_path, monkeypatch
):
    isolated_store.mkdir()
    (isolated_store / "catalog.toml").write_text(
        MINIMAL.format(name="gemma3-270m", description="from the store")
        + MINIMAL.format(name="mine", description="from the store")
    )
    named = tmp_path / "team.toml"
    named.write_text(MINIMAL.format(name="mine", description="from the team"))
    assert catalog.get("gemma3-270m").description == "from the store"
    assert catalog.get("mine").description == "from the store"
    monkeypatch.setenv(catalog.CATALOG_ENV, str(named))
    assert catalog.get("mine").description == "from the team"
    assert catalog.get("mine").origin == str(named)
    assert catalog.get("gemma3-270m").shape is None  # replaced whole, not merged
    monkeypatch.delenv(catalog.CATALOG_ENV)
    assert catalog.get("gemma3-270m").description == "from the store"


def test_a_file_without_entries_adds_nothing(isolated_store):
    isolated_store.mkdir()
    (isolated_store / "catalog.toml").write_text("# nothing yet\n")
    assert list(catalog.entries()) == IDS


BAD_ENTRIES = {
    "unknown key": ('colour = "red"\n', "model 'm' (entry 2): unknown key 'colour'"),
    "missing key": (None, "model 'm' (entry 2): license is required"),
    "wrong type": ('size_bytes = "10"\n', "model 'm' (entry 2): size_bytes must be a positive"),
    "bool for an int": ("n_layer = true\n", "(entry 2): n_layer must be a positive integer"),
    "negative size": ("size_bytes = -1\n", "(entry 2): size_bytes must be a positive integer"),
    "zero shape": ("n_head = 0\n", "(entry 2): n_head must be a positive integer"),
    "list of numbers": ("members = [1]\n", "(entry 2): members must be a list of strings"),
    "bad sha256": (f'sha256 = "{SHA.upper()}"\n', "(entry 2): sha256 must be 64 hex digits"),
    "short sha256": ('sha256 = "abc"\n', "(entry 2): sha256 must be 64 hex digits"),
    "invalid name": ('name = "../up"\n', "model '../up' (entry 2): name '../up' is not a valid"),
    "lengths differ": ('members = ["a", "b"]\n', "(entry 2): members must give one path"),
    "no packages": ("packages = []\nmembers = []\n", "(entry 2): packages must be exact pins"),
    "not a pin": ('packages = ["p>=1.0"]\n', "(entry 2): packages must be exact pins"),
    "an option": ('packages = ["--index-url=x==1"]\n', "(entry 2): packages must be exact pins"),
    "bad index_url": ('index_url = "mirror"\n', "(entry 2): index_url must be an http://"),
    "bad parent": ('parent = "a b"\n', "(entry 2): parent 'a b' is not a valid model name"),
}


def bad_second_entry(extra: str | None) -> str:
    """A file whose first entry is fine and whose second has ``extra`` (None: no license)."""
    second = MINIMAL.format(name="m", description="x")
    if extra is None:
        return MINIMAL.format(name="fine", description="x") + second.replace(
            'license = "MIT"\n', ""
        )
    for line in extra.splitlines():  # a key given again replaces its line
        key = line.split("=")[0].strip()
        second = re.sub(rf"(?m)^{key} = .*\n", "", second)
    return MINIMAL.format(name="fine", description="x") + second + extra


@pytest.mark.parametrize("extra, needle", BAD_ENTRIES.values(), ids=BAD_ENTRIES)
def test_a_bad_entry_is_one_line_naming_file_entry_and_field(tmp_path, monkeypatch, extra, needle):
    path = tmp_path / "team.toml"
    path.write_text(bad_second_entry(extra))
    monkeypatch.setenv(catalog.CATALOG_ENV, str(path))
    with pytest.raises(UsageError) as e:
        catalog.entries()
    text = str(e.value)
    assert text.startswith(f"catalog {path}, ") and needle in text, text
    assert "\n" not in text and "docs/models.md" in text


@pytest.mark.parametrize(
    "content, needle",
    [
        ("[[model]\nname = 'x'\n", "is not valid TOML: "),
        ("[[models]]\nname = 'x'\n", ": unknown key 'models' (entries are [[model]])"),
        ("model = 3\n", ": model must be an array of tables"),
        ("model = [3]\n", ", entry 1: must be a table"),
        (
            MINIMAL.format(name="twice", description="a") * 2,
            ", model 'twice' (entry 2): name is used by entry 1 too",
        ),
        (b"\xff\xfe", " is not UTF-8 text"),
    ],
    ids=["syntax", "top-level key", "not tables", "not a table", "twice", "not utf-8"],
)
def test_a_bad_file_is_one_line_naming_it(isolated_store, content, needle):
    isolated_store.mkdir()
    path = isolated_store / "catalog.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UsageError) as e:
        catalog.get("smollm2-135m-instruct")
    text = str(e.value)
    assert text.startswith(f"catalog {path}") and needle in text, text
    assert "\n" not in text


def test_a_missing_named_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CATALOG_ENV, str(tmp_path / "nope.toml"))
    with pytest.raises(UsageError, match=r"nope.toml \(named by POCKETLM_CATALOG\) does not exist"):
        catalog.entries()


def test_an_entry_as_a_dict_has_the_keys_of_a_file(isolated_store):
    isolated_store.mkdir()
    (isolated_store / "catalog.toml").write_text(ACME)
    data = catalog.get("acme-support-135m").to_dict()
    [table] = tomllib.loads(ACME)["model"]
    assert {k: data[k] for k in table} == table
    assert set(data) - set(table) == {"homepage", "origin"}
    small = catalog.get(config.SMALL_MODEL).to_dict()
    assert small["parameters"] == 134_515_008 and small["origin"] == "built-in"


def test_a_shape_is_read_from_a_gguf_file(tiny_gguf):
    info = inspect_gguf(tiny_gguf)
    shape = catalog.Shape.of(info)
    assert (shape.parameters, shape.quantization) == (info.parameter_count, info.file_type)
    assert (shape.n_layer, shape.tensor_data_bytes) == (info.n_layer, info.tensor_data_bytes)
