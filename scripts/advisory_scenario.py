#!/usr/bin/env python3
"""Advisory matching and patch tracking on a scenario ward whose devices come from real CISA advisories.

    .venv/bin/python scripts/advisory_scenario.py [--advisories ../shared/advisories] [--db FILE] [--json]

Builds device records the way the sensor's inventory writes them (vendor from the MAC's real IEEE
registration, product and version in DHCP vendor classes, HTTP banners, host names), stores them through
the collector's Store as `devices` messages of sensor "ward7", imports the CSAF advisories and evaluates.
The ward: infusion pumps and monitors named in the advisories, some at affected versions, some already
at fixed ones, one known only by its maker, and unrelated devices (a switch, a desk PC, an industrial
I/O box whose maker's name looks like Contec Health's). A segmentation policy puts the Baxter pump in a
zone with no violation for the window (mitigated), and a policy_violation finding from the B. Braun
station keeps its pair open. Then the Connex Spot Monitor reports a fixed version in a new record, a
second evaluation moves its pairs to patched, and a person accepts the vendor-only pairs of the Philips
gateway. Times are pinned (T0 = 2026-01-01 UTC) so that runs are reproducible.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import policy as segmentation  # noqa: E402
from agent.central import tracking  # noqa: E402
from agent.central.advisories_cli import policy_zones  # noqa: E402
from agent.central.store import Store  # noqa: E402
from agent.messages import Header, Message  # noqa: E402

SENSOR: Final = "ward7"
T0: Final = 1_767_225_600.0
DAY: Final = 86400.0
ADVISORIES: Final = ROOT.parent / "shared" / "advisories"
POLICY: Final = """
[zones.infusion]
cidrs = ["10.7.2.40/29", "10.7.1.51/32"]
"""
# (mac, ip, vendor, hostname, software): MAC prefixes are the makers' real IEEE registrations.
DEVICES: Final = [
    ("9c:c8:ae:10:00:01", "10.7.1.11", "Becton, Dickinson  and Company", "alaris-pcu-11",
     {"dhcp_vendor_class": ["BD Alaris 8015 PC Unit"], "http_server": ["Alaris PC Unit 8015 v9.19"]}),
    ("9c:c8:ae:10:00:02", "10.7.1.12", "Becton, Dickinson  and Company", "alaris-pcu-12",
     {"dhcp_vendor_class": ["BD Alaris 8015 PC Unit"], "http_server": ["Alaris PC Unit 8015 v12.3.1"]}),
    ("00:1a:fa:10:00:01", "10.7.3.21", "Welch Allyn, Inc.", "csm-bay4",
     {"dhcp_vendor_class": ["Welch Allyn Connex Spot Monitor 1.40"]}),
    ("00:1a:fa:10:00:02", "10.7.3.22", "Welch Allyn, Inc.", "csm-bay5",
     {"dhcp_vendor_class": ["Welch Allyn Connex Spot Monitor 1.52.01"]}),
    ("00:09:5c:10:00:01", "10.7.3.31", "Philips Medical Systems - Cardiac and Monitoring Systems (CM",
     "mx40-bed12", {"http_server": ["IntelliVue MX40 B.06.12"]}),
    ("00:09:5c:10:00:02", "10.7.3.32", "Philips Medical Systems - Cardiac and Monitoring Systems (CM",
     "philips-gw", {"tls_ja4": ["t13d1516h2_8daaf6152771_02713d6af862"]}),
    ("58:46:e1:10:00:01", "10.7.2.41", "Baxter International Inc", "spectrum-07",
     {"http_server": ["Sigma Spectrum WBM v8.01.00"]}),
    ("00:12:21:10:00:01", "10.7.1.51", "B.Braun Melsungen AG", "spacestation-1",
     {"http_server": ["B. Braun SpaceCom version L80"]}),
    ("44:4b:5d:10:00:01", "10.7.3.61", "GE Healthcare", "b450-bed3",
     {"dhcp_vendor_class": ["GE CARESCAPE B450 v2.0.67"]}),
    ("00:10:5d:10:00:01", "10.7.3.71", "Draeger Medical", "delta-bed9",
     {"lldp_description": ["Draeger Infinity Delta XL VF9.2"]}),
    ("02:5c:f0:10:00:01", "10.7.3.81", "(locally administered)", "cms8000",
     {"dhcp_vendor_class": ["Contec Health CMS8000"]}),
    ("00:1a:01:10:00:01", "10.7.2.91", "Smiths Medical", "medfusion-3500",
     {"http_server": ["Medfusion 3500 v5.0"]}),
    ("00:80:4c:10:00:01", "10.7.9.5", "CONTEC CO., LTD.", "dio-box",
     {"http_server": ["CONTEC CPS-MC341 1.2.0"]}),
    ("00:1b:54:10:00:01", "10.7.0.1", "Cisco Systems, Inc", "ward7-sw1",
     {"cdp_platform": ["cisco WS-C2960X-48FPD-L"],
      "cdp_software": ["Cisco IOS Software, Version 15.2(7)E4"]}),
    ("d4:be:d9:10:00:01", "10.7.4.10", "Dell Inc.", "ws-nurse-1",
     {"http_user_agent": ["Mozilla/5.0 (Windows NT 10.0; Win64; x64)"], "smb_dialect": ["3.1.1"]}),
]


def record(mac: str, ip: str, vendor: str, hostname: str, software: dict[str, list[str]],
           seen: float) -> dict[str, Any]:
    """A device record shaped like agent.inventory's."""
    first = T0 - 30 * DAY
    return {"type": "device", "mac": mac, "ips": [{"ip": ip, "first_seen": first, "last_seen": seen}],
            "vendor": vendor, "hostname": hostname, "role": "unknown", "role_confidence": 0.0,
            "role_evidence": [], "services": {"offered": [], "used": []}, "clinical": {},
            "software": software, "risks": [], "risk_score": 0, "first_seen": first, "last_seen": seen}


