#!/usr/bin/env python3
"""Deterministic synthetic hospital-ward captures for tests, demos and benchmarks (stdlib only).

Usable as a module (packet builders, conversation helpers, pcap/pcapng writers) and as a CLI::

    python scripts/wardgen.py sample OUT.pcap          # a few hundred packets, README demo
    python scripts/wardgen.py bench-flows OUT.pcap     # ~1 M packets, ~50 k flows
    python scripts/wardgen.py bench-churn OUT.pcap     # ~500 k packets, ~200 k flows
    python scripts/wardgen.py edge OUT.pcap            # a dozen frames that are easy to miscount
    options: --seed N (1)  --snaplen N (65535)  --scale F (benches only)
             --linktype {1,113,101,0} (re-wrap for SLL, raw IP, BSD loopback)  --pcapng

Scenarios
    sample       a small ward over ~2 minutes: DHCP DORA, ARP, DNS (A and AAAA over IPv6), a CT
                 storing two images to a PACS over DICOM, a monitor gateway on VLAN 30 sending HL7
                 over MLLP to an interface engine, one HTTPS session, an IPv6 ping and an MLD report
                 (hop-by-hop header), a fragmented ping, a pump's web page and a short SYN scan.
    bench-flows  ~1 M packets / ~50 k flows over ~10 min: many long TCP flows (DICOM bulk, HL7,
                 HTTPS) among DNS, DHCP, ARP, ICMP, short HTTP and a few port scans.
    bench-churn  ~500 k packets / ~200 k flows over ~100 s: mostly short flows (DNS, scan SYNs,
                 short HTTP), so many flows are alive at once under a 60 s idle timeout.
    In the benches a third of the frames carry 802.1Q tags (one host in ten of those: QinQ), some
    5-10 % are IPv6 (a few with hop-by-hop or fragment headers), and a few are IPv4 fragments.

Conventions
    Conversations are generators of (timestamp, Ethernet frame); merge() interleaves them.
    Addresses are synthetic: wards in 10.0.0.0/8 and fd00::/8, external peers only in
    192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32, MACs locally administered,
    names under .example, patients TEST^PATIENT.
    All checksums are correct: ipv4()/ipv6() fill a zero TCP/UDP/ICMPv6 checksum of an unfragmented
    packet, icmp() computes its own, and the fast path computes them incrementally.
    Ethernet frames are zero-padded to 60 bytes, as a tap sees them.
    Timestamps start at EPOCH and never decrease; the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import os
import random
import struct
import sys
import time
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from functools import lru_cache
from ipaddress import ip_address
from typing import BinaryIO, NamedTuple, Self

EPOCH = 1767225600.0  # 2026-01-01T00:00:00Z
Pkt = tuple[float, bytes]
Conv = Generator[Pkt, None, float]  # a step of a conversation: yields packets, returns its clock
ETH_IP4, ETH_IP6, ETH_ARP, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
BROADCAST = "ff:ff:ff:ff:ff:ff"
GATEWAY_MAC = "02:00:0a:00:00:fe"
MSS = 1460
_IP4 = struct.Struct("!BBHHHBBH8s")
_IP6 = struct.Struct("!IHBB32s")
_TCP = struct.Struct("!HHIIHHHH")
_UDP = struct.Struct("!HHHH")
_REC = struct.Struct("<IIII")
_SYN_OPTS = b"\x02\x04\x05\xb4\x01\x01\x04\x02"  # MSS 1460, NOP, NOP, SACK permitted
_CSUM_AT = {6: 16, 17: 6, 58: 2}  # where the checksum sits in TCP, UDP, ICMPv6
_NOISE = random.Random(0).randbytes(1 << 16)  # stands in for ciphertext and ping data
_PIXELS = bytes(range(256)) * 8192  # stands in for 2 MB of pixel data
_CT_STORAGE = b"1.2.840.10008.5.1.4.1.1.2"


# --- addresses and checksums ---------------------------------------------------------------------

@lru_cache(maxsize=65536)
def _ip(addr: str) -> bytes:
    return ip_address(addr).packed


@lru_cache(maxsize=65536)
def _mac(addr: str) -> bytes:
    return bytes.fromhex(addr.replace(":", ""))


def _sum(data: bytes) -> int:
    """One's-complement sum of the big-endian 16-bit words of data, modulo 0xffff (2**16 = 1)."""
    return (int.from_bytes(data, "big") << (8 * (len(data) & 1))) % 0xFFFF


def _fin(total: int) -> int:
    """The checksum for a one's-complement sum: 0x0000 rather than 0xffff (RFC 1624)."""
    return -total % 0xFFFF


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071); 0 over data that already holds a correct checksum."""
    return _fin(_sum(data))


# --- writers ---------------------------------------------------------------------------------------

def _open(out: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(out, (str, os.PathLike)):
        return open(out, "wb", buffering=1 << 20), True
    return out, False


class PcapWriter:
    """Classic libpcap writer: little-endian, microsecond stamps, caplen = min(len, snaplen)."""

    def __init__(self, out: str | os.PathLike[str] | BinaryIO, linktype: int = 1,
                 snaplen: int = 65535) -> None:
        self._f, self._own = _open(out)
        self.linktype, self.snaplen, self.count = linktype, snaplen, 0
        self._f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts: float, frame: bytes) -> None:
        sec, usec = divmod(round(ts * 1e6), 1_000_000)
        cap = min(len(frame), self.snaplen)
        self._f.write(_REC.pack(sec, usec, cap, len(frame)) + frame[:cap])
        self.count += 1

    def write_all(self, packets: Iterable[Pkt]) -> int:
        for ts, frame in packets:
            self.write(ts, frame)
        return self.count

    def close(self) -> None:
        if self._own:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _block(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def write_pcapng(out: str | os.PathLike[str] | BinaryIO, linktype: int, packets: Iterable[Pkt],
                 snaplen: int = 65535) -> int:
    """Minimal little-endian pcapng: one SHB, one IDB (microseconds), one EPB per packet."""
    f, own = _open(out)
    f.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    f.write(_block(1, struct.pack("<HHI", linktype, 0, snaplen)))
    count = 0
    for ts, frame in packets:
        us, cap = round(ts * 1e6), min(len(frame), snaplen)
        epb = struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, cap, len(frame)) + frame[:cap]
        f.write(_block(6, epb))
        count += 1
    if own:
        f.close()
    return count


def _ethertype_of(ip_packet: bytes) -> int:
    return ETH_IP6 if ip_packet[0] >> 4 == 6 else ETH_IP4


def sll(packet: bytes, ethertype: int = 0, pkttype: int = 0, addr: str = "02:00:00:00:00:01") -> bytes:
    """Linux cooked header (linktype 113): packet type, ARPHRD_ETHER, source address, protocol."""
    et = ethertype or _ethertype_of(packet)
    return struct.pack("!HHH8sH", pkttype, 1, 6, _mac(addr), et) + packet


def loopback(ip_packet: bytes, af_inet6: int = 24) -> bytes:
    """BSD loopback header (linktype 0): address family in the file's (little-endian) order."""
    return struct.pack("<I", af_inet6 if ip_packet[0] >> 4 == 6 else 2) + ip_packet


