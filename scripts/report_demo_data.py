#!/usr/bin/env python3
"""Twelve weeks of synthetic but plausible ward data, stored through the collector's real Store API.

    .venv/bin/python scripts/report_demo_data.py --db /tmp/demo.db [--now EPOCH] [--weeks 12] [--hostile]
                                                 [--html report.html]

Four wards (ICU, radiology, ward 3B, emergency), one sensor each, ~60 devices whose records (role,
services, clinical use, software) go through agent.risks for their risks and scores, one device
snapshot per sensor per day, the day's flows, and findings. The story the trends should show:
week 4 a pump firmware update removes telnet and cleartext logins on ICU and 3B pumps; week 5 an
unknown device appears in the emergency ward, scans and brute-forces, and leaves in week 7; week 6 a
segmentation policy cuts policy violations; week 7 SMBv1 is switched off on clinical workstations;
week 8 radiology moves DICOM to TLS (port 2762); week 9 ICU monitors send HL7 over TLS; week 10 the
emergency ward's pumps are updated. `advisory_pairs()` gives device-advisory pairs in the shape
agent.central.report_advisories expects (real ICSMA ids), until advisory tracking stores its own.
--hostile adds a device whose host name and vendor are HTML/script injection attempts.
Deterministic for a given --now and --seed.
"""

from __future__ import annotations

import argparse
import random
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.central.store import Store
from agent.messages import Header, Message
from agent.records import Finding, FlowRecord
from agent.risks import assess, score

DAY, WEEK = 86400.0, 7 * 86400.0
WARDS = (("icu", "icu-s1"), ("radiology", "rad-s1"), ("ward-3b", "w3b-s1"), ("emergency", "ed-s1"))
HL7_ENGINE, EHR, PACS_IP = "10.1.0.20", "10.1.0.30", "10.11.0.10"
HOSTILE = "<script>document.title='PWNED'</script><img src=x onerror=alert(1)>"

# role, name, vendor, count per ward (icu, radiology, 3b, emergency), features, changes {week: (remove, add)}
_CATALOG: list[
    tuple[str, str, str, tuple[int, int, int, int], set[str], dict[int, tuple[set[str], set[str]]]]
] = [
    ("patient_monitor", "mon", "Philips Medical Systems", (6, 0, 4, 5), {"hl7_client"}, {}),
    (
        "infusion_pump",
        "pump",
        "Baxter Healthcare",
        (4, 0, 8, 3),
        {"telnet", "login", "snmp", "weak_tls"},
        {4: ({"telnet", "login"}, set())},
    ),
    (
        "clinical_workstation",
        "ws",
        "Dell Inc.",
        (2, 0, 3, 4),
        {"smb1_offered", "hl7_client"},
        {7: ({"smb1_offered"}, set())},
    ),
    ("clinical_workstation", "vdi", "IGEL Technology", (2, 1, 2, 2), set(), {}),
    ("printer", "prn", "HP Inc.", (1, 1, 1, 1), {"ftp", "telnet", "snmp"}, {}),
    ("network_infrastructure", "sw", "Cisco Systems", (1, 1, 1, 1), {"snmp"}, {}),
    (
        "imaging_modality",
        "ct",
        "Siemens Healthineers",
        (0, 2, 0, 0),
        {"dicom_scu", "smb1", "ftp", "telnet"},
        {8: ({"dicom_scu"}, {"dicom_tls"}), 9: ({"telnet"}, set())},
    ),
    (
        "pacs",
        "pacs",
        "Philips Medical Systems",
        (0, 1, 0, 0),
        {"dicom_scp", "weak_tls"},
        {8: ({"dicom_scp"}, {"dicom_tls"})},
    ),
    (
        "dicom_workstation",
        "rws",
        "Dell Inc.",
        (0, 3, 0, 0),
        {"dicom_scu", "smb1_offered"},
        {8: ({"dicom_scu"}, {"dicom_tls"})},
    ),
    ("iot_other", "cam", "Axis Communications", (0, 0, 1, 1), {"http_login", "telnet", "snmp"}, {}),
]


