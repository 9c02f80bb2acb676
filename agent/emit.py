"""Record output: JSON Lines (key "type" first) and a short readable report."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, TextIO

from agent.records import Finding, FlowRecord, ProtoHint

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


_FLOW_LINE = (
    '{"type":"flow","first":%r,"last":%r,"proto":%s,"a_ip":"%s","a_port":%d,"b_ip":"%s","b_port":%d,'
    '"a_mac":%s,"b_mac":%s,"vlan":[%s],"a_pkts":%d,"b_pkts":%d,"a_bytes":%d,"b_bytes":%d,'
    '"a_flags":"%s","b_flags":"%s","end":"%s"}\n'
)


def flow_line(r: FlowRecord) -> str:
    """The JSON line of a flow record, formatted directly (4x faster than json; same JSON value).

    Every string field is plain ASCII without quotes or backslashes (addresses, MACs, flag letters,
    end reasons, protocol names), so no escaping is needed.
    """
    a_mac = "null" if r.a_mac is None else f'"{r.a_mac}"'
    b_mac = "null" if r.b_mac is None else f'"{r.b_mac}"'
    return _FLOW_LINE % (
        r.first, r.last, f'"{r.proto}"' if type(r.proto) is str else r.proto, r.a_ip, r.a_port, r.b_ip,
        r.b_port, a_mac, b_mac, ",".join(map(str, r.vlan)), r.a_pkts, r.b_pkts, r.a_bytes, r.b_bytes,
        r.a_flags, r.b_flags, r.end,
    )


class JsonLines:
    """Writes one JSON object per line."""

    def __init__(self, stream: TextIO) -> None:
        self._write = stream.write

    def flow(self, record: FlowRecord) -> None:
        self._write(flow_line(record))

    def hint(self, hint: ProtoHint) -> None:
        self._write(_dumps(hint.to_dict()) + "\n")

    def record(self, record: dict[str, Any]) -> None:
        self._write(_dumps(record) + "\n")


class FlowTally:
    """Keeps what the readable report needs, without holding every flow."""

    def __init__(self, top: int = 8) -> None:
        self._top = top
        self.largest: list[FlowRecord] = []
        self.services: Counter[str] = Counter()

    def flow(self, record: FlowRecord) -> None:
        self.services[f"{record.proto}/{record.b_port}"] += 1
        self.largest.append(record)
        if len(self.largest) > 4 * self._top:
            self._trim()

    def _trim(self) -> None:
        self.largest.sort(key=lambda r: r.a_bytes + r.b_bytes, reverse=True)
        del self.largest[self._top:]

    def report(self, summary: dict[str, Any], devices: list[dict[str, Any]] | None = None,
               findings: list[Finding] | None = None) -> str:
        self._trim()
        lines = [
            f"replayed {len(summary['captures'])} capture(s): {summary['frames']} frames in "
            f"{summary['seconds']} s",
            f"  flows: {summary['flows']} ({_pairs(summary['flows_by_end'])}), "
            f"peak {summary['peak_live_flows']} live",
            f"  frames in flows: {summary['in_flows']}; non-IP: {_pairs(summary['non_ip']) or 0}; "
            f"IP fragments: {summary['ip_fragments']}; skipped: {_pairs(summary['skipped']) or 0}; "
            f"unaccounted: {summary['unaccounted']}",
            "  busiest services: " + ", ".join(f"{s} x{n}" for s, n in self.services.most_common(6)),
            "  largest flows:",
        ]
        for r in self.largest:
            vlan = f" vlan {'.'.join(map(str, r.vlan))}" if r.vlan else ""
            lines.append(
                f"    {r.proto} {r.a_ip}:{r.a_port} -> {r.b_ip}:{r.b_port}{vlan}  "
                f"{r.a_pkts}/{r.b_pkts} pkts  {r.a_bytes + r.b_bytes} bytes  {r.last - r.first:.1f} s  "
                f"[{r.end}]"
            )
        lines.extend(_device_lines(devices or [], self._top))
        if findings is not None:
            lines.extend(_finding_lines(findings, self._top))
        for error in summary["capture_errors"]:
            lines.append(f"  capture error: {error}")
        return "\n".join(lines) + "\n"


def _device_lines(devices: list[dict[str, Any]], top: int) -> list[str]:
    """Devices by role, then the riskiest few with what they are and why they are at risk."""
    if not devices:
        return []
    roles = Counter(str(d["role"]) for d in devices)
    lines = [f"  devices: {len(devices)} ({', '.join(f'{r} {n}' for r, n in roles.most_common())})"]
    for d in sorted(devices, key=lambda d: (-d["risk_score"], d["mac"]))[:top]:
        ips = ", ".join(str(entry["ip"]) for entry in d["ips"][:2])
        label = " ".join(str(x) for x in (d["vendor"], d["hostname"]) if x)
        risks = "; ".join(str(r["id"]) for r in d["risks"]) or "no risk seen"
        lines.append(f"    {d['mac']} {ips} {label} [{d['role']} {d['role_confidence']:.2f}] "
                     f"risk {d['risk_score']}: {risks}")
    return lines


_SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


def _finding_lines(findings: list[Finding], top: int) -> list[str]:
    """Findings by kind, then the most severe few in one sentence each."""
    if not findings:
        return ["  findings: none"]
    kinds = Counter(f.kind for f in findings)
    lines = [f"  findings: {len(findings)} ({', '.join(f'{k} {n}' for k, n in kinds.most_common())})"]
    for f in sorted(findings, key=lambda f: (_SEVERITY_ORDER.get(f.severity, 5), f.ts))[:top]:
        lines.append(f"    [{f.severity}] {f.summary}")
    return lines


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
