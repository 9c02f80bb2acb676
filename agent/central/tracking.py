"""Device-advisory pairs over time: open, mitigated, patched, accepted; every change kept with its time.

Tables (created by `create_tables`, in the collector's database next to agent.central.store's; SQL is
portable: qmark placeholders, ON CONFLICT upserts, TEXT/INTEGER/REAL, times REAL epoch seconds):

    advisories(id PK, title, version, initial_release, current_release, cves, cvss, severity, source,
               imported, document)
        One row per CSAF document (tracking id); cves: JSON list; cvss: the largest base score;
        document: the CSAF JSON text as imported, re-read by `evaluate`. A re-import replaces the row
        unless the stored document's current_release is newer.
    advisory_products(advisory, product_id, vendor, product, version, name, status; PK (advisory,
                      product_id))
        Its products, status affected / fixed / not_affected (agent.central.advisories).
    advisory_pairs(sensor, mac, advisory, status, confidence, version, products, evidence, reason,
                   actor, manual, opened, status_ts, updated; PK (sensor, mac, advisory))
        status: open, mitigated, patched, accepted, or not_affected (the advisory stopped matching the
        device record at all). confidence: low/medium/high (agent.central.matching); version: the one
        read from the device; products, evidence: JSON lists; reason/actor: who accepted or mitigated
        it and why; manual: 1 when a person set the status; opened: first match; status_ts: the last
        status change; updated: the last evaluation that touched the row.
    advisory_history(sensor, mac, advisory, n, ts, status, previous, confidence, reason, actor,
                     evidence; PK (sensor, mac, advisory, n))
        One row per status change, n = 1, 2, ... per pair (the first is the opening, previous NULL).

`evaluate` matches every stored device record (or those updated since a time) against the stored
advisories and moves pairs:
- a new affected match opens a pair; a match whose version left every affected range (or is listed as
  fixed) makes the pair patched, whatever its status; patched or not_affected pairs whose device
  matches an affected version again are opened again; open or rule-mitigated pairs whose advisory no
  longer matches at all become not_affected.
- mitigation rule (only with `zone_of`, e.g. from the segmentation policy): an open pair becomes
  mitigated when zone_of(device) names a zone, the device was first seen at least `window` seconds
  ago, and the findings table holds no policy_violation from or to the device (its MAC or any of its
  addresses) within the window; a rule-mitigated pair opens again when either stops being true.
- accepted (`accept`) and manual mitigations (`mitigate`) stay until the device is patched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from agent.central import advisories as csaf
from agent.central.db import Database
from agent.central.matching import Match, Matcher

STATUSES: Final = ("open", "mitigated", "patched", "accepted", "not_affected")
WINDOW: Final = 7 * 86400.0
_DDL: Final = """
CREATE TABLE IF NOT EXISTS advisories(id TEXT PRIMARY KEY, title TEXT, version TEXT, initial_release REAL,
  current_release REAL, cves TEXT, cvss REAL, severity TEXT, source TEXT, imported REAL NOT NULL,
  document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS advisory_products(advisory TEXT NOT NULL, product_id TEXT NOT NULL, vendor TEXT,
  product TEXT, version TEXT, name TEXT, status TEXT, PRIMARY KEY(advisory, product_id));
CREATE TABLE IF NOT EXISTS advisory_pairs(sensor TEXT NOT NULL, mac TEXT NOT NULL, advisory TEXT NOT NULL,
  status TEXT NOT NULL, confidence TEXT NOT NULL, version TEXT, products TEXT, evidence TEXT, reason TEXT,
  actor TEXT, manual INTEGER NOT NULL DEFAULT 0, opened REAL NOT NULL, status_ts REAL NOT NULL,
  updated REAL NOT NULL, PRIMARY KEY(sensor, mac, advisory));
CREATE INDEX IF NOT EXISTS advisory_pairs_status ON advisory_pairs(status);
CREATE TABLE IF NOT EXISTS advisory_history(sensor TEXT NOT NULL, mac TEXT NOT NULL, advisory TEXT NOT NULL,
  n INTEGER NOT NULL, ts REAL NOT NULL, status TEXT NOT NULL, previous TEXT, confidence TEXT, reason TEXT,
  actor TEXT, evidence TEXT, PRIMARY KEY(sensor, mac, advisory, n));
CREATE INDEX IF NOT EXISTS advisory_history_ts ON advisory_history(ts)
"""
_PAIR_COLUMNS: Final = ("sensor", "mac", "advisory", "status", "confidence", "version", "products",
                        "evidence", "reason", "actor", "manual", "opened", "status_ts", "updated")
ZoneOf = Callable[[Mapping[str, Any]], "str | None"]


class Cursor(Protocol):
    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Reader(Protocol):
    """Enough of a connection to read: agent.central.db.Database or a sqlite3 connection."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


def create_tables(db: Database) -> None:
    db.create(_DDL)


def import_path(db: Database, path: str | Path, now: float | None = None) -> list[csaf.Advisory]:
    """Parse and store the CSAF file, or every *.json of a folder; ValueError names a bad file (nothing
    is stored then). Returns the advisories stored (an older revision than the stored one is skipped)."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    parsed = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
            parsed.append((csaf.parse(json.loads(text), file.name), text))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from None
    stored = []
    create_tables(db)
    with db.transaction():
        for advisory, text in parsed:
            if _store(db, advisory, text, time.time() if now is None else now):
                stored.append(advisory)
    return stored


def load_advisories(db: Reader) -> list[csaf.Advisory]:
    rows = db.execute("SELECT document, source FROM advisories ORDER BY id").fetchall()
    return [csaf.parse(json.loads(document), source or "") for document, source in rows]


def evaluate(db: Database, now: float | None = None, *, zone_of: ZoneOf | None = None,
             window: float = WINDOW, since: float | None = None) -> dict[str, int]:
    """Match device records (all, or those updated at or after `since`) and move the pairs (module
    docstring). Returns how many pairs moved to each status, and how many devices were read."""
    now = time.time() if now is None else now
    create_tables(db)
    matcher = Matcher(load_advisories(db))
    counts = dict.fromkeys(("devices", *STATUSES), 0)
    with db.transaction():
        sql = "SELECT sensor, mac, record FROM devices" + (" WHERE updated >= ?" if since is not None else "")
        for sensor, mac, record in db.execute(sql, () if since is None else (since,)).fetchall():
            device = json.loads(record)
            counts["devices"] += 1
            matches = {m.advisory: m for m in matcher.match(device)}
            rows = {r["advisory"]: r for r in _rows(db, "sensor = ? AND mac = ?", (sensor, mac))}
            for advisory in sorted(set(matches) | set(rows)):
                moved = [_move(db, sensor, mac, advisory, matches.get(advisory), rows.get(advisory), now)]
                if zone_of is not None and moved[0] in (None, "open"):
                    moved.append(_rule(db, device, sensor, mac, advisory, zone_of, window, now))
                for status in moved:
                    if status is not None:
                        counts[status] += 1
    return counts


def accept(db: Database, mac: str, advisory: str, reason: str, actor: str, *, sensor: str | None = None,
           now: float | None = None) -> int:
    """A person accepts the risk of a pair (every sensor's, unless `sensor`); how many pairs changed."""
    return _manual(db, "accepted", mac, advisory, reason, actor, sensor, now)


def mitigate(db: Database, mac: str, advisory: str, reason: str, actor: str, *, sensor: str | None = None,
             now: float | None = None) -> int:
    """A person records a mitigation (a firewall rule, a VLAN, the device unplugged from the network)."""
    return _manual(db, "mitigated", mac, advisory, reason, actor, sensor, now)


def pairs(db: Reader, *, mac: str | None = None, status: str | None = None,
          with_history: bool = True) -> list[dict[str, Any]]:
    """Pairs with the advisory's title and CVSS, newest change first; `history` lists transitions
    ({"status", "ts", "previous", "reason", "actor", "confidence"}), oldest first."""
    where, args = [], []
    if mac is not None:
        where.append("p.mac = ?")
        args.append(mac.lower())
    if status is not None:
        where.append("p.status = ?")
        args.append(status)
    cursor = db.execute(
        "SELECT p.*, a.title AS title, a.cvss AS cvss, a.severity AS severity FROM advisory_pairs p "
        "LEFT JOIN advisories a ON a.id = p.advisory" + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY p.status_ts DESC, p.sensor, p.mac, p.advisory", tuple(args))
    found = [_decode(dict(zip([d[0] for d in cursor.description], row, strict=True)))
             for row in cursor.fetchall()]
    if with_history:
        steps: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for step in history(db, mac=mac):
            steps.setdefault((step["sensor"], step["mac"], step["advisory"]), []).append(step)
        for pair in found:
            pair["history"] = steps.get((pair["sensor"], pair["mac"], pair["advisory"]), [])
    return found


def open_pairs(db: Reader) -> list[dict[str, Any]]:
    return pairs(db, status="open")


def history(db: Reader, *, mac: str | None = None) -> list[dict[str, Any]]:
    """Every status change, oldest first."""
    cursor = db.execute("SELECT * FROM advisory_history" + (" WHERE mac = ?" if mac else "")
                        + " ORDER BY ts, sensor, mac, advisory, n", (mac.lower(),) if mac else ())
    return [_decode(dict(zip([d[0] for d in cursor.description], row, strict=True)))
            for row in cursor.fetchall()]


# ---- transitions -----------------------------------------------------------------------------------

def _move(db: Database, sensor: str, mac: str, advisory: str, match: Match | None,
          row: dict[str, Any] | None, now: float) -> str | None:
    """Apply what the match says; the new status, or None when the status stayed."""
    if row is None:
        if match is None or not match.affected:
            return None
        values = (sensor, mac, advisory, "open", match.confidence, match.version, _json(match.products),
                  _json(match.evidence), None, None, 0, now, now, now)
        db.execute(f"INSERT INTO advisory_pairs VALUES ({', '.join('?' * len(values))})", values)
        _log(db, sensor, mac, advisory, now, "open", None, match.confidence, None, None, match.evidence)
        return "open"
    status, target = row["status"], None
    if match is None:
        target = "not_affected" if status == "open" or (status == "mitigated" and not row["manual"]) else None
    elif not match.affected:
        target = "patched" if status != "patched" else None
    elif status in ("patched", "not_affected"):
        target = "open"
    if match is not None:
        db.execute("UPDATE advisory_pairs SET confidence = ?, version = ?, products = ?, evidence = ?, "
                   "updated = ? WHERE sensor = ? AND mac = ? AND advisory = ?",
                   (match.confidence, match.version, _json(match.products), _json(match.evidence), now,
                    sensor, mac, advisory))
    if target is None:
        return None
    evidence = match.evidence if match is not None else ("the advisory no longer matches the device record",)
    _set(db, sensor, mac, advisory, target, now, None, None, 0, evidence)
    return target


def _rule(db: Database, device: Mapping[str, Any], sensor: str, mac: str, advisory: str, zone_of: ZoneOf,
          window: float, now: float) -> str | None:
    row = _rows(db, "sensor = ? AND mac = ? AND advisory = ?", (sensor, mac, advisory))
    if not row or row[0]["status"] not in ("open", "mitigated") or row[0]["manual"]:
        return None
    zone = zone_of(device)
    first = device.get("first_seen")
    observed = isinstance(first, int | float) and first <= now - window
    ips = [e["ip"] for e in device.get("ips", []) if isinstance(e, Mapping) and isinstance(e.get("ip"), str)]
    marks = ", ".join("?" * len(ips))
    near = f" OR src_ip IN ({marks}) OR dst_ip IN ({marks})" if ips else ""
    violations = int(db.execute(
        f"SELECT COUNT(*) FROM findings WHERE kind = 'policy_violation' AND ts >= ? AND (device = ?{near})",
        (now - window, mac, *ips, *ips)).fetchone()[0])
    days = f"{window / 86400:g} days"
    if row[0]["status"] == "open" and zone and observed and not violations:
        _set(db, sensor, mac, advisory, "mitigated", now, f"in zone {zone}, no policy violation in {days}",
             "rule", 0, (f"zone {zone}", f"0 policy_violation findings in {days}"))
        return "mitigated"
    if row[0]["status"] == "mitigated" and (not zone or violations):
        why = f"{violations} policy_violation findings in {days}" if violations else "no longer in a zone"
        _set(db, sensor, mac, advisory, "open", now, why, "rule", 0, (why,))
        return "open"
    return None


def _manual(db: Database, status: str, mac: str, advisory: str, reason: str, actor: str,
            sensor: str | None, now: float | None) -> int:
    if not reason.strip() or not actor.strip():
        raise ValueError("a reason and the person's name are required")
    now = time.time() if now is None else now
    create_tables(db)
    with db.transaction():
        where, args = "mac = ? AND advisory = ?", [mac.lower(), advisory]
        if sensor is not None:
            where, args = where + " AND sensor = ?", [*args, sensor]
        found = _rows(db, where, tuple(args))
        for row in found:
            _set(db, row["sensor"], row["mac"], advisory, status, now, reason.strip(), actor.strip(), 1,
                 (f"{status} by {actor.strip()}: {reason.strip()}",))
    return len(found)


def _set(db: Database, sensor: str, mac: str, advisory: str, status: str, now: float, reason: str | None,
         actor: str | None, manual: int, evidence: Sequence[str]) -> None:
    key = (sensor, mac, advisory)
    previous = db.execute("SELECT status, confidence FROM advisory_pairs WHERE sensor = ? AND mac = ? AND "
                          "advisory = ?", key).fetchone()
    db.execute("UPDATE advisory_pairs SET status = ?, reason = ?, actor = ?, manual = ?, status_ts = ?, "
               "updated = ? WHERE sensor = ? AND mac = ? AND advisory = ?",
               (status, reason, actor, manual, now, now, *key))
    _log(db, sensor, mac, advisory, now, status, previous[0], previous[1], reason, actor, evidence)


def _log(db: Database, sensor: str, mac: str, advisory: str, now: float, status: str, previous: str | None,
         confidence: str | None, reason: str | None, actor: str | None, evidence: Iterable[str]) -> None:
    n = int(db.execute("SELECT COUNT(*) FROM advisory_history WHERE sensor = ? AND mac = ? AND advisory = ?",
                       (sensor, mac, advisory)).fetchone()[0]) + 1
    db.execute("INSERT INTO advisory_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (sensor, mac, advisory, n, now, status, previous, confidence, reason, actor,
                _json(list(evidence))))


def _store(db: Database, advisory: csaf.Advisory, text: str, now: float) -> bool:
    stored = db.execute("SELECT current_release FROM advisories WHERE id = ?", (advisory.id,)).fetchone()
    if stored is not None and stored[0] is not None and (advisory.current_release or 0) < stored[0]:
        return False
    values = (advisory.id, advisory.title, advisory.version, advisory.initial_release,
              advisory.current_release, _json(advisory.cves), advisory.cvss_max, advisory.severity,
              advisory.source, now, text)
    columns = ("title", "version", "initial_release", "current_release", "cves", "cvss", "severity", "source",
               "imported", "document")
    db.execute(f"INSERT INTO advisories VALUES ({', '.join('?' * len(values))}) ON CONFLICT(id) DO "
               f"UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in columns)}", values)
    db.execute("DELETE FROM advisory_products WHERE advisory = ?", (advisory.id,))
    db.executemany("INSERT INTO advisory_products VALUES (?, ?, ?, ?, ?, ?, ?)", [
        (advisory.id, p.product_id, p.vendor, p.product, p.version, p.name, advisory.status(p.product_id))
        for p in advisory.products.values()])
    return True


def _rows(db: Reader, where: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
    cursor = db.execute(f"SELECT {', '.join(_PAIR_COLUMNS)} FROM advisory_pairs WHERE {where}", args)
    return [dict(zip(_PAIR_COLUMNS, row, strict=True)) for row in cursor.fetchall()]


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("products", "evidence"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row


def _json(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))
