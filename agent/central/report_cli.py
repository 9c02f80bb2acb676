"""`ward-agent central report`: the risk-over-time report from the collector's database.

report --db FILE|URL [--out FILE] [--format html|json] [--weeks N] [--now EPOCH]
    html (default): one self-contained page (inline CSS and SVG, no script, no remote load);
    json: the same data for a SIEM (agent.central.report's dict). --out - (default) writes to stdout;
    with a file, the page is written atomically and its path printed.
    --weeks: trend window, 1-260 (default 12); --now: end of the window (default: the current time).

Exit status: 0 written; 64 (EX_USAGE) bad --weeks; 66 (EX_NOINPUT) no database; 73 (EX_CANTCREAT) the
output cannot be written; 74 (EX_IOERR) the database cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from agent.central import db as dbapi
from agent.central.report import MAX_WEEKS, report_data
from agent.central.report_html import render_html

EX_OK, EX_USAGE, EX_NOINPUT, EX_CANTCREAT, EX_IOERR = 0, 64, 66, 73, 74


def add_report_command(central_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `report` to the `central` sub-commands; it sets `handler(args) -> exit status`."""
    report = central_subparsers.add_parser("report", help="risk over time: one HTML page or JSON",
                                           description=__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("--db", required=True, metavar="FILE|URL",
                        help="the collector's SQLite file, or its postgresql:// URL")
    report.add_argument("--out", default="-", metavar="FILE", help="output file, - for stdout (default)")
    report.add_argument("--format", dest="report_format", choices=("html", "json"), default="html")
    report.add_argument("--weeks", type=int, default=12, help=f"weeks of trends, 1-{MAX_WEEKS} (default 12)")
    report.add_argument("--now", type=float, default=None, metavar="EPOCH",
                        help="end of the report window (default: now)")
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    if not 1 <= args.weeks <= MAX_WEEKS:
        print(f"ward-agent central report: --weeks must be in [1, {MAX_WEEKS}]", file=sys.stderr)
        return EX_USAGE
    url = str(args.db).startswith(dbapi.URL_SCHEMES)
    if not url and not Path(args.db).is_file():
        print(f"ward-agent central report: no database at {args.db}", file=sys.stderr)
        return EX_NOINPUT
    try:
        data = _read(args.db, time.time() if args.now is None else args.now, args.weeks)
    except (sqlite3.Error, OSError, ValueError) as exc:
        print(f"ward-agent central report: cannot read {args.db}: {exc}", file=sys.stderr)
        return EX_IOERR
    text = (json.dumps(data, indent=1, ensure_ascii=False) + "\n" if args.report_format == "json"
            else render_html(data))
    if args.out == "-":
        sys.stdout.write(text)
        return EX_OK
    out = Path(args.out)
    try:
        temp = out.with_name(f".{out.name}.tmp")
        temp.write_text(text, encoding="utf-8")
        temp.replace(out)
    except OSError as exc:
        print(f"ward-agent central report: cannot write {out}: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(out)
    return EX_OK


def _read(target: str, now: float, weeks: int) -> dict[str, Any]:
    """A SQLite file is opened read-only (the collector may be writing it); a URL through agent.central.db."""
    if target.startswith(dbapi.URL_SCHEMES):
        database = dbapi.connect(target)
        try:
            return report_data(database, now, weeks)
        finally:
            database.close()
    path = urllib.parse.quote(str(Path(target).resolve()))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        return report_data(conn, now, weeks)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ward-agent")
    central = parser.add_subparsers(dest="command", required=True).add_parser("central")
    add_report_command(central.add_subparsers(dest="central_command", required=True))
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