def ppp(ip_packet: bytes) -> bytes:
    """PPP in HDLC-like framing (linktypes 9 and 50): address, control, protocol."""
    return b"\xff\x03" + (b"\x00\x57" if ip_packet[0] >> 4 == 6 else b"\x00\x21") + ip_packet


def wlan_data(ip_packet: bytes, src: str = "02:00:00:00:00:01", dst: str = GATEWAY_MAC,
              bssid: str = "02:00:00:00:00:aa") -> bytes:
    """An unencrypted 802.11 QoS data frame to the access point (linktype 105), LLC/SNAP inside."""
    header = b"\x88\x01\0\0" + _mac(bssid) + _mac(src) + _mac(dst) + b"\0\0" + b"\0\0"
    return header + b"\xaa\xaa\x03\0\0\0" + struct.pack("!H", _ethertype_of(ip_packet)) + ip_packet


def wrap_ip(linktype: int, ip_packet: bytes) -> bytes:
    """Frame an IP packet for linktype 1 (Ethernet), 113 (SLL), 101 (raw IP), 0 (loopback),
    9 (PPP), 51 (PPPoE), 104 (Cisco HDLC), 105 (802.11), 127 (radiotap) or 192 (PPI)."""
    if linktype == 1:
        return ether(GATEWAY_MAC, "02:00:00:00:00:01", _ethertype_of(ip_packet), ip_packet)
    if linktype == 113:
        return sll(ip_packet)
    if linktype == 101:
        return ip_packet
    if linktype == 0:
        return loopback(ip_packet)
    if linktype == 9:
        return ppp(ip_packet)
    if linktype == 51:
        body = ppp(ip_packet)[2:]
        return struct.pack("!BBHH", 0x11, 0, 7, len(body)) + body
    if linktype == 104:
        return b"\x0f\x00" + struct.pack("!H", _ethertype_of(ip_packet)) + ip_packet
    if linktype == 105:
        return wlan_data(ip_packet)
    if linktype == 127:
        return b"\0\0\x08\0\0\0\0\0" + wlan_data(ip_packet)
    if linktype == 192:
        return struct.pack("<BBHI", 0, 0, 8, 105) + wlan_data(ip_packet)
    raise ValueError(f"unsupported linktype {linktype}")


def relink(linktype: int, frame: bytes) -> bytes | None:
    """Re-frame an Ethernet frame for linktype; None for non-IP frames it cannot carry."""
    if linktype == 1:
        return frame
    off = 12
    while frame[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    et, body = int.from_bytes(frame[off:off + 2], "big"), frame[off + 2:]
    if et == ETH_IP4:
        body = body[:int.from_bytes(body[2:4], "big")]
    elif et == ETH_IP6:
        body = body[:40 + int.from_bytes(body[4:6], "big")]
    elif linktype == 113 and et == ETH_ARP:
        return sll(body[:28], ETH_ARP, addr=frame[6:12].hex(":"))
    else:
        return None
    return sll(body, et, addr=frame[6:12].hex(":")) if linktype == 113 else wrap_ip(linktype, body)


# --- packet builders -------------------------------------------------------------------------------

def ether(dst: str, src: str, ethertype: int, payload: bytes, vlans: Sequence[int] = (),
          pad: bool = True) -> bytes:
    """Ethernet II; vlans outermost first (two or more: the outer tag is 802.1ad 0x88a8)."""
    tags = b"".join(struct.pack("!HH", ETH_QINQ if i == 0 and len(vlans) > 1 else ETH_VLAN, vid & 0xFFF)
                    for i, vid in enumerate(vlans))
    frame = _mac(dst) + _mac(src) + tags + struct.pack("!H", ethertype) + payload
    return frame + bytes(60 - len(frame)) if pad and len(frame) < 60 else frame


def _fill_l4(proto: int, src: bytes, dst: bytes, l4: bytes) -> bytes:
    """Fill a zero TCP/UDP/ICMPv6 checksum using the pseudo-header of src and dst."""
    at = _CSUM_AT.get(proto)
    if at is None or len(l4) < at + 2 or l4[at:at + 2] != b"\0\0":
        return l4
    c = _fin(_sum(src) + _sum(dst) + proto + len(l4) + _sum(l4)) or (0xFFFF if proto == 17 else 0)
    return l4[:at] + struct.pack("!H", c) + l4[at + 2:]


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64, ident: int = 0,
         df: bool = True, options: bytes = b"", frag_offset: int = 0, more_fragments: bool = False,
         tos: int = 0) -> bytes:
    """IPv4 packet with a correct header checksum; frag_offset is in bytes (a multiple of 8)."""
    s, d = _ip(src), _ip(dst)
    options += bytes(-len(options) % 4)
    if not (frag_offset or more_fragments):
        payload = _fill_l4(proto, s, d, payload)
    flags = (0x4000 if df else 0) | (0x2000 if more_fragments else 0) | (frag_offset >> 3)
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(payload), ident & 0xFFFF,
                      flags, ttl, proto, 0, s, d) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def _ext(nxt: int, kind: int, body: bytes) -> bytes:
    if kind == 44:
        return struct.pack("!BB", nxt, 0) + body[:6].ljust(6, b"\0")
    need = -(len(body) + 2) % 8
    if kind in (0, 60) and need:
        body += b"\0" if need == 1 else bytes([1, need - 2]) + bytes(need - 2)  # Pad1 / PadN
    body += bytes(-(len(body) + 2) % 8)
    return struct.pack("!BB", nxt, (len(body) + 2) // 8 - 1) + body


def ipv6_fragment(offset: int, more: bool, ident: int) -> tuple[int, bytes]:
    """An ext_headers entry for a fragment header; offset in bytes (a multiple of 8)."""
    return 44, struct.pack("!HI", offset | more, ident)


def ipv6(src: str, dst: str, next_header: int, payload: bytes,
         ext_headers: Sequence[tuple[int, bytes]] = (), hop_limit: int = 64) -> bytes:
    """IPv6 packet; ext_headers are (type, body) for hop-by-hop 0, routing 43, fragment 44, dest 60."""
    s, d = _ip(src), _ip(dst)
    if all(kind != 44 or not int.from_bytes(body[:2], "big") & 0xFFF9 for kind, body in ext_headers):
        payload = _fill_l4(next_header, s, d, payload)  # whole: no fragment, or an atomic one
    kinds = [kind for kind, _ in ext_headers] + [next_header]
    chain = b"".join(_ext(kinds[i + 1], kind, body) for i, (kind, body) in enumerate(ext_headers))
    return struct.pack("!IHBB16s16s", 0x60000000, len(chain) + len(payload), kinds[0], hop_limit,
                       s, d) + chain + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
        window: int = 65535, options: bytes = b"") -> bytes:
    """TCP segment with checksum 0 (ipv4()/ipv6() fill it in)."""
    options += bytes(-len(options) % 4)
    return _TCP.pack(sport, dport, seq, ack, (20 + len(options)) << 10 | flags, window, 0, 0) \
        + options + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    """UDP datagram with checksum 0 (ipv4()/ipv6() fill it in)."""
    return _UDP.pack(sport, dport, 8 + len(payload), 0) + payload