def run(db_path: str | Path, advisories: Path = ADVISORIES) -> dict[str, Any]:
    """The whole scenario (db_path: a SQLite file or a postgresql:// URL); the pairs after each step."""
    store = Store(db_path)
    store.register(SENSOR, "ward7", "scenario")
    seq = 0

    def send(kind: str, body: Any, at: float) -> None:
        nonlocal seq
        seq += 1
        store.add(Message(Header(SENSOR, 1, seq, kind), at, body), 512, at)

    try:
        send("devices", {"mode": "snapshot", "devices": [record(*d, seen=T0) for d in DEVICES]}, T0)
        send("findings", [{"type": "finding", "kind": "policy_violation", "severity": "high", "ts": T0 - DAY,
                           "src_ip": "10.7.1.51", "src_port": 50000, "dst_ip": "10.7.4.10", "dst_port": 445,
                           "proto": "tcp", "device": "00:12:21:10:00:01", "role": "infusion_pump",
                           "peer_role": "workstation", "summary": "SpaceStation reached a desk PC on SMB",
                           "evidence": {}, "key": "policy_violation:00:12:21:10:00:01:10.7.4.10:tcp/445"}],
             T0)
        imported = tracking.import_path(store.db, advisories, now=T0)
        with tempfile.TemporaryDirectory() as folder:
            policy_file = Path(folder) / "policy.toml"
            policy_file.write_text(POLICY, encoding="utf-8")
            zone_of = policy_zones(segmentation.load(policy_file))
        first = tracking.evaluate(store.db, T0 + 60, zone_of=zone_of)
        before = tracking.pairs(store.db)
        csm = next(d for d in DEVICES if d[3] == "csm-bay4")
        fixed = {"dhcp_vendor_class": ["Welch Allyn Connex Spot Monitor 1.52.01"]}
        patched = record(*csm[:4], fixed, T0 + DAY)
        send("devices", {"mode": "delta", "devices": [patched]}, T0 + DAY)
        second = tracking.evaluate(store.db, T0 + DAY + 60, zone_of=zone_of, since=T0 + DAY)
        reason = "gateway only relays HL7; replacement budgeted for 2026"
        accepted = sum(tracking.accept(store.db, "00:09:5c:10:00:02", p["advisory"], reason, "ward7 biomed",
                                       now=T0 + 2 * DAY)
                       for p in tracking.pairs(store.db, mac="00:09:5c:10:00:02", with_history=False))
        return {"advisories": len(imported), "products": sum(len(a.products) for a in imported),
                "vulnerabilities": sum(len(a.vulnerabilities) for a in imported), "first": first,
                "before": before, "second": second, "accepted": accepted, "after": tracking.pairs(store.db)}
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--advisories", type=Path, default=ADVISORIES, help="folder of CSAF JSON files")
    parser.add_argument("--db", type=Path, help="SQLite file to write (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if not args.advisories.is_dir():
        print(f"advisory_scenario: no folder {args.advisories}", file=sys.stderr)
        return 66
    with tempfile.TemporaryDirectory() as folder:
        result = run(args.db or Path(folder) / "scenario.db", args.advisories)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    names = {d[0]: d[3] for d in DEVICES}
    print(f"imported {result['advisories']} advisories, {result['products']} products, "
          f"{result['vulnerabilities']} vulnerabilities; {len(DEVICES)} devices")
    for title, counts, rows in (("first evaluation", result["first"], result["before"]),
                                ("after csm-bay4 reported 1.52.01 and the gateway's pairs were accepted",
                                 result["second"], result["after"])):
        print(f"\n{title}: {json.dumps(counts)}")
        for p in sorted(rows, key=lambda r: (names[r["mac"]], r["advisory"])):
            print(f"  {names[p['mac']]:15} {p['advisory']:16} {p['confidence']:6} {p['status']:9} "
                  f"{p['version'] or '-':9} {p['evidence'][-1][:70]}")
    print("\nhistory of csm-bay4:")
    for p in (p for p in result["after"] if names[p["mac"]] == "csm-bay4"):
        for step in p["history"]:
            print(f"  {p['advisory']:16} n={step['n']} ts={step['ts']:.0f} {step['previous'] or '-':>9} -> "
                  f"{step['status']:9} {step['evidence'][-1][:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
