"""Tests for agent/flows.py, the bidirectional flow table, driven with wardgen frames in pcapy-ng batches."""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from agent.decode import LINKTYPE_RAW
from agent.flowkeys import flag_letters
from agent.flows import PKT_BITS, FlowSettings, FlowTable
from agent.records import Counters, FlowRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import wardgen
from batches import pack
from wardgen import ACK, FIN, PSH, RST, SYN, Host

Pkt = tuple[float, bytes]
URG, ECE, CWR = 0x20, 0x40, 0x80
T0 = wardgen.EPOCH + 100.25  # not on a second boundary, exactly representable
A = Host("10.0.0.1", "02:00:00:00:00:0a")
B = Host("10.0.0.2", "02:00:00:00:00:0b")
C = Host("10.0.0.3", "02:00:00:00:00:0c")
D = Host("10.0.0.4", "02:00:00:00:00:0d")
A6 = Host("fd00::1", "02:00:00:00:00:0a")
B6 = Host("fd00::2", "02:00:00:00:00:0b")
ROUTER_MAC = "02:00:00:00:00:fe"


# --- helpers ---------------------------------------------------------------------------------------

class Harness:
    """A FlowTable with its emitted records and counters."""

    def __init__(self, fast_path: bool = True, linktype: int = 1, **settings: Any) -> None:
        self.records: list[FlowRecord] = []
        self.counters = Counters()
        self.table = FlowTable(FlowSettings(**settings), self.records.append, self.counters,
                               linktype=linktype, fast_path=fast_path)

    def feed(self, packets: Iterable[Pkt], batch_size: int = 0) -> Harness:
        packets = list(packets)
        size = batch_size or max(len(packets), 1)
        for i in range(0, len(packets), size):
            self.table.ingest(*pack(packets[i:i + size]))
        return self

    def flush(self) -> list[FlowRecord]:
        self.table.flush()
        return self.records


def run(packets: Iterable[Pkt], fast_path: bool = True, batch_size: int = 0, linktype: int = 1,
        **settings: Any) -> tuple[list[FlowRecord], dict[str, int]]:
    """Feed all packets, flush, and return (records, counters)."""
    h = Harness(fast_path, linktype, **settings)
    records = h.feed(packets, batch_size).flush()
    return records, h.counters.values


def _ip(src: Host, dst: Host, proto: int, l4: bytes) -> bytes:
    if ":" in src.ip:
        return wardgen.ipv6(src.ip, dst.ip, proto, l4)
    return wardgen.ipv4(src.ip, dst.ip, proto, l4)


def _eth(src: Host, dst: Host, packet: bytes, vlans: Sequence[int] = (), src_mac: str = "") -> bytes:
    et = wardgen.ETH_IP6 if packet[0] >> 4 == 6 else wardgen.ETH_IP4
    return wardgen.ether(dst.mac, src_mac or src.mac, et, packet, vlans)


def tcp(src: Host, dst: Host, sport: int, dport: int, flags: int, payload: bytes = b"",
        vlans: Sequence[int] = (), src_mac: str = "") -> bytes:
    """An Ethernet frame carrying one TCP segment."""
    return _eth(src, dst, _ip(src, dst, 6, wardgen.tcp(sport, dport, 1, 1, flags, payload)), vlans, src_mac)


def udp(src: Host, dst: Host, sport: int, dport: int, payload: bytes = b"",
        vlans: Sequence[int] = (), src_mac: str = "") -> bytes:
    """An Ethernet frame carrying one UDP datagram."""
    return _eth(src, dst, _ip(src, dst, 17, wardgen.udp(sport, dport, payload)), vlans, src_mac)


def clock(ts: float) -> Pkt:
    """An ARP frame: it only moves packet time forward."""
    return ts, wardgen.ether(wardgen.BROADCAST, D.mac, wardgen.ETH_ARP,
                             wardgen.arp(1, D.mac, D.ip, "00:00:00:00:00:00", A.ip))


def handshake_and_close(t: float, rst: bool = False) -> list[Pkt]:
    """A->B:80 handshake, one request/response, then FIN/FIN/ACK (or an RST from A); 1/8 s apart."""
    segs = [(A, B, SYN), (B, A, SYN | ACK), (A, B, ACK), (A, B, PSH | ACK, b"q" * 100),
            (B, A, PSH | ACK, b"r" * 300)]
    segs += [(A, B, RST | ACK)] if rst else [(A, B, FIN | ACK), (B, A, FIN | ACK), (A, B, ACK)]
    out = []
    for i, (src, dst, flags, *payload) in enumerate(segs):
        sport, dport = (40000, 80) if src is A else (80, 40000)
        out.append((t + 0.125 * i, tcp(src, dst, sport, dport, flags, *payload)))
    return out


