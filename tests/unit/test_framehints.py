"""Tests for agent/framehints.py: ARP, LLDP and CDP hints from non-IP frames."""

from __future__ import annotations

import subprocess

import pytest
import wardgen
from conftest import SHARED_PCAPS

from agent.config import AgentConfig
from agent.framehints import ARP, FrameHints
from agent.pipeline import replay
from agent.records import Counters, ProtoHint

T0 = 1_700_000_000_000_000
PUMP_MAC, GATEWAY_MAC = "02:00:00:00:00:31", "02:00:00:00:00:fe"


def _arp(op: int, spa: str, tpa: str, tha: str = "00:00:00:00:00:00", vlans: tuple[int, ...] = ()) -> bytes:
    return wardgen.ether("ff:ff:ff:ff:ff:ff", PUMP_MAC, ARP, wardgen.arp(op, PUMP_MAC, spa, tha, tpa), vlans)


def _feed(*frames: tuple[bytes, int]) -> tuple[list[ProtoHint], Counters]:
    hints: list[ProtoHint] = []
    counters = Counters()
    reader = FrameHints(hints.append, counters)
    for frame, ethertype in frames:
        reader.feed(frame, ethertype, T0)
    return hints, counters


def test_arp_request_names_sender_binding_and_target() -> None:
    """An ARP who-has gives the sender's MAC/IP binding and the address asked for."""
    hints, _ = _feed((_arp(1, "10.2.0.31", "10.2.0.1"), ARP))
    assert hints[0].fields == {"arp": "request", "sender_mac": PUMP_MAC, "sender_ip": "10.2.0.31",
                               "target_ip": "10.2.0.1", "gratuitous": False}
    assert (hints[0].src_mac, hints[0].src_ip, hints[0].dst_ip) == (PUMP_MAC, "10.2.0.31", "10.2.0.1")


def test_gratuitous_arp_behind_a_vlan_tag_is_flagged() -> None:
    """A tagged ARP announcing its own address is read past the tag and marked gratuitous."""
    hints, _ = _feed((_arp(2, "10.2.0.31", "10.2.0.31", GATEWAY_MAC, vlans=(20,)), ARP))
    assert hints[0].fields["gratuitous"] is True and hints[0].fields["target_mac"] == GATEWAY_MAC


def test_truncated_arp_is_counted_not_raised() -> None:
    """An ARP frame cut short is counted as malformed."""
    hints, counters = _feed((_arp(1, "10.2.0.31", "10.2.0.1")[:30], ARP))
    assert hints == [] and counters.get("hints.malformed.arp") == 1


@pytest.mark.shared
def test_shared_switch_adverts_give_lldp_and_cdp_once_per_content() -> None:
    """lldp-cdp.pcap: both switches' LLDP and CDP adverts, repeats skipped and counted."""
    capture = SHARED_PCAPS / "lldp-cdp.pcap"
    if not capture.exists():
        pytest.skip("shared capture absent")
    hints: list[ProtoHint] = []
    totals = replay([str(capture)], AgentConfig(), lambda record: None, on_hint=hints.append)
    names = {(h.app, str(h.fields.get("system_name") or h.fields.get("device_id"))) for h in hints}
    assert {("lldp", "S1.cisco.com"), ("lldp", "S2.cisco.com")} <= names
    assert {app for app, _ in names} == {"lldp", "cdp"}
    tshark = subprocess.run(["tshark", "-r", str(capture), "-Y", "lldp or cdp", "-T", "fields", "-e",
                             "frame.number"], capture_output=True, text=True, check=True).stdout.split()
    repeated = sum(v for k, v in totals.counters.values.items() if k.startswith("hints.repeated."))
    assert len(hints) + repeated == len(tshark)
