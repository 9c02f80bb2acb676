"""Risk over time: what `ward-agent central report` shows, read from the collector's store as plain data.

`report_data(conn, now, weeks)` is a pure read of the store (agent.central.store's schema) and returns a
JSON-serialisable dict; report_html renders it, and `--format json` prints it for a SIEM. The SQL is
portable (qmark placeholders, standard SQL, no SQLite-only functions) so the same code reads PostgreSQL;
weekly buckets are computed in Python. The weeks are rolling: week i covers [start_i, start_i + 7 days),
and the last one ends at `now`.

Definitions (also printed at the end of the report):
- Risk bands of a device's risk_score (agent.risks, 0-100): critical >= 70, high >= 40, medium >= 20,
  low >= 1, none 0. One weakness weighs at most 40, so "high" takes two and "critical" three.
- Inventory: the latest record of every device seen in the report window.
- Open findings: a finding whose (sensor, key) was raised again within the last OPEN_DAYS days; the
  sensor de-duplicates by key, so a recurring problem is one open finding with a count. Health kinds
  (capture_loss, no_traffic, clock_unsynced) are about the sensor, not the ward, and are kept apart.
- Ward: the sensor's site (its id when the collector pins no site).
- Cleartext clinical flows: TCP flows to DICOM 104/11112 or HL7 MLLP 2575 (their TLS variants use other
  ports), plus flows to any HL7/DICOM service offered by a device that carries the
  `cleartext_clinical_protocol` risk (the hinters saw cleartext HL7 or DICOM there).
- Trend of devices per band: at the end of each week, the last risk score the device had by then
  (device_history), for devices first reported by then and still seen at the start of that week.
- Advisories: read through agent.central.tracking (report_advisories.py); absent or empty tables give an
  empty section, never an error.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent.central import report_advisories
from agent.central.report_advisories import Connection, PairsReader
from agent.roles import ROLES

SCHEMA: Final = 1
WEEK: Final = 7 * 86400.0
OPEN_DAYS: Final = 7
MAX_WEEKS: Final = 260
BANDS: Final = (("critical", 70), ("high", 40), ("medium", 20), ("low", 1), ("none", 0))
SEVERITIES: Final = ("critical", "high", "medium", "low", "info")
CLEARTEXT_CLINICAL_PORTS: Final = {104: "DICOM", 11112: "DICOM", 2575: "HL7"}
HEALTH_KINDS: Final = frozenset({"capture_loss", "no_traffic", "clock_unsynced"})
_MAX_PORTS: Final = 500  # distinct extra clinical ports asked for in one IN list


def band(score: float | None) -> str:
    """The risk band of a 0-100 score (None counts as 0)."""
    value = score or 0
    return next(name for name, low in BANDS if value >= low)


def report_data(
    conn: Connection, now: float, weeks: int = 12, *, pairs: PairsReader | None = None
) -> dict[str, Any]:
    """Everything the report shows; `pairs` overrides the advisory tracking reader (tests, other stores)."""
    if not 1 <= weeks <= MAX_WEEKS:
        raise ValueError(f"weeks must be in [1, {MAX_WEEKS}], got {weeks}")
    edges = [now - (weeks - i) * WEEK for i in range(weeks + 1)]
    wards = _wards(conn)
    devices = _devices(conn, edges[0], wards)
    advisories = report_advisories.gather(conn, devices, edges, pairs)
    by_device = Counter((p["sensor"], p["mac"]) for p in advisories["pairs"] if p["status"] == "open")
    for device in devices:
        device["open_advisories"] = by_device.get((device["sensor"], device["mac"]), 0)
    findings = _open_findings(conn, now - OPEN_DAYS * 86400, wards)
    per_week = _findings_per_week(conn, edges)
    trends = {
        "weeks": [
            {"start": _round(a), "end": _round(b), "label": _label(a)} for a, b in itertools.pairwise(edges)
        ],
        "devices_by_band": _band_trend(conn, edges),
        "cleartext_clinical_flows": _cleartext_trend(conn, edges, devices),
        "policy_violations": [week.get("policy_violation", 0) for week in per_week],
        "findings": [sum(n for kind, n in week.items() if kind not in HEALTH_KINDS) for week in per_week],
        **advisories.pop("trends"),
    }
    bands = Counter(d["band"] for d in devices)
    return {
        "schema": SCHEMA,
        "generated": _round(now),
        "generated_utc": _iso(now),
        "window": {"weeks": weeks, "start": _round(edges[0]), "end": _round(now), "open_days": OPEN_DAYS},
        "bands": [{"name": name, "min": low} for name, low in BANDS],
        "summary": {
            "devices": len(devices),
            "critical_devices": bands.get("critical", 0),
            "high_devices": bands.get("high", 0),
            "sensors": len(wards),
            "wards": len(set(wards.values())),
            "open_findings": sum(1 for f in findings if not f["health"]),
            "open_health_findings": sum(1 for f in findings if f["health"]),
            "devices_with_open_advisories": sum(1 for d in devices if d["open_advisories"]),
        },
        "sensors": _sensors(conn, wards),
        "inventory": _inventory(devices),
        "devices": devices,
        "advisories": advisories,
        "findings": _findings_summary(findings),
        "segmentation": _segmentation(conn, edges[0], wards),
        "trends": trends,
    }


# ---- inventory -----------------------------------------------------------------------------------


def _wards(conn: Connection) -> dict[str, str]:
    """sensor id -> ward (its site, else its id), including sensors only seen in data rows."""
    wards = {
        str(sensor): str(site or sensor)
        for sensor, site in conn.execute("SELECT id, site FROM sensors ORDER BY id", ()).fetchall()
    }
    for table in ("devices", "findings"):
        for (sensor,) in conn.execute(f"SELECT DISTINCT sensor FROM {table}", ()).fetchall():
            wards.setdefault(str(sensor), str(sensor))
    return wards


def _devices(conn: Connection, start: float, wards: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT sensor, mac, role, risk_score, vendor, hostname, first_seen, last_seen, "
        "record FROM devices WHERE last_seen IS NULL OR last_seen >= ? ORDER BY sensor, mac",
        (start,),
    ).fetchall()
    devices = []
    for sensor, mac, role, score, vendor, hostname, first, last, text in rows:
        record = _loads(text)
        risk_score = float(score) if isinstance(score, int | float) else 0.0
        devices.append(
            {
                "sensor": sensor,
                "ward": wards.get(sensor, sensor),
                "mac": mac,
                "role": role or "unknown",
                "role_confidence": _number(record.get("role_confidence")),
                "risk_score": _round(risk_score),
                "band": band(risk_score),
                "vendor": vendor,
                "hostname": hostname,
                "ips": [str(e["ip"]) for e in _list(record.get("ips")) if isinstance(e, dict) and "ip" in e][
                    :8
                ],
                "risks": [
                    {
                        "id": str(r.get("id")),
                        "summary": str(r.get("summary") or ""),
                        "weight": _number(r.get("weight")),
                    }
                    for r in _list(record.get("risks"))
                    if isinstance(r, dict)
                ],
                "clinical_services": _clinical_services(record),
                "first_seen": _round(first),
                "last_seen": _round(last),
            }
        )
    devices.sort(key=lambda d: (-d["risk_score"], d["ward"], d["hostname"] or "", d["mac"]))
    return devices


def _inventory(devices: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    roles: dict[str, Counter[str]] = defaultdict(Counter)
    for d in devices:
        roles[d["role"]][d["band"]] += 1
    order = {role: i for i, role in enumerate(ROLES)}
    by_role = [
        {"role": role, "devices": sum(c.values()), "bands": _bands(c)}
        for role, c in sorted(roles.items(), key=lambda rc: (order.get(rc[0], len(order)), rc[0]))
    ]
    risks = Counter(r["id"] for d in devices for r in d["risks"])
    return {
        "by_role": by_role,
        "by_band": _bands(Counter(d["band"] for d in devices)),
        "by_risk": [
            {"id": rid, "devices": n} for rid, n in sorted(risks.items(), key=lambda x: (-x[1], x[0]))
        ],
    }


def _bands(counts: Counter[str]) -> dict[str, int]:
    return {name: counts.get(name, 0) for name, _ in BANDS}


def _sensors(conn: Connection, wards: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, online, last_seen, messages, flows FROM sensors ORDER BY id", ()
    ).fetchall()
    return [
        {
            "sensor": sensor,
            "ward": wards.get(sensor, sensor),
            "online": None if online is None else bool(online),
            "last_seen": _round(last),
            "messages": messages,
            "flows": flows,
        }
        for sensor, online, last, messages, flows in rows
    ]


# ---- findings ------------------------------------------------------------------------------------


def _open_findings(conn: Connection, since: float, wards: Mapping[str, str]) -> list[dict[str, Any]]:
    """One entry per (sensor, kind, key) raised since `since`: the latest occurrence, with a count."""
    rows = conn.execute(
        "SELECT sensor, kind, severity, ts, src_ip, dst_ip, dst_port, device, key, summary "
        "FROM findings WHERE ts >= ? ORDER BY ts",
        (since,),
    ).fetchall()
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for sensor, kind, severity, ts, src, dst, port, device, key, summary in rows:
        ident = (sensor, kind, key or f"{src}>{dst}:{port}")
        entry = found.setdefault(ident, {"count": 0, "first": _round(ts)})
        entry.update(
            {
                "sensor": sensor,
                "ward": wards.get(sensor, sensor),
                "kind": kind,
                "severity": severity if severity in SEVERITIES else "info",
                "last": _round(ts),
                "src_ip": src,
                "dst_ip": dst,
                "dst_port": port,
                "device": device,
                "summary": summary or "",
                "health": kind in HEALTH_KINDS,
            }
        )
        entry["count"] += 1
    return sorted(found.values(), key=lambda f: (SEVERITIES.index(f["severity"]), -(f["last"] or 0)))


def _findings_summary(findings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    wards: dict[str, Counter[str]] = defaultdict(Counter)
    for f in findings:
        kinds[f["kind"]][f["severity"]] += 1
        if not f["health"]:
            wards[f["ward"]][f["severity"]] += 1

    def rows(table: Mapping[str, Counter[str]], name: str) -> list[dict[str, Any]]:
        return [
            {
                name: key,
                "open": sum(c.values()),
                "severity": {s: c.get(s, 0) for s in SEVERITIES},
                **({"health": key in HEALTH_KINDS} if name == "kind" else {}),
            }
            for key, c in sorted(table.items(), key=lambda kc: (-sum(kc[1].values()), kc[0]))
        ]

    return {"by_kind": rows(kinds, "kind"), "by_ward": rows(wards, "ward"), "open": list(findings)}


def _findings_per_week(conn: Connection, edges: Sequence[float]) -> list[dict[str, int]]:
    return [
        {
            str(kind): int(n)
            for kind, n in conn.execute(
                "SELECT kind, COUNT(*) FROM findings WHERE ts >= ? AND ts < ? GROUP BY kind", (a, b)
            ).fetchall()
        }
        for a, b in itertools.pairwise(edges)
    ]


def _segmentation(conn: Connection, start: float, wards: Mapping[str, str]) -> dict[str, Any]:
    """policy_violation findings of the window, one row per (sensor, device, destination, port)."""
    rows = conn.execute(
        "SELECT sensor, severity, ts, src_ip, dst_ip, dst_port, proto, device, role, "
        "peer_role, summary FROM findings WHERE kind = ? AND ts >= ? ORDER BY ts",
        ("policy_violation", start),
    ).fetchall()
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for sensor, severity, ts, src, dst, port, proto, device, role, peer, summary in rows:
        entry = found.setdefault((sensor, device or src, dst, port, proto), {"count": 0, "first": _round(ts)})
        entry.update(
            {
                "sensor": sensor,
                "ward": wards.get(sensor, sensor),
                "src_ip": src,
                "device": device,
                "role": role,
                "dst_ip": dst,
                "dst_port": port,
                "proto": proto,
                "peer_role": peer,
                "severity": severity if severity in SEVERITIES else "info",
                "last": _round(ts),
                "summary": summary or "",
            }
        )
        entry["count"] += 1
    violations = sorted(found.values(), key=lambda v: (-v["count"], -(v["last"] or 0)))
    return {"total": len(rows), "pairs": len(violations), "violations": violations}


# ---- weekly trends -------------------------------------------------------------------------------


def _band_trend(conn: Connection, edges: Sequence[float]) -> dict[str, list[int]]:
    """Devices per risk band at the end of each week (module docstring)."""
    seen = {
        (s, m): last
        for s, m, last in conn.execute("SELECT sensor, mac, last_seen FROM devices", ()).fetchall()
    }
    history: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for sensor, mac, ts, score in conn.execute(
        "SELECT sensor, mac, ts, risk_score FROM device_history WHERE ts < ? ORDER BY sensor, mac, ts",
        (edges[-1] + 1,),
    ).fetchall():
        if isinstance(ts, int | float):
            history[(sensor, mac)].append((float(ts), float(score or 0)))
    counts = {name: [0] * (len(edges) - 1) for name, _ in BANDS}
    for device, changes in history.items():
        last_seen = seen.get(device)
        score, index = None, 0
        for week, (start, end) in enumerate(itertools.pairwise(edges)):
            while index < len(changes) and changes[index][0] < end:
                score, index = changes[index][1], index + 1
            if score is not None and (last_seen is None or last_seen >= start):
                counts[band(score)][week] += 1
    return counts


def _cleartext_trend(
    conn: Connection, edges: Sequence[float], devices: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Cleartext clinical flows per week, in total and per protocol (module docstring)."""
    extra: dict[tuple[str, int], str] = {}
    for d in devices:
        if any(r["id"] == "cleartext_clinical_protocol" for r in d["risks"]):
            for service in d["clinical_services"]:
                for ip in d["ips"]:
                    extra[(ip, service["port"])] = service["app"].upper()
    ports = sorted(set(CLEARTEXT_CLINICAL_PORTS) | {port for _, port in extra})[:_MAX_PORTS]
    marks = ", ".join("?" * len(ports))
    by_proto: dict[str, list[int]] = {"DICOM": [0] * (len(edges) - 1), "HL7": [0] * (len(edges) - 1)}
    for week, (a, b) in enumerate(itertools.pairwise(edges)):
        for ip, port, n in conn.execute(
            f"SELECT b_ip, b_port, COUNT(*) FROM flows WHERE last >= ? AND last < ? AND proto = ? "
            f"AND b_port IN ({marks}) GROUP BY b_ip, b_port",
            (a, b, "tcp", *ports),
        ).fetchall():
            proto = CLEARTEXT_CLINICAL_PORTS.get(port) or extra.get((ip, port))
            if proto in by_proto:
                by_proto[proto][week] += int(n)
    return {
        "total": [x + y for x, y in zip(by_proto["DICOM"], by_proto["HL7"], strict=True)],
        "by_protocol": by_proto,
        "ports": {str(p): name for p, name in CLEARTEXT_CLINICAL_PORTS.items()},
    }


# ---- small helpers -------------------------------------------------------------------------------


def _loads(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str | bytes) else text
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _clinical_services(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """TCP services the device offers that a hinter named HL7 or DICOM: cleartext was seen there."""
    services = record.get("services")
    offered = _list(services.get("offered")) if isinstance(services, dict) else []
    return [
        {"app": s["app"], "port": s["port"]}
        for s in offered
        if isinstance(s, dict)
        and s.get("app") in ("hl7", "dicom")
        and s.get("proto") == "tcp"
        and type(s.get("port")) is int
    ]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    return _round(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _round(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return round(float(value), 3)


def _label(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%d %b")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
