"""The collector's store: SQLite (one file, WAL) or PostgreSQL (agent/central/db.py), one transaction per
message.

Schema (version 1; times are epoch seconds, REAL; `received` is the collector's clock, every other
time the sensor's; JSON columns hold compact JSON text; boot/seq name the message a row came in):

    sensors(id PK, site, fingerprint, first_seen, last_seen, last_boot, last_seq, online, status,
            status_ts, messages, flows, duplicates)
        One row per configured sensor. fingerprint: of its pinned Ed25519 key (crypto.fingerprint).
        first/last_seen: received time of its first/latest stored message. last_boot/last_seq: the
        highest (boot, seq) stored; lower ones still arrive after a reboot, from the sensor's spool.
        online (1/0/NULL), status (JSON), status_ts: its latest birth or will message. messages, flows:
        stored; duplicates: copies dropped.
    messages(sensor, boot, seq, kind, created, received, bytes; PK (sensor, boot, seq))
        Every stored message once: the de-duplication key. bytes = sealed size on the wire.
    flows(sensor, boot, seq, first, last, proto, a_ip, a_port, b_ip, b_port, a_mac, b_mac, vlan,
          a_pkts, b_pkts, a_bytes, b_bytes, a_flags, b_flags, end_reason)
        README's flow record; proto as text ("tcp", or "47"); vlan "outer,inner" ("" untagged);
        end_reason is the record's `end`. Indexes: (last), (a_ip), (b_ip, b_port).
    devices(sensor, mac, role, risk_score, vendor, hostname, first_seen, last_seen, updated, record;
            PK (sensor, mac))
        The latest device record per sensor and MAC (deltas and snapshots alike); record = the whole
        record as JSON; updated = received. Index (mac).
    device_history(sensor, mac, ts, received, role, risk_score, vendor, hostname, software)
        One row whenever role, risk score, vendor, host name or software (JSON) of a device changed,
        ts = the message's creation time. Indexes (sensor, mac), (ts).
    findings(sensor, boot, seq, kind, severity, ts, src_ip, src_port, dst_ip, dst_port, proto, device,
             role, peer_role, key, summary, evidence, record)
        One row per finding (the sensor de-duplicates by key). Indexes (ts), (kind, ts), (device).
    health(sensor, boot, seq, ts, record)      Index (sensor, ts).
    config_acks(sensor, boot, seq, version, ok, errors, ts, received)   Index (sensor, version).
        ok: the body's `ok`, else 1 when `errors` is empty; errors: JSON list.
    rejects(reason, sensor, topic, first, last, count; PK (reason, sensor, topic))
        Refused messages, counted by reason (ingest.REASONS); sensor "" when the topic named none.
    quarantine(received, topic, payload, error)
        Messages that made the ingest code fail unexpectedly, kept whole for a later re-run.

Types are SQLite's; on PostgreSQL REAL is DOUBLE PRECISION, INTEGER BIGINT and BLOB BYTEA (db.create).

Exactly once: the message row and all its rows go in one transaction, and the message row is inserted
first with ON CONFLICT DO NOTHING on its primary key. Several collectors sharing one PostgreSQL
database (an MQTT shared subscription) may race on the same message: the loser's insert waits for the
winner's transaction, then inserts nothing, and the loser stores no rows but counts a duplicate. A
transaction PostgreSQL rolls back to break a deadlock (db.Conflict) is run again, up to 5 times.

Durability: SQLite synchronous=NORMAL (default) survives a crash of the collector at any instruction;
FULL also survives power loss, at one fsync per message; PostgreSQL follows the server's
synchronous_commit. The MQTT edge acknowledges a message only after its transaction committed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from agent.central import db as dbapi
from agent.messages import Message
from agent.records import FlowRecord

SCHEMA_VERSION: Final = 1
SYNCHRONOUS: Final = dbapi.SYNCHRONOUS
ATTEMPTS: Final = 5
_INT64: Final = 1 << 63
_SCHEMA_LOCK: Final = 0x77617264  # pg_advisory_xact_lock key: collectors starting together create once

_DDL: Final = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sensors(id TEXT PRIMARY KEY, site TEXT, fingerprint TEXT, first_seen REAL,
  last_seen REAL, last_boot INTEGER, last_seq INTEGER, online INTEGER, status TEXT, status_ts REAL,
  messages INTEGER NOT NULL DEFAULT 0, flows INTEGER NOT NULL DEFAULT 0,
  duplicates INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages(sensor TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, created REAL, received REAL NOT NULL, bytes INTEGER NOT NULL,
  PRIMARY KEY(sensor, boot, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flows(sensor TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
  first REAL, last REAL, proto TEXT, a_ip TEXT, a_port INTEGER, b_ip TEXT, b_port INTEGER, a_mac TEXT,
  b_mac TEXT, vlan TEXT, a_pkts INTEGER, b_pkts INTEGER, a_bytes INTEGER, b_bytes INTEGER, a_flags TEXT,
  b_flags TEXT, end_reason TEXT);
CREATE INDEX IF NOT EXISTS flows_last ON flows(last);
CREATE INDEX IF NOT EXISTS flows_a ON flows(a_ip);
CREATE INDEX IF NOT EXISTS flows_b ON flows(b_ip, b_port);
CREATE TABLE IF NOT EXISTS devices(sensor TEXT NOT NULL, mac TEXT NOT NULL, role TEXT, risk_score REAL,
  vendor TEXT, hostname TEXT, first_seen REAL, last_seen REAL, updated REAL NOT NULL, record TEXT NOT NULL,
  PRIMARY KEY(sensor, mac));
CREATE INDEX IF NOT EXISTS devices_mac ON devices(mac);
CREATE TABLE IF NOT EXISTS device_history(sensor TEXT NOT NULL, mac TEXT NOT NULL, ts REAL, received REAL,
  role TEXT, risk_score REAL, vendor TEXT, hostname TEXT, software TEXT);
CREATE INDEX IF NOT EXISTS device_history_mac ON device_history(sensor, mac);
CREATE INDEX IF NOT EXISTS device_history_ts ON device_history(ts);
CREATE TABLE IF NOT EXISTS findings(sensor TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, severity TEXT, ts REAL, src_ip TEXT, src_port INTEGER, dst_ip TEXT, dst_port INTEGER,
  proto TEXT, device TEXT, role TEXT, peer_role TEXT, key TEXT, summary TEXT, evidence TEXT, record TEXT);
CREATE INDEX IF NOT EXISTS findings_ts ON findings(ts);
CREATE INDEX IF NOT EXISTS findings_kind ON findings(kind, ts);
CREATE INDEX IF NOT EXISTS findings_device ON findings(device);
CREATE TABLE IF NOT EXISTS health(sensor TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
  ts REAL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS health_sensor ON health(sensor, ts);
CREATE TABLE IF NOT EXISTS config_acks(sensor TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
  version INTEGER, ok INTEGER, errors TEXT, ts REAL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS config_acks_sensor ON config_acks(sensor, version);
CREATE TABLE IF NOT EXISTS rejects(reason TEXT NOT NULL, sensor TEXT NOT NULL, topic TEXT NOT NULL,
  first REAL NOT NULL, last REAL NOT NULL, count INTEGER NOT NULL, PRIMARY KEY(reason, sensor, topic));
CREATE TABLE IF NOT EXISTS quarantine(received REAL NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
  error TEXT NOT NULL);
"""

