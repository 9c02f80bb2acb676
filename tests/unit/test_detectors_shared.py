"""The heuristic detectors on the labelled public captures, through the real pipeline and the engine.

Records reach the engine in the order the pipeline gives them (a flow when it ends, a hint when it
is read), with a tick whenever packet time enters a new second and `finish()` at the end, as the
sensor does. Ground truth is ../shared/pcaps/README.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from conftest import SHARED_PCAPS

from agent.config import AgentConfig
from agent.detectors.base import Device
from agent.detectors.engine import DetectorEngine, build_detectors
from agent.flowhead import HintSettings
from agent.pipeline import replay
from agent.records import Counters, Finding, FlowRecord, ProtoHint

pytestmark = pytest.mark.shared

HEURISTIC_KINDS = frozenset({"port_scan", "host_sweep", "brute_force", "cleartext_credentials",
                             "arp_spoofing", "dns_tunneling", "lateral_movement"})
# The DVWA login POST follows a 7-segment image response on the same keep-alive connection: the
# default flow head (4 payload packets per direction) ends at the server's 5th segment, before the
# POST, so at the default no login hint exists for this capture. 8 packets reach it.
LONGER_HEAD = AgentConfig(hints=HintSettings(packets=8))


class Ward:
    """An empty inventory: no device is known, so findings carry addresses only."""

    def device(self, key: str) -> Device | None:
        return None

    def device_of_ip(self, ip: str) -> Device | None:
        return None


@cache
def findings(name: str, longer_head: bool = False) -> tuple[Finding, ...]:
    """Every finding the engine lets through for one shared capture."""
    path = SHARED_PCAPS / f"{name}.pcap"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    detectors, problems = build_detectors({}, Ward())
    assert problems == []
    engine = DetectorEngine(detectors, Counters())
    found: list[Finding] = []
    second = [float("-inf")]

    def at(t: float) -> None:
        if t >= second[0] + 1:
            second[0] = float(int(t))
            found.extend(engine.tick(t))

    def on_flow(flow: FlowRecord) -> None:
        at(flow.last)
        found.extend(engine.on_flow(flow))

    def on_hint(hint: ProtoHint) -> None:
        at(hint.ts)
        found.extend(engine.on_hint(hint))

    replay([str(path)], LONGER_HEAD if longer_head else AgentConfig(), on_flow, on_hint=on_hint)
    return tuple(found + engine.finish())


EXPECTED: list[tuple[str, str, str, str | None, dict[str, Any]]] = [
    ("portscan-nmap-syn", "port_scan", "172.16.0.8", "64.13.134.52", {"ports": 1000}),
    ("portscan-masscan-tcp", "port_scan", "172.31.15.102", "198.124.152.15", {}),
    ("arp-sweep", "host_sweep", "192.168.1.247", None, {"service": "arp"}),
    ("ftp-bruteforce", "brute_force", "192.168.56.1", "192.168.56.101", {"failed_logins": 30}),
    ("ftp-bruteforce", "cleartext_credentials", "192.168.56.1", "192.168.56.101", {"outcome": "failure"}),
    ("ssh-password-guessing", "brute_force", "192.168.56.1", "192.168.56.103", {"service": "SSH"}),
    ("telnet-cleartext-login", "cleartext_credentials", "192.168.0.2", "192.168.0.1", {"protocol": "telnet"}),
    ("http-cleartext-login", "cleartext_credentials", "10.2.2.101", "10.2.2.104", {"protocol": "http_form"}),
    ("mqtt311-publish-userpass", "cleartext_credentials", "::1", "::1", {"protocol": "mqtt"}),
    ("dns-tunnel-iodine", "dns_tunneling", "10.0.2.30", "10.0.2.20", {}),
    ("dns-exfiltration", "dns_tunneling", "192.168.220.56", "192.168.203.167", {}),
    ("smb-eternalblue-ms17-010", "lateral_movement", "192.168.198.129", "192.168.198.140",
     {"pattern": "smb1_burst"}),
    ("smb-psexec-add-user", "lateral_movement", "192.168.10.31", "192.168.10.10",
     {"pattern": "remote_execution"}),
]


@pytest.mark.parametrize(("capture", "kind", "src", "dst", "evidence"), EXPECTED,
                         ids=[f"{row[0]}-{row[1]}" for row in EXPECTED])
def test_labelled_capture_raises_its_finding(capture: str, kind: str, src: str, dst: str | None,
                                             evidence: dict[str, Any]) -> None:
    """The capture's ground truth appears as a finding of the right kind, source and target."""
    matching = [f for f in findings(capture, capture == "http-cleartext-login")
                if f.kind == kind and f.src_ip == src and (dst is None or f.dst_ip == dst)]
    assert len(matching) == 1, findings(capture)
    assert {k: matching[0].evidence.get(k) for k in evidence} == evidence


@pytest.mark.parametrize("capture", sorted({row[0] for row in EXPECTED}))
def test_labelled_capture_raises_nothing_else(capture: str) -> None:
    """An attack capture raises only the heuristic kinds its ground truth implies."""
    expected = {kind for name, kind, *_ in EXPECTED if name == capture}
    found = findings(capture, capture == "http-cleartext-login")
    assert {f.kind for f in found if f.kind in HEURISTIC_KINDS} == expected, found


BENIGN = ["dhcp-dora", "mdns", "ssdp-msearch", "lldp-cdp", "iot-setup-withings", "iot-setup-huebridge",
          "iot-setup-tplink-hs110", "hl7-mllp-adt-oru", "dicom-association-ndpi", "windows-host-broadcasts"]


@pytest.mark.parametrize("capture", BENIGN)
def test_benign_capture_raises_no_heuristic_finding(capture: str) -> None:
    """Ordinary ward and office traffic raises no scan, brute force, spoofing, tunnel or lateral finding."""
    assert [f for f in findings(capture) if f.kind in HEURISTIC_KINDS] == []


def test_iot_captures_are_all_checked() -> None:
    """Every iot-setup-*.pcap in the shared folder is in the benign list."""
    if not SHARED_PCAPS.is_dir():
        pytest.skip("shared captures absent")
    assert {p.stem for p in SHARED_PCAPS.glob("iot-setup-*.pcap")} <= set(BENIGN)
