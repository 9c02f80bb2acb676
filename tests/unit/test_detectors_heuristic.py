"""Heuristic detectors on hand-made records: scans and sweeps, brute force, cleartext logins, ARP spoofing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.detectors import DETECTORS, ON_REQUEST, arpwatch, bruteforce, credentials, scan
from agent.detectors.base import Detector, Device
from agent.records import Finding, FlowRecord, ProtoHint

BUILT_IN = [name for name in DETECTORS if name not in ON_REQUEST]

A, B = "10.1.0.5", "10.1.0.9"
MAC_A = "00:09:fb:00:00:05"


class Ward:
    """A tiny inventory: address -> device record."""

    def __init__(self, devices: dict[str, dict[str, Any]] | None = None) -> None:
        self._devices = devices or {}

    def device(self, key: str) -> Device | None:
        return self._devices.get(key)

    def device_of_ip(self, ip: str) -> Device | None:
        return self._devices.get(ip)


def flow(b_port: int = 80, *, a: str = A, b: str = B, first: float = 100.0, last: float | None = None,
         proto: str = "tcp", a_port: int = 40000, a_pkts: int = 1, b_pkts: int = 0, a_bytes: int = 44,
         b_bytes: int = 0, a_flags: str = "S", b_flags: str = "") -> FlowRecord:
    return FlowRecord(first, first if last is None else last, proto, a, a_port, b, b_port, MAC_A, None, (),
                      a_pkts, b_pkts, a_bytes, b_bytes, a_flags, b_flags, "idle")


def hint(app: str, fields: dict[str, Any], *, ts: float = 100.0, src: str | None = A, sport: int = 40000,
         dst: str | None = B, dport: int = 21, initiator: bool = True, src_mac: str | None = MAC_A,
         dst_mac: str | None = None) -> ProtoHint:
    return ProtoHint(ts, app, "tcp", src_mac, src, sport, dst_mac, dst, dport, initiator, fields)


def run(detector: Detector, records: Sequence[FlowRecord | ProtoHint], end: float = 10_000.0,
        ) -> list[Finding]:
    """Feed records in order with a tick at each record's time, then a last tick at `end`."""
    found: list[Finding] = []
    for record in records:
        if isinstance(record, FlowRecord):
            found += detector.tick(record.last) + detector.on_flow(record)
        else:
            found += detector.tick(record.ts) + detector.on_hint(record)
    return found + detector.tick(end)


def session(port: int, first: float, seconds: float = 5.0, size: int = 3000) -> FlowRecord:
    """An established TCP session that pushed data both ways."""
    return flow(port, first=first, last=first + seconds, a_port=40000 + int(first) % 20000, a_pkts=20,
                b_pkts=15, a_bytes=size, b_bytes=size, a_flags="SFPA", b_flags="SFPA")


@pytest.mark.parametrize("name", BUILT_IN)
def test_default_settings_have_no_problems(name: str) -> None:
    """Every detector's defaults pass its own range checks."""
    assert DETECTORS[name].Settings().problems() == []


def test_port_scan_reports_the_whole_episode() -> None:
    """30 refused ports of one host are one port_scan with the numbers of the whole scan."""
    records = [flow(port, first=100.0 + port / 10, b_pkts=1, b_flags="RA") for port in range(1, 31)]
    [found] = run(scan.make(scan.Settings(), Ward()), list(records))
    assert (found.kind, found.key, found.src_ip, found.dst_ip, found.device) == \
        ("port_scan", f"port_scan:{A}->{B}", A, B, MAC_A)
    assert found.evidence["ports"] == 30 and found.summary == f"{A} scanned 30 ports of {B} in 3 s"


def test_port_scan_below_threshold_is_silent() -> None:
    """24 refused ports (one short of the default 25) raise nothing."""
    assert run(scan.make(scan.Settings(), Ward()), [flow(p) for p in range(1, 25)]) == []


def test_port_scan_waits_until_the_scan_goes_quiet() -> None:
    """A crossed scan is held while attempts keep coming and reported after `quiet` seconds."""
    detector = scan.make(scan.Settings(quiet=10.0), Ward())
    for port in range(1, 31):
        detector.on_flow(flow(port, first=100.0))
    assert detector.tick(105.0) == []
    assert [f.kind for f in detector.tick(111.0)] == ["port_scan"]


