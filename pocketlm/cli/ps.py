"""pocketlm ps: the models a running server has loaded."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from datetime import datetime

from pocketlm.cli.fmt import human_bytes, table
from pocketlm.cli.serve import API_KEY_ENV, DEFAULT_PORT
from pocketlm.errors import PocketError

HELP = "list the models a running pocketlm server has loaded"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    url = f"http://{args.host}:{args.port}/api/ps"
    req = urllib.request.Request(url)
    if key := os.environ.get(API_KEY_ENV):
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.load(r)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PocketError(
            f"no pocketlm server at {args.host}:{args.port} ({reason})",
            "start one with: pocketlm serve",
        ) from None
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = []
    for m in data["models"]:
        until = datetime.fromisoformat(m["expires_at"]).astimezone().strftime("%H:%M:%S")
        rows.append(
            [
                m["name"],
                human_bytes(m["size"]),
                str(m.get("context_length", "")),
                str(m.get("active", 0)),
                until,
            ]
        )
    print(
        table(rows, ["NAME", "SIZE", "CONTEXT", "ACTIVE", "UNTIL"]) if rows else "no models loaded"
    )
    return 0
