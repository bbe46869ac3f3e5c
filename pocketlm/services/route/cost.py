"""What a request cost: money on a remote tier, energy on a local one.

``Price``: currency per million input and output tokens, as providers list them.

``EnergyMeter`` measures a span of work (``start()`` ... ``stop(mark)``):

- with RAPL where this process can read it (the Linux powercap driver, Intel and AMD CPUs):
  ``/sys/class/powercap/intel-rapl:N/energy_uj``, each package's (socket's) energy counter in
  microjoules, which wraps at ``max_energy_range_uj``. It is measured, not estimated, but it
  is the whole package's: other processes' work in the span counts too. Recent kernels let
  only root read it. A span longer than one wrap of the counter (tens of minutes at full
  power) is under-counted: a request is far shorter.
- otherwise, an estimate: the CPU seconds this process used in the span
  (``time.process_time``: user + system time of all its threads) times a power per busy core,
  WATTS_PER_CORE = 10 W (``$POCKETLM_WATTS_PER_CORE`` overrides). The figure: desktop and
  laptop x86 CPUs are rated at 15-125 W for 4-16 cores, servers at 200-400 W for 32-96, so a
  busy core draws roughly 5-15 W; 10 W is the middle, right within a factor of about two. It
  leaves out memory, GPU, the machine's idle power and work done in other processes (an
  engine child). The result says ``estimated=True``.

Requests that overlap in one server process share its CPU (and the package's energy); the
meter cannot tell whose work is whose, so the caller passes ``share``: 1/n for n requests in
flight (counted at stop is good enough). Each request then gets an equal part of the span's
energy, which overstates short requests next to long ones and is simple to reason about.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pocketlm.errors import UsageError

WATTS_ENV = "POCKETLM_WATTS_PER_CORE"
WATTS_PER_CORE = 10.0  # power of one busy core (see above)
RAPL_ROOT = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"intel-rapl:\d+")  # intel-rapl:0:0 etc. are parts of their package


@dataclass(frozen=True)
class Price:
    price_in: float  # currency per million input tokens
    price_out: float  # currency per million output tokens
    currency: str = "USD"

    def __post_init__(self):
        for name in ("price_in", "price_out"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"{name} must be a non-negative number (per million tokens), not {value!r}"
                )

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6


@dataclass(frozen=True)
class Energy:
    joules: float
    estimated: bool  # False: read from RAPL; True: CPU time x watts per core
    source: str  # "rapl" or "cpu-time x 10 W/core"


@dataclass(frozen=True)
class Mark:
    """What ``start`` saw: this process's CPU seconds and the RAPL counters (None: none)."""

    cpu_s: float
    counters: tuple[int, ...] | None


@dataclass(frozen=True)
class RaplZone:
    energy_uj: Path
    max_range_uj: int


def watts_per_core() -> float:
    """``$POCKETLM_WATTS_PER_CORE``, or WATTS_PER_CORE."""
    value = os.environ.get(WATTS_ENV, "").strip()
    if not value:
        return WATTS_PER_CORE
    try:
        watts = float(value)
    except ValueError:
        watts = math.nan
    if not math.isfinite(watts) or watts <= 0:
        raise UsageError(
            f"invalid {WATTS_ENV}={value!r}: give a busy core's power in watts, e.g. 10"
        )
    return watts


def rapl_zones(root: str | Path = RAPL_ROOT) -> list[RaplZone]:
    """The package zones under ``root``, or none unless every one of them is readable."""
    zones = []
    for path in sorted(Path(root).glob("intel-rapl:*")):
        if not _PACKAGE.fullmatch(path.name) or _name(path).startswith("psys"):
            continue  # psys: the whole platform, packages included
        try:
            int((path / "energy_uj").read_text())
            zones.append(
                RaplZone(path / "energy_uj", int((path / "max_energy_range_uj").read_text()))
            )
        except (OSError, ValueError):
            return []  # part of the machine unmeasured: estimate instead
    return zones


def _name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


def _delta(before: int, after: int, max_range: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after ``max_range``."""
    return after - before if after >= before else after + max_range - before


class EnergyMeter:
    """``mark = meter.start()``, the work, ``meter.stop(mark, share)`` -> Energy."""

    def __init__(self, rapl_root: str | Path = RAPL_ROOT, watts: float | None = None):
        self.zones = rapl_zones(rapl_root)
        self.watts = watts_per_core() if watts is None else watts

    def start(self) -> Mark:
        return Mark(time.process_time(), self._counters())

    def stop(self, mark: Mark, share: float = 1.0) -> Energy:
        """The energy of the span since ``mark``, times ``share`` (1/n for n overlapping)."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share!r}")
        now = self._counters()
        if mark.counters is not None and now is not None:
            pairs = zip(mark.counters, now, self.zones, strict=True)
            micro = sum(_delta(a, b, zone.max_range_uj) for a, b, zone in pairs)
            return Energy(micro / 1e6 * share, False, "rapl")
        cpu_s = max(0.0, time.process_time() - mark.cpu_s)
        return Energy(cpu_s * self.watts * share, True, f"cpu-time x {self.watts:g} W/core")

    def _counters(self) -> tuple[int, ...] | None:
        if not self.zones:
            return None
        try:
            return tuple(int(zone.energy_uj.read_text()) for zone in self.zones)
        except (OSError, ValueError):
            return None