@dataclass
class _Device:
    sensor: str
    ward: int
    mac: str
    ip: str
    role: str
    hostname: str
    vendor: str
    features: set[str]
    changes: dict[int, tuple[set[str], set[str]]] = field(default_factory=dict)
    weeks: range = range(0, 1000)

    def at(self, week: int) -> set[str]:
        features = set(self.features)
        for when, (remove, add) in sorted(self.changes.items()):
            if when <= week:
                features = (features - remove) | add
        return features


def devices(hostile: bool = False) -> list[_Device]:
    """The demo inventory (emergency pumps get their firmware update in week 10)."""
    found = []
    for ward, (site, sensor) in enumerate(WARDS):
        index = 10
        for role, name, vendor, counts, features, changes in _CATALOG:
            for n in range(counts[ward]):
                change = dict(changes)
                if role == "infusion_pump" and site == "emergency":
                    change = {10: ({"telnet", "login", "weak_tls"}, set())}
                if role == "patient_monitor" and site == "icu":
                    change = {9: ({"hl7_client"}, {"hl7_tls"})}
                found.append(
                    _Device(
                        sensor,
                        ward,
                        f"02:5a:{ward:02x}:00:00:{index:02x}",
                        f"10.{10 + ward}.0.{index}",
                        role,
                        f"{site[:3]}-{name}-{n + 1:02d}",
                        vendor,
                        set(features),
                        change,
                    )
                )
                index += 1
    intruder = _Device(
        "ed-s1",
        3,
        "02:5a:03:00:00:ee",
        "10.13.0.238",
        "unknown",
        "DESKTOP-7QK2L9",
        "",
        {"telnet", "ftp", "login"},
        weeks=range(5, 7),
    )
    cms = _Device(
        "ed-s1",
        3,
        "02:5a:03:00:00:c8",
        "10.13.0.200",
        "patient_monitor",
        "ed-cms8000-01",
        "Contec Medical Systems",
        {"hl7_client", "telnet", "weak_tls", "login"},
        weeks=range(5, 1000),
    )
    found += [intruder, cms]
    if hostile:
        found.append(
            _Device(
                "w3b-s1",
                2,
                "02:5a:02:00:00:66",
                "10.12.0.102",
                "unknown",
                HOSTILE,
                '"><b>vendor</b>',
                {"telnet", "login", "ftp", "weak_tls"},
            )
        )
    return found


def record(device: _Device, week: int, first: float, last: float) -> dict[str, Any]:
    """The device record as agent.inventory would send it, risks and score by agent.risks."""
    f = device.at(week)
    offered: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    clinical: dict[str, Any] = {}
    software: dict[str, list[str]] = {}
    logins = []
    if "hl7_client" in f:
        used.append({"proto": "tcp", "port": 2575, "app": "hl7"})
        clinical["hl7"] = {"sent": ["ADT^A01" if device.role == "clinical_workstation" else "ORU^R01"]}
    if "dicom_scu" in f:
        used.append({"proto": "tcp", "port": 104, "app": "dicom"})
        clinical["dicom"] = {
            "services_used": [
                "CT Image Storage"
                if device.role == "imaging_modality"
                else "Study Root Query/Retrieve - FIND"
            ]
        }
    if "dicom_scp" in f:
        offered.append({"proto": "tcp", "port": 104, "app": "dicom"})
        clinical["dicom"] = {"services_provided": ["CT Image Storage", "Study Root Query/Retrieve - FIND"]}
    if "hl7_tls" in f:
        used.append({"proto": "tcp", "port": 6662, "app": "tls"})
    if "dicom_tls" in f:
        (offered if device.role == "pacs" else used).append({"proto": "tcp", "port": 2762, "app": "tls"})
    for feature, port, app in (("telnet", 23, "telnet"), ("ftp", 21, "ftp")):
        if feature in f:
            offered.append({"proto": "tcp", "port": port, "app": app})
    if "login" in f:
        logins.append({"protocol": "telnet", "as": "server", "success": 3, "failure": 1, "unknown": 0})
    if "http_login" in f:
        logins.append({"protocol": "http_basic", "as": "server", "success": 5, "failure": 0, "unknown": 0})
    for feature, key, value in (
        ("smb1", "smb1", "negotiated"),
        ("smb1_offered", "smb1", "offered"),
        ("weak_tls", "tls_negotiated", "TLS1.0"),
        ("snmp", "snmp_versions", "v2c"),
    ):
        if feature in f:
            software[key] = [value]
    services: dict[str, Any] = {"offered": offered, "used": used}
    if logins:
        services["cleartext_logins"] = logins
    rec: dict[str, Any] = {
        "type": "device",
        "mac": device.mac,
        "ips": [{"ip": device.ip, "first_seen": first, "last_seen": last}],
        "vendor": device.vendor or None,
        "hostname": device.hostname,
        "role": device.role,
        "role_confidence": 0.0 if device.role == "unknown" else 0.9,
        "role_evidence": [],
        "services": services,
        "clinical": clinical,
        "software": software,
        "first_seen": first,
        "last_seen": last,
    }
    rec["risks"] = assess(rec)
    rec["risk_score"] = score(rec["risks"])
    return rec


