"""`ward-agent central advisories ...`: import CSAF advisories, match them, list and decide device pairs.

import FILE_OR_DIR --db DB       parse CSAF 2.0 JSON (a file or every *.json of a folder) and store it;
                                 one bad file stores nothing. Then evaluates, unless --no-evaluate.
evaluate --db DB [--policy FILE] [--window DAYS] [--now EPOCH]
                                 match the stored device records and move the pairs (agent.central.
                                 tracking); with --policy, devices in a zone of that segmentation policy
                                 without a policy_violation in the window count as mitigated.
list --db DB [--device MAC] [--status S] [--json]
                                 the device-advisory pairs; --json adds each pair's history.
accept --db DB --device MAC --advisory ID --reason TEXT [--by NAME]
mitigate --db DB --device MAC --advisory ID --reason TEXT [--by NAME]
                                 a person's decision, kept with its time in the pair's history.

DB is the collector's SQLite file or a postgresql:// URL. Exit status: 0 done; 65 (EX_DATAERR) an
advisory file is not CSAF; 66 (EX_NOINPUT) no such file, database or pair; 73 (EX_CANTCREAT) the database
cannot be opened; 78 (EX_CONFIG) the policy file is invalid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sqlite3
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from agent import policy as segmentation
from agent.central import db as dbapi
from agent.central import tracking
from agent.central.store import Store
from agent.config import EX_CONFIG, ConfigError

EX_OK, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT = 0, 65, 66, 73
_DB_ERRORS: Final = (sqlite3.Error, OSError, ValueError, dbapi.Unavailable)


def add_advisory_commands(central: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `advisories` and its commands under the `central` parser's subparsers."""
    parser = central.add_parser("advisories", help="CSAF advisories matched against the inventory",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="advisories_command", required=True)
    imp = commands.add_parser("import", help="store CSAF 2.0 advisories")
    imp.add_argument("source", type=Path, metavar="FILE_OR_DIR")
    imp.add_argument("--no-evaluate", action="store_true", help="store only, do not match")
    ev = commands.add_parser("evaluate", help="match device records and update the pairs")
    ev.add_argument("--policy", type=Path, metavar="FILE", help="segmentation policy TOML (mitigation rule)")
    ev.add_argument("--window", type=float, default=tracking.WINDOW / 86400, metavar="DAYS",
                    help="days without a policy violation that count as mitigated (default 7)")
    ev.add_argument("--now", type=float, metavar="EPOCH", help="evaluation time (default: now)")
    ls = commands.add_parser("list", help="device-advisory pairs")
    ls.add_argument("--device", metavar="MAC")
    ls.add_argument("--status", choices=tracking.STATUSES)
    ls.add_argument("--json", action="store_true", help="a JSON array with each pair's history")
    for name, text in (("accept", "accept the risk of a pair"), ("mitigate", "record a mitigation")):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("--device", metavar="MAC", required=True)
        cmd.add_argument("--advisory", metavar="ID", required=True)
        cmd.add_argument("--reason", metavar="TEXT", required=True)
        cmd.add_argument("--by", metavar="NAME", default=None, help="who decided (default: the login name)")
    decisions = [(commands.choices[name], run_decision) for name in ("accept", "mitigate")]
    for cmd, handler in [(imp, run_import), (ev, run_evaluate), (ls, run_list), *decisions]:
        cmd.add_argument("--db", required=True, metavar="DB", help="the collector's SQLite file or a URL")
        cmd.set_defaults(handler=handler)


def run_import(args: argparse.Namespace) -> int:
    if not args.source.exists():
        return _fail(f"no file or folder {args.source}", EX_NOINPUT)
    store = _open(args.db, create=True)
    if store is None:
        return EX_CANTCREAT
    try:
        stored = tracking.import_path(store.db, args.source)
        products = sum(len(a.products) for a in stored)
        vulnerabilities = sum(len(a.vulnerabilities) for a in stored)
        print(f"imported {len(stored)} advisories ({products} products, {vulnerabilities} vulnerabilities)")
        if not args.no_evaluate:
            _print_counts(tracking.evaluate(store.db))
    except ValueError as exc:
        return _fail(str(exc), EX_DATAERR)
    finally:
        store.close()
    return EX_OK