def icmp(type_: int, code: int, payload: bytes) -> bytes:
    """ICMPv4 message with its checksum; payload starts with the rest of the header (id, seq)."""
    return struct.pack("!BBH", type_, code, checksum(bytes([type_, code]) + payload)) + payload


def icmpv6(type_: int, code: int, payload: bytes) -> bytes:
    """ICMPv6 message with checksum 0 (ipv6() fills it in)."""
    return struct.pack("!BBH", type_, code, 0) + payload


def arp(op: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    """ARP for IPv4 over Ethernet (op 1 request, 2 reply)."""
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP4, 6, 4, op, _mac(sha), _ip(spa), _mac(tha), _ip(tpa))


def fragment(src: str, dst: str, proto: int, l4: bytes, ident: int, mtu: int = 1500) -> list[bytes]:
    """IP packets carrying l4 within mtu: IPv4 fragments or IPv6 fragment headers when too big."""
    v6 = ":" in src
    l4 = _fill_l4(proto, _ip(src), _ip(dst), l4)
    if len(l4) + (40 if v6 else 20) <= mtu:
        return [ipv6(src, dst, proto, l4) if v6 else ipv4(src, dst, proto, l4, ident=ident)]
    step, out = (mtu - (48 if v6 else 20)) // 8 * 8, []
    for off in range(0, len(l4), step):
        part, more = l4[off:off + step], off + step < len(l4)
        out.append(ipv6(src, dst, proto, part, [ipv6_fragment(off, more, ident)]) if v6 else
                   ipv4(src, dst, proto, part, ident=ident, df=False, frag_offset=off, more_fragments=more))
    return out


# --- fast path: precomputed headers, incremental checksums ---------------------------------------

class Host(NamedTuple):
    """An endpoint: an IPv4 or IPv6 address, a MAC and the TTL / hop limit it sends with."""

    ip: str
    mac: str
    ttl: int = 64


class _Pair:
    """Frames between hosts a and b on one link; direction 0 is a->b, 1 is b->a."""

    def __init__(self, a: Host, b: Host, vlans: Sequence[int] = ()) -> None:
        self.v6 = ":" in a.ip
        et = ETH_IP6 if self.v6 else ETH_IP4
        self.l2 = (ether(b.mac, a.mac, et, b"", vlans, False), ether(a.mac, b.mac, et, b"", vlans, False))
        ab, bb = _ip(a.ip), _ip(b.ip)
        self.addrs, self.ttl, self.psum = (ab + bb, bb + ab), (a.ttl, b.ttl), _sum(ab + bb)
        self.ident = [_sum(ab), _sum(bb)]

    def ip(self, d: int, proto: int, l4: bytes) -> bytes:
        n, ttl = len(l4), self.ttl[d]
        if self.v6:
            hdr = _IP6.pack(0x60000000, n, proto, ttl, self.addrs[d])
        else:
            self.ident[d] = ident = (self.ident[d] + 1) & 0xFFFF
            c = _fin(0x8500 + n + 20 + ident + (ttl << 8 | proto) + self.psum)
            hdr = _IP4.pack(0x45, 0, n + 20, ident, 0x4000, ttl, proto, c, self.addrs[d])
        frame = self.l2[d] + hdr + l4
        return frame if len(frame) >= 60 else frame + bytes(60 - len(frame))

    def tcp(self, d: int, sport: int, dport: int, seq: int, ack: int, flags: int,
            payload: bytes = b"", opts: bytes = b"", psum: int = -1) -> bytes:
        hl = 20 + len(opts)
        n, off = hl + len(payload), hl << 10 | flags
        psum = _sum(payload) if psum < 0 else psum
        c = _fin(self.psum + 6 + n + sport + dport + seq + ack + off + 0xFFFF + psum + _sum(opts))
        return self.ip(d, 6, _TCP.pack(sport, dport, seq, ack, off, 0xFFFF, c, 0) + opts + payload)

    def udp(self, d: int, sport: int, dport: int, payload: bytes) -> bytes:
        n = 8 + len(payload)
        c = _fin(self.psum + 17 + n + sport + dport + n + _sum(payload)) or 0xFFFF  # 0: none
        return self.ip(d, 17, _UDP.pack(sport, dport, n, c) + payload)