def test_conversations_never_count_as_scan_attempts() -> None:
    """Sessions that pushed data on 40 ports of one host are not a scan."""
    records = [session(port, 100.0 + port) for port in range(1, 41)]
    assert run(scan.make(scan.Settings(), Ward()), list(records)) == []


def test_port_scan_window_slides_in_packet_time() -> None:
    """20 ports, then 20 more 400 s later, never reach 25 within 300 s."""
    records = [flow(p, first=100.0) for p in range(1, 21)] + [flow(p, first=500.0) for p in range(21, 41)]
    assert run(scan.make(scan.Settings(), Ward()), records) == []


def test_port_scan_names_clinical_roles_and_escalates() -> None:
    """With roles known, the sentence gives clinical context and a clinical target raises the severity."""
    ward = Ward({A: {"role": "patient_monitor", "vendor": "Philips Medical Systems"},
                 B: {"role": "pacs", "vendor": None}})
    [found] = run(scan.make(scan.Settings(), ward), [flow(p) for p in range(1, 31)])
    assert found.summary.startswith(f"Patient monitor {A} (Philips) scanned 30 ports of PACS {B}")
    assert (found.role, found.peer_role, found.severity) == ("patient_monitor", "pacs", "high")


def test_traceroute_probes_are_not_a_port_scan() -> None:
    """Unanswered UDP to the traceroute range (a port per hop) is not a scan."""
    records = [flow(port, proto="udp", a_flags="") for port in range(33434, 33524)]
    assert run(scan.make(scan.Settings(), Ward()), records) == []


def test_host_sweep_on_one_service() -> None:
    """Failed attempts at 445 on 30 hosts are one host_sweep keyed by source and service."""
    records = [flow(445, b=f"10.1.1.{i}", first=100.0 + i) for i in range(30)]
    [found] = run(scan.make(scan.Settings(), Ward()), records)
    assert (found.kind, found.key, found.dst_port) == ("host_sweep", f"host_sweep:{A}:tcp/445", 445)
    assert found.evidence["hosts"] == 30


def test_icmp_echo_sweep() -> None:
    """Echo requests to 30 hosts are a ping sweep."""
    records = [flow(0, proto="icmp", a_port=8, b=f"10.1.1.{i}", b_pkts=1, a_flags="") for i in range(30)]
    [found] = run(scan.make(scan.Settings(), Ward()), records)
    assert found.key == f"host_sweep:{A}:icmp/8" and "ICMP echo" in found.summary


def test_dhcp_server_offers_are_not_a_sweep() -> None:
    """A DHCP server's unanswered unicast offers (67 -> 68) to 100 clients are not a sweep."""
    records = [flow(68, proto="udp", a_port=67, b=f"10.1.1.{i}", a_flags="") for i in range(100)]
    assert run(scan.make(scan.Settings(), Ward()), records) == []


def _arp(target: str, ts: float, sender: str = A, gratuitous: bool = False, op: str = "request",
         mac: str = MAC_A) -> ProtoHint:
    return ProtoHint(ts, "arp", "arp", mac, sender, 0, "ff:ff:ff:ff:ff:ff", target, 0, True,
                     {"arp": op, "sender_mac": mac, "sender_ip": sender, "target_ip": target,
                      "gratuitous": gratuitous})


def test_arp_sweep() -> None:
    """Who-has for 100 addresses in 10 s is an ARP host_sweep."""
    records = [_arp(f"10.1.2.{i}", 100.0 + i / 10) for i in range(100)]
    [found] = run(scan.make(scan.Settings(), Ward()), list(records))
    assert (found.kind, found.key, found.proto) == ("host_sweep", f"host_sweep:{A}:arp", "arp")
    assert found.summary == f"{A} ARP-swept 100 addresses in 10 s"


def test_unicast_arp_revalidation_is_not_a_sweep() -> None:
    """A router re-validating 100 cache entries by unicast who-has is not sweeping."""
    records = [_arp(f"10.1.2.{i}", 100.0 + i / 10)._replace(dst_mac=f"02:00:00:00:01:{i:02x}")
               for i in range(100)]
    assert run(scan.make(scan.Settings(), Ward()), list(records)) == []


def test_dhcp_server_ping_checks_are_not_a_sweep() -> None:
    """Echo requests from a host seen serving DHCP (ping before offer) are not a ping sweep."""
    records = [flow(68, proto="udp", a_port=67, b="10.1.1.200", a_flags="")]
    records += [flow(0, proto="icmp", a_port=8, b=f"10.1.1.{i}", a_flags="") for i in range(30)]
    assert run(scan.make(scan.Settings(), Ward()), records) == []


