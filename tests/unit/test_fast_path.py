"""The flow table's fast path (fastpath.py) against the general path (decode.py).

The fast path reads fixed offsets for IPv4 and IPv6 TCP/UDP under up to two VLAN tags; whatever it
takes, it must count exactly as the decoder would, hints included. Random frames over every
encapsulation it handles (and the near misses it must leave to the decoder) check that.
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

import pytest

from agent.flowhead import HintSettings
from agent.flows import FlowSettings, FlowTable
from agent.records import Counters, FlowRecord, ProtoHint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import wardgen

HOSTS4 = ("10.1.0.1", "10.1.0.2", "10.1.0.3")
HOSTS6 = ("fd00::1", "fd00::2", "fd00::3")
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PORTS = (80, 53, 2575, 40000, 40001, 4789)  # 4789 is VXLAN: a tunnel port the fast path leaves alone
PAYLOADS = (b"", b"GET / HTTP/1.1\r\nHost: pacs.ward\r\nUser-Agent: modality/1.0\r\n\r\n",
            wardgen.dns_message(7, "pacs.ward"),
            b"\x0bMSH|^~\\&|LAB|WARD|EHR|HOSP|2026||ADT^A01|1|P|2.5\r\x1c\r")
Run = tuple[list[FlowRecord], dict[str, int], list[ProtoHint]]


def _tagged(ethertype: int, packet: bytes, rng: random.Random) -> bytes:
    """An Ethernet frame under zero, one or two VLAN tags, some with a priority or an unusual TPID."""
    tags = b""
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        tpid = rng.choice((0x8100, 0x8100, 0x88A8, 0x9100))
        priority = rng.choice((0, 0, 0, 5)) << 13
        tags += struct.pack("!HH", tpid, priority | rng.choice((10, 20, 4095)))
    frame = bytes.fromhex("02000000000b02000000000a") + tags + struct.pack("!H", ethertype) + packet
    return frame + bytes(60 - len(frame)) if len(frame) < 60 else frame


def _random_frame(rng: random.Random) -> bytes:
    src, dst = rng.sample(range(3), 2)
    sport, dport = rng.choice(PORTS), rng.choice(PORTS)
    payload = rng.choice(PAYLOADS)
    flags = rng.choice((wardgen.ACK, wardgen.ACK, wardgen.ACK | wardgen.PSH, wardgen.SYN,
                        wardgen.SYN | wardgen.ACK, wardgen.FIN | wardgen.ACK, wardgen.RST))
    l4 = (wardgen.tcp(sport, dport, rng.randrange(1 << 32), 1, flags, payload,
                      options=rng.choice((b"", b"\x01" * 12)))
          if rng.random() < 0.6 else wardgen.udp(sport, dport, payload))
    proto = 6 if len(l4) >= 20 and l4[12] >> 4 >= 5 and rng.random() < 0.6 else 17
    if proto == 17:
        l4 = wardgen.udp(sport, dport, payload)
    if rng.random() < 0.5:
        packet = wardgen.ipv4(HOSTS4[src], HOSTS4[dst], proto, l4,
                              options=b"\x01\x01\x01\x00" if rng.random() < 0.05 else b"")
        ethertype, length_at = wardgen.ETH_IP4, 2
    else:
        ext = [(60, b"")] if rng.random() < 0.05 else []
        packet = wardgen.ipv6(HOSTS6[src], HOSTS6[dst], proto, l4, ext_headers=ext)
        ethertype, length_at = wardgen.ETH_IP6, 4
    if rng.random() < 0.1:  # a length field that disagrees with the packet
        packet = bytearray(packet)
        packet[length_at:length_at + 2] = rng.randrange(0, len(packet) + 60).to_bytes(2, "big")
        packet = bytes(packet)
    frame = _tagged(ethertype, packet, rng)
    return frame[:rng.randrange(14, len(frame))] if rng.random() < 0.05 else frame


def _run(frames: list[bytes], fast_path: bool) -> Run:
    records: list[FlowRecord] = []
    hints: list[ProtoHint] = []
    counters = Counters()
    table = FlowTable(FlowSettings(max_flows=64), records.append, counters, fast_path=fast_path,
                      on_hint=hints.append, hints=HintSettings())
    packets, meta = b"", b""
    for i, frame in enumerate(frames):
        meta += struct.pack("=IIII", 1_767_225_600 + i // 1000, i % 1000 * 1000, len(packets), len(frame))
        packets += frame
    table.ingest(packets, meta)
    table.flush()
    return records, counters.values, hints


@pytest.mark.parametrize("seed", range(6))
def test_random_frames_count_and_hint_alike_on_both_paths(seed: int) -> None:
    """Random IPv4/IPv6 TCP/UDP frames under 0-3 VLAN tags give the same records, counters and hints."""
    rng = random.Random(20261129 + seed)
    frames = [_random_frame(rng) for _ in range(3000)]
    fast, general = _run(frames, True), _run(frames, False)
    assert len(fast[0]) > 100 and fast[2]
    assert fast == general


@pytest.mark.parametrize("vlans", [(), (20,), (20, 30)], ids=["untagged", "802.1q", "qinq"])
@pytest.mark.parametrize("total", [34, 39, 51])
def test_ipv4_total_length_short_of_the_tcp_header_is_skipped_on_both_paths(
        vlans: tuple[int, ...], total: int) -> None:
    """A known flow's segment whose IPv4 total length ends inside its TCP header is truncated_l4 on both."""
    packet = wardgen.ipv4(HOSTS4[0], HOSTS4[1], 6, wardgen.tcp(40000, 80, 1, 1, wardgen.ACK, bytes(20),
                                                              options=bytes(12)))
    short = bytearray(packet)
    short[2:4] = total.to_bytes(2, "big")
    frames = [wardgen.ether(MAC_B, MAC_A, wardgen.ETH_IP4, p, vlans) for p in (packet, bytes(short))]
    fast = _run(frames, True)
    assert fast[1].get("skipped.truncated_l4") == 1
    assert fast == _run(frames, False)


