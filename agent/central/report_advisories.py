"""The advisory part of the risk report: device-advisory pairs, their status, and time to mitigate.

The pairs come from advisory tracking: `agent.central.tracking.pairs(conn)` (its advisory_pairs and
advisory_history tables). When that module or its tables are missing, or the read fails, the section
is empty and says why (`available` False, `error`); the report never fails because of it. Fields used:

    sensor, mac        the device (the devices table's key)
    advisory           advisory id, e.g. "ICSMA-18-233-01"; title, cvss, confidence, reason: optional
    status             "open" | "mitigated" | "patched" | "accepted"; other statuses (not_affected: the
                       advisory no longer matches the device) leave the pair out of the report
    opened, status_ts  epoch seconds: the first match, the latest status change
    history            optional list of {"status", "ts"} transitions, oldest first; without it the
                       transitions are open at `opened`, then `status` at `status_ts`

Time to mitigate: from `opened` to the first transition to mitigated or patched, in days; the weekly
trend is the median over the pairs resolved in that week. Open pairs per week: pairs whose state at
the end of the week was open.
"""

from __future__ import annotations

import importlib
import itertools
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

STATUSES: Final = ("open", "mitigated", "patched", "accepted")
RESOLVED: Final = frozenset({"mitigated", "patched"})


class Cursor(Protocol):
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the report needs of a DB-API connection with qmark placeholders (sqlite3, or a wrapper)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


PairsReader = Callable[[Connection], Sequence[Mapping[str, Any]]]


def gather(
    conn: Connection,
    devices: Sequence[Mapping[str, Any]],
    edges: Sequence[float],
    reader: PairsReader | None = None,
) -> dict[str, Any]:
    """The advisories section and its weekly series (under "trends", which the caller moves)."""
    weeks = len(edges) - 1
    raw, error = _read(conn, reader)
    known = {(d["sensor"], d["mac"]): d for d in devices}
    pairs = [p for p in (_pair(row, known) for row in raw) if p is not None]
    pairs.sort(key=lambda p: (STATUSES.index(p["status"]), -(p["cvss"] or 0), p["advisory"], p["mac"]))
    days = [p["days_to_mitigate"] for p in pairs if p["days_to_mitigate"] is not None]
    weekly: list[list[float]] = [[] for _ in range(weeks)]
    open_per_week = [0] * weeks
    for p in pairs:
        for week, end in enumerate(edges[1:]):
            if _state_at(p["history"], end) == "open":
                open_per_week[week] += 1
        if p["resolved"] is not None and p["days_to_mitigate"] is not None:
            resolved_in = _week_of(p["resolved"], edges)
            if resolved_in is not None:
                weekly[resolved_in].append(p["days_to_mitigate"])
    return {
        "available": error is None,
        "error": error,
        "pairs": pairs,
        "by_status": {s: sum(1 for p in pairs if p["status"] == s) for s in STATUSES},
        "devices": _per_device(pairs),
        "by_advisory": _per_advisory(pairs),
        "time_to_mitigate": {
            "resolved": len(days),
            "median_days": _median(days),
            "max_days": round(max(days), 1) if days else None,
        },
        "trends": {
            "open_advisory_pairs": open_per_week,
            "mitigation_days": [_median(w) for w in weekly],
            "mitigated": [len(w) for w in weekly],
        },
    }


def _read(conn: Connection, reader: PairsReader | None) -> tuple[Sequence[Mapping[str, Any]], str | None]:
    if reader is None:
        try:
            module = importlib.import_module("agent.central.tracking")
        except ImportError as exc:
            return [], f"advisory tracking is not installed ({exc})"
        found = getattr(module, "pairs", None)
        if not callable(found):
            return [], "agent.central.tracking has no pairs(conn)"
        reader = found
    try:
        rows = reader(conn)
        return [row for row in rows if isinstance(row, Mapping)], None
    except Exception as exc:  # tables absent or another store: the report goes on without the section
        rollback = getattr(conn, "rollback", None)
        if callable(rollback):
            rollback()  # PostgreSQL aborts the transaction on a failed query
        if re.search(r'no such table: advisory_pairs$|relation "advisory_pairs" does not exist', str(exc)):
            return [], "no advisory imported yet: ward-agent central advisories import FILE_OR_DIR"
        return [], f"advisory tracking could not be read: {type(exc).__name__}: {exc}"


