"""The model pocketlm uses when none is named: the user's, else the largest that runs well here.

In order: ``$POCKETLM_MODEL``; ``model = "..."`` in ``config.toml`` in the store root; else
the largest (by parameters) model of the ladder (the built-in instruction-tuned catalog
models) that fits in memory at its default context and decodes at least MIN_DECODE_TPS
tokens/s on this machine; if none does, the smallest. The sizes come from the catalog, so
the choice is made before anything is pulled.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pocketlm import config
from pocketlm.errors import UsageError
from pocketlm.services import fit, machine, results
from pocketlm.store import catalog
from pocketlm.store.names import name_problem, shown
from pocketlm.store.pull import looks_like_path
from pocketlm.store.store import Store, write_atomic

CONFIG_FILE = "config.toml"  # in the store root
ANNOUNCED_FILE = "default-model.announced"  # in the store root: the last choice announced
MIN_DECODE_TPS = 8.0  # below this a reply visibly crawls
# Plain decoding reaches ~70% of the memory-bandwidth bound (services/fit.py) on the machines
# measured (docs FACTS.md, 2 cores at ~16.5 GB/s): Qwen2.5-Coder 1.5B ~11 of ~15 tok/s (0.73),
# 0.5B ~24 of ~34 (0.70), Gemma 3 270M ~47 of ~68 (0.69). A `pocketlm bench` figure for the
# model on this machine replaces the estimate.
EFFICIENCY = 0.7
HOW_TO_CHOOSE = f"set {config.DEFAULT_MODEL_ENV} or `model` in {CONFIG_FILE} to choose another"


@dataclass(frozen=True)
class Choice:
    """The default model, and why (``reason``: one sentence for the user)."""

    name: str
    reason: str
    explicit: bool  # the user named it ($POCKETLM_MODEL or config.toml)


@dataclass(frozen=True)
class Rung:
    """A ladder model as this machine would run it."""

    entry: catalog.CatalogEntry
    fit: fit.FitReport  # at its default context
    decode_tps: float  # measured by `pocketlm bench` here, else estimated
    measured: bool

    @property
    def runs_well(self) -> bool:
        return self.fit.fits and self.decode_tps >= MIN_DECODE_TPS


def default_model(store: Store | None = None) -> Choice:
    """The model to use when none is named (see the module's docstring)."""
    store = store or Store()
    name = os.environ.get(config.DEFAULT_MODEL_ENV)
    if name:
        return Choice(name, f"{name}: set by {config.DEFAULT_MODEL_ENV}", explicit=True)
    path = store.root / CONFIG_FILE
    name = configured_model(path)
    if name:
        return Choice(name, f"{name}: set in {path}", explicit=True)
    return choose(rungs(store))


def configured_model(path: Path) -> str | None:
    """``model`` in the config file ``path``; None when the file or the key is absent.
    Other keys are left to whoever reads them."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0]
        raise UsageError(f"config {path} is unreadable ({why})", "fix it or remove it") from None
    value = data.get("model")
    if value is None:
        return None
    if not isinstance(value, str) or (not looks_like_path(value) and name_problem(value)):
        raise UsageError(
            f"config {path}: model must be a model name or a GGUF path, not "
            f"{shown(repr(value), 60)}",
            "`pocketlm list --catalog` shows the names",
        )
    return value


def ladder() -> list[catalog.CatalogEntry]:
    """The built-in instruction-tuned models whose sizes are known, smallest first."""
    known = [e for e in catalog.BUILT_INS if e.chat and e.shape and e.shape.parameters]
    return sorted(known, key=lambda e: e.shape.parameters)  # type: ignore[union-attr]


def rungs(store: Store) -> list[Rung]:
    """Each ladder model's fit and decode speed here, smallest first."""
    measured = measured_decode_tps(store)
    out = []
    for entry in ladder():
        report = fit.fit_catalog(entry)
        tps = measured.get(entry.sha256)
        estimate = report.decode_tps_empty * EFFICIENCY
        out.append(Rung(entry, report, tps or estimate, measured=tps is not None))
    return out


def choose(rungs: list[Rung]) -> Choice:
    """The largest rung that runs well, else the smallest, with the reason."""
    good = [r for r in rungs if r.runs_well]
    r = good[-1] if good else rungs[0]
    how = "measured by pocketlm bench" if r.measured else "estimated from memory bandwidth"
    memory = f"{_gb(r.fit.total_bytes)} of {_gb(r.fit.ram_available_bytes)} free"
    rule = f"fits in memory and decodes >= {MIN_DECODE_TPS:.0f} tok/s here"
    if good:
        why = f"the largest ladder model that {rule} ({memory}; ~{r.decode_tps:.0f} tok/s, {how})"
    else:
        why = (
            f"the smallest ladder model, as none {rule.replace('fits', 'both fits')} "
            f"(this one: {memory}; ~{r.decode_tps:.0f} tok/s, {how})"
        )
    return Choice(r.entry.name, f"{r.entry.name}: {why}; {HOW_TO_CHOOSE}", explicit=False)


def measured_decode_tps(store: Store) -> dict[str, float]:
    """Decode tok/s that `pocketlm bench` measured on this machine (same CPU and cores) with
    the threads `run` uses, by model sha256: the latest figure of each."""
    db = results.ResultsDB.of(store)
    if not db.path.is_file():  # nothing measured (and nothing to create)
        return {}
    here = results.machine_info()
    threads = machine.default_threads()
    found: dict[str, float] = {}
    for row in db.query(kind="bench"):  # oldest first: a later row replaces an earlier one
        same_machine = all(row.machine.get(k) == here[k] for k in ("cpu", "cores", "threads"))
        tps = _decode_median(row.metrics)
        if row.model_sha256 and same_machine and row.settings.get("threads") == threads and tps:
            found[row.model_sha256] = tps
    return found


def _decode_median(metrics: dict) -> float | None:
    try:
        value = metrics["decode"]["tok_per_s"]["median"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def announce(choice: Choice, store: Store | None = None) -> str | None:
    """``choice.reason`` the first time the ladder makes this choice for ``store``, else None
    (also for a model the user named: they know). The name is recorded in the store root."""
    if choice.explicit:
        return None
    path = (store or Store()).root / ANNOUNCED_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.read_text(encoding="utf-8").strip() == choice.name:
            return None
    with contextlib.suppress(OSError):  # a read-only store: announced every time
        write_atomic(path, f"{choice.name}\n".encode())
    return choice.reason


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"
