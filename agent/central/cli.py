"""`ward-agent central collect` and `central sensors`: run the collector, list what it knows.

collect --config FILE [--db TARGET]
                        subscribe to the broker, verify, decrypt, de-duplicate and store every sensor
                        message until SIGTERM/SIGINT; counters are logged every
                        collector.stats_interval seconds. Configuration: firmware-config/collector.toml
                        (relative paths are relative to the file); every problem is listed, exit 78.
                        TARGET (or collector.db): a SQLite file, or postgresql://user@host/db for
                        PostgreSQL (needs psycopg, the [postgresql] extra); --db wins over the file.
                        Several collectors with the same broker.share_group, each with its own
                        certificate, split the load and may share one PostgreSQL database.
sensors (--config FILE | --db TARGET) [--json]
                        one line per sensor: site, online, last seen, last boot/seq, messages, flows,
                        duplicates, refused messages, key fingerprint.

Exit status: 0 done; 78 (EX_CONFIG) the configuration is invalid; 66 (EX_NOINPUT) no database to
list; 73 (EX_CANTCREAT) the database cannot be opened or created.
Standalone: `python -m agent.central.cli central collect --config FILE`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sqlite3
import sys
import threading
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import crypto, logsetup, messages
from agent.central import db as dbapi
from agent.central.ingest import Ingest, Sensor
from agent.central.mqtt_in import BrokerSettings, Subscriber
from agent.central.store import SYNCHRONOUS, Store
from agent.config import EX_CONFIG, LOG_LEVELS, ConfigError

EX_OK, EX_NOINPUT, EX_CANTCREAT = 0, 66, 73
_BROKER_KEYS: Final = {"host", "port", "ca", "cert", "key", "keepalive", "session_expiry", "share_group",
                       "client_id"}
_SECTIONS: Final = ("broker", "collector", "sensors")
_COLLECTOR_KEYS: Final = {"keys", "db", "synchronous", "sensor_keys", "sensor_site", "log_level",
                          "stats_interval"}


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    broker: BrokerSettings
    collector_key: X25519PrivateKey
    db: Path | str  # a SQLite file or a postgresql:// URL
    sensors: dict[str, Sensor] = field(default_factory=dict)
    synchronous: str = "normal"
    log_level: str = "info"
    stats_interval: float = 60.0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `central collect` and `central sensors`; each sets `handler(args) -> exit status`."""
    central = subparsers.add_parser("central", help="the collector: store what the sensors send",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = central.add_subparsers(dest="central_command", required=True)
    collect = commands.add_parser("collect", help="subscribe and store until stopped")
    collect.add_argument("--config", dest="collector_config", required=True, type=Path, metavar="FILE",
                         help="collector TOML (firmware-config/collector.toml)")
    collect.add_argument("--db", metavar="TARGET", help="SQLite file or postgresql:// URL (overrides "
                         "collector.db)")
    collect.set_defaults(handler=run_collect)
    sensors = commands.add_parser("sensors", help="list the sensors and what arrived from them")
    where = sensors.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", dest="collector_config", type=Path, metavar="FILE", help="collector TOML")
    where.add_argument("--db", metavar="TARGET", help="the collector's SQLite file or postgresql:// URL")
    sensors.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    sensors.set_defaults(handler=run_sensors)
    from agent.central.advisories_cli import add_advisory_commands  # they import this module
    from agent.central.config_cli import add_config_commands
    from agent.central.report_cli import add_report_command

    add_advisory_commands(commands)
    add_config_commands(commands)
    add_report_command(commands)


def run_collect(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.collector_config, db=getattr(args, "db", None))
    except ConfigError as exc:
        print(f"ward-agent central: {exc}", file=sys.stderr)
        return EX_CONFIG
    logsetup.configure(cfg.log_level)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = structlog.get_logger("agent.central")
    try:
        store = Store(cfg.db, cfg.synchronous)
        ingest = Ingest(store, cfg.collector_key, cfg.sensors)
    except (sqlite3.Error, OSError, ValueError) as exc:
        print(f"ward-agent central: cannot open the database {dbapi.redact(cfg.db)}: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    topics = cfg.broker.topics()
    subscriber = Subscriber(cfg.broker, ingest.handle,
                            on_subscribed=lambda: log.info("collector_subscribed", topics=topics))
    thread = threading.Thread(target=subscriber.run, args=(stop,), name="collector", daemon=True)
    log.info("collector_started", broker=f"{cfg.broker.host}:{cfg.broker.port}", db=dbapi.redact(cfg.db),
             backend=store.backend, share_group=cfg.broker.share_group, sensors=len(cfg.sensors))
    thread.start()
    while not stop.wait(cfg.stats_interval):
        log.info("collector_stats", **_stats(ingest, subscriber))
    thread.join(15.0)
    if not thread.is_alive():
        store.close()
    log.info("collector_stopped", **_stats(ingest, subscriber))
    return EX_OK


def run_sensors(args: argparse.Namespace) -> int:
    db = args.db
    if db is None:
        try:
            db = _db_of(args.collector_config)
        except ConfigError as exc:
            print(f"ward-agent central: {exc}", file=sys.stderr)
            return EX_CONFIG
    if not dbapi.is_url(db) and not Path(db).is_file():
        print(f"ward-agent central: no database at {db}", file=sys.stderr)
        return EX_NOINPUT
    try:
        store = Store(db)
        rows = store.sensors()
        store.close()
    except (sqlite3.Error, OSError, ValueError) as exc:
        print(f"ward-agent central: cannot read {dbapi.redact(db)}: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "status"} for r in rows], indent=1))
        return EX_OK
    columns = ("SENSOR", "SITE", "ONLINE", "LAST SEEN (UTC)", "BOOT", "SEQ", "MESSAGES", "FLOWS",
               "DUPLICATES", "REJECTS", "FINGERPRINT")
    table = [columns] + [(r["id"], r["site"] or "*", {1: "yes", 0: "no"}.get(r["online"], "?"),
                          _when(r["last_seen"]), _dash(r["last_boot"]), _dash(r["last_seq"]),
                          *(str(r[k]) for k in ("messages", "flows", "duplicates", "rejects")),
                          (r["fingerprint"] or "")[:19]) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return EX_OK


# ---- configuration --------------------------------------------------------------------------------

def load_config(path: str | Path, db: str | None = None) -> CollectorConfig:
    """Read and validate the collector's TOML; ConfigError listing every problem. `db` (a SQLite path
    or a postgresql:// URL) replaces collector.db."""
    document, base = _read(Path(path))
    problems: list[str] = []
    problems += [f"{name}: unknown section" for name in document if name not in _SECTIONS]
    broker, collector = _table(document, "broker", problems), _table(document, "collector", problems)
    for name, table, known in (("broker", broker, _BROKER_KEYS), ("collector", collector, _COLLECTOR_KEYS)):
        problems += [f"{name}.{key}: unknown key" for key in table if key not in known]
    get = _Getter(problems, base)
    host = get.text(broker, "broker.host", None)
    port = get.number(broker, "broker.port", 8883, 1, 65535)
    ca, cert, key = (get.file(broker, f"broker.{name}") for name in ("ca", "cert", "key"))
    keepalive = get.number(broker, "broker.keepalive", 30, 5, 3600)
    expiry = get.number(broker, "broker.session_expiry", 7 * 86400, 0, 2**32 - 1)
    share = get.text(broker, "broker.share_group", "", level=True)
    client_id = get.text(broker, "broker.client_id", "collector", level=True)
    collector_key = _collector_key(get.path(collector, "collector.keys"), problems)
    if db is not None:  # from the command line: a relative path is relative to the working folder
        collector = {**collector, "db": db if dbapi.is_url(db) else str(Path(db).resolve())}
    target = _db_target(collector, get, problems)
    synchronous = get.text(collector, "collector.synchronous", "normal", choices=SYNCHRONOUS)
    level = get.text(collector, "collector.log_level", "info", choices=LOG_LEVELS)
    interval = get.number(collector, "collector.stats_interval", 60, 1, 86400, integer=False)
    sensors = _sensors(document, collector, get, problems)
    if problems:
        raise ConfigError(problems)
    assert host and ca and cert and key and target and collector_key is not None  # else a problem was listed
    settings = BrokerSettings(host, int(port), ca, cert, key, client_id or "collector", int(keepalive),
                              int(expiry), share_group=share or "")
    return CollectorConfig(settings, collector_key, target, sensors, synchronous or "normal", level or "info",
                           float(interval))


def _read(path: Path) -> tuple[dict[str, Any], Path]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), path.resolve().parent
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


def _db_of(path: Path) -> Path | str:
    document, base = _read(path)
    collector = document.get("collector")
    if not isinstance(collector, dict) or not isinstance(collector.get("db"), str):
        raise ConfigError(["collector.db: missing"])
    return collector["db"] if dbapi.is_url(collector["db"]) else base / str(collector["db"])


def _db_target(collector: dict[str, Any], get: _Getter, problems: list[str]) -> Path | str | None:
    """collector.db: a postgresql:// URL as it is, else a file path whose folder must exist."""
    value = collector.get("db")
    if isinstance(value, str) and dbapi.is_url(value):
        return value
    path = get.path(collector, "collector.db")
    if path is not None and not path.parent.is_dir():
        problems.append(f"collector.db: folder {path.parent} does not exist")
    return path


def _table(document: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        problems.append(f"{name}: must be a table")
        return {}
    return value


def _collector_key(folder: Path | None, problems: list[str]) -> X25519PrivateKey | None:
    if folder is None:
        return None
    try:
        return crypto.load_decryption_key(crypto.key_paths(folder, "collector")[0])
    except crypto.KeyFileError as exc:
        problems.append(f"collector.keys: {exc} (create it with `ward-agent keys init --role collector`)")
        return None


def _sensors(document: dict[str, Any], collector: dict[str, Any], get: _Getter,
             problems: list[str]) -> dict[str, Sensor]:
    """[collector] sensor_keys (<id>.pub files, site sensor_site or any) and [sensors] (wins per id)."""
    found: dict[str, tuple[Path, str | None, str]] = {}
    folder = get.path(collector, "collector.sensor_keys", required=False)
    site = get.text(collector, "collector.sensor_site", "", level=True) or None
    if folder is not None:
        if not folder.is_dir():
            problems.append(f"collector.sensor_keys: {folder} is not a folder")
        else:
            for pub in sorted(folder.glob("*.pub")):
                found[pub.stem] = (pub, site, f"collector.sensor_keys: {pub.name}")
    for sensor_id, entry in _table(document, "sensors", problems).items():
        where = f"sensors.{sensor_id}"
        spec = {"key": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict) or set(spec) - {"key", "site"}:
            problems.append(f"{where}: must be a key file path or a table {{key = PATH, site = NAME}}")
            continue
        key_path = get.path(spec, f"{where}.key")
        if key_path is not None:
            found[sensor_id] = (key_path, get.text(spec, f"{where}.site", "", level=True) or None, where)
    if not found:
        problems.append("sensors: none configured (set collector.sensor_keys or a [sensors] table)")
    sensors = {}
    for sensor_id, (key_path, sensor_site, where) in found.items():
        try:
            messages.topic(sensor_site or "site", sensor_id, "flows")
            sensors[sensor_id] = Sensor(crypto.load_verify_key(key_path), sensor_site)
        except (ValueError, crypto.KeyFileError) as exc:
            problems.append(f"{where}: {exc}")
    return sensors


class _Getter:
    """Typed reads from a TOML table that append a problem (dotted path) instead of raising."""

    def __init__(self, problems: list[str], base: Path) -> None:
        self._problems, self._base = problems, base

    def text(self, table: dict[str, Any], where: str, default: str | None, *, level: bool = False,
             choices: Sequence[str] = ()) -> str | None:
        value = table.get(where.rsplit(".", 1)[1], default)
        problem = None
        if value is None:
            problem = "missing"
        elif not isinstance(value, str) or (default is None and not value):
            problem = f"must be a{' non-empty' if default is None else ''} string, got {value!r}"
        elif choices and value not in choices:
            problem = f"must be one of {', '.join(choices)}, got {value!r}"
        elif level and value and not _is_level(value):
            problem = f"{value!r} is not one topic level of [A-Za-z0-9_.-]"
        self._check(where, problem)
        return None if problem else str(value)

    def number(self, table: dict[str, Any], where: str, default: float, low: float, high: float,
               integer: bool = True) -> float:
        value = table.get(where.rsplit(".", 1)[1], default)
        ok = (isinstance(value, int if integer else int | float) and not isinstance(value, bool)
              and low <= value <= high)
        kind = "an integer" if integer else "a number"
        self._check(where, None if ok else f"must be {kind} in [{low:g}, {high:g}], got {value!r}")
        return float(value) if ok else default

    def path(self, table: dict[str, Any], where: str, required: bool = True) -> Path | None:
        value = table.get(where.rsplit(".", 1)[1])
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            problem = "missing" if value is None else f"must be a path, got {value!r}"
            self._problems.append(f"{where}: {problem}")
            return None
        return self._base / Path(value).expanduser()

    def file(self, table: dict[str, Any], where: str) -> Path | None:
        path = self.path(table, where)
        if path is not None and not path.is_file():
            self._problems.append(f"{where}: {path} is not a readable file")
            return None
        return path

    def _check(self, where: str, problem: str | None) -> None:
        if problem is not None:
            self._problems.append(f"{where}: {problem}")


def _is_level(value: str) -> bool:
    try:
        messages.topic(value, "x", "flows")
    except ValueError:
        return False
    return True


def _stats(ingest: Ingest, subscriber: Subscriber) -> dict[str, Any]:
    return {"ingest": dict(ingest.counts), "flows": ingest.flows, "mqtt": subscriber.stats()}


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ward-agent")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