_NEWER: Final = "(last_boot IS NULL OR (?, ?) > (last_boot, last_seq))"
_TOUCH: Final = f"""UPDATE sensors SET first_seen = COALESCE(first_seen, ?),
  last_seen = CASE WHEN last_seen IS NULL OR last_seen < ? THEN ? ELSE last_seen END,
  messages = messages + 1, flows = flows + ?,
  last_boot = CASE WHEN {_NEWER} THEN ? ELSE last_boot END,
  last_seq = CASE WHEN {_NEWER} THEN ? ELSE last_seq END WHERE id = ?"""
_MESSAGE_SQL: Final = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
_FLOW_SQL: Final = f"INSERT INTO flows VALUES ({', '.join('?' * 20)})"
_FINDING_SQL: Final = f"INSERT INTO findings VALUES ({', '.join('?' * 18)})"
_DEVICE_SQL: Final = """INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sensor, mac) DO
  UPDATE SET role = excluded.role, risk_score = excluded.risk_score, vendor = excluded.vendor,
  hostname = excluded.hostname, first_seen = CASE WHEN devices.first_seen IS NULL
    OR excluded.first_seen < devices.first_seen THEN excluded.first_seen ELSE devices.first_seen END,
  last_seen = CASE WHEN COALESCE(excluded.last_seen, 0) > COALESCE(devices.last_seen, 0)
    THEN COALESCE(excluded.last_seen, 0) ELSE COALESCE(devices.last_seen, 0) END,
  updated = excluded.updated, record = excluded.record"""
