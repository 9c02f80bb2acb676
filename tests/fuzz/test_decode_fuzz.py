"""Fuzz tests for agent/decode.py and the flow table behind it (DESIGN.md sections 7 and 8).

decode_frame must never raise and must return one of its documented shapes, for every supported
link type, whatever the bytes: every truncation of valid frames, valid frames with random tails or
flipped bytes, and plain random bytes. The flow table fed the same frames must never raise and must
account for every frame exactly once (the summary's `unaccounted` is 0).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import decode
from agent.decode import (
    MAX_TUNNEL_DEPTH,
    MAX_VLAN_TAGS,
    OTHER,
    SKIP_REASONS,
    SUPPORTED_LINKTYPES,
    TCP,
    TUNNEL,
    UDP,
    decode_frame,
)
from agent.flowkeys import describe_key, reverse_key
from agent.flows import FlowSettings, FlowTable
from agent.fragments import Fragment
from agent.records import Counters, FlowRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import wardgen
from batches import pack_us

LINKTYPES = sorted(SUPPORTED_LINKTYPES)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PER_LINKTYPE = settings(FUZZ, max_examples=100)
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A4, B4, C4, D4 = "10.0.0.1", "10.0.0.2", "192.168.7.1", "192.168.7.2"
A6, B6 = "fd00::1", "fd00::2"


# --- a corpus of valid frames for every link type ------------------------------------------------------

def _eth(packet: bytes, vlans: tuple[int, ...] = (), pad: bool = True, src: str = MAC_A,
         dst: str = MAC_B) -> bytes:
    ethertype = wardgen.ETH_IP6 if packet[0] >> 4 == 6 else wardgen.ETH_IP4
    return wardgen.ether(dst, src, ethertype, packet, vlans, pad)


def _transports4(src: str, dst: str) -> Iterator[bytes]:
    yield wardgen.ipv4(src, dst, 6, wardgen.tcp(40000, 443, 7, 9, wardgen.SYN))
    yield wardgen.ipv4(dst, src, 6, wardgen.tcp(443, 40000, 9, 8, wardgen.SYN | wardgen.ACK, b"hello"))
    yield wardgen.ipv4(src, dst, 6, wardgen.tcp(40000, 443, 8, 10, wardgen.FIN | wardgen.ACK))
    yield wardgen.ipv4(src, dst, 17, wardgen.udp(5353, 53, b"\x12\x34query"))
    yield wardgen.ipv4(src, dst, 1, wardgen.icmp(8, 0, b"\x00\x01\x00\x01ping"))
    yield wardgen.ipv4(dst, src, 1, wardgen.icmp(0, 0, b"\x00\x01\x00\x01ping"))
    yield wardgen.ipv4(src, dst, 1, wardgen.icmp(3, 3, bytes(28)))
    yield wardgen.ipv4(src, dst, 132, bytes(16))
    yield wardgen.ipv4(src, dst, 6, wardgen.tcp(1, 2, 3, 4, wardgen.ACK, b"opt"), options=b"\x94\x04\0\0")


def _transports6(src: str, dst: str) -> Iterator[bytes]:
    hbh, routing, dest = (0, b"\x05\x02\0\0"), (43, b"\x04\x00" + bytes(4)), (60, b"\x01\x0c" + bytes(12))
    yield wardgen.ipv6(src, dst, 6, wardgen.tcp(40000, 443, 1, 0, wardgen.SYN))
    yield wardgen.ipv6(src, dst, 17, wardgen.udp(5353, 53, b"q6"))
    yield wardgen.ipv6(src, dst, 58, wardgen.icmpv6(128, 0, b"\x00\x01\x00\x01"))
    yield wardgen.ipv6(dst, src, 58, wardgen.icmpv6(129, 0, b"\x00\x01\x00\x01"))
    yield wardgen.ipv6(src, dst, 6, wardgen.tcp(40000, 443, 1, 0, wardgen.ACK, b"x"), [hbh, routing, dest])
    yield wardgen.ipv6(src, dst, 17, wardgen.udp(1, 2, b"atomic"), [wardgen.ipv6_fragment(0, False, 5)])
    yield wardgen.ipv6(src, dst, 50, bytes(24))
    ah_udp = wardgen.udp(7, 8, b"ah")
    ah = struct.pack("!BBH", 17, 4, 0) + bytes(20)
    addresses = wardgen.ipv6(src, dst, 0, b"")[8:40]
    yield struct.pack("!IHBB", 0x60000000, len(ah) + len(ah_udp), 51, 64) + addresses + ah + ah_udp


def _fragments() -> Iterator[bytes]:
    yield from wardgen.fragment(A4, B4, 1, wardgen.icmp(8, 0, bytes(2000)), ident=3, mtu=576)
    yield from wardgen.fragment(A6, B6, 17, wardgen.udp(9, 10, bytes(2000)), ident=4, mtu=576)


def _tunnels() -> Iterator[bytes]:
    """IP packets that carry other packets: IP-in-IP, 6in4, GRE, ERSPAN, VXLAN, GENEVE, Teredo, GTP-U."""
    inner4 = wardgen.ipv4(C4, D4, 6, wardgen.tcp(1234, 80, 1, 1, wardgen.SYN))
    inner6 = wardgen.ipv6(A6, B6, 17, wardgen.udp(1234, 53, b"in6"))
    inner_eth = wardgen.ether(MAC_B, MAC_A, wardgen.ETH_IP4, inner4, (12,), pad=False)
    erspan3, vxlan = struct.pack("!BBH", 0, 0, 0x22EB), struct.pack("!BxxxI", 8, 5 << 8)
    yield wardgen.ipv4(A4, B4, 4, inner4)
    yield wardgen.ipv4(A4, B4, 41, inner6)
    yield wardgen.ipv6(A6, B6, 4, inner4)
    yield wardgen.ipv4(A4, B4, 47, struct.pack("!BBH", 0, 0, 0x0800) + inner4)
    yield wardgen.ipv4(A4, B4, 47, struct.pack("!BBHI", 0x20, 0, 0x86DD, 77) + inner6)
    yield wardgen.ipv4(A4, B4, 47, struct.pack("!BBHII", 0xB0, 0, 0x6558, 0, 77)[:4] + bytes(12) + inner_eth)
    yield wardgen.ipv4(A4, B4, 47, struct.pack("!BBHI", 0x10, 0, 0x88BE, 1) + bytes(8) + inner_eth)
    yield wardgen.ipv4(A4, B4, 47, erspan3 + bytes(12) + inner_eth)
    yield wardgen.ipv4(A4, B4, 47, erspan3 + bytes(11) + b"\x01" + bytes(8) + inner_eth)  # platform header
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(50000, 4789, vxlan + inner_eth))
    geneve = struct.pack("!BBHI", 0, 0, 0x6558, 0)
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(50000, 6081, geneve + inner_eth))
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(50000, 6081, struct.pack("!BBHI", 1, 0, 0x0800, 0) + bytes(4)
                                               + inner4))
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(50000, 3544, inner6))
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(3544, 50000, b"\x00\x00" + bytes(6) + inner6))
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(50000, 3544, b"\x00\x01\x01\x01xy" + bytes(9) + inner6))
    gtp = struct.pack("!BBHI", 0x30, 0xFF, len(inner4), 1) + inner4
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(2152, 2152, gtp))
    gtp_ext = struct.pack("!BBHIHBB", 0x34, 0xFF, len(inner6) + 8, 1, 0, 0, 0x85) + b"\x01\x10\x05\x00"
    gtp_ext += inner6
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(2152, 2152, gtp_ext))
    nested = wardgen.ipv4(C4, D4, 4, wardgen.ipv4(A4, B4, 4, inner4))
    nested_eth = wardgen.ether(MAC_A, MAC_B, wardgen.ETH_IP4, nested, pad=False)
    yield wardgen.ipv4(A4, B4, 17, wardgen.udp(50000, 4789, vxlan + nested_eth))


@cache
def _ip_packets() -> tuple[bytes, ...]:
    return (*_transports4(A4, B4), *_transports6(A6, B6), *_fragments(), *_tunnels())


@cache
def _ethernet_frames() -> tuple[bytes, ...]:
    frames: list[bytes] = []
    for packet in _ip_packets():
        frames.append(_eth(packet, pad=False))
        frames.append(_eth(packet, (30,)))
    for packet in _ip_packets()[:6]:
        frames.append(_eth(packet, (1000, 120)))
        frames.append(_eth(packet, (1, 2, 3, 4), pad=False))
        frames.append(_eth(packet, (1, 2, 3, 4, 5), pad=False))
    udp4 = _ip_packets()[3]
    arp = wardgen.arp(1, MAC_A, A4, "00:00:00:00:00:00", B4)
    macs = bytes.fromhex("02000000000b02000000000a")
    labels = struct.pack("!II", 100 << 12 | 64, 200 << 12 | 0x100 | 64)
    frames += [
        wardgen.ether(wardgen.BROADCAST, MAC_A, wardgen.ETH_ARP, arp),
        wardgen.ether(wardgen.BROADCAST, MAC_A, wardgen.ETH_ARP, arp, (30,)),
        wardgen.ether("01:80:c2:00:00:00", MAC_A, 0x0026, b"\x42\x42\x03" + bytes(35)),
        wardgen.ether("01:80:c2:00:00:0e", MAC_A, 0x88CC, bytes(40)),
        macs + struct.pack("!HHHHH", 0x9100, 7, 0x8100, 8, 0x0800) + udp4,
        macs + struct.pack("!HHH", 0x8100, 0xE000 | 30, 0x0800) + udp4,  # PCP 7
        wardgen.ether(MAC_B, MAC_A, 0x8847, labels + udp4),
        wardgen.ether(MAC_B, MAC_A, 0x8864, struct.pack("!BBHHH", 0x11, 0, 1, len(udp4) + 2, 0x21) + udp4),
        wardgen.ether(MAC_B, MAC_A, 0x8864, struct.pack("!BBHHH", 0x11, 0, 1, 12, 0xC021) + bytes(10)),
    ]
    tso = bytearray(wardgen.ipv4(A4, B4, 6, wardgen.tcp(1, 2, 3, 4, wardgen.ACK, bytes(3000))))
    tso[2:4] = b"\0\0"
    frames.append(_eth(bytes(tso)))
    return tuple(frames)


def _sll2(packet: bytes, ethertype: int) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype, 0, 3, 1, 0, 6, bytes.fromhex("02000000000a0000")) + packet


@cache
def corpus(linktype: int) -> tuple[bytes, ...]:
    """Valid frames of a link type, covering every encapsulation decode.py knows."""
    packets = _ip_packets()
    arp = wardgen.arp(2, MAC_B, B4, MAC_A, A4)
    if linktype == decode.DLT_EN10MB:
        return _ethernet_frames()
    if linktype == decode.DLT_LINUX_SLL:
        return (*(wardgen.sll(p) for p in packets), wardgen.sll(arp, wardgen.ETH_ARP),
                wardgen.sll(packets[0], 0x8100)[:14] + struct.pack("!HH", 30, 0x0800) + packets[0])
    if linktype == decode.DLT_LINUX_SLL2:
        return (*(_sll2(p, wardgen.ETH_IP6 if p[0] >> 4 == 6 else wardgen.ETH_IP4) for p in packets),
                _sll2(arp, wardgen.ETH_ARP))
    if linktype in (decode.DLT_NULL, decode.DLT_LOOP):
        order = "<" if linktype == decode.DLT_NULL else ">"
        frames = [struct.pack(order + "I", 24 if p[0] >> 4 == 6 else 2) + p for p in packets]
        if linktype == decode.DLT_NULL:
            frames += [struct.pack(">I", 2) + packets[0], struct.pack(">I", 30) + packets[10],
                       struct.pack("<I", 28) + packets[10], struct.pack("<I", 7) + bytes(20)]
        return tuple(frames)
    if linktype in (decode.DLT_PPP, decode.DLT_PPP_SERIAL, decode.DLT_PPP_ETHER, decode.DLT_C_HDLC,
                    decode.DLT_IEEE802_11, decode.DLT_IEEE802_11_RADIO, decode.DLT_PPI):
        wrapped = {decode.DLT_PPP_SERIAL: 9}.get(linktype, linktype)
        return tuple(wardgen.wrap_ip(wrapped, p) for p in packets)
    return packets  # raw IP link types


def _all_frames() -> Iterator[tuple[int, bytes]]:
    for linktype in LINKTYPES:
        for frame in corpus(linktype):
            yield linktype, frame


# --- the documented shapes of a result -------------------------------------------------------------------

def check_result(result: object, depth: int = 0) -> None:
    """Assert that result has one of decode_frame's documented shapes, recursively for tunnels."""
    if type(result) is str:
        assert result in SKIP_REASONS, result
        return
    if type(result) is Fragment:
        assert result.offset >= 0 and result.size >= 0 and result.iplen >= 0
        return
    if type(result) is int:
        assert -6 <= result <= 0xFFFF, result  # an ethertype or a named non-IP code (agent.nonip)
        return
    assert type(result) is tuple and len(result) == 7, result
    table, key, iplen, flags, macs, inner, segment = result
    assert table in (TCP, UDP, OTHER, TUNNEL)
    assert type(segment) is bytes and (segment == b"" or table in (TCP, UDP))
    assert type(key) is bytes and type(macs) is bytes
    assert len(macs) in (0, 12)
    assert type(iplen) is int and iplen >= 0
    assert type(flags) is int and 0 <= flags <= 0xFF
    assert flags == 0 or table == TCP
    if table in (TCP, UDP, TUNNEL):
        fixed = {12, 36}
    else:
        fixed = {1 + 8 + 2, 1 + 32 + 2} if key[0] in (1, 58) else {1 + 8, 1 + 32}
    tag_bytes = min(len(key) - f for f in fixed if len(key) >= f)
    assert tag_bytes % 2 == 0 and tag_bytes <= 2 * MAX_VLAN_TAGS, (table, key.hex())
    assert reverse_key(table, reverse_key(table, key)) == key
    name, a_ip, a_port, b_ip, b_port, vlans = describe_key(table, key)
    assert len(a_ip) == len(b_ip) and len(a_ip) in (4, 16)
    assert 0 <= a_port <= 0xFFFF and 0 <= b_port <= 0xFFFF
    assert len(vlans) == tag_bytes // 2 and all(0 <= v <= 0xFFF for v in vlans)
    assert name in ("tcp", "udp", "icmp", "icmp6") or type(name) is int
    if table in (TCP, UDP):
        assert inner is None
    if table == TUNNEL:
        assert name == "udp"
    if inner is not None:
        assert depth < MAX_TUNNEL_DEPTH
        check_result(inner, depth + 1)