def fill(path: str | Path, now: float, weeks: int = 12, seed: int = 1, hostile: bool = False) -> Store:
    """Create the store at `path` and fill it; returns the open Store."""
    rng = random.Random(seed)
    store = Store(path)
    for site, sensor in WARDS:
        store.register(sensor, site, "demo:" + sensor)
    start = now - weeks * WEEK
    seqs = {sensor: 0 for _, sensor in WARDS}
    inventory = devices(hostile)

    def send(sensor: str, kind: str, created: float, body: Any) -> None:
        seqs[sensor] += 1
        store.add(Message(Header(sensor, 1, seqs[sensor], kind), created, body), 512, created + 2)

    for day in range(weeks * 7):
        t0 = start + day * DAY
        week = day // 7
        for site, sensor in WARDS:
            here = [d for d in inventory if d.sensor == sensor and week in d.weeks]
            flows = [flow for d in here for flow in _flows(rng, d, week, t0)]
            flows.sort(key=lambda r: r.last)
            send(sensor, "flows", t0 + DAY - 60, flows)
            send(
                sensor,
                "devices",
                t0 + DAY - 30,
                {
                    "mode": "snapshot",
                    "devices": [
                        record(
                            d,
                            week,
                            start if d.weeks.start == 0 else start + d.weeks.start * WEEK,
                            t0 + DAY - 40,
                        )
                        for d in here
                    ],
                },
            )
            findings = _findings(rng, site, here, week, day, t0, weeks)
            if findings:
                send(sensor, "findings", t0 + DAY - 20, [f.to_dict() for f in findings])
    for _, sensor in WARDS:
        send(sensor, "status", start + weeks * WEEK - 10, {"online": sensor != "rad-s1", "boot": 1})
    return store


def _flows(rng: random.Random, d: _Device, week: int, t0: float) -> list[FlowRecord]:
    f = d.at(week)
    targets: list[tuple[str, int, int]] = [(EHR, 443, 2)]
    if "hl7_client" in f:
        targets.append((HL7_ENGINE, 2575, 6))
    if "dicom_scu" in f:
        targets.append((PACS_IP, 104, 5 if d.role == "imaging_modality" else 3))
    if "hl7_tls" in f:
        targets.append((HL7_ENGINE, 6662, 6))
    if "dicom_tls" in f and d.role != "pacs":
        targets.append((PACS_IP, 2762, 5 if d.role == "imaging_modality" else 3))
    out = []
    for ip, port, n in targets:
        for _ in range(rng.randint(max(1, n - 2), n + 2)):
            first = t0 + rng.uniform(0, DAY - 600)
            out.append(
                FlowRecord(
                    first,
                    first + rng.uniform(0.2, 30),
                    "tcp",
                    d.ip,
                    rng.randint(49152, 65535),
                    ip,
                    port,
                    d.mac,
                    "02:5a:ff:00:00:01",
                    (),
                    12,
                    10,
                    4200,
                    3100,
                    "SPA",
                    "SPA",
                    "fin",
                )
            )
    return out


_VIOLATIONS = (
    ("clinical_workstation", "infusion_pump", 23, "high", "a clinical workstation opened telnet to a pump"),
    ("iot_other", "", 443, "medium", "an IoT device reached an Internet address the policy forbids"),
    ("infusion_pump", "", 80, "high", "an infusion pump reached the guest network"),
    ("printer", "patient_monitor", 161, "medium", "a printer polled a patient monitor over SNMP"),
    ("imaging_modality", "clinical_workstation", 445, "high", "a CT scanner opened SMB to an office desktop"),
    ("dicom_workstation", "", 443, "medium", "a reading workstation reached a forbidden Internet address"),
)