def test_arp_probes_and_gratuitous_arps_are_not_a_sweep() -> None:
    """RFC 5227 probes (sender 0.0.0.0) and gratuitous ARPs never count as sweeping."""
    records = [_arp(f"10.1.2.{i}", 100.0, sender="0.0.0.0") for i in range(100)]
    records += [_arp(f"10.1.3.{i}", 100.0, sender=f"10.1.3.{i}", gratuitous=True) for i in range(100)]
    assert run(scan.make(scan.Settings(), Ward()), list(records)) == []


def test_scan_state_is_bounded_and_evictions_counted() -> None:
    """With room for 2 (source, target) pairs, a third evicts the oldest and counts it."""
    detector = scan.make(scan.Settings(max_sources=2), Ward())
    for target in ("10.1.1.1", "10.1.1.2", "10.1.1.3"):
        detector.on_flow(flow(22, b=target))
    assert detector.counters.get("evicted.targets") == 1


def _login(outcome: str, ts: float, **fields: Any) -> ProtoHint:
    """A login hint as the FTP hinter sends it: from the server, in answer to the client."""
    return hint("ftp", {"login": "ftp", "outcome": outcome, **fields}, ts=ts, src=B, sport=21, dst=A,
                dport=40000, initiator=False, src_mac="00:00:00:00:00:09", dst_mac=MAC_A)


def test_repeated_failed_logins_are_brute_force() -> None:
    """Five failed FTP logins within ten minutes are a medium brute_force from the client."""
    records = [_login("failure", 100.0 + i) for i in range(5)]
    [found] = run(bruteforce.make(bruteforce.Settings(), Ward()), list(records))
    assert (found.kind, found.severity, found.key, found.src_ip, found.device) == \
        ("brute_force", "medium", f"brute_force:{A}->{B}:21", A, MAC_A)
    assert found.evidence["failed_logins"] == 5


def test_four_failed_logins_are_not_brute_force() -> None:
    """Four failures stay below the default threshold."""
    records = [_login("failure", 100.0 + i) for i in range(4)]
    assert run(bruteforce.make(bruteforce.Settings(), Ward()), list(records)) == []


def test_success_after_guessing_is_high() -> None:
    """A success after the threshold makes the finding high and says so."""
    records = [_login("failure", 100.0 + i) for i in range(6)] + [_login("success", 107.0)]
    [found] = run(bruteforce.make(bruteforce.Settings(), Ward()), records)
    assert found.severity == "high" and found.summary.endswith("then a login succeeded")


def test_seven_short_sessions_are_not_brute_force() -> None:
    """Seven short sessions stay below the default threshold."""
    records = [session(22, 100.0 + 8 * i) for i in range(7)]
    assert run(bruteforce.make(bruteforce.Settings(), Ward()), list(records)) == []


def test_short_ssh_sessions_are_brute_force() -> None:
    """Eight short SSH sessions to one server within ten minutes are password guessing."""
    records = [session(22, 100.0 + 8 * i) for i in range(8)]
    [found] = run(bruteforce.make(bruteforce.Settings(), Ward()), list(records))
    assert found.key == f"brute_force:{A}->{B}:22" and found.evidence["short_sessions"] == 8
    assert found.summary.startswith(f"{A} made 8 short SSH sessions to {B}:22")


def test_long_ssh_sessions_are_not_brute_force() -> None:
    """Sessions that last longer than short_seconds are logins that worked, not guesses."""
    records = [session(22, 100.0 + 100 * i, seconds=60.0) for i in range(10)]
    assert run(bruteforce.make(bruteforce.Settings(), Ward()), records) == []


def test_cleartext_login_sentence_and_severity() -> None:
    """A failed FTP login is one medium finding oriented client -> server, in the documented sentence."""
    [found] = run(credentials.make(credentials.Settings(), Ward()), [_login("failure", 100.0)])
    assert found.summary == f"Cleartext FTP login (failed) from {A} to {B}:21"
    assert (found.severity, found.key, found.src_ip, found.dst_port, found.device) == \
        ("medium", f"cleartext_credentials:{A}->{B}:ftp", A, 21, MAC_A)


def test_successful_cleartext_login_is_high() -> None:
    """A login that worked exposed a working secret: high."""
    [found] = run(credentials.make(credentials.Settings(), Ward()), [_login("success", 100.0)])
    assert found.severity == "high" and "(succeeded)" in found.summary