def test_corpus_frames_decode_to_flows() -> None:
    """Sanity: the IP frames of every link type's corpus decode to tuples or Fragments."""
    for linktype, frame in _all_frames():
        result = decode_frame(frame, linktype)
        check_result(result)
        expected = isinstance(result, (tuple, int)) or result == "too_many_vlan_tags"
        assert expected, (linktype, result)


def test_corpus_covers_tunnels() -> None:
    """Sanity: the Ethernet corpus holds IP-protocol and UDP tunnels with decoded inner packets."""
    results = [decode_frame(f, decode.DLT_EN10MB) for f in corpus(decode.DLT_EN10MB)]
    tables = [(r[0], type(r[5])) for r in results if isinstance(r, tuple) and r[5] is not None]
    assert (TUNNEL, tuple) in tables and (OTHER, tuple) in tables


# --- (a) every truncation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("linktype", LINKTYPES)
def test_every_truncation_of_every_corpus_frame(linktype: int) -> None:
    """Each corpus frame cut at every offset decodes without raising into a documented shape."""
    for frame in corpus(linktype):
        for n in range(len(frame) + 1):
            check_result(decode_frame(frame[:n], linktype))


# --- (b) random tails and byte flips ---------------------------------------------------------------------

_BYTES = st.one_of(st.integers(0, 255), st.sampled_from([0, 1, 2, 4, 5, 6, 8, 17, 19, 20, 0x3F, 0x40, 0x45,
                                                          0x46, 0x4F, 0x60, 0x7F, 0x80, 0xFE, 0xFF]))