_CURRENT_DEVICE: Final = ("SELECT role, risk_score, vendor, hostname, record FROM devices "
                          "WHERE sensor = ? AND mac = ?")


class Store:
    """The collector's database; not thread-safe (one ingest thread owns it).

    `target`: a SQLite file path or a postgresql:// URL (db.connect). `db` is the connection, for
    readers (reports, advisories) that bring their own portable qmark SQL."""

    def __init__(self, target: str | Path, synchronous: str = "normal") -> None:
        self.db = dbapi.connect(target, synchronous=synchronous)
        try:
            with self.db.transaction():
                _create(self.db)
        except BaseException:
            self.db.close()
            raise

    @property
    def backend(self) -> str:
        return self.db.backend

    def close(self) -> None:
        self.db.close()

    def register(self, sensor: str, site: str | None, fingerprint: str) -> None:
        """Add or update a configured sensor (site None: any site)."""
        self.db.execute("INSERT INTO sensors(id, site, fingerprint) VALUES (?, ?, ?) ON CONFLICT(id) DO "
                        "UPDATE SET site = excluded.site, fingerprint = excluded.fingerprint",
                        (sensor, site, fingerprint))

    def seen(self, sensor: str, boot: int, seq: int) -> bool:
        """Whether this message is stored already."""
        return self.db.execute("SELECT 1 FROM messages WHERE sensor = ? AND boot = ? AND seq = ?",
                               (sensor, boot, seq)).fetchone() is not None

    def add(self, message: Message, size: int, received: float) -> bool:
        """Store a message and its rows in one transaction; False (nothing stored) if it is a duplicate.

        ValueError (db.DataError included), TypeError or OverflowError (the transaction rolled back) for
        a body it cannot store; sqlite3 errors or db.Unavailable when the database fails."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._add(message, size, received)
            except dbapi.Conflict:
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _add(self, message: Message, size: int, received: float) -> bool:
        h = message.header
        with self.db.transaction():
            self.db.execute("INSERT INTO sensors(id) VALUES (?) ON CONFLICT DO NOTHING", (h.sensor,))
            key = (h.sensor, h.boot, h.seq)
            if self.db.execute(_MESSAGE_SQL, (*key, h.kind, _real(message.created), received,
                                              size)).rowcount == 0:
                self.db.execute("UPDATE sensors SET duplicates = duplicates + 1 WHERE id = ?", (h.sensor,))
                return False
            rows = _ROWS[h.kind](self, message, received)
            self.db.execute(_TOUCH, (received, received, received, rows if h.kind == "flows" else 0,
                                     h.boot, h.seq, h.boot, h.boot, h.seq, h.seq, h.sensor))
        return True

    def note_duplicate(self, sensor: str) -> None:
        self.db.execute("UPDATE sensors SET duplicates = duplicates + 1 WHERE id = ?", (sensor,))

    def set_status(self, sensor: str, status: Mapping[str, Any], received: float) -> None:
        """Record a birth or will message (online flag and the whole document)."""
        online = status.get("online")
        self.db.execute("UPDATE sensors SET online = ?, status = ?, status_ts = ? WHERE id = ?",
                        (int(online) if isinstance(online, bool) else None, _json(status), received, sensor))

    def reject(self, reason: str, sensor: str, topic: str, received: float) -> None:
        self.db.execute("INSERT INTO rejects VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT(reason, sensor, topic) "
                        "DO UPDATE SET last = excluded.last, count = rejects.count + 1",
                        (reason, sensor, topic, received, received))

    def quarantine(self, topic: str, payload: bytes, error: str, received: float) -> None:
        self.db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?)", (received, topic, payload, error))

    def sensors(self) -> list[dict[str, Any]]:
        """Every sensor row, with `rejects` (refused messages whose topic named it), ordered by id."""
        cursor = self.db.execute(
            "SELECT s.*, (SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM rejects r "
            "WHERE r.sensor = s.id) AS rejects FROM sensors s ORDER BY id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def count(self, table: str, where: str = "", *args: Any) -> int:
        """Rows in a table (tests and reports); `where` is SQL with ? placeholders for args."""
        if table not in _TABLES:
            raise ValueError(f"unknown table {table!r}")
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int(self.db.execute(sql, args).fetchone()[0])

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self.db.query(sql, args)

    # -- rows per kind ----------------------------------------------------------------------------------

    def _flows(self, message: Message, _received: float) -> int:
        h = message.header
        records: list[FlowRecord] = message.body
        self.db.executemany(_FLOW_SQL, [
            (h.sensor, h.boot, h.seq, r.first, r.last, str(r.proto), r.a_ip, r.a_port, r.b_ip, r.b_port,
             r.a_mac, r.b_mac, ",".join(map(str, r.vlan)), r.a_pkts, r.b_pkts, r.a_bytes, r.b_bytes,
             r.a_flags, r.b_flags, r.end) for r in records])
        return len(records)

    def _devices(self, message: Message, received: float) -> int:
        """Upsert each device; a history row when it differs from the stored one (the latest change)."""
        h, devices = message.header, message.body["devices"]
        for d in devices:
            if not isinstance(d.get("mac"), str):
                raise ValueError("a device record without a text `mac`")
            role, risk, vendor, hostname = (_text(d.get("role")), _real(d.get("risk_score")),
                                            _text(d.get("vendor")), _text(d.get("hostname")))
            software = _json(d.get("software"))
            current = self.db.execute(_CURRENT_DEVICE, (h.sensor, d["mac"])).fetchone()
            if current is None or (*current[:4], _json(json.loads(current[4]).get("software"))) != (
                    role, risk, vendor, hostname, software):
                self.db.execute("INSERT INTO device_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (h.sensor, d["mac"], _real(message.created), received, role, risk, vendor,
                                 hostname, software))
            self.db.execute(_DEVICE_SQL, (h.sensor, d["mac"], role, risk, vendor, hostname,
                                          _real(d.get("first_seen")), _real(d.get("last_seen")), received,
                                          _json(d)))
        return len(devices)

    def _findings(self, message: Message, _received: float) -> int:
        h, rows = message.header, []
        for f in message.body:
            if not isinstance(f.get("kind"), str):
                raise ValueError("a finding without a text `kind`")
            proto = f.get("proto")
            rows.append((h.sensor, h.boot, h.seq, f["kind"], _text(f.get("severity")), _real(f.get("ts")),
                         _text(f.get("src_ip")), _int(f.get("src_port")), _text(f.get("dst_ip")),
                         _int(f.get("dst_port")), None if proto is None else str(proto),
                         _text(f.get("device")), _text(f.get("role")), _text(f.get("peer_role")),
                         _text(f.get("key")), _text(f.get("summary")), _json(f.get("evidence")), _json(f)))
        self.db.executemany(_FINDING_SQL, rows)
        return len(rows)

    def _health(self, message: Message, _received: float) -> int:
        h = message.header
        self.db.execute("INSERT INTO health VALUES (?, ?, ?, ?, ?)",
                        (h.sensor, h.boot, h.seq, _real(message.created), _json(message.body)))
        return 1

    def _status(self, message: Message, received: float) -> int:
        self.set_status(message.header.sensor, message.body, received)
        return 1

    def _config_ack(self, message: Message, received: float) -> int:
        h, body = message.header, message.body
        errors = body.get("errors")
        ok = body["ok"] if isinstance(body.get("ok"), bool) else not errors
        self.db.execute("INSERT INTO config_acks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (h.sensor, h.boot, h.seq, _int(body.get("version")), int(ok),
                         _json(errors if errors is not None else []), _real(message.created), received))
        return 1


def _create(db: dbapi.Database) -> None:
    if db.backend == "postgresql":
        db.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
    db.create(_DDL)
    found = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if found is None:
        db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    elif found[0] != str(SCHEMA_VERSION):
        raise ValueError(f"database schema version {found[0]}, this collector writes {SCHEMA_VERSION}")


_ROWS: Final = {"flows": Store._flows, "devices": Store._devices, "findings": Store._findings,
                "health": Store._health, "status": Store._status, "config_ack": Store._config_ack}
_TABLES: Final = frozenset({"sensors", "messages", "flows", "devices", "device_history", "findings", "health",
                            "config_acks", "rejects", "quarantine"})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if type(value) is int and -_INT64 <= value < _INT64 else None


def _real(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")