class _Tcp:
    """Sequence numbers of one TCP connection over a _Pair (direction 0 = client)."""

    def __init__(self, pair: _Pair, sport: int, dport: int) -> None:
        self.pair, self.ports = pair, ((sport, dport), (dport, sport))
        self.seq = [sport * 2654435761 & 0xFFFFFFFF, (dport * 40503 + sport) * 69069 & 0xFFFFFFFF]

    def seg(self, d: int, flags: int, payload: bytes = b"", psum: int = -1, opts: bytes = b"") -> bytes:
        sport, dport = self.ports[d]
        ack = self.seq[1 - d] if flags & ACK else 0
        frame = self.pair.tcp(d, sport, dport, self.seq[d], ack, flags, payload, opts, psum)
        self.seq[d] = (self.seq[d] + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        return frame


def _handshake(c: _Tcp, t: float, rtt: float) -> Conv:
    yield t, c.seg(0, SYN, opts=_SYN_OPTS)
    yield t + rtt, c.seg(1, SYN | ACK, opts=_SYN_OPTS)
    yield t + rtt * 1.05, c.seg(0, ACK)
    return t + rtt * 1.05


def _chunks(data: bytes) -> list[tuple[bytes, int]]:
    return [(data[i:i + MSS], -1) for i in range(0, len(data), MSS)]


def _send(c: _Tcp, t: float, d: int, data: bytes | Sequence[tuple[bytes, int]],
          gap: float = 0.00012) -> Conv:
    """Segments from d (chunks with precomputed sums, or raw bytes), ACKed every second one."""
    chunks = _chunks(data) if isinstance(data, bytes) else data
    for i, (chunk, psum) in enumerate(chunks):
        last = i == len(chunks) - 1
        yield t, c.seg(d, ACK | PSH if last else ACK, chunk, psum)
        if last or i % 2:
            yield t + gap / 2, c.seg(1 - d, ACK)
        t += gap
    return t


def _close(c: _Tcp, t: float, rtt: float, rst: bool = False) -> Conv:
    if rst:
        yield t, c.seg(0, RST | ACK)
        return t
    yield t, c.seg(0, FIN | ACK)
    yield t + rtt, c.seg(1, FIN | ACK)
    yield t + rtt * 1.05, c.seg(0, ACK)
    return t + rtt * 1.05


# --- application payloads --------------------------------------------------------------------------

def dns_message(txid: int, name: str, qtype: int = 1, answers: Sequence[str] = (),
                response: bool = False) -> bytes:
    """DNS query, or response with A/AAAA answers (NXDOMAIN when there are none)."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    rrs = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, 1, 300, len(_ip(a))) + _ip(a) for a in answers)
    flags = (0x8180 if answers else 0x8183) if response else 0x0100
    return struct.pack("!HHHHHH", txid, flags, 1, len(answers), 0, 0) + qname \
        + struct.pack("!HH", qtype, 1) + rrs


def dhcp_message(msgtype: int, xid: int, mac: str, yiaddr: str = "0.0.0.0",
                 options: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """BOOTP/DHCP message: option 53 = msgtype, then options, then end."""
    op = 1 if msgtype in (1, 3, 4, 7, 8) else 2
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s192s", op, 1, 6, 0, xid, 0, 0, bytes(4), _ip(yiaddr),
                        bytes(4), bytes(4), _mac(mac), b"")
    opts = b"".join(bytes([k, len(v)]) + v for k, v in [(53, bytes([msgtype])), *options])
    return fixed + b"\x63\x82\x53\x63" + opts + b"\xff"


def _item(kind: int, data: bytes) -> bytes:
    return struct.pack("!BBH", kind, 0, len(data)) + data


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack("!BBI", kind, 0, len(body)) + body


def _pdata(data: bytes, mch: int) -> bytes:
    """P-DATA-TF with one PDV on context 1 (mch: bit 0 command, bit 1 last fragment)."""
    return _pdu(4, struct.pack("!IBB", len(data) + 2, 1, mch) + data)


def dicom_associate(calling: str, called: str, accept: bool = False) -> bytes:
    """A-ASSOCIATE-RQ (or -AC) for CT image storage in implicit VR little endian."""
    ts = _item(0x40, b"1.2.840.10008.1.2")
    pc = _item(0x21, b"\x01\0\0\0" + ts) if accept else \
        _item(0x20, b"\x01\0\0\0" + _item(0x30, _CT_STORAGE) + ts)
    user = _item(0x50, _item(0x51, struct.pack("!I", 16384)) + _item(0x52, b"2.25.4242"))
    head = struct.pack("!HH16s16s32s", 1, 0, called.encode().ljust(16), calling.encode().ljust(16), b"")
    return _pdu(2 if accept else 1, head + _item(0x10, b"1.2.840.10008.3.1.1.1") + pc + user)


def _elem(group: int, elem: int, value: bytes) -> bytes:
    value += b"\0" if len(value) % 2 else b""
    return struct.pack("<HHI", group, elem, len(value)) + value


def _dicom_command(field: int, msg_id: int, uid: bytes) -> bytes:
    """C-STORE-RQ (field 1) or C-STORE-RSP (0x8001, status success) command set."""
    rsp = field == 0x8001
    body = _elem(0, 2, _CT_STORAGE) + _elem(0, 0x100, struct.pack("<H", field)) \
        + _elem(0, 0x120 if rsp else 0x110, struct.pack("<H", msg_id)) \
        + (b"" if rsp else _elem(0, 0x700, b"\0\0")) \
        + _elem(0, 0x800, struct.pack("<H", 0x0101 if rsp else 0)) \
        + (_elem(0, 0x900, b"\0\0") if rsp else b"") + _elem(0, 0x1000, uid)
    return _elem(0, 0, struct.pack("<I", len(body))) + body


@lru_cache(maxsize=16)
def _dicom_image(segments: int) -> tuple[tuple[bytes, int], ...]:
    """P-DATA-TF stream of one synthetic CT image of about segments * MSS bytes, in MSS chunks."""
    ds = _elem(8, 0x16, _CT_STORAGE) + _elem(8, 0x18, f"2.25.{segments}".encode()) \
        + _elem(0x10, 0x10, b"TEST^PATIENT") + _elem(0x10, 0x20, b"TEST0001") \
        + _elem(0x7FE0, 0x10, _PIXELS[:max(segments * MSS - 160, 2) & ~1])
    step = 16378
    stream = b"".join(_pdata(ds[i:i + step], 2 if i + step >= len(ds) else 0)
                      for i in range(0, len(ds), step))
    return tuple((stream[i:i + MSS], _sum(stream[i:i + MSS])) for i in range(0, len(stream), MSS))


def hl7_message(control_id: str, when: float, patient: str = "TEST^PATIENT", mrn: str = "TEST0001",
                value: int = 72) -> bytes:
    """An MLLP-framed HL7 v2.5 ORU^R01 carrying one heart-rate observation."""
    at = time.strftime("%Y%m%d%H%M%S", time.gmtime(when))
    segs = (f"MSH|^~\\&|WARDMON|WARD3|HL7ENGINE|HOSPITAL|{at}||ORU^R01|{control_id}|P|2.5",
            f"PID|1||{mrn}^^^HOSPITAL^MR||{patient}||19700101|U", "PV1|1|I|WARD3^301^1",
            f"OBR|1|||8867-4^Heart rate^LN|||{at}", f"OBX|1|NM|8867-4^Heart rate^LN||{value}|/min|||||F")
    return b"\x0b" + "\r".join(segs).encode() + b"\r\x1c\r"


def hl7_ack(control_id: str, when: float) -> bytes:
    """An MLLP-framed HL7 ACK (MSA|AA) for control_id."""
    at = time.strftime("%Y%m%d%H%M%S", time.gmtime(when))
    return (f"\x0bMSH|^~\\&|HL7ENGINE|HOSPITAL|WARDMON|WARD3|{at}||ACK^R01|A{control_id}|P|2.5\r"
            f"MSA|AA|{control_id}\r\x1c\r").encode()


def _tls_record(kind: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", kind, version, len(body)) + body


def _hs(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def tls_client_hello(sni: str, rnd: bytes = bytes(32)) -> bytes:
    """A TLS 1.2 ClientHello record with SNI, groups, point formats and signature algorithms."""
    name = sni.encode()
    exts = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name \
        + struct.pack("!HHHH", 10, 4, 2, 29) + struct.pack("!HHBB", 11, 2, 1, 0) \
        + struct.pack("!HHHH", 13, 4, 2, 0x0403)
    body = b"\x03\x03" + rnd + b"\0" + struct.pack("!HHH", 4, 0xC02F, 0xC02B) + b"\x01\0" \
        + struct.pack("!H", len(exts)) + exts
    return _tls_record(22, _hs(1, body), 0x0301)


def tls_server_hello(rnd: bytes = bytes(32)) -> bytes:
    """ServerHello (ECDHE-RSA-AES128-GCM-SHA256, renegotiation_info) and ServerHelloDone."""
    body = b"\x03\x03" + rnd + b"\0" + struct.pack("!HBHHHB", 0xC02F, 0, 5, 0xFF01, 1, 0)
    return _tls_record(22, _hs(2, body) + _hs(14, b""))


@lru_cache(maxsize=32)
def _tls_data(size: int) -> tuple[tuple[bytes, int], ...]:
    """Application-data records totalling about size bytes, in MSS chunks with their sums."""
    stream = b"".join(_tls_record(23, _NOISE[off:off + min(16384, size - off)])
                      for off in range(0, size, 16384))
    return tuple((stream[i:i + MSS], _sum(stream[i:i + MSS])) for i in range(0, len(stream), MSS))


def http_exchange(host: str, path: str, body: bytes, server: str = "PumpOS/2.1") -> tuple[bytes, bytes]:
    """An HTTP/1.1 GET request and its 200 response."""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wardgen/1\r\n\r\n"
    resp = f"HTTP/1.1 200 OK\r\nServer: {server}\r\nContent-Type: text/plain\r\n" \
        f"Content-Length: {len(body)}\r\n\r\n"
    return req.encode(), resp.encode() + body


# --- conversations: generators of (ts, frame) ----------------------------------------------------

def tcp_session(t: float, cli: Host, srv: Host, sport: int, dport: int,
                exchanges: Sequence[tuple[bytes, bytes]], *, vlans: Sequence[int] = (),
                rtt: float = 0.001, think: float = 0.05, rst: bool = False) -> Iterator[Pkt]:
    """Handshake, request/response exchanges with ACKs, then FIN/ACK close (or RST)."""
    c = _Tcp(_Pair(cli, srv, vlans), sport, dport)
    t = yield from _handshake(c, t, rtt)
    for req, resp in exchanges:
        t = yield from _send(c, t + think, 0, req)
        t = yield from _send(c, t + rtt, 1, resp)
    yield from _close(c, t + think, rtt, rst)


def udp_exchange(t: float, cli: Host, srv: Host, sport: int, dport: int, request: bytes,
                 response: bytes | None = None, *, vlans: Sequence[int] = (),
                 rtt: float = 0.002) -> Iterator[Pkt]:
    """One UDP request and, unless response is None, its answer."""
    pair = _Pair(cli, srv, vlans)
    yield t, pair.udp(0, sport, dport, request)
    if response is not None:
        yield t + rtt, pair.udp(1, dport, sport, response)


def dns_lookup(t: float, cli: Host, srv: Host, sport: int, name: str, answers: Sequence[str] = (),
               *, qtype: int = 1, txid: int = 1, vlans: Sequence[int] = ()) -> Iterator[Pkt]:
    """A DNS query over UDP and its response (A qtype 1 or AAAA 28; no answers: NXDOMAIN)."""
    return udp_exchange(t, cli, srv, sport, 53, dns_message(txid, name, qtype),
                        dns_message(txid, name, qtype, answers, True), vlans=vlans, rtt=0.004)


def dhcp_dora(t: float, client_mac: str, server: Host, offered_ip: str, *, hostname: str,
              vendor_class: str, xid: int, vlans: Sequence[int] = ()) -> Iterator[Pkt]:
    """DHCP DISCOVER/OFFER/REQUEST/ACK: client broadcasts, server unicasts to the offered address."""
    gw = ".".join([*offered_ip.split(".")[:3], "254"])
    ask = [(61, b"\x01" + _mac(client_mac)), (12, hostname.encode()), (60, vendor_class.encode()),
           (55, bytes([1, 3, 6, 15, 28, 42, 51, 58, 59]))]
    grant = [(54, _ip(server.ip)), (51, struct.pack("!I", 86400)), (1, _ip("255.255.255.0")),
             (3, _ip(gw)), (6, _ip(server.ip))]
    bcast = _Pair(Host("0.0.0.0", client_mac), Host("255.255.255.255", BROADCAST), vlans)
    uni = _Pair(server, Host(offered_ip, client_mac), vlans)
    yield t, bcast.udp(0, 68, 67, dhcp_message(1, xid, client_mac, options=ask))
    yield t + 0.01, uni.udp(0, 67, 68, dhcp_message(2, xid, client_mac, offered_ip, grant))
    req = [*ask, (50, _ip(offered_ip)), grant[0]]
    yield t + 0.02, bcast.udp(0, 68, 67, dhcp_message(3, xid, client_mac, options=req))
    yield t + 0.03, uni.udp(0, 67, 68, dhcp_message(5, xid, client_mac, offered_ip, grant))


def arp_exchange(t: float, asker: Host, target: Host, *, vlans: Sequence[int] = ()) -> Iterator[Pkt]:
    """Broadcast who-has from asker, unicast is-at from target."""
    return arp_sweep(t, asker, [target.ip], {target.ip: target.mac}, vlans=vlans)


def arp_sweep(t: float, asker: Host, targets: Sequence[str], alive: Mapping[str, str] | None = None,
              *, vlans: Sequence[int] = (), gap: float = 0.002) -> Iterator[Pkt]:
    """Who-has for each target address; those in alive (ip -> mac) answer."""
    for i, ip in enumerate(targets):
        ts = t + i * gap
        yield ts, ether(BROADCAST, asker.mac, ETH_ARP, arp(1, asker.mac, asker.ip, "00:00:00:00:00:00", ip),
                        vlans)
        mac = (alive or {}).get(ip)
        if mac:
            yield ts + gap / 4, ether(asker.mac, mac, ETH_ARP, arp(2, mac, ip, asker.mac, asker.ip), vlans)


def syn_scan(t: float, scanner: Host, target: Host, ports: Sequence[int], *,
             open_ports: Collection[int] = (), filtered: Collection[int] = (), sport: int = 40001,
             vlans: Sequence[int] = (), gap: float = 0.0005) -> Iterator[Pkt]:
    """SYN to each port: SYN-ACK (then RST) from open, RST-ACK from closed, nothing from filtered."""
    pair, gap = _Pair(scanner, target, vlans), max(gap, 0.0004)
    for i, port in enumerate(ports):
        c, ts = _Tcp(pair, sport, port), t + i * gap
        yield ts, c.seg(0, SYN, opts=_SYN_OPTS[:4])
        if port in open_ports:
            yield ts + 0.0002, c.seg(1, SYN | ACK, opts=_SYN_OPTS[:4])
            yield ts + 0.0003, c.seg(0, RST)
        elif port not in filtered:
            c.seq[1] = 0
            yield ts + 0.0002, c.seg(1, RST | ACK)


def dicom_transfer(t: float, modality: Host, pacs: Host, sport: int, *, dport: int = 104,
                   images: int = 2, segments: int = 40, calling: str = "CT01", called: str = "PACS01",
                   vlans: Sequence[int] = (), rtt: float = 0.0005) -> Iterator[Pkt]:
    """Associate, C-STORE images of full-size segments modality->PACS with ACKs back, release."""
    c = _Tcp(_Pair(modality, pacs, vlans), sport, dport)
    t = yield from _handshake(c, t, rtt)
    t = yield from _send(c, t, 0, dicom_associate(calling, called))
    t = yield from _send(c, t + rtt, 1, dicom_associate(calling, called, accept=True))
    for n in range(1, images + 1):
        uid = f"2.25.{sport}{n}".encode()
        t = yield from _send(c, t + 0.001, 0, _pdata(_dicom_command(1, n, uid), 3))
        t = yield from _send(c, t, 0, _dicom_image(segments))
        t = yield from _send(c, t + 0.002, 1, _pdata(_dicom_command(0x8001, n, uid), 3))
    t = yield from _send(c, t + 0.001, 0, _pdu(5, bytes(4)))
    t = yield from _send(c, t + rtt, 1, _pdu(6, bytes(4)))
    yield from _close(c, t, rtt)


def hl7_mllp(t: float, sender: Host, engine: Host, sport: int, *, dport: int = 2575,
             messages: int = 3, interval: float = 2.0, first_id: int = 1,
             vlans: Sequence[int] = ()) -> Iterator[Pkt]:
    """A persistent MLLP connection: ORU^R01 messages every interval, each answered MSA|AA."""
    c = _Tcp(_Pair(sender, engine, vlans), sport, dport)
    t = yield from _handshake(c, t, 0.0005)
    for i in range(messages):
        cid = f"MSG{first_id + i:08d}"
        t = yield from _send(c, t + (interval if i else 0.01), 0, hl7_message(cid, t, value=60 + i % 40))
        t = yield from _send(c, t + 0.003, 1, hl7_ack(cid, t))
    yield from _close(c, t + interval, 0.0005)


def https_session(t: float, cli: Host, srv: Host, sport: int, *, sni: str, exchanges: int = 2,
                  request_size: int = 400, response_size: int = 4000, vlans: Sequence[int] = (),
                  rtt: float = 0.02, think: float = 0.3) -> Iterator[Pkt]:
    """TCP 443: ClientHello, ServerHello, key exchange, then application-data exchanges."""
    c, rnd = _Tcp(_Pair(cli, srv, vlans), sport, 443), _NOISE[sport % 60000:][:32]
    t = yield from _handshake(c, t, rtt)
    t = yield from _send(c, t, 0, tls_client_hello(sni, rnd))
    t = yield from _send(c, t + rtt, 1, tls_server_hello(rnd[::-1]))
    cke = _tls_record(22, _hs(16, b"\x20" + rnd)) + _tls_record(20, b"\x01")
    t = yield from _send(c, t + 0.001, 0, cke)
    t = yield from _send(c, t + rtt, 1, _tls_record(20, b"\x01"))
    for _ in range(exchanges):
        t = yield from _send(c, t + think, 0, _tls_data(request_size))
        t = yield from _send(c, t + rtt, 1, _tls_data(response_size))
    yield from _close(c, t + think, rtt)


def icmp_echo(t: float, a: Host, b: Host, *, ident: int = 1, count: int = 3, size: int = 56,
              interval: float = 1.0, vlans: Sequence[int] = ()) -> Iterator[Pkt]:
    """Ping a->b (ICMP or ICMPv6 by address family); payloads beyond the MTU go as fragments."""
    v6, et = ":" in a.ip, ETH_IP6 if ":" in a.ip else ETH_IP4
    for seq in range(count):
        msg = struct.pack("!HH", ident, seq) + _NOISE[seq:seq + size]
        for d, (src, dst) in enumerate(((a, b), (b, a))):
            kind = (129 if d else 128) if v6 else (0 if d else 8)
            l4 = icmpv6(kind, 0, msg) if v6 else icmp(kind, 0, msg)
            frags = fragment(src.ip, dst.ip, 58 if v6 else 1, l4, ident=ident * 64 + seq * 2 + d)
            for i, pkt in enumerate(frags):
                yield t + seq * interval + d * 0.0008 + i * 0.00001, ether(dst.mac, src.mac, et, pkt, vlans)


def mld_report(t: float, host: Host, group: str = "ff02::fb", *, vlans: Sequence[int] = ()) -> Iterator[Pkt]:
    """An MLDv2 join from host's link-local address, behind a hop-by-hop router-alert header."""
    m = _mac(host.mac)
    ll = f"fe80::{m[0] ^ 2:02x}{m[1]:02x}:{m[2]:02x}ff:fe{m[3]:02x}:{m[4]:02x}{m[5]:02x}"
    msg = icmpv6(143, 0, struct.pack("!HHBBH16s", 0, 1, 4, 0, 0, _ip(group)))
    pkt = ipv6(ll, "ff02::16", 58, msg, [(0, b"\x05\x02\0\0")], hop_limit=1)
    yield t, ether("33:33:00:00:00:16", host.mac, ETH_IP6, pkt, vlans)


# --- scheduling and scenarios ----------------------------------------------------------------------

def merge(starts: Iterable[tuple[float, Iterator[Pkt]]]) -> Iterator[Pkt]:
    """Interleave conversations by time; starts must be sorted and each conversation begin at or
    after its start, with non-decreasing timestamps."""
    heap: list[tuple[float, int, bytes, Iterator[Pkt]]] = []
    tie, pending = itertools.count(), iter(starts)
    nxt = next(pending, None)
    while heap or nxt is not None:
        if nxt is not None and (not heap or nxt[0] <= heap[0][0]):
            first = next(nxt[1], None)
            if first is not None:
                heapq.heappush(heap, (first[0], next(tie), first[1], nxt[1]))
            nxt = next(pending, None)
            continue
        ts, _, frame, conv = heap[0]
        yield ts, frame
        item = next(conv, None)
        if item is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (item[0], next(tie), item[1], conv))


