"""pocketlm list: the models in the store (or, with --catalog, the ones that can be pulled)."""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.fmt import human_bytes, human_count, table

HELP = "list the models in the store (--catalog: the models that can be pulled)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        action="store_true",
        help="list the catalog instead (built-in, catalog.toml, $POCKETLM_CATALOG)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    from pocketlm.store import catalog
    from pocketlm.store.store import Store

    store = Store()
    if args.catalog:
        return print_catalog(catalog.entries(store.root).values(), set(store.names()), args.json)
    manifests = store.list()
    if args.json:
        print(json.dumps([m.summary() for m in manifests], indent=2))
        return 0
    if not manifests:
        print(
            "no models yet: pull one with `pocketlm pull smollm2-135m-instruct` "
            "(`pocketlm list --catalog` shows what can be pulled)"
        )
        return 0
    rows = [
        [
            m.name,
            human_bytes(m.size_bytes),
            m.quantization,
            human_count(m.parameter_count),
            m.architecture,
            _origin(m),
        ]
        for m in manifests
    ]
    print(table(rows, ["NAME", "SIZE", "QUANT", "PARAMS", "ARCH", "SOURCE"]))
    return 0


def _origin(m) -> str:
    """pulled, imported, or how it was derived: "distill of qwen2.5-coder-0.5b-instruct"."""
    if m.imported:
        return "imported"
    kind, _, rest = m.source.partition(":")
    if kind == "derived":
        method = rest.partition(":")[0]
        return f"{method} of {m.parent}" if m.parent else method
    return "pulled"


def print_catalog(entries, pulled: set[str], as_json: bool) -> int:
    """The catalog as a table (or JSON: every field of every entry, and whether it is pulled)."""
    from pocketlm.store.catalog import BUILT_IN

    entries = list(entries)
    if as_json:
        print(json.dumps([{**e.to_dict(), "pulled": e.name in pulled} for e in entries], indent=2))
        return 0
    header = ["NAME", "SIZE", "PARAMS", "QUANT", "LICENSE", "PULLED", "DESCRIPTION"]
    rows = [
        [
            e.name,
            human_bytes(e.size_bytes),
            human_count(e.shape.parameters) if e.shape and e.shape.parameters else "",
            (e.shape.quantization or "") if e.shape else "",
            e.license,
            "yes" if e.name in pulled else "",
            e.description,
        ]
        for e in entries
    ]
    if any(e.origin != BUILT_IN for e in entries):  # where the others come from
        header.append("ORIGIN")
        for row, e in zip(rows, entries):
            row.append("" if e.origin == BUILT_IN else e.origin)
    print(table(rows, header))
    return 0