_WORDS = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 8, 10, 19, 20, 40, 0x0800, 0x86DD, 0x8100,
                                                            0x88A8, 0x9100, 0x8847, 0x8864, 4789, 6081,
                                                            3544, 2152, 0xFFFF]))


@st.composite
def mutated(draw: st.DrawFn, linktype: int) -> bytes:
    """A corpus frame of a link type, maybe cut, with overwritten bytes or words and a random tail."""
    frame = bytearray(draw(st.sampled_from(corpus(linktype))))
    if frame and draw(st.booleans()):
        del frame[draw(st.integers(0, len(frame))):]
    for _ in range(draw(st.integers(0, 4))):
        if len(frame) > 1:
            at = draw(st.integers(0, len(frame) - 2))
            if draw(st.booleans()):
                frame[at] = draw(_BYTES)
            else:
                frame[at:at + 2] = draw(_WORDS).to_bytes(2, "big")
    frame += draw(st.binary(max_size=40))
    return bytes(frame)


@pytest.mark.parametrize("linktype", LINKTYPES)
@PER_LINKTYPE
@given(data=st.data())
def test_valid_frames_with_random_tails(linktype: int, data: st.DataObject) -> None:
    """A valid frame followed by random bytes decodes without raising into a documented shape."""
    frame = data.draw(st.sampled_from(corpus(linktype)))
    check_result(decode_frame(frame + data.draw(st.binary(min_size=1, max_size=64)), linktype))


