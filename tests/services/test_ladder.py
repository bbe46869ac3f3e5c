"""The default model: the user's ($POCKETLM_MODEL, config.toml), else the largest ladder model
that fits in memory and decodes fast enough on this machine (figures faked here), a
`pocketlm bench` figure replacing the estimate."""

from __future__ import annotations

import pytest

from pocketlm import config
from pocketlm.errors import UsageError
from pocketlm.services import ladder, machine
from pocketlm.services.results import Result, ResultsDB
from pocketlm.store import catalog
from pocketlm.store.store import Store

GB = 10**9
SMALL, MID, BIG = (
    "smollm2-135m-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
)


@pytest.fixture
def machine_like(monkeypatch):
    """No model named by the user, and a machine with the given figures (default: a big one)."""
    monkeypatch.delenv(config.DEFAULT_MODEL_ENV)

    def figures(bandwidth: float = 20 * GB, available: int = 16 * GB) -> None:
        monkeypatch.setattr(machine, "memory_bandwidth", lambda refresh=False: bandwidth)
        monkeypatch.setattr(machine, "ram", lambda: (2 * available, available))

    figures()
    return figures


def bench_row(name: str, decode_tps: float, **fields) -> None:
    """What `pocketlm bench` records for the catalog model ``name`` on this machine."""
    row = dict(
        kind="bench",
        task="speed",
        model=name,
        model_sha256=catalog.get(name).sha256,
        metrics={"decode": {"tokens": 64, "tok_per_s": {"median": decode_tps}}},
        settings={"threads": machine.default_threads()},
    )
    ResultsDB().add(Result(**{**row, **fields}))


def test_the_ladder_is_the_built_in_chat_models_smallest_first():
    assert [e.name for e in ladder.ladder()] == [SMALL, MID, BIG]


def test_a_big_machine_gets_the_largest(machine_like):
    choice = ladder.default_model()
    assert (choice.name, choice.explicit) == (BIG, False)
    assert choice.reason.startswith(f"{BIG}: the largest ladder model that fits in memory")
    # 20 GB/s over 1.11 GB of weights, at 70% of that bound
    assert "~13 tok/s, estimated from memory bandwidth" in choice.reason
    assert ">= 8 tok/s" in choice.reason and "POCKETLM_MODEL" in choice.reason
    assert "\n" not in choice.reason
    assert config.default_model() == BIG


def test_slow_memory_gets_a_smaller_model(machine_like):
    machine_like(bandwidth=8 * GB)  # the 1.5B would decode ~5 tok/s
    assert ladder.default_model().name == MID


def test_little_free_memory_gets_a_smaller_model(machine_like):
    machine_like(available=1 * GB)  # 1.6 GB for the 1.5B at 4096 tokens; 0.87 GB for the 0.5B
    choice = ladder.default_model()
    assert choice.name == MID and "0.9 GB of 1.0 GB free" in choice.reason


def test_when_nothing_runs_well_the_smallest(machine_like):
    machine_like(bandwidth=1 * GB, available=GB // 4)
    choice = ladder.default_model()
    assert choice.name == SMALL
    assert choice.reason.startswith(f"{SMALL}: the smallest ladder model, as none both fits")


def test_a_bench_figure_replaces_the_estimate(machine_like):
    bench_row(BIG, 5.0)  # slower than the bandwidth says
    assert ladder.default_model().name == MID
    machine_like(bandwidth=8 * GB)
    bench_row(BIG, 12.0)  # the latest figure counts: faster than estimated
    choice = ladder.default_model()
    assert choice.name == BIG and "~12 tok/s, measured by pocketlm bench" in choice.reason


def test_bench_figures_of_another_machine_or_thread_count_are_ignored(machine_like):
    bench_row(BIG, 5.0, machine={"cpu": "another one", "cores": 64, "threads": 128})
    bench_row(BIG, 5.0, settings={"threads": machine.default_threads() + 1})
    bench_row(BIG, 5.0, model_sha256="0" * 64)  # another file of the same name
    assert ladder.default_model().name == BIG


def test_the_choice_writes_nothing_into_the_store(machine_like, isolated_store):
    ladder.default_model()
    assert not isolated_store.exists()


def test_the_variable_wins(machine_like, monkeypatch):
    monkeypatch.setenv(config.DEFAULT_MODEL_ENV, "my-model")
    choice = ladder.default_model()
    assert choice == ladder.Choice("my-model", "my-model: set by POCKETLM_MODEL", True)
    assert config.default_model() == "my-model"


def test_config_toml_wins_over_the_ladder_and_the_variable_over_it(
    machine_like, monkeypatch, isolated_store
):
    isolated_store.mkdir()
    path = isolated_store / "config.toml"
    path.write_text(f'model = "{SMALL}"\nother_setting = 3\n')
    choice = ladder.default_model()
    assert (choice.name, choice.explicit) == (SMALL, True) and str(path) in choice.reason
    monkeypatch.setenv(config.DEFAULT_MODEL_ENV, MID)
    assert ladder.default_model().name == MID


def test_config_toml_may_name_a_file_and_without_model_changes_nothing(
    machine_like, isolated_store
):
    isolated_store.mkdir()
    path = isolated_store / "config.toml"
    path.write_text('model = "~/models/mine.gguf"\n')
    assert ladder.default_model().name == "~/models/mine.gguf"
    path.write_text("# nothing chosen\n")
    assert ladder.default_model().name == BIG


@pytest.mark.parametrize(
    "content, needle",
    [
        ("model = \n", "is unreadable (Invalid value (at line 1, column 9))"),
        ("model = 3\n", "model must be a model name or a GGUF path, not 3"),
        ('model = ""\n', "model must be a model name or a GGUF path, not ''"),
        ('model = "two words"\n', "not 'two words'"),
    ],
    ids=["syntax", "a number", "empty", "not a name"],
)
def test_a_bad_config_toml_is_one_line_naming_it(machine_like, isolated_store, content, needle):
    isolated_store.mkdir()
    path = isolated_store / "config.toml"
    path.write_text(content)
    with pytest.raises(UsageError) as e:
        ladder.default_model()
    text = str(e.value)
    assert text.startswith(f"config {path}") and needle in text and "\n" not in text, text


def test_a_choice_is_announced_once_per_store(machine_like, tmp_path):
    store = Store(tmp_path / "store")
    choice = ladder.default_model(store)
    assert ladder.announce(choice, store) == choice.reason
    assert ladder.announce(choice, store) is None
    other = ladder.Choice(MID, f"{MID}: ...", explicit=False)  # the machine changed
    assert ladder.announce(other, store) == other.reason
    assert ladder.announce(choice, store) == choice.reason
    assert ladder.announce(choice, Store(tmp_path / "another")) == choice.reason


def test_a_model_the_user_named_is_not_announced(tmp_path):
    store = Store(tmp_path / "store")
    choice = ladder.default_model(store)  # POCKETLM_MODEL, set for every test
    assert choice.explicit and ladder.announce(choice, store) is None
    assert not store.root.exists()