@lru_cache(maxsize=1)
def bench_mix() -> tuple[Pkt, ...]:
    """The README sample plus a few thousand packets of both bench scenarios, merged by time."""
    packets = [*wardgen.sample(), *wardgen.scenario("bench-flows", 1, 0.002),
               *((ts + 3.0, f) for ts, f in wardgen.scenario("bench-churn", 2, 0.001))]
    return tuple(sorted(packets, key=lambda p: p[0]))


@pytest.fixture(params=[True, False], ids=["fast", "general"])
def fast(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# --- directions, bytes and flags -------------------------------------------------------------------

def test_tcp_both_directions_in_one_flow(fast: bool) -> None:
    """Both directions of a TCP connection share one flow, a being the side that sent first."""
    records, _ = run(handshake_and_close(T0), fast)
    assert len(records) == 1
    r = records[0]
    assert (r.proto, r.a_ip, r.a_port, r.b_ip, r.b_port) == ("tcp", A.ip, 40000, B.ip, 80)
    assert (r.a_pkts, r.b_pkts) == (5, 3)
    assert (r.first, r.last) == (T0, T0 + 0.875)


def test_tcp_bytes_are_ip_total_length_not_frame_length(fast: bool) -> None:
    """Byte counts are IPv4 total lengths (40 per bare segment), not the padded 60-byte frames."""
    records, _ = run(handshake_and_close(T0), fast)
    r = records[0]
    assert r.a_bytes == 5 * 40 + 100
    assert r.b_bytes == 3 * 40 + 300


def test_udp_initiator_is_first_sender_even_if_server(fast: bool) -> None:
    """For UDP the first sender is a, whatever its port."""
    packets = [(T0, udp(B, A, 53, 5353, b"x" * 10)), (T0 + 0.1, udp(A, B, 5353, 53, b"y" * 30)),
               (T0 + 0.2, udp(A, B, 5353, 53, b"z"))]
    records, _ = run(packets, fast)
    assert [(r.a_ip, r.a_port, r.b_ip, r.b_port) for r in records] == [(B.ip, 53, A.ip, 5353)]
    r = records[0]
    assert (r.a_pkts, r.b_pkts, r.a_bytes, r.b_bytes) == (1, 2, 28 + 10, 28 + 30 + 28 + 1)
    assert (r.proto, r.a_flags, r.b_flags) == ("udp", "", "")


def test_ipv6_bytes_are_40_plus_payload_length(fast: bool) -> None:
    """IPv6 byte counts are 40 + payload length, per direction."""
    packets = [(T0, udp(A6, B6, 1000, 2000, b"x" * 10)), (T0 + 0.1, udp(B6, A6, 2000, 1000, b"y" * 100)),
               (T0 + 0.2, tcp(A6, B6, 3000, 443, SYN))]
    records, _ = run(packets, fast)
    by_proto = {r.proto: r for r in records}
    assert (by_proto["udp"].a_ip, by_proto["udp"].b_ip) == ("fd00::1", "fd00::2")
    assert (by_proto["udp"].a_bytes, by_proto["udp"].b_bytes) == (40 + 8 + 10, 40 + 8 + 100)
    assert by_proto["tcp"].a_bytes == 40 + 20


def test_tcp_flags_are_unions_in_fixed_letter_order(fast: bool) -> None:
    """Per-direction flag unions, written in the order S F R P A U E C."""
    packets = [(T0, tcp(A, B, 40000, 80, SYN | ECE | CWR)), (T0 + 0.1, tcp(B, A, 80, 40000, SYN | ACK | ECE)),
               (T0 + 0.2, tcp(A, B, 40000, 80, ACK | URG | PSH, b"!")),
               (T0 + 0.3, tcp(B, A, 80, 40000, RST))]
    records, _ = run(packets, fast)
    assert [(r.a_flags, r.b_flags) for r in records] == [("SPAUEC", "SRAE")]
    assert flag_letters(0xFF) == "SFRPAUEC"


# --- orientation -----------------------------------------------------------------------------------

def test_syn_ack_seen_first_makes_its_receiver_the_initiator(fast: bool) -> None:
    """A SYN-ACK first (the SYN was missed): the side it was sent to is a."""
    packets = [(T0, tcp(B, A, 80, 40000, SYN | ACK)), (T0 + 0.1, tcp(A, B, 40000, 80, ACK)),
               (T0 + 0.2, tcp(B, A, 80, 40000, PSH | ACK, b"x" * 10))]
    records, _ = run(packets, fast)
    assert len(records) == 1
    r = records[0]
    assert (r.a_ip, r.a_port, r.b_ip, r.b_port) == (A.ip, 40000, B.ip, 80)
    assert (r.a_pkts, r.b_pkts, r.a_flags, r.b_flags) == (1, 2, "A", "SPA")
    assert (r.a_mac, r.b_mac) == (A.mac, B.mac)


# --- end reasons -----------------------------------------------------------------------------------

def test_fin_closes_grace_after_last_packet_keeping_final_ack(fast: bool) -> None:
    """After FINs the flow ends as `fin` tcp_close_grace seconds after its last packet, final ACK included."""
    packets = handshake_and_close(T0)
    last = packets[-1][0]
    h = Harness(fast, tcp_close_grace=2.0).feed(packets)
    h.feed([clock(last + 2.0 - 0.5)])
    assert h.records == []
    h.feed([clock(last + 2.0 + 1.0)])
    assert [(r.end, r.a_pkts, r.b_pkts, r.last) for r in h.records] == [("fin", 5, 3, last)]
    assert (h.records[0].a_flags, h.records[0].b_flags) == ("SFPA", "SFPA")
    assert h.counters.get("flows.fin") == 1


def test_late_ack_within_grace_stays_in_closing_flow(fast: bool) -> None:
    """A packet within the grace period joins the closing flow and pushes its end back."""
    packets = handshake_and_close(T0)
    last = packets[-1][0]
    late = (last + 1.5, tcp(B, A, 80, 40000, ACK))
    h = Harness(fast, tcp_close_grace=2.0).feed([*packets, late, clock(last + 3.0)])
    assert h.records == []
    h.feed([clock(last + 1.5 + 3.0)])
    assert [(r.end, r.b_pkts, r.last) for r in h.records] == [("fin", 4, last + 1.5)]


def test_rst_ends_flow_as_rst(fast: bool) -> None:
    """A reset ends the flow as `rst` once the grace period has passed."""
    packets = handshake_and_close(T0, rst=True)
    h = Harness(fast, tcp_close_grace=1.0).feed([*packets, clock(packets[-1][0] + 2.5)])
    assert [(r.end, r.a_pkts, r.b_pkts, r.a_flags) for r in h.records] == [("rst", 4, 2, "SRPA")]
    assert h.counters.get("flows.rst") == 1


def test_idle_timeout_runs_on_packet_time(fast: bool) -> None:
    """A flow quiet for idle_timeout of packet time ends as `idle`; traffic in either direction keeps it."""
    packets = [(T0, udp(A, B, 1000, 2000)), (T0 + 0.5, udp(B, A, 2000, 1000)),
               (T0 + 9.0, udp(B, A, 2000, 1000))]
    h = Harness(fast, idle_timeout=10.0, active_timeout=300.0).feed(packets)
    h.feed([clock(T0 + 18.5)])
    assert h.records == []
    h.feed([clock(T0 + 20.5)])
    assert [(r.end, r.a_pkts, r.b_pkts, r.last) for r in h.records] == [("idle", 1, 2, T0 + 9.0)]
    assert h.counters.get("flows.idle") == 1


def test_active_timeout_cuts_and_keeps_orientation(fast: bool) -> None:
    """A flow longer than active_timeout is reported as `active` and continues with the same a, even
    when the first packet after the cut comes from b."""
    packets = []
    for k in range(5):
        packets += [(T0 + 2 * k, udp(A, B, 1000, 2000, b"a")),
                    (T0 + 2 * k + 0.2, udp(B, A, 2000, 1000, b"b"))]
    packets += [(T0 + 11.0, udp(B, A, 2000, 1000, b"b")), (T0 + 11.3, udp(A, B, 1000, 2000, b"a"))]
    h = Harness(fast, idle_timeout=5.0, active_timeout=10.0).feed(packets)
    assert [(r.end, r.a_ip, r.a_pkts, r.b_pkts) for r in h.records] == [("active", A.ip, 5, 5)]
    records = h.flush()
    second = records[1]
    assert (second.end, second.a_ip, second.a_port, second.b_ip) == ("end", A.ip, 1000, B.ip)
    assert (second.a_pkts, second.b_pkts, second.first) == (1, 1, T0 + 11.0)
    assert (second.a_mac, second.b_mac) == (A.mac, B.mac)
    assert h.counters.get("flows.active") == 1


def test_active_timeout_orientation_for_tcp_continuation(fast: bool) -> None:
    """A TCP flow cut by the active timeout keeps its initiator when the server speaks first after the cut."""
    packets = [(T0, tcp(A, B, 40000, 80, SYN)), (T0 + 0.1, tcp(B, A, 80, 40000, SYN | ACK)),
               (T0 + 0.2, tcp(A, B, 40000, 80, ACK)),
               *((T0 + 1 + k, tcp(B, A, 80, 40000, ACK | PSH, b"d")) for k in range(12))]
    records, _ = run(packets, fast, idle_timeout=5.0, active_timeout=10.0)
    assert [r.end for r in records] == ["active", "end"]
    assert {(r.a_ip, r.a_port) for r in records} == {(A.ip, 40000)}
    assert sum(r.a_pkts + r.b_pkts for r in records) == len(packets)


def test_max_flows_evicts_least_recently_active(fast: bool) -> None:
    """At max_flows a new flow evicts the least recently active one and counts it in flows.evicted."""
    packets = [(T0, udp(A, B, 1, 1)), (T0 + 1, udp(A, C, 2, 2)), (T0 + 2, udp(A, D, 3, 3)),
               (T0 + 3, udp(B, A, 1, 1)),  # touches the oldest flow
               (T0 + 4, udp(B, C, 4, 4))]
    h = Harness(fast, max_flows=3).feed(packets)
    assert [(r.end, r.b_ip, r.b_port) for r in h.records] == [("evicted", C.ip, 2)]
    assert h.counters.get("flows.evicted") == 1
    assert h.table.live == 3
    assert sorted((r.end, r.a_port) for r in h.flush()[1:]) == [("end", 1), ("end", 3), ("end", 4)]


def test_eviction_prefers_idle_flow_over_long_active_one(fast: bool) -> None:
    """A long flow nearing its active timeout is not evicted before a flow idle for much longer."""
    busy = [(T0 + 5 * k, udp(A, B, 1000, 2000)) for k in range(20)]  # first T0, last T0 + 95
    packets = sorted([*busy, (T0 + 50, udp(C, D, 3000, 4000)), (T0 + 96, udp(D, C, 5000, 6000))])
    h = Harness(fast, idle_timeout=60.0, active_timeout=100.0, max_flows=2).feed(packets)
    assert [(r.end, r.a_ip) for r in h.records] == [("evicted", C.ip)]


def test_flush_ends_all_live_flows_oldest_first(fast: bool) -> None:
    """flush() ends every live flow as `end`, oldest first, and empties the table."""
    packets = [(T0, udp(A, B, 1, 1)), (T0 + 0.125, tcp(C, D, 5, 6, SYN)), (T0 + 0.25, udp(B, A, 1, 1)),
               (T0 + 0.375, udp(D, B, 7, 7))]
    h = Harness(fast).feed(packets)
    assert h.records == []
    records = h.flush()
    assert [(r.end, r.first) for r in records] == [("end", T0), ("end", T0 + 0.125), ("end", T0 + 0.375)]
    assert h.counters.get("flows.end") == 3
    assert h.table.live == 0


def test_new_syn_on_closing_connection_starts_new_flow(fast: bool) -> None:
    """Port reuse: a fresh SYN on a connection that is closing ends it and opens a new flow."""
    first = handshake_and_close(T0)
    again = [(p[0] + 1.0, p[1]) for p in first[:3]]  # within the 2 s grace
    h = Harness(fast, tcp_close_grace=2.0).feed([*first, *again])
    assert [(r.end, r.a_pkts, r.b_pkts) for r in h.records] == [("fin", 5, 3)]
    records = h.flush()
    assert [(r.end, r.a_ip, r.a_pkts, r.b_pkts, r.first) for r in records[1:]] == [
        ("end", A.ip, 2, 1, first[0][0] + 1.0)]


# --- packet time ----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 7])
def test_batching_does_not_change_records(fast: bool, batch_size: int) -> None:
    """The same packets in batches of 1, 7 or all at once give identical records and counters."""
    packets = bench_mix()
    settings: dict[str, Any] = {"idle_timeout": 5.0, "active_timeout": 12.0, "tcp_close_grace": 0.5,
                                "max_flows": 40}
    whole = run(packets, fast, 0, **settings)
    assert {"flows.idle", "flows.active", "flows.fin", "flows.rst", "flows.evicted"} <= set(whole[1])
    assert run(packets, fast, batch_size, **settings) == whole


def test_time_going_backwards_is_clamped_and_counted(fast: bool) -> None:
    """A packet older than the current packet time counts at the current time and in clock.backwards."""
    packets = [(T0 + 2.0, udp(A, B, 1, 2)), (T0 + 1.0, udp(B, A, 2, 1)), (T0 + 0.5, udp(B, A, 2, 1))]
    records, counters = run(packets, fast)
    assert [(r.first, r.last, r.a_pkts, r.b_pkts) for r in records] == [(T0 + 2.0, T0 + 2.0, 1, 2)]
    assert counters["clock.backwards"] == 2


def test_late_packet_does_not_revive_expired_flow(fast: bool) -> None:
    """A late packet is accounted at the current time: after expiry it starts a new flow."""
    packets = [(T0, udp(A, B, 1, 2)), (T0 + 30.0, udp(C, D, 3, 4)), (T0 + 1.0, udp(B, A, 2, 1))]
    records, counters = run(packets, fast, idle_timeout=10.0)
    assert [(r.end, r.a_ip, r.first) for r in records] == [
        ("idle", A.ip, T0), ("end", C.ip, T0 + 30.0), ("end", B.ip, T0 + 30.0)]
    assert counters["clock.backwards"] == 1


def test_gap_longer_than_wheel_expires_everything(fast: bool) -> None:
    """Hours without packets: every earlier flow ends with its own reason before the next packet counts."""
    packets = [(T0, udp(A, B, 1000, 2000)), (T0 + 0.5, udp(B, A, 2000, 1000)), *handshake_and_close(T0 + 1),
               *((T0 + 2 + k, udp(C, D, 7, 8)) for k in range(10))]
    later = T0 + 5 * 3600
    h = Harness(fast, idle_timeout=60.0, active_timeout=300.0, tcp_close_grace=2.0).feed(packets)
    assert h.table._wheel_size * 4 < 5 * 3600  # the gap is longer than the timer wheel
    h.feed([(later, udp(B, A, 2000, 1000))])
    assert sorted((r.end, r.a_ip, r.last) for r in h.records) == [
        ("fin", A.ip, T0 + 1.875), ("idle", A.ip, T0 + 0.5), ("idle", C.ip, T0 + 11)]
    assert h.table.live == 1
    after = h.flush()[-1]
    assert (after.end, after.a_ip, after.first, after.a_pkts, after.b_pkts) == ("end", B.ip, later, 1, 0)


# --- VLANs and MACs --------------------------------------------------------------------------------

def test_same_five_tuple_on_two_vlans_gives_two_flows(fast: bool) -> None:
    """The VLAN id is part of the flow key: one 5-tuple on VLANs 10 and 20 gives two flows."""
    packets = [(T0 + 0.1 * i, f) for i, f in enumerate([
        tcp(A, B, 40000, 80, SYN, vlans=(10,)), tcp(A, B, 40000, 80, SYN, vlans=(20,)),
        tcp(B, A, 80, 40000, SYN | ACK, vlans=(10,)), tcp(B, A, 80, 40000, SYN | ACK, vlans=(20,)),
        udp(A, B, 5, 6, vlans=(10,)), udp(B, A, 6, 5, vlans=(20,)), udp(A, B, 5, 6, vlans=(20,)),
        tcp(A, B, 40000, 80, ACK, vlans=(10,)), tcp(A, B, 40000, 80, ACK, vlans=(20,)),
    ])]
    records, _ = run(packets, fast)
    got = sorted((r.proto, r.vlan, r.a_ip, r.a_pkts, r.b_pkts) for r in records)
    assert got == [("tcp", (10,), A.ip, 2, 1), ("tcp", (20,), A.ip, 2, 1),
                   ("udp", (10,), A.ip, 1, 0), ("udp", (20,), B.ip, 1, 1)]


def test_vlan_priority_bits_do_not_split_flow(fast: bool) -> None:
    """Only the 12-bit VLAN id is in the key: PCP bits on some frames leave the flow whole."""
    plain = tcp(A, B, 40000, 80, ACK, b"x", vlans=(10,))
    tagged = plain[:14] + bytes([plain[14] | 0xA0]) + plain[15:]  # PCP 5
    packets = [(T0, tcp(A, B, 40000, 80, SYN, vlans=(10,))), (T0 + 0.1, plain), (T0 + 0.2, tagged)]
    records, _ = run(packets, fast)
    assert [(r.vlan, r.a_pkts) for r in records] == [((10,), 3)]


def test_qinq_gives_outer_then_inner_vlan(fast: bool) -> None:
    """802.1ad + 802.1Q frames give vlan (outer, inner)."""
    packets = [(T0, tcp(A, B, 40000, 80, SYN, vlans=(100, 10))),
               (T0 + 0.1, tcp(B, A, 80, 40000, SYN | ACK, vlans=(100, 10)))]
    records, _ = run(packets, fast)
    assert [(r.vlan, r.a_pkts, r.b_pkts) for r in records] == [((100, 10), 1, 1)]


def test_macs_from_first_packet_oriented_by_initiator(fast: bool) -> None:
    """a_mac/b_mac come from the first packet, a_mac being the initiator's, whatever later frames carry."""
    packets = [(T0, udp(B, A, 53, 5353)), (T0 + 0.1, udp(A, B, 5353, 53, src_mac=ROUTER_MAC)),
               (T0 + 0.2, tcp(A, B, 40000, 80, SYN)), (T0 + 0.3, tcp(B, A, 80, 40000, SYN | ACK))]
    records, _ = run(packets, fast)
    assert sorted((r.proto, r.a_mac, r.b_mac) for r in records) == [
        ("tcp", A.mac, B.mac), ("udp", B.mac, A.mac)]


def test_raw_ip_link_type_has_no_macs(fast: bool) -> None:
    """With a raw-IP capture both MACs are None."""
    frames = [tcp(A, B, 40000, 80, SYN), tcp(B, A, 80, 40000, SYN | ACK), udp(A6, B6, 1, 2)]
    packets = [(T0 + 0.1 * i, wardgen.relink(LINKTYPE_RAW, f)) for i, f in enumerate(frames)]
    records, _ = run(packets, fast, linktype=LINKTYPE_RAW)
    assert sorted((r.proto, r.a_ip, r.a_pkts + r.b_pkts, r.a_mac, r.b_mac) for r in records) == [
        ("tcp", A.ip, 2, None, None), ("udp", A6.ip, 1, None, None)]


# --- fast path ------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    {},
    {"idle_timeout": 5.0, "active_timeout": 12.0, "tcp_close_grace": 0.5, "max_flows": 40},
    {"idle_timeout": 2.0, "active_timeout": 3.0, "tcp_close_grace": 0.0, "max_flows": 3},
], ids=["defaults", "short", "tiny"])
def test_fast_path_matches_general_path(settings: dict[str, Any]) -> None:
    """A mixed capture (sample + bench traffic) gives identical records and counters on both paths."""
    packets = bench_mix()
    fast_records, fast_counters = run(packets, True, 256, **settings)
    general_records, general_counters = run(packets, False, 256, **settings)
    assert len(fast_records) > 100
    assert fast_records == general_records
    assert fast_counters == general_counters