def sample(seed: int = 1) -> Iterator[Pkt]:
    """The README ward: a few hundred packets over about two minutes."""
    rng, t = random.Random(seed), EPOCH
    ws, ws6 = Host("10.20.0.31", "02:00:0a:14:00:1f"), Host("fd00:20::31", "02:00:0a:14:00:1f")
    ct, pacs = Host("10.10.0.21", "02:00:0a:0a:00:15"), Host("10.1.0.10", "02:00:0a:01:00:0a")
    pacs6, pump = Host("fd00:1::10", "02:00:0a:01:00:0a"), Host("10.20.0.77", "02:00:0a:14:00:4d")
    dns, dns6 = Host("10.1.0.53", "02:00:0a:01:00:35"), Host("fd00:1::53", "02:00:0a:01:00:35")
    portal, port = Host("198.51.100.20", GATEWAY_MAC, 52), rng.randrange(49152, 60000)
    monitor_gw = Host("10.30.0.40", "02:00:0a:1e:00:28")
    convs = [
        (t, dhcp_dora(t, ws.mac, Host("10.1.0.67", "02:00:0a:01:00:43"), ws.ip, hostname="WS-WARD3-01",
                      vendor_class="MSFT 5.0", xid=rng.getrandbits(32))),
        (t + 0.5, arp_exchange(t + 0.5, ws, Host("10.20.0.254", GATEWAY_MAC))),
        (t + 0.6, mld_report(t + 0.6, ws6)),
        (t + 1.0, dns_lookup(t + 1.0, ws, dns, port, "portal.example.com", ["198.51.100.20"], txid=port)),
        (t + 1.2, https_session(t + 1.2, ws, portal, port + 1, sni="portal.example.com")),
        (t + 3.0, dns_lookup(t + 3.0, ct, dns, port + 2, "pacs01.hospital.example", ["10.1.0.10"])),
        (t + 3.1, dicom_transfer(t + 3.1, ct, pacs, port + 3, images=2, segments=30)),
        (t + 5.0, hl7_mllp(t + 5.0, monitor_gw, Host("10.1.0.20", "02:00:0a:01:00:14"), port + 4,
                           messages=4, interval=25.0, vlans=(30,))),
        (t + 10.0, dns_lookup(t + 10.0, ws6, dns6, port + 5, "pacs01.hospital.example", ["fd00:1::10"],
                              qtype=28)),
        (t + 10.1, icmp_echo(t + 10.1, ws6, pacs6, ident=7)),
        (t + 40.0, icmp_echo(t + 40.0, ws, pacs, ident=8, count=2, size=3000)),
        (t + 100.0, syn_scan(t + 100.0, Host("10.20.0.99", "02:00:0a:14:00:63"), ct,
                             [21, 22, 23, 80, 104, 443, 445, 3389, 8080, 11112], open_ports={104, 22},
                             filtered={3389}, sport=port + 6)),
        (t + 115.0, tcp_session(t + 115.0, ws, pump, port + 7, 80,
                                [http_exchange(pump.ip, "/status", b"rate=12.5ml/h\n")])),
    ]
    return merge(convs)


