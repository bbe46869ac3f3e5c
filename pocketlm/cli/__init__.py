"""``pocketlm`` command line: a thin dispatcher over one module per verb.

Each verb module has ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``.
Errors pocketlm raises on purpose are printed as one line (no traceback) with
their exit code; Ctrl-C exits with 130.
"""

from __future__ import annotations

import importlib
import sys

from pocketlm.cli.flags import ArgumentParser

VERBS = {
    "run": "run",
    "pull": "pull",
    "import": "import_",
    "list": "list_",
    "show": "show",
    "rm": "rm",
    "fit": "fit",
    "eval": "eval",
    "serve": "serve",
    "ps": "ps",
    "bench": "bench",
    "quantize": "quantize",
    "package": "package",
    "task": "task",
    "redact": "redact",
    "route": "route",
    "audit": "audit",
    "data": "data",
    "prune": "prune",
    "distill": "distill",
}


def _top_help() -> str:
    from pocketlm import __version__

    width = max(map(len, VERBS))
    lines = [
        f"pocketlm {__version__}: run small language models on your own machine, offline.",
        "",
        "usage: pocketlm COMMAND [options]   (pocketlm COMMAND --help for details)",
        "",
        "commands:",
    ]
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"pocketlm.cli.{module_name}")
        lines.append(f"  {verb.ljust(width)}  {module.HELP}")
    return "\n".join(lines)


def build_parser(verb: str) -> ArgumentParser:
    module = importlib.import_module(f"pocketlm.cli.{VERBS[verb]}")
    parser = ArgumentParser(prog=f"pocketlm {verb}", description=module.HELP)
    module.add_arguments(parser)
    parser.set_defaults(_main=module.main)
    # argparse cannot parse subcommands intermixed (`pocketlm task VERB ...`)
    parser.intermixed = getattr(module, "INTERMIXED", True)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pocketlm.errors import PocketError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        from pocketlm import __version__

        print(f"pocketlm {__version__}")
        return 0
    if argv[0] not in VERBS:
        print(
            f"pocketlm: error: unknown command '{argv[0]}' (commands: {', '.join(VERBS)})",
            file=sys.stderr,
        )
        return 2
    # Intermixed: options may come before, between or after the words of a prompt.
    parser = build_parser(argv[0])
    parse = parser.parse_intermixed_args if parser.intermixed else parser.parse_args
    args = parse(argv[1:])
    try:
        return args._main(args) or 0
    except PocketError as e:
        print(f"error: {e.render('cli')}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pocketlm run ... | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