def _findings(
    rng: random.Random, site: str, here: list[_Device], week: int, day: int, t0: float, weeks: int
) -> list[Finding]:
    out = []
    rate = 2.2 if week < 6 else 0.35
    for _ in range(_poisson(rng, rate)):
        roles = {d.role for d in here}
        role, peer, port, severity, what = rng.choice(
            [v for v in _VIOLATIONS if v[0] in roles and (not v[1] or v[1] in roles)]
        )
        src = rng.choice([d for d in here if d.role == role])
        dst = rng.choice([d for d in here if d.role == peer]) if peer else None
        dst_ip = dst.ip if dst else f"203.0.113.{rng.randint(1, 254)}"
        out.append(
            _finding(
                "policy_violation",
                severity,
                t0,
                src,
                dst_ip,
                port,
                f"Policy: {what} ({src.ip} -> {dst_ip}:{port}).",
                {"zone": site},
                peer=dst.role if dst else None,
            )
        )
    for d in here:
        f = d.at(week)
        if "login" in f and rng.random() < 0.15:
            out.append(
                _finding(
                    "cleartext_credentials",
                    "high",
                    t0,
                    d,
                    d.ip,
                    23,
                    f"Telnet login to {d.hostname} in cleartext succeeded.",
                    {"protocol": "telnet"},
                )
            )
        if "http_login" in f and rng.random() < 0.2:
            out.append(
                _finding(
                    "cleartext_credentials",
                    "medium",
                    t0,
                    d,
                    d.ip,
                    80,
                    f"HTTP basic login to {d.hostname} in cleartext.",
                    {"protocol": "http_basic"},
                )
            )
        if d.weeks.start == week and d.weeks.start > 0 and day % 7 == 0:
            out.append(
                _finding("new_device", "medium", t0, d, None, None, f"New device {d.ip} ({d.hostname}).", {})
            )
        if d.hostname == "DESKTOP-7QK2L9" and day % 7 in (1, 3):
            out.append(
                _finding(
                    "port_scan",
                    "high",
                    t0,
                    d,
                    "10.13.0.0",
                    None,
                    f"{d.ip} probed 412 ports on 9 hosts in 60 s.",
                    {"ports": 412},
                )
            )
            out.append(
                _finding(
                    "brute_force",
                    "critical",
                    t0,
                    d,
                    "10.13.0.12",
                    23,
                    f"{d.ip} failed 58 telnet logins to a pump.",
                    {"failures": 58},
                )
            )
    if site == "emergency" and rng.random() < 0.25:
        cam = next(d for d in here if d.role == "iot_other")
        out.append(
            _finding(
                "external_communication",
                "medium",
                t0,
                cam,
                "198.51.100.44",
                8443,
                "Camera sent 180 MB to an Internet host it never used before.",
                {"bytes": 180 << 20},
            )
        )
    if site == "ward-3b" and rng.random() < 0.12:
        out.append(
            _finding(
                "new_service",
                "low",
                t0,
                rng.choice(here),
                None,
                8080,
                "A device started offering tcp/8080.",
                {},
            )
        )
    if site == "radiology" and week == 7 and day % 7 == 2:
        out.append(
            _finding(
                "capture_loss", "medium", t0, None, None, None, "The sensor dropped 3.1% of packets.", {}
            )
        )
    if site == "icu" and week >= weeks - 1:
        out.append(_finding("clock_unsynced", "low", t0, None, None, None, "Sensor clock is 4.2 s off.", {}))
    if site == "emergency" and week == 5 and day % 7 == 4:
        out.append(
            _finding(
                "arp_spoofing",
                "critical",
                t0,
                here[-1],
                "10.13.0.1",
                None,
                "10.13.0.1 (the router) answered from a second MAC.",
                {},
            )
        )
    return out


def _finding(
    kind: str,
    severity: str,
    t0: float,
    d: _Device | None,
    dst: str | None,
    port: int | None,
    summary: str,
    evidence: dict[str, Any],
    peer: str | None = None,
) -> Finding:
    ts = t0 + 3600 * (8 + zlib.crc32(summary.encode()) % 10)
    return Finding(
        kind,
        severity,
        ts,
        d.ip if d else None,
        None,
        dst,
        port,
        "tcp" if port else None,
        d.mac if d else None,
        d.role if d else None,
        peer,
        summary,
        evidence,
        f"{kind}:{d.mac if d else ''}:{dst}:{port}",
    )