class _Node(NamedTuple):
    v4: Host
    v6: Host
    vlans: tuple[int, ...]


def _node(i: int, net: int) -> _Node:
    """Host i of a ward block: every third tagged, every thirtieth double-tagged (QinQ)."""
    ward, h = net + i // 250, 1 + i % 250
    mac = f"02:00:0a:{ward:02x}:{h >> 8:02x}:{h & 255:02x}"
    vlans = () if i % 3 else (ward + 100,) if i % 30 else (1000, ward + 100)
    return _Node(Host(f"10.{ward}.0.{h}", mac), Host(f"fd00:{ward:x}::{h:x}", mac), vlans)


def _server(i: int) -> _Node:
    mac = f"02:00:0a:01:00:{i:02x}"
    return _Node(Host(f"10.1.0.{i}", mac), Host(f"fd00:1::{i:x}", mac), ())


def _pick(pool: Sequence[_Node], k: int) -> _Node:
    """The k-th pick strides the pool, so each kind sees tagged hosts in their share."""
    return pool[(k * 7919 + 7) % len(pool)]


class _World:
    """Host pools and state shared by the bench conversation kinds."""

    def __init__(self, rng: random.Random, end: float) -> None:
        self.rng, self.end, self.ports = rng, end, itertools.count()
        self.clients = [_node(i, 20) for i in range(1500)]
        self.modalities = [_node(i, 10) for i in range(60)]
        self.pacs, self.engines = [_server(10 + i) for i in range(4)], [_server(20), _server(21)]
        self.dns, self.dhcp = _server(53), _server(67)
        self.web = [Host(f"{net}.{10 + i}", GATEWAY_MAC, 52)
                    for net in ("192.0.2", "198.51.100", "203.0.113") for i in range(20)]
        self.web6 = [Host(f"2001:db8::{10 + i:x}", GATEWAY_MAC, 52) for i in range(20)]

    def port(self) -> int:
        return 49152 + next(self.ports) % 16384