def test_fast_path_skips_ipv4_total_length_below_header_like_general_path() -> None:
    """A frame whose IPv4 total length is smaller than its header is skipped on both paths alike."""
    frame = bytearray(tcp(A, B, 40000, 80, SYN))
    frame[16:18] = (10).to_bytes(2, "big")
    general = run([(T0, bytes(frame))], False)
    assert general == ([], {"frames": 1, "skipped.bad_ipv4_header": 1})
    assert run([(T0, bytes(frame))], True) == general


def test_fast_path_matches_general_path_on_tunnel_port_after_non_tunnel_packet() -> None:
    """GTP-U echo then a G-PDU on the same 5-tuple give the same records on both paths."""
    inner = wardgen.ipv4("10.9.0.1", "10.9.0.2", 6, wardgen.tcp(1111, 80, 0, 0, SYN))
    echo = struct.pack("!BBHIHBB", 0x32, 1, 4, 0, 1, 0, 0)
    gpdu = struct.pack("!BBHI", 0x30, 0xFF, len(inner), 7) + inner
    packets = [(T0, udp(A, B, 2152, 2152, echo)), (T0 + 0.1, udp(A, B, 2152, 2152, gpdu))]
    assert run(packets, True) == run(packets, False)


# --- what is not a flow, and what is in two -------------------------------------------------------

