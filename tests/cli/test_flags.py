"""argparse flags derived from the parameter models: one per field, help from the field,
unset unless given, and errors that name the flag."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from pocketlm.cli.flags import ArgumentParser, add_flags, collect
from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams, LoadParams, ServeParams, validate


def parser_for(*models, only=None) -> ArgumentParser:
    parser = ArgumentParser(prog="pocketlm run")
    for model in models:
        add_flags(parser, model, only=only)
    return parser


def action(parser: ArgumentParser, dest: str):
    return next(a for a in parser._actions if a.dest == dest)


@pytest.mark.parametrize("model", [GenerationParams, LoadParams, ServeParams])
def test_a_flag_for_every_field(model):
    parser = parser_for(model)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--" + name.replace("_", "-") for name in model.model_fields} <= flags


def test_help_is_the_description_and_the_default():
    parser = parser_for(GenerationParams)
    described = GenerationParams.model_fields["temperature"].description
    assert action(parser, "temperature").help == f"{described} (default: 0.8)"
    no_default = GenerationParams.model_fields["max_tokens"].description
    assert action(parser, "max_tokens").help == no_default


def test_help_shows_a_zero_default():
    class Counter(BaseModel):
        """Counting."""

        retries: int = Field(0, description="how often to try again")

    assert action(parser_for(Counter), "retries").help.endswith("(default: 0)")


def test_help_with_a_percent_sign_renders():
    text = " ".join(parser_for(ServeParams).format_help().split())  # unwrapped
    assert "90% of available RAM" in text and "--memory-budget" in text


def test_metavars_come_from_the_type_or_the_field():
    parser = parser_for(GenerationParams, ServeParams)
    assert action(parser, "max_tokens").metavar == "INT"
    assert action(parser, "temperature").metavar == "FLOAT"
    assert action(parser, "cache_ram").metavar == "MIB"
    assert action(parser, "stop").metavar == "TEXT"


def test_flags_are_grouped_under_the_models_docstring():
    titles = [g.title for g in parser_for(GenerationParams)._action_groups]
    assert "how to sample one answer" in titles


def test_flags_left_out_are_unset():
    args = parser_for(GenerationParams, LoadParams).parse_args([])
    assert collect(args, GenerationParams) == {} and collect(args, LoadParams) == {}


def test_collect_returns_only_the_flags_given():
    args = parser_for(GenerationParams).parse_args(["--temperature", "0.5", "--max-tokens", "3"])
    assert collect(args, GenerationParams) == {"temperature": 0.5, "max_tokens": 3}


@pytest.mark.parametrize(
    "argv, value", [([], None), (["--truncate"], True), (["--no-truncate"], False)]
)
def test_bool_fields_give_a_flag_and_its_negation(argv, value):
    args = parser_for(GenerationParams).parse_args(argv)
    assert args.truncate is value
    assert collect(args, GenerationParams).get("truncate") is value


def test_tuple_fields_repeat():
    args = parser_for(GenerationParams).parse_args(["--stop", "a", "--stop", "b c"])
    assert validate(GenerationParams, collect(args, GenerationParams)).stop == ("a", "b c")


def test_only_restricts_the_flags(capsys):
    parser = parser_for(GenerationParams, only=("temperature", "seed"))
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--temperature", "--seed"} <= flags and "--top-p" not in flags
    with pytest.raises(SystemExit):
        parser.parse_args(["--top-p", "0.5"])
    assert collect(parser.parse_args(["--seed", "1"]), GenerationParams) == {"seed": 1}


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--top-p", "0"], "--top-p"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--stop", ""], "--stop"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_collect_raises_naming_the_flag(argv, flag):
    args = parser_for(GenerationParams).parse_args(argv)
    with pytest.raises(UsageError) as e:
        collect(args, GenerationParams)
    assert str(e.value).startswith(f"invalid {flag} ")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--temperature", "hot"], "--temperature"),
        (["--top-k", "1.5"], "--top-k"),
        (["--tempreature", "1"], "--tempreature"),
        (["--seed"], "--seed"),
    ],
)
def test_parse_errors_are_one_line_with_exit_code_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        parser_for(GenerationParams).parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("pocketlm run: error: ") and flag in err
    assert err.endswith("(see pocketlm run --help)\n")
