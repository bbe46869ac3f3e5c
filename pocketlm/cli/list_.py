"""pocketlm list: the models in the store (or, with --catalog, the ones that can be pulled)."""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.fmt import human_bytes, human_count, table

HELP = "list the models in the store (--catalog: the models that can be pulled)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", action="store_true", help="list the built-in catalog instead")
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    from pocketlm.store import catalog
    from pocketlm.store.store import Store

    store = Store()
    if args.catalog:
        pulled = set(store.names())
        entries = list(catalog.CATALOG.values())
        if args.json:
            print(
                json.dumps([{**e.__dict__, "pulled": e.name in pulled} for e in entries], indent=2)
            )
            return 0
        rows = [
            [
                e.name,
                human_bytes(e.size_bytes),
                "yes" if e.name in pulled else "",
                e.license,
                e.description,
            ]
            for e in entries
        ]
        print(table(rows, ["NAME", "SIZE", "PULLED", "LICENSE", "DESCRIPTION"]))
        return 0
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
            "imported" if m.imported else "pulled",
        ]
        for m in manifests
    ]
    print(table(rows, ["NAME", "SIZE", "QUANT", "PARAMS", "ARCH", "SOURCE"]))
    return 0