def test_fragmented_datagram_counts_once_when_complete(fast: bool) -> None:
    """All fragments count in ip_fragments; the whole datagram joins its flow once, as tshark counts."""
    frags = wardgen.fragment(A.ip, B.ip, 17, wardgen.udp(1000, 2000, bytes(3500)), ident=9)
    assert len(frags) == 3
    packets = [(T0 + 0.01 * i, _eth(A, B, f)) for i, f in enumerate(frags)]
    records, counters = run(packets, fast)
    assert [(r.proto, r.a_port, r.b_port, r.a_pkts, r.a_bytes, r.first) for r in records] == [
        ("udp", 1000, 2000, 1, sum(len(f) for f in frags), T0 + 0.02)]
    assert (counters["ip_fragments"], counters["reassembled"]) == (3, 1)


def test_incomplete_datagram_joins_no_flow(fast: bool) -> None:
    """A datagram missing a fragment makes no flow packet; its fragments are counted."""
    frags = wardgen.fragment(A.ip, B.ip, 17, wardgen.udp(1000, 2000, bytes(3500)), ident=9)
    packets = [(T0, _eth(A, B, frags[0])), (T0 + 0.01, _eth(A, B, frags[2]))]
    records, counters = run(packets, fast)
    assert records == [] and counters["ip_fragments"] == 2 and "reassembled" not in counters