def _pair(
    row: Mapping[str, Any], known: Mapping[tuple[Any, Any], Mapping[str, Any]]
) -> dict[str, Any] | None:
    status = row.get("status")
    sensor, mac, advisory = row.get("sensor"), row.get("mac"), row.get("advisory")
    if status not in STATUSES or not isinstance(mac, str) or advisory is None:
        return None
    opened, changed = _ts(row.get("opened")), _ts(row.get("status_ts"))
    history = _history(row.get("history"), status, opened, changed)
    resolved = next((ts for state, ts in history if state in RESOLVED), None)
    start = opened if opened is not None else (history[0][1] if history else None)
    device = known.get((sensor, mac), {})
    cvss = row.get("cvss")
    return {
        "sensor": sensor,
        "mac": mac,
        "ward": device.get("ward", sensor),
        "hostname": device.get("hostname"),
        "role": device.get("role"),
        "vendor": device.get("vendor"),
        "advisory": str(advisory),
        "title": str(row.get("title") or ""),
        "cvss": float(cvss) if isinstance(cvss, int | float) and not isinstance(cvss, bool) else None,
        "confidence": row.get("confidence") if isinstance(row.get("confidence"), str | int | float) else None,
        "status": status,
        "opened": start,
        "status_ts": changed if changed is not None else history[-1][1],
        "resolved": resolved,
        "reason": str(row.get("reason") or ""),
        "days_to_mitigate": round((resolved - start) / 86400, 2)
        if resolved is not None and start is not None
        else None,
        "history": [[state, ts] for state, ts in history],
    }


def _history(value: Any, status: str, opened: float | None, changed: float | None) -> list[tuple[str, float]]:
    if isinstance(value, list) and value:
        steps = [
            (str(e.get("status")), ts)
            for e in value
            if isinstance(e, Mapping)
            and isinstance(e.get("status"), str)
            and (ts := _ts(e.get("ts"))) is not None
        ]
        if steps:
            return sorted(steps, key=lambda step: step[1])
    steps = [] if opened is None else [("open", opened)]
    if status != "open" or not steps:
        moment = changed if changed is not None else opened
        if moment is not None:
            steps.append((status, moment))
    return steps


def _state_at(history: Sequence[Sequence[Any]], ts: float) -> str | None:
    state = None
    for step_state, step_ts in history:
        if step_ts >= ts:
            break
        state = step_state
    return state


def _per_advisory(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per advisory: devices per status and the median days to mitigate, most open first."""
    found: dict[str, list[Mapping[str, Any]]] = {}
    for p in pairs:
        found.setdefault(p["advisory"], []).append(p)
    rows = []
    for advisory, group in found.items():
        days = [p["days_to_mitigate"] for p in group if p["days_to_mitigate"] is not None]
        status = {s: sum(1 for p in group if p["status"] == s) for s in STATUSES}
        rows.append({"advisory": advisory, "title": group[0]["title"], "cvss": group[0]["cvss"],
                     "devices": len(group), "status": status, "median_days_to_mitigate": _median(days)})
    return sorted(rows, key=lambda r: (-r["status"]["open"], -(r["cvss"] or 0), r["advisory"]))


def _per_device(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    devices: dict[tuple[Any, Any], dict[str, Any]] = {}
    for p in pairs:
        entry = devices.setdefault(
            (p["sensor"], p["mac"]),
            {
                "sensor": p["sensor"],
                "mac": p["mac"],
                "ward": p["ward"],
                "hostname": p["hostname"],
                "role": p["role"],
                "vendor": p["vendor"],
                "status": Counter[str](),
                "advisories": [],
            },
        )
        entry["status"][p["status"]] += 1
        entry["advisories"].append(
            {
                k: p[k]
                for k in (
                    "advisory",
                    "title",
                    "cvss",
                    "confidence",
                    "status",
                    "opened",
                    "status_ts",
                    "reason",
                )
            }
        )
    rows = [{**d, "status": {s: d["status"].get(s, 0) for s in STATUSES}} for d in devices.values()]
    return sorted(
        rows, key=lambda d: (-d["status"]["open"], -len(d["advisories"]), str(d["hostname"] or ""), d["mac"])
    )


def _ts(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _week_of(ts: float, edges: Sequence[float]) -> int | None:
    return next((i for i, (a, b) in enumerate(itertools.pairwise(edges)) if a <= ts < b), None)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None
