"""pocketlm rm NAME: remove a model from the store."""

from __future__ import annotations

import argparse

HELP = "remove models from the store (an imported file is unregistered, not deleted)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="NAME", help="model name(s)")


def main(args: argparse.Namespace) -> int:
    from pocketlm.store.store import Store

    store = Store()
    for name in args.models:
        store.get(name)  # all names must exist before anything is deleted
    for name in args.models:
        m = store.remove(name)
        if m.imported:
            print(f"unregistered {name} (its file {m.path} was left in place)")
        else:
            print(f"deleted {name}")
    return 0
