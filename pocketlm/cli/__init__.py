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
}


def build_parser(verb: str | None = None) -> ArgumentParser:
    from pocketlm import __version__

    parser = ArgumentParser(
        prog="pocketlm", description="Run small language models on your own machine, offline."
    )
    parser.add_argument("--version", action="version", version=f"pocketlm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=ArgumentParser)
    for name, module_name in VERBS.items():
        if verb is not None and name != verb:
            sub.add_parser(name)  # listed, not configured: only the chosen verb is imported
            continue
        module = importlib.import_module(f"pocketlm.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pocketlm.errors import PocketError

    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return args._main(args) or 0
    except PocketError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pocketlm run ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