def run_evaluate(args: argparse.Namespace) -> int:
    zone_of = None
    if args.policy is not None:
        try:
            zone_of = policy_zones(segmentation.load(args.policy))
        except ConfigError as exc:
            return _fail(str(exc), EX_CONFIG)
    store = _open(args.db)
    if store is None:
        return EX_NOINPUT
    try:
        _print_counts(tracking.evaluate(store.db, args.now, zone_of=zone_of, window=args.window * 86400))
    finally:
        store.close()
    return EX_OK


def run_list(args: argparse.Namespace) -> int:
    store = _open(args.db)
    if store is None:
        return EX_NOINPUT
    try:
        tracking.create_tables(store.db)
        rows = tracking.pairs(store.db, mac=args.device, status=args.status, with_history=args.json)
        hosts = {(s, m): h for s, m, h in store.db.query("SELECT sensor, mac, hostname FROM devices")}
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=1))
        return EX_OK
    columns = ("SENSOR", "MAC", "HOST", "ADVISORY", "CVSS", "CONFIDENCE", "STATUS", "SINCE (UTC)", "VERSION",
               "TITLE")
    table = [columns] + [(r["sensor"], r["mac"], hosts.get((r["sensor"], r["mac"])) or "-", r["advisory"],
                          "-" if r["cvss"] is None else f"{r['cvss']:.1f}", r["confidence"], r["status"],
                          _when(r["status_ts"]), r["version"] or "-", (r["title"] or "")[:60]) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return EX_OK


def run_decision(args: argparse.Namespace) -> int:
    store = _open(args.db)
    if store is None:
        return EX_NOINPUT
    decide = tracking.accept if args.advisories_command == "accept" else tracking.mitigate
    try:
        changed = decide(store.db, args.device, args.advisory, args.reason, args.by or getpass.getuser())
    except ValueError as exc:
        return _fail(str(exc), EX_DATAERR)
    finally:
        store.close()
    if not changed:
        return _fail(f"no pair of device {args.device} and advisory {args.advisory}", EX_NOINPUT)
    print(f"{args.advisories_command}: {changed} pair(s) of {args.device} and {args.advisory}")
    return EX_OK


def policy_zones(policy: segmentation.Policy) -> Callable[[Mapping[str, Any]], str | None]:
    """zone_of for tracking.evaluate: the first zone of the device's addresses (and role), else None."""
    def zone_of(device: Mapping[str, Any]) -> str | None:
        role = device.get("role") if isinstance(device.get("role"), str) else None
        for entry in device.get("ips") or []:
            if isinstance(entry, Mapping) and isinstance(entry.get("ip"), str):
                zone = policy.zone_of(entry["ip"], (), role)
                if zone not in segmentation.BUILTIN:
                    return zone
        return None
    return zone_of


def _open(target: str, create: bool = False) -> Store | None:
    if not dbapi.is_url(target) and not create and not Path(target).is_file():
        _fail(f"no database at {target}", EX_NOINPUT)
        return None
    try:
        return Store(target)
    except _DB_ERRORS as exc:
        _fail(f"cannot open the database {dbapi.redact(target)}: {exc}", EX_CANTCREAT)
        return None


def _print_counts(counts: Mapping[str, int]) -> None:
    moved = ", ".join(f"{counts[s]} {s}" for s in tracking.STATUSES if counts.get(s))
    print(f"evaluated {counts['devices']} devices: {moved or 'no change'}")


def _fail(message: str, status: int) -> int:
    print(f"ward-agent central advisories: {message}", file=sys.stderr)
    return status


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    """Standalone: `python -m agent.central.advisories_cli advisories list --db FILE`."""
    parser = argparse.ArgumentParser(prog="ward-agent central")
    add_advisory_commands(parser.add_subparsers(dest="central_command", required=True))
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