@pytest.mark.parametrize("vlans", [(), (20,)], ids=["untagged", "802.1q"])
def test_frame_cut_by_the_snaplen_hands_the_hinters_only_its_own_bytes(vlans: tuple[int, ...]) -> None:
    """A head segment cut short by the snaplen is read up to the cut, never into the next frame."""
    request = (b"GET /worklist HTTP/1.1\r\nHost: pacs.ward\r\nX-Pad: " + b"p" * 60
               + b"\r\nUser-Agent: modality/1.0\r\n\r\n")
    syn, synack, get = (wardgen.ipv4(HOSTS4[a], HOSTS4[b], 6, wardgen.tcp(pa, pb, seq, 1, flags, data))
                        for a, b, pa, pb, seq, flags, data in (
                            (0, 1, 40000, 80, 0, wardgen.SYN, b""),
                            (1, 0, 80, 40000, 0, wardgen.SYN | wardgen.ACK, b""),
                            (0, 1, 40000, 80, 1, wardgen.ACK | wardgen.PSH, request)))
    frames = [wardgen.ether(MAC_B, MAC_A, wardgen.ETH_IP4, p, vlans) for p in (syn, synack, get)]
    frames[2] = frames[2][:-80]  # the snaplen cuts the request inside its X-Pad line
    datagram = wardgen.udp(5000, 6000, b"\r\nUser-Agent: the next frame\r\n\r\n")
    after = wardgen.ipv4(HOSTS4[2], HOSTS4[1], 17, datagram)
    frames.append(wardgen.ether(MAC_B, MAC_A, wardgen.ETH_IP4, after, vlans))
    fast = _run(frames, True)
    assert fast == _run(frames, False)
    assert all("next frame" not in str(hint.fields) for hint in fast[2])