def _poisson(rng: random.Random, rate: float) -> int:
    count, threshold, product = 0, 2.718281828459045**-rate, rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


# device-advisory pairs: (sensor, hostname prefix, advisory, title, cvss, confidence, transitions by week)
_PAIRS = (
    (
        "icu-s1",
        "icu-pump",
        "ICSMA-20-170-04",
        "Baxter Sigma Spectrum Infusion Pumps (Update B)",
        8.6,
        "high",
        (("open", 0), ("mitigated", 6)),
    ),
    (
        "w3b-s1",
        "war-pump",
        "ICSMA-20-170-04",
        "Baxter Sigma Spectrum Infusion Pumps (Update B)",
        8.6,
        "high",
        (("open", 0), ("patched", 4)),
    ),
    (
        "ed-s1",
        "eme-pump",
        "ICSMA-20-170-04",
        "Baxter Sigma Spectrum Infusion Pumps (Update B)",
        8.6,
        "high",
        (("open", 0), ("patched", 10)),
    ),
    (
        "icu-s1",
        "icu-mon",
        "ICSMA-18-156-01",
        "Philips' IntelliVue Patient and Avalon Fetal Monitors",
        8.3,
        "medium",
        (("open", 0), ("mitigated", 6)),
    ),
    (
        "ed-s1",
        "eme-mon",
        "ICSMA-18-156-01",
        "Philips' IntelliVue Patient and Avalon Fetal Monitors",
        8.3,
        "medium",
        (("open", 1),),
    ),
    (
        "rad-s1",
        "rad-ct",
        "ICSMA-20-343-01",
        "GE Healthcare Imaging and Ultrasound Products",
        9.8,
        "low",
        (("open", 0), ("accepted", 3)),
    ),
    (
        "rad-s1",
        "rad-pacs",
        "ICSMA-21-187-01",
        "Philips Vue PACS (Update B)",
        9.8,
        "medium",
        (("open", 2), ("patched", 9)),
    ),
    (
        "ed-s1",
        "ed-cms8000",
        "ICSMA-25-030-01",
        "Contec Health CMS8000 Patient Monitor (Update A)",
        9.8,
        "high",
        (("open", 5),),
    ),
)


def advisory_pairs(now: float, weeks: int = 12) -> list[dict[str, Any]]:
    """Device-advisory pairs for the demo inventory, in report_advisories' documented shape."""
    start = now - weeks * WEEK
    out = []
    for sensor, prefix, advisory, title, cvss, confidence, steps in _PAIRS:
        for i, d in enumerate(x for x in devices() if x.sensor == sensor and x.hostname.startswith(prefix)):
            history = [{"status": s, "ts": start + w * WEEK + DAY * (1 + i % 5)} for s, w in steps]
            out.append(
                {
                    "sensor": sensor,
                    "mac": d.mac,
                    "advisory": advisory,
                    "title": title,
                    "cvss": cvss,
                    "confidence": confidence,
                    "status": history[-1]["status"],
                    "opened": history[0]["ts"],
                    "status_ts": history[-1]["ts"],
                    "history": history,
                    "reason": "vendor-managed, isolated imaging VLAN"
                    if history[-1]["status"] == "accepted"
                    else "",
                }
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--now", type=float, default=1_767_225_600.0, help="end of the data, epoch s")
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hostile", action="store_true", help="add a device with an injection host name")
    parser.add_argument("--html", type=Path, help="also render the report (with the demo advisory pairs)")
    args = parser.parse_args()
    store = fill(args.db, args.now, args.weeks, args.seed, args.hostile)
    counts = {t: store.count(t) for t in ("flows", "devices", "device_history", "findings")}
    store.close()
    print(f"{args.db}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    if args.html:
        import sqlite3

        from agent.central.report import report_data
        from agent.central.report_html import render_html

        conn = sqlite3.connect(args.db)
        pairs = advisory_pairs(args.now, args.weeks)
        args.html.write_text(
            render_html(report_data(conn, args.now, args.weeks, pairs=lambda _c: pairs)), encoding="utf-8"
        )
        conn.close()
        print(f"report: {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
