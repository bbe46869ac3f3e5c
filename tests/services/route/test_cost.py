"""Prices and the energy meter: RAPL counters (a fake powercap tree) and the CPU-time estimate."""

from __future__ import annotations

import time

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.route import cost


def test_price_is_per_million_tokens():
    price = cost.Price(0.15, 0.60, "EUR")
    assert price.cost(1_000_000, 0) == pytest.approx(0.15)
    assert price.cost(2000, 500) == pytest.approx((2000 * 0.15 + 500 * 0.60) / 1e6)
    assert cost.Price(0, 0).cost(10**9, 10**9) == 0.0


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1", True])
def test_a_bad_price_names_the_field(bad):
    with pytest.raises(ValueError, match="price_out"):
        cost.Price(1.0, bad)


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def test_without_rapl_energy_is_cpu_time_times_watts(tmp_path):
    meter = cost.EnergyMeter(rapl_root=tmp_path, watts=10.0)  # no zones there
    mark = meter.start()
    time.sleep(0.2)  # idle: next to no CPU time
    idle = meter.stop(mark)
    mark = meter.start()
    before = time.process_time()
    _busy(0.3)
    cpu_s = time.process_time() - before
    busy = meter.stop(mark)
    assert busy.estimated and busy.source == "cpu-time x 10 W/core"
    assert busy.joules == pytest.approx(cpu_s * 10, rel=0.1)
    assert busy.joules >= 2.9 and idle.joules < 0.5
    assert meter.stop(mark, share=0.25).joules == pytest.approx(busy.joules / 4, rel=0.1)


def test_watts_per_core_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cost.WATTS_ENV, "4.5")
    meter = cost.EnergyMeter(rapl_root=tmp_path)
    assert meter.watts == 4.5
    assert meter.stop(meter.start()).source == "cpu-time x 4.5 W/core"
    for bad in ("ten", "0", "-3", "nan"):
        monkeypatch.setenv(cost.WATTS_ENV, bad)
        with pytest.raises(UsageError, match=cost.WATTS_ENV):
            cost.EnergyMeter(rapl_root=tmp_path)


def _zone(root, name, label, energy, max_range=10_000):
    zone = root / name
    zone.mkdir()
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_rapl_sums_packages_and_handles_wrap_around(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 9_000)
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 100)
    core = _zone(tmp_path, "intel-rapl:0:0", "core", 5_000)  # part of package 0
    psys = _zone(tmp_path, "intel-rapl:2", "psys", 1_000)  # the platform, packages included
    meter = cost.EnergyMeter(rapl_root=tmp_path, watts=10.0)
    assert [z.energy_uj.parent for z in meter.zones] == [p0, p1]
    mark = meter.start()
    (p0 / "energy_uj").write_text("500\n")  # wrapped: 9000 -> 10000 -> 0 -> 500
    (p1 / "energy_uj").write_text("300\n")
    (core / "energy_uj").write_text("9999\n")
    (psys / "energy_uj").write_text("9999\n")
    energy = meter.stop(mark)
    assert energy == cost.Energy((1_000 + 500 + 200) / 1e6, False, "rapl")
    assert meter.stop(mark, share=0.5).joules == pytest.approx(850 / 1e6)


def test_an_unreadable_package_means_an_estimate(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0", 100)
    (_zone(tmp_path, "intel-rapl:1", "package-1", 100) / "energy_uj").unlink()
    meter = cost.EnergyMeter(rapl_root=tmp_path, watts=10.0)
    assert meter.zones == [] and meter.stop(meter.start()).estimated


def test_a_counter_lost_mid_span_falls_back_to_the_estimate(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", 100)
    meter = cost.EnergyMeter(rapl_root=tmp_path, watts=10.0)
    mark = meter.start()
    (zone / "energy_uj").write_text("garbage")
    assert meter.stop(mark).estimated


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_share_is_a_fraction(tmp_path, share):
    meter = cost.EnergyMeter(rapl_root=tmp_path, watts=10.0)
    with pytest.raises(ValueError, match="share"):
        meter.stop(meter.start(), share=share)
