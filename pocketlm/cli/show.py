"""pocketlm show NAME: every manifest field of a model."""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.fmt import human_bytes, human_count

HELP = "show everything the store records about a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


def main(args: argparse.Namespace) -> int:
    from pocketlm.store.store import Store

    manifest = Store().get(args.model)
    fields = manifest.model_dump()
    if args.json:
        print(json.dumps(fields, indent=2, ensure_ascii=False))
        return 0
    size, params = fields["size_bytes"], fields["parameter_count"]
    pretty = {
        "size_bytes": f"{size} ({human_bytes(size)})",
        "parameter_count": f"{params} ({human_count(params)})",
    }
    template = fields.pop("chat_template")
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {pretty.get(key, value if value is not None else '-')}")
    if template:
        print("chat_template:")
        print("\n".join("    " + line for line in template.splitlines()))
    else:
        print(f"{'chat_template'.ljust(width)}  -")
    return 0
