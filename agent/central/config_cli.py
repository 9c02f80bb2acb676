"""`ward-agent central config push` and `central config status`: remote configuration from the centre.

    central config push --sensor ID --file agent.toml --broker-config collector.toml [--db FILE]
                        [--central-key FILE] [--box-key FILE] [--site SITE] [--timeout S]
        Validates the document with the sensor's own validator (every problem listed), gives it the
        next version for that sensor, signs it with the central key, encrypts it to the sensor's box
        key and publishes it retained on ward/<site>/<sensor>/config (agent/central/config_push.py).
        Keys, by default from collector.toml's [collector] keys folder: central.key (Ed25519, `ward-agent
        keys init --role central`) and boxes/<ID>.pub (the sensor's X25519 sensor-box.pub). The site is
        the one collector.toml pins for the sensor, else the document's uplink.site. --db defaults to
        collector.db.
    central config status (--db FILE | --broker-config collector.toml) [--json]
        Per sensor: desired (latest pushed) and reported (latest applied, from its acks) version, the
        state (applied, pending, rejected, rolled back) and the errors of its latest ack.

Exit status: 0 done; 65 (EX_DATAERR) the document is refused (invalid, another sensor's, too big);
66 (EX_NOINPUT) a file or key is missing or unusable, or no database; 69 (EX_UNAVAILABLE) the broker
cannot be reached or refused the publish; 73 (EX_CANTCREAT) the database cannot be opened; 78
(EX_CONFIG) collector.toml is invalid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import tomllib
from pathlib import Path
from typing import Any

from agent import crypto
from agent.central import config_push
from agent.central.cli import load_config
from agent.central.store import Store
from agent.config import EX_CONFIG, ConfigError

EX_OK, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE, EX_CANTCREAT = 0, 65, 66, 69, 73


def add_config_commands(central: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `config push` and `config status` under `central`; each sets `handler(args) -> exit status`."""
    parser = central.add_parser("config", help="push signed configuration to sensors, show their state",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="config_command", required=True)
    push = commands.add_parser("push", help="validate, sign, encrypt and publish a sensor's configuration")
    push.add_argument("--sensor", required=True, metavar="ID", help="the sensor id (its certificate's CN)")
    push.add_argument("--file", required=True, type=Path, metavar="FILE", help="the whole agent.toml")
    push.add_argument("--broker-config", required=True, type=Path, metavar="FILE", help="collector.toml")
    push.add_argument("--db", metavar="FILE", help="the collector's database (default: collector.db)")
    push.add_argument("--central-key", type=Path, metavar="FILE", help="default: <keys>/central.key")
    push.add_argument("--box-key", type=Path, metavar="FILE", help="default: <keys>/boxes/<ID>.pub")
    push.add_argument("--site", help="default: the site collector.toml pins, else the document's")
    push.add_argument("--timeout", type=float, default=10.0, metavar="S", help="broker timeout (seconds)")
    push.set_defaults(handler=run_push)
    status = commands.add_parser("status", help="desired vs reported version per sensor")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="FILE", help="the collector's database")
    where.add_argument("--broker-config", type=Path, metavar="FILE", help="collector.toml (for its db)")
    status.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    status.set_defaults(handler=run_status)


def run_push(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.broker_config, args.db)
    except ConfigError as exc:
        return _fail(str(exc), EX_CONFIG)
    sensor = cfg.sensors.get(args.sensor)
    if sensor is None:
        return _fail(f"{args.sensor}: not a sensor of {args.broker_config}", EX_DATAERR)
    keys = _keys_dir(args.broker_config)
    try:
        text = args.file.read_text(encoding="utf-8")
        central_key = crypto.load_signing_key(args.central_key or crypto.key_paths(keys, "central")[0])
        box_key = crypto.load_encryption_key(args.box_key or keys / "boxes" / f"{args.sensor}.pub")
    except (OSError, UnicodeDecodeError, crypto.KeyFileError) as exc:
        return _fail(str(exc), EX_NOINPUT)
    try:
        store = Store(cfg.db)
    except (sqlite3.Error, OSError, ValueError) as exc:
        return _fail(f"cannot open the database {cfg.db}: {exc}", EX_CANTCREAT)
    try:
        pushed = config_push.push(store, cfg.broker, central_key, box_key, args.sensor, text,
                                  site=args.site or sensor.site, timeout=args.timeout)
    except ConfigError as exc:
        return _fail(f"{args.file}: refused:\n" + "\n".join(f"  - {p}" for p in exc.problems), EX_DATAERR)
    except ValueError as exc:
        return _fail(str(exc), EX_DATAERR)
    except config_push.PushError as exc:
        return _fail(str(exc), EX_UNAVAILABLE)
    finally:
        store.close()
    print(f"{pushed.sensor}: version {pushed.version} published retained on {pushed.topic} "
          f"({pushed.bytes} bytes, sha256 {pushed.sha256[:16]}, {pushed.seconds * 1000:.0f} ms)")
    return EX_OK


def run_status(args: argparse.Namespace) -> int:
    target: Any = args.db
    if target is None:
        try:
            target = load_config(args.broker_config).db
        except ConfigError as exc:
            return _fail(str(exc), EX_CONFIG)
    if isinstance(target, str | Path) and "://" not in str(target) and not Path(target).is_file():
        return _fail(f"no database at {target}", EX_NOINPUT)
    try:
        store = Store(target)
        rows = config_push.status_rows(store)
        store.close()
    except (sqlite3.Error, OSError, ValueError) as exc:
        return _fail(f"cannot read {target}: {exc}", EX_CANTCREAT)
    if args.json:
        print(json.dumps([{**r, "errors": json.loads(r["errors"])} for r in rows], indent=1))
        return EX_OK
    table = [("SENSOR", "DESIRED", "REPORTED", "STATE", "PUSHED (UTC)", "LAST ACK (UTC)", "ERRORS")]
    table += [(r["sensor"], _dash(r["desired"]), _dash(r["reported"]), r["state"], _when(r["published"]),
               _when(r["last_ack_received"]), "; ".join(json.loads(r["errors"]))) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return EX_OK


def _keys_dir(collector_toml: Path) -> Path:
    """collector.keys of collector.toml, relative to its folder (load_config checked it exists)."""
    document = tomllib.loads(collector_toml.read_text(encoding="utf-8"))
    return collector_toml.resolve().parent / Path(str(document["collector"]["keys"])).expanduser()


def _fail(message: str, status: int) -> int:
    print(f"ward-agent central config: {message}", file=sys.stderr)
    return status


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