_Made = tuple[int, Iterator[Pkt]]  # (flows it creates, packets)
_NAMES = {"pacs01.hospital.example": "10.1.0.10", "hl7.hospital.example": "10.1.0.20",
          "portal.example.com": "198.51.100.20", "updates.example.net": "203.0.113.5",
          "time.example.org": "192.0.2.123", "printer9.hospital.example": ""}


def _k_dicom(w: _World, k: int, t: float) -> _Made:
    m, p = _pick(w.modalities, k), _pick(w.pacs, k)
    return 1, dicom_transfer(t, m.v4, p.v4, w.port(), dport=(104, 11112)[k % 2], calling=f"MOD{k % 60:02d}",
                             images=w.rng.randint(1, 4), segments=w.rng.choice((60, 120, 250, 400)),
                             vlans=m.vlans)


def _k_hl7(w: _World, k: int, t: float) -> _Made:
    s, interval = _pick(w.clients, k), w.rng.uniform(0.5, 8.0)
    messages = max(1, min(w.rng.randint(3, 30), int((w.end - t) / interval)))  # end near the span
    return 1, hl7_mllp(t, s.v4, _pick(w.engines, k).v4, w.port(), messages=messages, interval=interval,
                       first_id=k * 100, vlans=s.vlans)


def _k_https(w: _World, k: int, t: float) -> _Made:
    c, v6 = _pick(w.clients, k), k % 10 == 2
    srv = w.rng.choice(w.web6 if v6 else w.web)
    return 1, https_session(t, c.v6 if v6 else c.v4, srv, w.port(), sni=f"portal{k % 7}.example.com",
                            exchanges=w.rng.randint(1, 6), vlans=c.vlans,
                            response_size=w.rng.choice((600, 1500, 4000, 8000)))


def _k_web(w: _World, k: int, t: float) -> _Made:
    c, dev = _pick(w.clients, k), _pick(w.clients, k + 1).v4
    body = f"pump={k % 97} rate={k % 50}.5ml/h\n".encode()
    return 1, tcp_session(t, c.v4, dev, w.port(), 80, [http_exchange(dev.ip, "/status", body)],
                          vlans=c.vlans, rtt=0.002)


def _k_dns(w: _World, k: int, t: float) -> _Made:
    c, v6 = _pick(w.clients, k), k % 12 == 5
    name, ans = w.rng.choice(list(_NAMES.items()))
    answers = [f"fd00:1::{ans.split('.')[-1]}" if v6 and ans.startswith("10.") else
               "2001:db8::53" if v6 else ans] if ans else []
    return 1, dns_lookup(t, c.v6 if v6 else c.v4, w.dns.v6 if v6 else w.dns.v4, w.port(), name, answers,
                         qtype=28 if v6 else 1, txid=k & 0xFFFF, vlans=c.vlans)


def _k_dhcp(w: _World, k: int, t: float) -> _Made:
    c = _pick(w.clients, k)
    return 1, dhcp_dora(t, c.v4.mac, w.dhcp.v4, c.v4.ip, hostname=f"DEV-{k % 1500:04d}",
                        vendor_class=("MSFT 5.0", "PhilipsIntelliVue", "BBraunSpace")[k % 3],
                        xid=w.rng.getrandbits(32), vlans=c.vlans)


def _k_arp(w: _World, k: int, t: float) -> _Made:
    c = _pick(w.clients, k)
    return 0, arp_exchange(t, c.v4, _pick(w.clients, k + 3).v4, vlans=c.vlans)


def _k_ping(w: _World, k: int, t: float) -> _Made:
    c, big, v6 = _pick(w.clients, k), k % 8 == 3, k % 4 == 1
    srv = _pick(w.pacs, k)
    return 1, icmp_echo(t, c.v6 if v6 else c.v4, srv.v6 if v6 else srv.v4, ident=k & 0xFFFF,
                        count=w.rng.randint(1, 4), size=3000 if big else 56, vlans=c.vlans)


def _k_mld(w: _World, k: int, t: float) -> _Made:
    c = _pick(w.clients, k)
    return 0, mld_report(t, c.v6, vlans=c.vlans)


def _k_scan(w: _World, k: int, t: float) -> _Made:
    s, target = _pick(w.clients, k), w.rng.choice(w.clients)
    ports = sorted(w.rng.sample(range(1, 1025), w.rng.randint(20, 100)))
    return len(ports), syn_scan(t, s.v4, target.v4, ports, open_ports={22, 80, 104, 443},
                                filtered=set(ports[::5]), sport=w.port(), vlans=s.vlans)


_Kind = Callable[[_World, int, float], _Made]
# name: (flows, span in seconds, ((kind, weight per conversation), ...))
_BENCHES: dict[str, tuple[int, float, tuple[tuple[_Kind, float], ...]]] = {
    "bench-flows": (50_000, 600.0, ((_k_dicom, 0.006), (_k_hl7, 0.04), (_k_https, 0.22), (_k_web, 0.1),
                                    (_k_dns, 0.45), (_k_dhcp, 0.03), (_k_arp, 0.05), (_k_ping, 0.04),
                                    (_k_mld, 0.02), (_k_scan, 0.001))),
    "bench-churn": (200_000, 100.0, ((_k_dicom, 0.0001), (_k_hl7, 0.001), (_k_https, 0.004), (_k_web, 0.02),
                                     (_k_dns, 0.6), (_k_dhcp, 0.01), (_k_arp, 0.03), (_k_ping, 0.01),
                                     (_k_mld, 0.01), (_k_scan, 0.006))),
}