def test_user_name_only_in_evidence_and_only_when_hinted() -> None:
    """A hinted user name goes to the evidence, never the sentence; without one there is no user key."""
    detector = credentials.make(credentials.Settings(), Ward())
    [with_user] = run(detector, [_login("failure", 100.0, user="nurse")])
    [without] = run(detector, [_login("failure", 101.0)])
    assert with_user.evidence["user"] == "nurse" and "nurse" not in with_user.summary
    assert "user" not in without.evidence


def test_client_sent_login_is_oriented_from_its_sender() -> None:
    """An HTTP form login hint (sent by the client, initiator) keeps the client as the source."""
    login = hint("http", {"login": "http_form", "outcome": "unknown"}, dport=80)
    [found] = run(credentials.make(credentials.Settings(), Ward()), [login])
    assert (found.src_ip, found.dst_ip, found.dst_port) == (A, B, 80) and "(outcome unknown)" in found.summary


def test_ignored_protocol_raises_nothing() -> None:
    """A site may accept one protocol in the clear (say SNMP); its logins raise nothing."""
    snmp = hint("snmp", {"login": "snmp", "outcome": "unknown"}, dport=161)
    assert run(credentials.make(credentials.Settings(ignore=("snmp",)), Ward()), [snmp]) == []
    assert credentials.Settings(ignore=("gopher",)).problems() != []


def test_address_claimed_by_a_new_mac_is_arp_spoofing() -> None:
    """The gateway's address answered by another MAC 5 s after its holder is a high arp_spoofing."""
    records = [_arp(B, 100.0, sender="10.1.0.1", op="reply", mac="00:00:00:00:00:01"),
               _arp(B, 105.0, sender="10.1.0.1", op="reply", mac="00:00:00:00:00:66")]
    [found] = run(arpwatch.make(arpwatch.Settings(), Ward()), list(records))
    assert (found.kind, found.severity, found.key, found.device) == \
        ("arp_spoofing", "high", "arp_spoofing:10.1.0.1", "00:00:00:00:00:66")
    assert found.evidence["old_mac"] == "00:00:00:00:00:01"


def test_address_moving_after_its_holder_left_is_learned() -> None:
    """A new MAC for an address silent for longer than `recent` is a re-assignment, not spoofing."""
    records = [_arp(B, 100.0, sender="10.1.0.7", mac="00:00:00:00:00:01"),
               _arp(B, 1000.0, sender="10.1.0.7", mac="00:00:00:00:00:02")]
    assert run(arpwatch.make(arpwatch.Settings(), Ward()), list(records)) == []


def test_gratuitous_arp_storm() -> None:
    """30 gratuitous ARPs from one MAC in 30 s are a storm; the same MAC's own address never conflicts."""
    records = [_arp(A, 100.0 + i, gratuitous=True) for i in range(30)]
    [found] = run(arpwatch.make(arpwatch.Settings(), Ward()), list(records))
    assert found.key == f"arp_spoofing:storm:{MAC_A}" and found.evidence["gratuitous"] == 30


def test_a_few_gratuitous_arps_at_boot_are_fine() -> None:
    """Three gratuitous ARPs (a boot, a link-up) raise nothing."""
    records = [_arp(A, 100.0 + i, gratuitous=True) for i in range(3)]
    assert run(arpwatch.make(arpwatch.Settings(), Ward()), list(records)) == []


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70),
                    st.lists(st.one_of(st.text(max_size=70), st.integers()), max_size=4))
_FIELDS = st.dictionaries(st.sampled_from(["login", "outcome", "user", "arp", "sender_mac", "sender_ip",
                                           "target_ip", "gratuitous", "questions", "response", "smb",
                                           "smb1", "dialects"]), _VALUES)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(app=st.sampled_from(["arp", "dns", "smb", "ftp", "http", "tls"]), fields=_FIELDS,
       initiator=st.booleans(), dport=st.sampled_from([0, 21, 53, 445]))
def test_odd_hint_fields_never_raise(app: str, fields: dict[str, Any], initiator: bool, dport: int) -> None:
    """Whatever values a hint's fields hold, no detector raises (the engine would count it as a bug)."""
    record = hint(app, fields, initiator=initiator, dport=dport)
    for module in (DETECTORS[name] for name in BUILT_IN):
        detector = module.make(module.Settings(), Ward())
        detector.on_hint(record)
        detector.tick(1000.0)
