"""pocketlm audit: the log of requests sent to remote tiers; list, summarise, verify."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from pocketlm.cli.fmt import table
from pocketlm.errors import PocketError
from pocketlm.services.route import audit

HELP = "list, summarise (--summary) or verify (--verify) the audit log of remote requests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--file",
        metavar="PATH",
        help=f"the audit log (default: ${audit.AUDIT_LOG_ENV}, or audit.jsonl in the store)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--summary",
        action="store_true",
        help="per tier: requests, tokens, cost, energy, and the saving against remote only",
    )
    what.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain; exit 1 naming the first bad line",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser() if args.file else audit.default_path()
    if args.verify:
        return _verify(path, args.json)
    if not path.exists():
        print(f"no audit log at {path}: nothing has been sent to a remote tier yet")
        return 0
    records = list(audit.read(path))
    if args.summary:
        totals = audit.summary(records)
        print(json.dumps(totals, indent=2) if args.json else _summary_table(totals))
    else:
        print(json.dumps(records, indent=2) if args.json else _records_table(records))
    return 0


def _verify(path: Path, as_json: bool) -> int:
    result = audit.verify(path)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if result.ok else 1
    if not result.ok:
        raise PocketError(f"audit log {path}: {result}", "the log was changed after it was written")
    print(f"{result}; head {result.head}")
    return 0


def _records_table(records: list[dict]) -> str:
    if not records:
        return "the audit log is empty"
    rows = [
        [
            _local_time(r.get("time")),
            str(r.get("tier", "")),
            str(r.get("reason") or r.get("decision") or ""),
            " ".join(f"{k}={n}" for k, n in sorted((r.get("replaced") or {}).items())) or "-",
            f"{r.get('tokens_in') or 0}/{r.get('tokens_out') or 0}",
            _money(r.get("cost"), r.get("currency")),
        ]
        for r in records
    ]
    return table(rows, ["TIME", "TIER", "REASON", "REPLACED", "TOKENS IN/OUT", "COST"])


def _summary_table(totals: dict[str, dict]) -> str:
    if not totals:
        return "the audit log is empty"
    rows = [_summary_row(name, t) for name, t in totals.items()]
    if len(totals) > 1:
        rows.append(_summary_row("total", _sum(totals.values())))
    header = ["TIER", "REQUESTS", "TOKENS IN", "TOKENS OUT", "COST", "ENERGY"]
    return table(rows, [*header, "IF REMOTE ONLY", "SAVING"])


def _summary_row(name: str, t: dict) -> list[str]:
    energy = _energy(t["energy_j"]) if t["energy_j"] else "-"
    return [
        name,
        str(t["requests"]),
        str(t["tokens_in"]),
        str(t["tokens_out"]),
        _money(t["cost"], t["currency"]),
        f"~{energy} (estimate)" if t["energy_estimated"] else energy,
        _money(t["cost_if_remote"], None),
        _money(t["saving"], None),
    ]


def _sum(tiers) -> dict:
    tiers = list(tiers)
    total = {k: sum(t[k] for t in tiers) for k in tiers[0] if k not in ("currency",)}
    total["energy_estimated"] = any(t["energy_estimated"] for t in tiers)
    currencies = {t["currency"] for t in tiers if t["currency"]}
    total["currency"] = currencies.pop() if len(currencies) == 1 else None
    return total


def _local_time(value: str | None) -> str:
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(value or "")


def _money(amount: float | None, currency: str | None) -> str:
    if amount is None:
        return "-"
    return f"{amount:.6f} {currency}" if currency else f"{amount:.6f}"


def _energy(joules: float) -> str:
    return f"{joules / 3600:.2f} Wh" if joules >= 3600 else f"{joules:.1f} J"