@pytest.mark.parametrize("linktype", LINKTYPES)
@PER_LINKTYPE
@given(data=st.data())
def test_valid_frames_with_random_byte_flips(linktype: int, data: st.DataObject) -> None:
    """A valid frame with bytes overwritten, cut and extended decodes without raising."""
    frame = data.draw(mutated(linktype))
    check_result(decode_frame(frame, linktype))


@pytest.mark.parametrize("linktype", [*LINKTYPES, 147, 2**31 - 1])
@PER_LINKTYPE
@given(frame=st.binary(max_size=160))
def test_random_bytes(linktype: int, frame: bytes) -> None:
    """Random bytes on every link type (and unsupported ones) decode without raising."""
    result = decode_frame(frame, linktype)
    check_result(result)
    if linktype not in SUPPORTED_LINKTYPES:
        assert result == "unsupported_link"


# --- the whole flow table --------------------------------------------------------------------------------

US = 1_000_000
EPOCH_US = 1_767_225_600 * US
TIGHT = FlowSettings(idle_timeout=1.0, active_timeout=3.0, tcp_close_grace=0.5, max_flows=3)


def _timed(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """(time step, frame) pairs to (packet time in microseconds, frame); steps may go backwards."""
    timed, t = [], EPOCH_US
    for step, frame in frames:
        t = max(0, t + step)
        timed.append((t, frame))
    return timed


def run_table(linktype: int, frames: list[tuple[int, bytes]], flow_settings: FlowSettings, batches: int,
              fast_path: bool = True) -> tuple[list[FlowRecord], dict[str, int]]:
    """Feed frames (time step in microseconds, bytes) to a FlowTable in batches, then flush it."""
    records: list[FlowRecord] = []
    counters = Counters()
    table = FlowTable(flow_settings, records.append, counters, linktype=linktype, fast_path=fast_path)
    timed = _timed(frames)
    size = max(1, -(-len(timed) // batches))
    for i in range(0, len(timed), size):
        table.ingest(*pack_us(timed[i:i + size]))
    table.flush()
    return records, counters.values


def unaccounted(records: list[FlowRecord], values: dict[str, int]) -> int:
    """frames - (outer packets in flows + non-IP + skipped + fragments), as RunTotals.summary computes it."""
    in_flows = (sum(r.a_pkts + r.b_pkts for r in records) - values.get("decapsulated", 0)
                - values.get("reassembled", 0))
    other = sum(v for k, v in values.items() if k.startswith(("non_ip.", "skipped.")))
    return values.get("frames", 0) - in_flows - other - values.get("ip_fragments", 0)


_STEPS = st.one_of(st.just(0), st.integers(1, 2_000), st.integers(2_000, 5_000_000),
                   st.sampled_from([60_000_000, 400_000_000, -3_000_000]))


@st.composite
def capture(draw: st.DrawFn) -> tuple[int, list[tuple[int, bytes]]]:
    """A link type and a short capture of corpus, mutated and random frames with time steps."""
    linktype = draw(st.sampled_from(LINKTYPES))
    frame = st.one_of(st.sampled_from(corpus(linktype)), mutated(linktype),
                      st.binary(max_size=80))
    return linktype, draw(st.lists(st.tuples(_STEPS, frame), max_size=40))


@FUZZ
@given(capture(), st.sampled_from([FlowSettings(), TIGHT]), st.integers(1, 3))
def test_flow_table_accounts_for_every_frame(case: tuple[int, list[tuple[int, bytes]]],
                                             flow_settings: FlowSettings, batches: int) -> None:
    """Any capture runs through FlowTable.ingest and flush without raising and leaves no frame unaccounted."""
    linktype, frames = case
    records, values = run_table(linktype, frames, flow_settings, batches)
    assert values.get("frames", 0) == len(frames)
    assert unaccounted(records, values) == 0, values
    assert all(k[len("skipped."):] in SKIP_REASONS for k in values if k.startswith("skipped."))
    assert all(r.a_pkts + r.b_pkts > 0 for r in records)


def _overdue(records: list[FlowRecord], frames: list[tuple[int, bytes]],
             flow_settings: FlowSettings) -> list[str]:
    """Flows still live at the flush whose idle or active deadline passed a second or more before the last
    packet: the timer wheel should have ended them (packet time only moves forward, clamped)."""
    final = max((t for t, _ in _timed(frames)), default=0)
    idle, active = round(flow_settings.idle_timeout * US), round(flow_settings.active_timeout * US)
    return [repr(r) for r in records if r.end == "end"
            and min(round(r.last * US) + idle, round(r.first * US) + active) <= final - US]


@FUZZ
@given(capture(), st.sampled_from([FlowSettings(), TIGHT]), st.integers(1, 3))
def test_flow_table_leaves_no_overdue_flow_for_the_flush(case: tuple[int, list[tuple[int, bytes]]],
                                                         flow_settings: FlowSettings, batches: int) -> None:
    """No flow ended by the final flush was already past its idle or active deadline."""
    linktype, frames = case
    records, _ = run_table(linktype, frames, flow_settings, batches)
    assert _overdue(records, frames, flow_settings) == []


def test_flow_table_expires_a_closing_flow_after_evictions() -> None:
    """A FIN flow opened while the table is full and evicting still ends by its grace period."""
    def syn_or_fin(sport: int, flags: int) -> bytes:
        return wardgen.ipv4(A4, B4, 6, wardgen.tcp(sport, 80, 0, 0, flags))
    fin = wardgen.FIN | wardgen.ACK
    frames = [(0, syn_or_fin(1, wardgen.SYN)), (0, syn_or_fin(2, wardgen.SYN)), (0, syn_or_fin(3, fin)),
              (0, syn_or_fin(5, fin)), (0, syn_or_fin(1, wardgen.SYN)),
              (2_500_000, syn_or_fin(1, wardgen.SYN))]
    flow_settings = FlowSettings(idle_timeout=1.0, active_timeout=3.0, tcp_close_grace=0.5, max_flows=2)
    records, _ = run_table(decode.LINKTYPE_RAW, frames, flow_settings, 1)
    assert _overdue(records, frames, flow_settings) == []


@st.composite
def fast_path_frame(draw: st.DrawFn) -> bytes:
    """An Ethernet IPv4 frame near the fast path's conditions: few hosts and ports, so flows repeat, and
    the fields the fast path tests (TPID, TCI, version/IHL, total length, fragment bits, protocol) drawn
    from valid and boundary values."""
    src, dst = draw(st.permutations([A4, B4, C4]))[:2]
    sport, dport = draw(st.sampled_from([1, 443, 2152, 4789, 40000])), draw(st.sampled_from([53, 80, 40000]))
    payload = draw(st.binary(max_size=24))
    proto = draw(st.sampled_from([6, 6, 17, 17, 1, 4, 47]))
    if proto == 6:
        l4 = wardgen.tcp(sport, dport, 1, 1, draw(st.integers(0, 255)), payload)
    elif proto == 17:
        l4 = wardgen.udp(sport, dport, payload)
    else:
        l4 = payload
    options = draw(st.sampled_from([b"", b"", bytes(4)]))
    ip = bytearray(wardgen.ipv4(src, dst, proto, l4, options=options, df=draw(st.booleans())))
    if draw(st.booleans()):
        ip[0] = draw(st.sampled_from([0x44, 0x45, 0x46, 0x4F, 0x55, 0x65]))
    if draw(st.booleans()):
        ip[2:4] = draw(st.sampled_from([0, 1, 10, 19, 20, 39, 40, 41, 0xFFFF])).to_bytes(2, "big")
    if draw(st.booleans()):
        ip[6:8] = draw(st.sampled_from([0x2000, 0x0001, 0x0100, 0x1FFF, 0x8000])).to_bytes(2, "big")
    if draw(st.booleans()):
        ip[9] = draw(st.integers(0, 255))
    tags = draw(st.sampled_from([b"", b"", struct.pack("!HH", 0x8100, 30), struct.pack("!HH", 0x8100, 30),
                                 struct.pack("!HH", 0x8100, 0x2000 | 30), struct.pack("!HH", 0x8100, 0x1000),
                                 struct.pack("!HHHH", 0x88A8, 5, 0x8100, 6)]))
    frame = bytes.fromhex("02000000000b02000000000a") + tags + b"\x08\x00" + bytes(ip)
    return frame + bytes(max(0, draw(st.sampled_from([0, 60, 64])) - len(frame)))


def _fast_path_bug(frame: bytes) -> bool:
    """Frames hitting the known fast-path bug: IPv4 total length 1..19 (see tests/unit/test_decode.py)."""
    for at in (14, 18):
        ip = frame[at:at + 4]
        if frame[at - 2:at] == b"\x08\x00" and len(ip) == 4 and ip[0] == 0x45 and 0 < ip[2] << 8 | ip[3] < 20:
            return True
    return False


@FUZZ
@given(st.lists(st.tuples(_STEPS, st.one_of(fast_path_frame(), fast_path_frame(),
                                            st.sampled_from(corpus(decode.DLT_EN10MB)),
                                            mutated(decode.DLT_EN10MB))),
                max_size=40),
       st.sampled_from([FlowSettings(), TIGHT]))
def test_fast_path_and_general_path_give_the_same_records(frames: list[tuple[int, bytes]],
                                                          flow_settings: FlowSettings) -> None:
    """An Ethernet capture gives the same flow records and counters with and without the fast path."""
    frames = [f for f in frames if not _fast_path_bug(f[1])]
    frames = frames + frames  # the second copy finds its flows known: the fast path takes it
    fast = run_table(decode.DLT_EN10MB, frames, flow_settings, 1, fast_path=True)
    slow = run_table(decode.DLT_EN10MB, frames, flow_settings, 1, fast_path=False)
    assert fast == slow