def test_fragments_out_of_order_and_repeated(fast: bool) -> None:
    """Fragments arriving last-first, with a repeat, still complete the datagram exactly once."""
    frags = wardgen.fragment(A.ip, B.ip, 17, wardgen.udp(1000, 2000, bytes(3500)), ident=9)
    order = [frags[2], frags[1], frags[1], frags[0]]
    records, counters = run([(T0 + 0.01 * i, _eth(A, B, f)) for i, f in enumerate(order)], fast)
    assert [(r.a_port, r.a_pkts) for r in records] == [(1000, 1)]
    assert counters["ip_fragments"] == 4


def test_arp_counted_as_non_ip(fast: bool) -> None:
    """ARP frames count in non_ip.arp and make no flow."""
    packets = list(wardgen.arp_exchange(T0, A, B))
    records, counters = run(packets, fast)
    assert records == []
    assert counters == {"frames": 2, "non_ip.arp": 2}


def _vxlan(inner_frame: bytes, sport: int = 33333) -> bytes:
    header = struct.pack("!BBHI", 0x08, 0, 0, 4242 << 8)
    return udp(C, D, sport, 4789, header + inner_frame)


def test_vxlan_packet_counts_in_outer_and_inner_flow(fast: bool) -> None:
    """A VXLAN-carried TCP segment counts in the outer UDP flow and in its own inner TCP flow."""
    inner = [tcp(A, B, 40000, 80, SYN), tcp(B, A, 80, 40000, SYN | ACK), tcp(A, B, 40000, 80, ACK)]
    packets = [(T0 + 0.1 * i, _vxlan(f)) for i, f in enumerate(inner)]
    records, counters = run(packets, fast)
    got = sorted((r.proto, r.a_ip, r.a_port, r.b_port, r.a_pkts, r.b_pkts, r.a_mac) for r in records)
    assert got == [("tcp", A.ip, 40000, 80, 2, 1, A.mac), ("udp", C.ip, 33333, 4789, 3, 0, C.mac)]
    assert counters["decapsulated"] == 3
    assert counters["frames"] == 3


# --- counter limits --------------------------------------------------------------------------------

def test_byte_counts_past_36_bits_are_reported_whole(fast: bool) -> None:
    """A direction's byte count has no bound of its own (active_timeout bounds a record): no cut."""
    h = Harness(fast).feed([(T0, udp(A, B, 1, 2, b"x" * 100)), (T0 + 0.1, udp(B, A, 2, 1, b"y" * 100))])
    h.table._count[1] = ((1 << 36) - 50) << PKT_BITS | 5  # white box: direction b of the flow
    h.feed([(T0 + 0.2, udp(B, A, 2, 1, b"y" * 100))])
    records = h.flush()
    assert [(r.end, r.a_pkts, r.b_pkts, r.b_bytes) for r in records] == [("end", 1, 6, (1 << 36) - 50 + 128)]
