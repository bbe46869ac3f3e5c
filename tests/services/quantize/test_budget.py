"""The best type for a size budget, on a tiny real model."""

from __future__ import annotations

import pytest

from pocketlm.errors import PocketError, UsageError
from pocketlm.progress import NullProgress
from pocketlm.services.quantize import budget as b
from pocketlm.services.quantize import quantize as q
from pocketlm.store.store import Store
from tests.services.quantize.conftest import FAST, import_wide

pytestmark = pytest.mark.usefixtures("no_probe")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "text, size",
    [
        ("60MB", 60_000_000),
        ("2GB", 2_000_000_000),
        ("500M", 500_000_000),
        ("1.5 gb", 1_500_000_000),
        ("750k", 750_000),
        ("1GiB", 2**30),
        ("123", 123),
        (" 80 MB ", 80_000_000),
    ],
)
def test_sizes_parse_with_decimal_units(text, size):
    assert b.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "60XB", "-5MB", "0MB", "1e3MB", "5 M B"])
def test_bad_sizes_are_one_line_errors(text):
    with pytest.raises(UsageError, match="invalid size"):
        b.parse_size(text)


@pytest.fixture
def store(tmp_path, wide_gguf) -> Store:
    store = Store(tmp_path / "store")
    import_wide(wide_gguf, store)
    return store


def _estimates(store):
    source = q.open_source("wide", store, NullProgress())
    return source, q.estimate_sizes(source, q.types.TYPES.values())


def test_the_plan_tries_what_fits_and_the_near_misses(store):
    source, est = _estimates(store)
    budget = est["Q3_K_M"].size_bytes + 1000
    tries, skipped = b.plan(source, est, budget, None)
    names = [qt.name for qt, _ in tries]
    sizes = [size for _, size in tries]
    assert sizes == sorted(sizes, reverse=True)
    assert names[-3:] == ["IQ3_S", "Q3_K_S", "Q2_K"] or names[-3:] == ["Q3_K_S", "IQ3_S", "Q2_K"]
    assert all(size >= b.BAND * est["Q3_K_M"].size_bytes for size in sizes)
    over = [n for n, size in zip(names, sizes) if size > budget]
    assert over == ["Q3_K_L"][: b.NEAR_MISSES]  # the next one up
    assert skipped["Q8_0"] == "over the budget" and skipped["IQ2_XS"] == "needs --calibrate"
    assert skipped["Q2_0"] == "much smaller than allowed" and skipped["MXFP4_MOE"]
    assert skipped["TQ1_0"] == "for ternary-trained models"  # not a BitNet model
    assert set(names) | set(skipped) == set(q.types.TYPES) and not set(names) & set(skipped)


def test_a_budget_below_the_smallest_type_names_the_smallest_size(store):
    source, est = _estimates(store)
    smallest = min(
        e.size_bytes
        for n, e in est.items()
        if not e.error and not q.types.get(n).needs_imatrix and n != "MXFP4_MOE"
    )
    with pytest.raises(PocketError, match=f"the smallest is .* at about {smallest / 1e6:.1f} MB"):
        b.choose("wide", 100_000, store=store)
    assert store.names() == ["wide"]


def test_the_winner_fits_has_the_lowest_kld_and_is_the_only_one_kept(store, tmp_path):
    source, est = _estimates(store)
    budget = est["Q2_K"].size_bytes + 1000  # Q2_K and Q2_0 fit, Q3_K_S or IQ3_S does not
    chart = tmp_path / "budget.png"
    choice = b.choose("wide", budget, params=FAST, threads=1, chart=chart, store=store)
    measured = [c for c in choice.candidates if c.quality is not None]
    fitting = [c for c in measured if c.fits]
    assert len(measured) == 3 and len(fitting) == 2
    assert all(c.size_bytes <= budget for c in fitting)
    best = min(fitting, key=lambda c: c.quality.kld_mean)
    w = choice.winner
    assert w.quality.type == best.type and w.manifest.size_bytes <= budget
    assert store.names() == sorted(["wide", w.manifest.name])
    assert w.manifest.name == f"wide-{best.type.lower()}" and w.manifest.parent == "wide"
    assert w.manifest.budget["bytes"] == budget and w.manifest.quality["type"] == best.type
    assert len(list(store.blobs_dir.iterdir())) == 1 and not list((store.root / "tmp").iterdir())
    assert chart.read_bytes().startswith(PNG_SIGNATURE) and choice.chart == chart
    data = choice.to_dict()
    assert data["winner"]["type"] == best.type and len(data["candidates"]) == len(choice.candidates)
    assert all(c.result_id for c in measured)
