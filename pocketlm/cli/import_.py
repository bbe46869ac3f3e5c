"""pocketlm import PATH [--name NAME]: register an existing GGUF file in place."""

from __future__ import annotations

import argparse

from pocketlm.cli import pull

HELP = "register an existing GGUF file in the store, in place (no copy)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="PATH", help="GGUF file")
    p.add_argument("--name", help="store name (default: from the file name)")


def main(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.store.pull import import_file

    progress = RichProgress()
    try:
        result = import_file(args.model, name=args.name, progress=progress)
    finally:
        progress.close()
    return pull.print_result(result)