def _conversations(w: _World, flows: int, span: float,
                   mix: Sequence[tuple[_Kind, float]]) -> Iterator[tuple[float, Iterator[Pkt]]]:
    cumulative = list(itertools.accumulate(weight for _, weight in mix))
    counters, made, t = [0] * len(mix), 0, EPOCH
    while made < flows:
        i = bisect.bisect(cumulative, w.rng.random() * cumulative[-1])
        n, conv = mix[i][0](w, counters[i], t)
        counters[i] += 1
        made += n
        yield t, conv
        t += w.rng.expovariate(1.0) * span * max(n, 1) / flows


def edge() -> Iterator[Pkt]:
    """Frames whose accounting is easy to get wrong: an ICMP error quoting UDP, IPv4 fragments (in
    order, tiny, missing, reversed), tunnels (IP-in-IP, GRE, VXLAN, L2TP, PPTP, MPLS in GRE, EtherIP,
    CAPWAP), a TSO frame (IPv4 total length 0), QinQ and IPv6."""
    a, b = "02:00:00:00:00:01", "02:00:00:00:00:02"
    inner = ipv4("192.168.1.1", "192.168.1.2", 6, tcp(1234, 80, 1, 0, 0x02))
    query = ipv4("10.0.0.1", "10.0.0.2", 17, udp(5000, 53, b"q" * 20))
    tso = bytearray(ipv4("10.6.0.1", "10.6.0.2", 6, tcp(1111, 2222, 1, 1, 0x10, b"y" * 100)))
    tso[2:4] = b"\0\0"
    vxlan = b"\x08\0\0\0\0\0\x64\0" + ether(b, a, 0x0800, inner, pad=False)
    big = udp(6000, 7000, b"x" * 3000)
    frames = [
        ether(b, a, 0x0800, query),
        ether(a, b, 0x0800, ipv4("10.0.0.2", "10.0.0.1", 1, icmp(3, 3, bytes(4) + query[:28]))),
        *(ether(b, a, 0x0800, f) for f in fragment("10.0.0.3", "10.0.0.4", 17, big, 77)),
        ether(b, a, 0x0800, ipv4("10.9.0.1", "10.9.0.2", 4, inner)),
        ether(b, a, 0x0800, ipv4("10.8.0.1", "10.8.0.2", 47, b"\0\0\x08\0" + inner)),
        ether(b, a, 0x0800, ipv4("10.7.0.1", "10.7.0.2", 17, udp(40000, 4789, vxlan))),
        ether(b, a, 0x0800, ipv4("10.5.0.1", "10.5.0.2", 17, udp(7, 7, b"z")), vlans=(100, 30)),
        ether(b, a, 0x86DD, ipv6("fd00::1", "fd00::2", 17, udp(9, 9, b"v"))),
        ether(b, a, 0x0800, bytes(tso)),
        *(ether(b, a, 0x0800, f) for f in _odd_fragments()),
        *(ether(b, a, 0x0800, f) for f in _more_tunnels(inner, ether(b, a, 0x0800, inner, pad=False))),
    ]
    return ((EPOCH + i / 100, frame) for i, frame in enumerate(frames))


def _more_tunnels(inner: bytes, inner_frame: bytes) -> list[bytes]:
    """L2TPv2 and PPTP (both PPP), MPLS in GRE, EtherIP and CAPWAP data, each carrying `inner`."""
    ppp = b"\xff\x03\x00\x21" + inner
    return [
        ipv4("10.11.0.1", "10.11.0.2", 17, udp(1701, 1701, struct.pack("!HHH", 0x0002, 1, 2) + ppp)),
        ipv4("10.12.0.1", "10.12.0.2", 47, struct.pack("!BBHHHI", 0x30, 0x01, 0x880B, len(ppp), 7, 1) + ppp),
        ipv4("10.13.0.1", "10.13.0.2", 47, b"\x00\x00\x88\x47" + b"\x00\x01\x01\x40" + inner),
        ipv4("10.14.0.1", "10.14.0.2", 97, b"\x30\x00" + inner_frame),
        ipv4("10.15.0.1", "10.15.0.2", 17, udp(5247, 5247, b"\x00\x10\x00\x00" + bytes(4) + inner_frame)),
    ]


def _odd_fragments() -> list[bytes]:
    """A TCP SYN split inside its header (nmap -f), a datagram missing its last fragment, and one
    whose fragments arrive last first."""
    def pieces(src: str, dst: str, proto: int, l4: bytes, ident: int,
               cuts: Sequence[tuple[int, int]]) -> list[bytes]:
        return [ipv4(src, dst, proto, l4[o:o + n], ident=ident, df=False, frag_offset=o,
                     more_fragments=o + n < len(l4)) for o, n in cuts]
    syn = _fill_l4(6, _ip("10.4.0.1"), _ip("10.4.0.2"), tcp(1111, 80, 1, 0, SYN, b"z" * 40))
    dgram = _fill_l4(17, _ip("10.3.0.1"), _ip("10.3.0.2"), udp(2222, 53, b"y" * 100))
    return [*pieces("10.4.0.1", "10.4.0.2", 6, syn, 5, [(0, 8), (8, 16), (24, len(syn) - 24)]),
            *pieces("10.3.0.1", "10.3.0.2", 17, dgram, 6, [(0, 56)]),
            *pieces("10.3.0.1", "10.3.0.2", 17, dgram, 7, [(56, len(dgram) - 56), (0, 56)])]


def scenario(name: str, seed: int = 1, scale: float = 1.0) -> Iterator[Pkt]:
    """Packets of a named scenario (see the module docstring); scale applies to the benches."""
    if name == "sample":
        return sample(seed)
    if name == "edge":
        return edge()
    flows, span, mix = _BENCHES[name]
    world = _World(random.Random(seed), EPOCH + span)
    return merge(_conversations(world, max(1, round(flows * scale)), span, mix))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a deterministic synthetic ward capture.")
    ap.add_argument("scenario", choices=("sample", "edge", *_BENCHES))
    ap.add_argument("out", help="output file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--snaplen", type=int, default=65535)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply bench flow/packet counts")
    ap.add_argument("--linktype", type=int, choices=(1, 113, 101, 0, 9, 51, 104, 105, 127, 192), default=1)
    ap.add_argument("--pcapng", action="store_true", help="write pcapng instead of pcap")
    a = ap.parse_args(argv)
    started, packets = time.perf_counter(), scenario(a.scenario, a.seed, a.scale)
    if a.linktype != 1:
        packets = ((ts, f) for ts, frame in packets if (f := relink(a.linktype, frame)) is not None)
    if a.pcapng:
        count = write_pcapng(a.out, a.linktype, packets, a.snaplen)
    else:
        with PcapWriter(a.out, a.linktype, a.snaplen) as writer:
            count = writer.write_all(packets)
    print(f"{a.scenario}: {count} packets in {time.perf_counter() - started:.1f} s -> {a.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
