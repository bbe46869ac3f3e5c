"""The typed parameter models: defaults, ranges, and the one-line errors ``validate`` gives."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pocketlm.errors import UsageError
from pocketlm.params import (
    DEFAULT_CTX_CAP,
    GenerationOverrides,
    GenerationParams,
    LoadOverrides,
    LoadParams,
    ServeParams,
    context_size,
    validate,
    with_overrides,
)

# (model, field, the values at its bounds (accepted), the values just past them (refused))
BOUNDS = [
    (GenerationParams, "max_tokens", [1], [0]),
    (GenerationParams, "temperature", [0.0, 5.0], [-0.01, 5.01]),
    (GenerationParams, "top_p", [1e-9, 1.0], [0.0, 1.01]),
    (GenerationParams, "top_k", [0], [-1]),
    (GenerationParams, "min_p", [0.0, 1.0], [-0.01, 1.01]),
    (GenerationParams, "repeat_penalty", [1e-9, 10.0], [0.0, 10.01]),
    (GenerationParams, "repeat_last_n", [0], [-1]),
    (GenerationParams, "seed", [0, 2**32 - 2], [-1, 2**32 - 1]),
    (LoadParams, "ctx", [16, 1 << 20], [15, (1 << 20) + 1]),
    (LoadParams, "threads", [1, 1024], [0, 1025]),
    (LoadParams, "batch", [1, 1 << 16], [0, (1 << 16) + 1]),
    (ServeParams, "parallel", [1, 256], [0, 257]),
    (ServeParams, "queue", [1, 4096], [0, 4097]),
    (ServeParams, "cache_ram", [0], [-1]),
    (ServeParams, "memory_budget", [1e-9], [0.0]),
    (ServeParams, "max_body", [1, 1024], [0, 1025]),
    (ServeParams, "header_timeout", [1e-9], [0.0]),
    (ServeParams, "body_timeout", [1e-9], [0.0]),
]


def test_generation_defaults():
    p = GenerationParams()
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (None, 0.8, 0.95, 40, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.seed, p.stop, p.truncate) == (
        1.1,
        64,
        None,
        (),
        False,
    )


def test_load_and_serve_defaults():
    load, serve = LoadParams(), ServeParams()
    assert (load.ctx, load.threads, load.batch, load.flash_attn) == (None, None, 512, False)
    assert (serve.parallel, serve.queue, serve.cache_ram, serve.keep_alive) == (8, 16, 1024, 300)
    assert (serve.memory_budget, serve.max_body) == (None, 8)
    assert (serve.header_timeout, serve.body_timeout) == (10, 10)


@pytest.mark.parametrize("model, field, ok, bad", BOUNDS, ids=[b[1] for b in BOUNDS])
def test_each_bound_is_accepted_at_the_edge_and_refused_past_it(model, field, ok, bad):
    for value in ok:
        assert getattr(validate(model, {field: value}), field) == value
    for value in bad:
        with pytest.raises(UsageError) as e:
            validate(model, {field: value})
        assert f"invalid {field} {value!r}" in str(e.value)


def test_keep_alive_takes_negative_seconds_for_forever():
    assert ServeParams(keep_alive=-1).keep_alive == -1


def test_validate_error_is_one_usage_line_naming_field_and_value():
    with pytest.raises(UsageError) as e:
        validate(GenerationParams, {"temperature": 9})
    text = str(e.value)
    assert text == "invalid temperature 9: input should be less than or equal to 5"
    assert e.value.exit_code == 2


def test_validate_with_flag_names_names_the_flag():
    with pytest.raises(UsageError, match=r"^invalid --top-p 0: input should be greater than 0$"):
        validate(GenerationParams, {"top_p": 0}, flag_names=True)


def test_invalid_value_with_a_newline_stays_on_one_line():
    with pytest.raises(UsageError) as e:
        validate(GenerationParams, {"temperature": "hot\nter"})
    assert "\n" not in str(e.value) and "temperature" in str(e.value)


def test_unknown_parameter_lists_the_known_ones():
    with pytest.raises(UsageError) as e:
        validate(LoadParams, {"tempreature": 1})
    assert e.value.message == "unknown parameter 'tempreature'"
    assert e.value.hint == "known: ctx, threads, batch, flash_attn, speculate, lookup, draft"


def test_validate_returns_the_model():
    p = validate(GenerationParams, {"temperature": 0, "seed": 7})
    assert isinstance(p, GenerationParams) and (p.temperature, p.seed) == (0, 7)


@pytest.mark.parametrize(
    "given, kept", [("END", ("END",)), (["a", "b"], ("a", "b")), (("x",), ("x",)), ([], ())]
)
def test_stop_takes_a_string_or_a_list(given, kept):
    assert GenerationParams(stop=given).stop == kept


@pytest.mark.parametrize("stop", ["", ["a", ""]])
def test_empty_stop_is_refused(stop):
    with pytest.raises(UsageError, match="stop sequences must not be empty"):
        validate(GenerationParams, {"stop": stop})


def test_stop_of_a_non_string_is_refused():
    with pytest.raises(UsageError, match="input should be a valid string"):
        validate(GenerationParams, {"stop": ["a", 3]})


FROZEN = [(GenerationParams, "temperature"), (LoadParams, "ctx"), (ServeParams, "parallel")]


@pytest.mark.parametrize("model, field", FROZEN)
def test_models_are_frozen(model, field):
    p = model()
    with pytest.raises(ValidationError):
        setattr(p, field, 2)
    assert hash(p) == hash(model())  # frozen: usable as a key


def test_unknown_keyword_is_refused_by_the_model_itself():
    with pytest.raises(ValidationError):
        GenerationParams(temprature=1)


@pytest.mark.parametrize(
    "ctx, trained, size",
    [
        (None, None, DEFAULT_CTX_CAP),  # nothing known: the cap
        (None, 2048, 2048),  # trained for less than the cap
        (None, 131072, DEFAULT_CTX_CAP),  # a long-context model is capped
        (8192, 131072, 8192),  # asked for: taken as is, even over the cap
        (100, None, 100),
    ],
)
def test_context_size(ctx, trained, size):
    assert context_size(ctx, trained) == size
    assert DEFAULT_CTX_CAP == 4096


@pytest.mark.parametrize(
    "typed,model", [(GenerationOverrides, GenerationParams), (LoadOverrides, LoadParams)]
)
def test_keyword_overrides_name_every_field(typed, model):
    """The TypedDicts editors complete `generate(prompt, **overrides)` from cannot drift from
    the models they stand for."""
    assert set(typed.__annotations__) == set(model.model_fields)


def test_overrides_apply_on_top_of_params_and_are_validated():
    base = GenerationParams(temperature=0.2, seed=3)
    p = with_overrides(GenerationParams, base, {"max_tokens": 5})
    assert (p.temperature, p.seed, p.max_tokens) == (0.2, 3, 5)
    assert with_overrides(GenerationParams, None, {}) == GenerationParams()
    with pytest.raises(UsageError, match="top_k"):
        with_overrides(GenerationParams, base, {"top_k": -1})
