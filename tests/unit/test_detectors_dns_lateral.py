"""DNS tunnelling and lateral-movement detectors on hand-made records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.detectors import dnstunnel, lateral
from agent.detectors.base import Detector, Device
from agent.records import Finding, FlowRecord, ProtoHint

CLIENT, RESOLVER = "10.1.0.5", "10.1.0.2"
MAC = "00:09:fb:00:00:05"


class Ward:
    """A tiny inventory: address -> device record."""

    def __init__(self, devices: dict[str, dict[str, Any]] | None = None) -> None:
        self._devices = devices or {}

    def device(self, key: str) -> Device | None:
        return self._devices.get(key)

    def device_of_ip(self, ip: str) -> Device | None:
        return self._devices.get(ip)


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


def query(name: str, ts: float = 100.0, src: str = CLIENT, dport: int = 53) -> ProtoHint:
    return ProtoHint(ts, "dns", "udp", MAC, src, 40000 + int(ts * 10) % 20000, None, RESOLVER, dport, True,
                     {"response": 0, "rcode": 0, "questions": [name]})


def dns_flow(queries: int, seconds: float, a: str = CLIENT, b: str = RESOLVER) -> FlowRecord:
    return FlowRecord(100.0, 100.0 + seconds, "udp", a, 44639, b, 53, MAC, None, (), queries, queries,
                      queries * 100, queries * 180, "", "", "idle")


def _data_name(i: int) -> str:
    return f"{i:04x}" + "3f9a7c1e5b" * 5 + ".t.badcorp.example"


def test_registered_domain_approximation() -> None:
    """Last two labels, or three under a country code with a generic second level."""
    assert dnstunnel.registered_domain(["a", "b", "example", "com"]) == "example.com"
    assert dnstunnel.registered_domain(["www", "ward", "nhs", "uk"]) == "ward.nhs.uk"


def test_names_carrying_data_are_a_tunnel() -> None:
    """Eight queries with 54-character labels under one domain are dns_tunneling, keyed client -> server."""
    records = [query(_data_name(i), 100.0 + i) for i in range(8)]
    [found] = run(dnstunnel.make(dnstunnel.Settings(), Ward()), list(records))
    assert (found.kind, found.key, found.src_ip, found.dst_ip, found.device) == \
        ("dns_tunneling", f"dns_tunneling:{CLIENT}->{RESOLVER}", CLIENT, RESOLVER, MAC)
    assert found.evidence["domain"] == "badcorp.example" and found.evidence["names"] == 8


def test_seven_data_names_are_not_yet_a_tunnel() -> None:
    """One short of the default threshold raises nothing."""
    records = [query(_data_name(i), 100.0 + i) for i in range(7)]
    assert run(dnstunnel.make(dnstunnel.Settings(), Ward()), list(records)) == []


def test_binary_characters_in_a_name_mark_it() -> None:
    """Labels with characters no host name has ('?' for binary) count as data."""
    records = [query(f"a{i}?b?c.pirate.example", 100.0 + i) for i in range(8)]
    found = run(dnstunnel.make(dnstunnel.Settings(), Ward()), list(records))
    assert [f.kind for f in found] == ["dns_tunneling"]


def test_everyday_names_are_not_a_tunnel() -> None:
    """Hundreds of ordinary CDN and service names raise nothing."""
    names = ["img-prod-cms-rt-microsoft-com.akamaized.net",
             "storecatalogrevocation.storequality.microsoft.com", "settings-win.data.microsoft.com",
             "www.ecdinterface.philips.com"]
    records = [query(names[i % 4], 100.0 + i) for i in range(200)]
    assert run(dnstunnel.make(dnstunnel.Settings(), Ward()), list(records)) == []


def test_mdns_and_local_names_are_ignored() -> None:
    """Multicast DNS questions and .local names never count, however long."""
    records = [query(f"Philips hue - {i:06d}._hap._tcp.local", 100.0 + i, dport=5353) for i in range(20)]
    records += [query(f"{'x' * 50}{i}.ward.local", 100.0 + i) for i in range(20)]
    assert run(dnstunnel.make(dnstunnel.Settings(), Ward()), list(records)) == []


def test_many_distinct_names_under_one_domain() -> None:
    """Past the 32-query prefilter, 300 distinct short names under one domain are a tunnel by rate."""
    records = [query(f"q{i}.x.rate.example", 100.0 + i * 0.5) for i in range(331)]
    [found] = run(dnstunnel.make(dnstunnel.Settings(), Ward()), list(records))
    assert found.evidence["signal"] == "domain_rate" and found.evidence["domain"] == "rate.example"


def test_distinct_names_are_counted_only_for_busy_pairs() -> None:
    """300 distinct names without the 31 queries of prefilter before them stay below the threshold."""
    records = [query(f"q{i}.x.rate.example", 100.0 + i * 0.5) for i in range(330)]
    assert run(dnstunnel.make(dnstunnel.Settings(), Ward()), list(records)) == []


def test_one_socket_query_stream_is_a_tunnel() -> None:
    """150 queries from one UDP socket in 60 s raise a finding as soon as the flow ends."""
    detector = dnstunnel.make(dnstunnel.Settings(), Ward())
    [found] = detector.on_flow(dns_flow(150, 60.0))
    assert found.evidence["signal"] == "one_socket" and found.evidence["queries"] == 150


def test_slow_one_socket_queries_are_fine() -> None:
    """60 queries over ten minutes from one port (a device with a fixed source port) raise nothing."""
    assert run(dnstunnel.make(dnstunnel.Settings(), Ward()), [dns_flow(60, 600.0)]) == []


def test_forwarders_are_not_tunnels() -> None:
    """A source seen answering DNS (a forwarder) may keep one socket to its upstream."""
    detector = dnstunnel.make(dnstunnel.Settings(), Ward())
    records: list[FlowRecord | ProtoHint] = [dns_flow(1, 0.0, a="10.1.0.50", b=RESOLVER),
                                             dns_flow(150, 60.0, a=RESOLVER, b="192.0.2.53")]
    assert run(detector, records) == []


PC, DC = "10.1.0.31", "10.1.0.10"


def tcp(b: str, b_port: int, first: float, a_bytes: int, b_bytes: int, a_port: int = 49282,
        a: str = PC) -> FlowRecord:
    return FlowRecord(first, first + 10.0, "tcp", a, a_port, b, b_port, MAC, None, (), 60, 24, a_bytes,
                      b_bytes, "SFPA", "SFPA", "fin")


def smb_hint(fields: dict[str, Any], ts: float = 100.0, from_client: bool = True) -> ProtoHint:
    if from_client:
        return ProtoHint(ts, "smb", "tcp", MAC, PC, 49282, None, DC, 445, True, fields)
    return ProtoHint(ts, "smb", "tcp", None, DC, 445, MAC, PC, 49282, False, fields)


def test_smb1_burst_is_lateral_movement() -> None:
    """An SMB1 session carrying 69 KiB one way is an exploit-like burst, high."""
    records: list[FlowRecord | ProtoHint] = [
        smb_hint({"smb": "negotiate_request", "dialects": ["NT LM 0.12"], "smb1_offered": True}),
        smb_hint({"smb": "negotiate_response", "smb1": True, "dialect": "NT LM 0.12"}, from_client=False),
        tcp(DC, 445, 100.0, 71029, 1750)]
    [found] = run(lateral.make(lateral.Settings(), Ward()), records)
    assert (found.kind, found.severity) == ("lateral_movement", "high")
    assert found.key == f"lateral_movement:smb1:{PC}->{DC}"
    assert found.evidence["dialects_offered"] == 1


def test_same_burst_over_smb2_is_not_an_smb1_exploit() -> None:
    """Without an SMB1 hint for the session, a one-way upload is no SMB1 burst."""
    records: list[FlowRecord | ProtoHint] = [
        smb_hint({"smb": "negotiate_response", "smb1": False, "dialect": "2.1"}, from_client=False),
        tcp(DC, 445, 100.0, 71029, 1750)]
    assert run(lateral.make(lateral.Settings(), Ward()), records) == []


def test_balanced_smb1_session_is_not_a_burst() -> None:
    """An SMB1 session that reads as much as it writes is ordinary legacy file sharing."""
    records: list[FlowRecord | ProtoHint] = [smb_hint({"smb": "smb1_session", "smb1": True}),
                                             tcp(DC, 445, 100.0, 71029, 40000)]
    assert run(lateral.make(lateral.Settings(), Ward()), records) == []


def test_upload_then_rpc_is_remote_execution() -> None:
    """An SMB upload of 147 KiB and an RPC session to the same host within 120 s look like PsExec."""
    records: list[FlowRecord | ProtoHint] = [tcp(DC, 445, 100.0, 150960, 2800),
                                             tcp(DC, 135, 101.0, 524, 368, 49283)]
    [found] = run(lateral.make(lateral.Settings(), Ward()), records)
    assert found.key == f"lateral_movement:exec:{PC}->{DC}"
    assert (found.dst_port, found.evidence["control_port"]) == (445, 135)
    assert "PsExec" in found.summary


def test_upload_alone_is_not_remote_execution() -> None:
    """Copying a file to a server, with no second session, is file sharing."""
    assert run(lateral.make(lateral.Settings(), Ward()), [tcp(DC, 445, 100.0, 150960, 2800)]) == []


def test_rpc_long_after_upload_is_not_remote_execution() -> None:
    """An RPC session 300 s after the upload is outside the 120 s pattern window."""
    records: list[FlowRecord | ProtoHint] = [tcp(DC, 445, 100.0, 150960, 2800),
                                             tcp(DC, 135, 400.0, 524, 368, 49283)]
    assert run(lateral.make(lateral.Settings(), Ward()), records) == []


def test_smb_fanout_to_ten_internal_hosts() -> None:
    """SMB sessions to ten internal hosts within ten minutes are a fan-out."""
    records: list[FlowRecord | ProtoHint] = [tcp(f"10.1.4.{i}", 445, 100.0 + i, 4000, 4000)
                                             for i in range(10)]
    [found] = run(lateral.make(lateral.Settings(), Ward()), records)
    assert found.key == f"lateral_movement:fanout:{PC}:SMB" and found.evidence["hosts"] == 10


def test_nine_hosts_or_external_hosts_are_no_fanout() -> None:
    """Nine internal hosts, or any number of external ones, are not a fan-out."""
    records: list[FlowRecord | ProtoHint] = [tcp(f"10.1.4.{i}", 3389, 100.0 + i, 4000, 4000)
                                             for i in range(9)]
    records += [tcp(f"198.51.100.{i}", 3389, 100.0 + i, 4000, 4000) for i in range(20)]
    assert run(lateral.make(lateral.Settings(), Ward()), records) == []
