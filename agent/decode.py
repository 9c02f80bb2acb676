"""General frame decoder: every link type and encapsulation the flow table's inlined fast path skips.

`decode_frame` never raises. It returns one of:
- a `Decoded` tuple for an IP packet that belongs to a flow,
- a `Fragment` for an IP fragment (fragments.py reassembles what flows need, as tshark counts),
- an `int` (the ethertype, or -1 for an 802.3/LLC frame) for a frame that carries no IP,
- a `str`, the reason the frame was skipped (see SKIP_REASONS).

Flow keys are byte strings built so that the fast path in flows.py can slice them straight out of
an Ethernet frame: for TCP and UDP `src ip + dst ip + src port + dst port`, then two bytes per VLAN
id (outermost first). ICMP and other protocols live in a table of their own whose keys start with
the protocol number; ICMP replies take the type of their request so both directions meet in one
flow, and the type and code stand in for the ports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from agent import dot11, tunnels
from agent.fragments import Fragment

TCP: Final = 0
UDP: Final = 1
OTHER: Final = 2
TUNNEL: Final = 3  # outer UDP flows of tunnels: keyed like UDP, never seen by the fast path

# (table, key, IP-layer bytes, TCP flags, dst MAC + src MAC or b"", the tunnelled packet or None,
#  the TCP or UDP segment from its header on, or b"" (flowhead.py reads payloads of flow heads))
Decoded = tuple[int, bytes, int, int, bytes, "Result | None", bytes]
Result = Decoded | Fragment | int | str

LLC: Final = -1
MAX_VLAN_TAGS: Final = 4
MAX_IPV6_EXT_HEADERS: Final = 8
MAX_TUNNEL_DEPTH: Final = 2

SKIP_REASONS: Final = (
    "truncated_link",
    "unsupported_link",
    "too_many_vlan_tags",
    "truncated_ipv4",
    "bad_ipv4_header",
    "truncated_ipv6",
    "bad_ipv6_header",
    "bad_ip_version",
    "truncated_l4",
    "bad_tcp_header",
    "malformed",
)

DLT_NULL: Final = 0
DLT_EN10MB: Final = 1
DLT_RAW: Final = 12
DLT_RAW_OPENBSD: Final = 14
DLT_LOOP: Final = 108
DLT_LINUX_SLL: Final = 113
LINKTYPE_RAW: Final = 101
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
DLT_LINUX_SLL2: Final = 276
DLT_PPP: Final = 9
DLT_PPP_SERIAL: Final = 50
DLT_PPP_ETHER: Final = 51
DLT_C_HDLC: Final = 104
DLT_IEEE802_11: Final = 105
DLT_IEEE802_11_RADIO: Final = 127
DLT_PPI: Final = 192
SUPPORTED_LINKTYPES: Final = frozenset(
    {DLT_NULL, DLT_EN10MB, DLT_RAW, DLT_RAW_OPENBSD, DLT_LOOP, DLT_LINUX_SLL, LINKTYPE_RAW,
     LINKTYPE_IPV4, LINKTYPE_IPV6, DLT_LINUX_SLL2, DLT_PPP, DLT_PPP_SERIAL, DLT_PPP_ETHER, DLT_C_HDLC,
     DLT_IEEE802_11, DLT_IEEE802_11_RADIO, DLT_PPI}
)
PPP_OTHER: Final = -6  # a PPP frame that carries no IP (LCP, IPCP, CHAP ...)

VLAN_TPIDS: Final = frozenset({0x8100, 0x88A8, 0x9100})
_BSD_AF_INET6: Final = frozenset({10, 24, 28, 30})
_IPV6_EXT: Final = frozenset({0, 43, 60, 51})
_ICMP_REQUEST_OF: Final = {0: 8, 14: 13, 16: 15, 18: 17}
_ICMP6_REQUEST_OF: Final = {129: 128, 134: 133, 136: 135}
_NO_MACS: Final = b""


def decode_frame(frame: bytes, linktype: int) -> Result:
    """Decode one captured frame; see the module docstring for the three kinds of result."""
    try:
        return _decode(frame, linktype)
    except (IndexError, ValueError):
        return "malformed"


def _decode(frame: bytes, linktype: int) -> Result:
    if linktype == DLT_EN10MB:
        return _ethernet(frame, 0, 0)
    if linktype in (DLT_RAW, LINKTYPE_RAW, DLT_RAW_OPENBSD, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return _ip(frame, 0, (), _NO_MACS, 0)
    if linktype in (DLT_NULL, DLT_LOOP):
        return _loopback(frame, linktype)
    if linktype == DLT_LINUX_SLL:
        if len(frame) < 16:
            return "truncated_link"
        macs = bytes(6) + frame[6:12] if frame[4:6] == b"\x00\x06" else _NO_MACS
        return _ethertype(frame, 14, 16, macs, 0)
    if linktype == DLT_LINUX_SLL2:
        if len(frame) < 20:
            return "truncated_link"
        macs = bytes(6) + frame[12:18] if frame[11] == 6 else _NO_MACS
        return _ethertype(frame, 0, 20, macs, 0)
    if linktype in (DLT_PPP, DLT_PPP_SERIAL):
        return _ppp(frame, 0, (), _NO_MACS, 0)
    if linktype == DLT_PPP_ETHER:
        return _ppp(frame, 6, (), _NO_MACS, 0)
    if linktype == DLT_C_HDLC:
        return _ethertype(frame, 2, 4, _NO_MACS, 0) if len(frame) >= 4 else "truncated_link"
    if linktype == DLT_IEEE802_11:
        return _wlan(frame, 0)
    if linktype == DLT_IEEE802_11_RADIO:
        return _wlan(frame, dot11.radiotap_length(frame)) if len(frame) >= 4 else "truncated_link"
    if linktype == DLT_PPI:
        return _ppi(frame)
    return "unsupported_link"


def _wlan(frame: bytes, at: int, depth: int = 0) -> Result:
    payload = dot11.data_payload(frame, at)
    if not isinstance(payload, tuple):
        return payload
    pos, macs = payload
    if frame[pos:pos + 3] != b"\xaa\xaa\x03":
        return LLC
    return _ethertype(frame, pos + 6, pos + 8, macs, depth)


def _ppi(frame: bytes) -> Result:
    if len(frame) < 8:
        return "truncated_link"
    at, inner = frame[2] | frame[3] << 8, int.from_bytes(frame[4:8], "little")
    if inner == DLT_IEEE802_11:
        return _wlan(frame, at)
    if inner == DLT_EN10MB:
        return _ethernet(frame, at, 0)
    return "unsupported_link"


def _ppp(frame: bytes, at: int, vlans: list[int] | tuple[int, ...], macs: bytes, depth: int) -> Result:
    """PPP in HDLC-like framing or bare, with or without protocol field compression."""
    if frame[at:at + 2] == b"\xff\x03":
        at += 2
    if len(frame) < at + 2:
        return "truncated_link"
    if frame[at] & 1:
        proto, at = frame[at], at + 1
    else:
        proto, at = frame[at] << 8 | frame[at + 1], at + 2
    if proto == 0x21:
        return _ipv4(frame, at, _tags(vlans), macs, depth)
    if proto == 0x57:
        return _ipv6(frame, at, _tags(vlans), macs, depth)
    if proto == 0x281:
        return _mpls(frame, at, list(vlans), macs, depth)
    return PPP_OTHER


def _loopback(frame: bytes, linktype: int) -> Result:
    if len(frame) < 4:
        return "truncated_link"
    family = int.from_bytes(frame[:4], "big" if linktype == DLT_LOOP else "little")
    if linktype == DLT_NULL and family > 0xFFFF:  # written by a big-endian host
        family = int.from_bytes(frame[:4], "big")
    if family == 2 or family in _BSD_AF_INET6:
        return _ip(frame, 4, (), _NO_MACS, 0)
    return LLC if family > 0xFFFF else family


def _ethernet(frame: bytes, at: int, depth: int) -> Result:
    if len(frame) < at + 14:
        return "truncated_link"
    return _ethertype(frame, at + 12, at + 14, frame[at:at + 12], depth)


def _ethertype(frame: bytes, at: int, pos: int, macs: bytes, depth: int) -> Result:
    """Walk VLAN tags, MPLS and PPPoE from the ethertype at `at` (payload at `pos`) down to IP."""
    vlans: list[int] = []
    etype = int.from_bytes(frame[at:at + 2], "big")
    for _ in range(MAX_VLAN_TAGS + 3):
        if etype in VLAN_TPIDS:
            if len(vlans) == MAX_VLAN_TAGS:
                return "too_many_vlan_tags"
            if len(frame) < pos + 4:
                return "truncated_link"
            vlans.append(int.from_bytes(frame[pos:pos + 2], "big") & 0x0FFF)
            etype, pos = int.from_bytes(frame[pos + 2:pos + 4], "big"), pos + 4
        elif etype == 0x88E7:  # 802.1ah provider backbone: I-tag, then the customer's frame
            if len(frame) < pos + 18:
                return "truncated_link"
            macs = frame[pos + 4:pos + 16]
            etype, pos = int.from_bytes(frame[pos + 16:pos + 18], "big"), pos + 18
        elif etype < 0x0600 and frame[pos:pos + 3] == b"\xaa\xaa\x03" and len(frame) >= pos + 8:
            etype, pos = int.from_bytes(frame[pos + 6:pos + 8], "big"), pos + 8  # 802.3 with LLC/SNAP
        else:
            break
    if etype == 0x0800:
        return _ipv4(frame, pos, _tags(vlans), macs, depth)
    if etype == 0x86DD:
        return _ipv6(frame, pos, _tags(vlans), macs, depth)
    if etype in (0x8847, 0x8848):
        return _mpls(frame, pos, vlans, macs, depth)
    if etype == 0x8864:
        return _ppp(frame, pos + 6, vlans, macs, depth)
    return LLC if etype < 0x0600 else etype


def _mpls(frame: bytes, pos: int, vlans: list[int], macs: bytes, depth: int) -> Result:
    for _ in range(16):
        if len(frame) < pos + 4:
            return "truncated_link"
        bottom = frame[pos + 2] & 1
        pos += 4
        if bottom:
            return _ip(frame, pos, vlans, macs, depth)
    return "malformed"


def _tags(vlans: list[int] | tuple[int, ...]) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in vlans)


def _ip(frame: bytes, pos: int, vlans: list[int] | tuple[int, ...], macs: bytes, depth: int) -> Result:
    if len(frame) <= pos:
        return "truncated_ipv4"
    version = frame[pos] >> 4
    if version == 4:
        return _ipv4(frame, pos, _tags(vlans), macs, depth)
    if version == 6:
        return _ipv6(frame, pos, _tags(vlans), macs, depth)
    return "bad_ip_version"


def _ipv4(frame: bytes, pos: int, tags: bytes, macs: bytes, depth: int) -> Result:
    if len(frame) < pos + 20:
        return "truncated_ipv4"
    if frame[pos] >> 4 != 4:
        return "bad_ip_version"
    ihl = (frame[pos] & 0x0F) * 4
    total = int.from_bytes(frame[pos + 2:pos + 4], "big")
    if total == 0:  # TCP segmentation offload on the capturing host: trust the captured length
        total = len(frame) - pos
    if ihl < 20 or total < ihl:
        return "bad_ipv4_header"
    if len(frame) < pos + ihl:
        return "truncated_ipv4"
    src, dst, proto = frame[pos + 12:pos + 16], frame[pos + 16:pos + 20], frame[pos + 9]
    if len(frame) > pos + total:
        frame = frame[:pos + total]  # Ethernet padding or a trailer is not the packet's
    if (frame[pos + 6] & 0x3F) or frame[pos + 7]:
        offset = ((frame[pos + 6] & 0x1F) << 8 | frame[pos + 7]) * 8
        datagram = b"\x04" + src + dst + frame[pos + 4:pos + 6] + frame[pos + 9:pos + 10] + tags
        return Fragment(datagram, offset, total - ihl, bool(frame[pos + 6] & 0x20), frame[pos + ihl:],
                        total, proto, src, dst, tags, macs)
    return _transport(frame, pos + ihl, proto, (src, dst, total, tags, macs), depth)


def _ipv6(frame: bytes, pos: int, tags: bytes, macs: bytes, depth: int) -> Result:
    if len(frame) < pos + 40:
        return "truncated_ipv6"
    if frame[pos] >> 4 != 6:
        return "bad_ip_version"
    total = 40 + int.from_bytes(frame[pos + 4:pos + 6], "big")
    src, dst = frame[pos + 8:pos + 24], frame[pos + 24:pos + 40]
    if len(frame) > pos + total:
        frame = frame[:pos + total]
    nxt = frame[pos + 6]
    at = pos + 40
    for _ in range(MAX_IPV6_EXT_HEADERS + 1):
        if nxt == 44:
            if len(frame) < at + 8:
                return "truncated_ipv6"
            field = int.from_bytes(frame[at + 2:at + 4], "big")
            datagram = b"\x06" + src + dst + frame[at + 4:at + 8] + frame[at:at + 1] + tags
            return Fragment(datagram, field & 0xFFF8, pos + total - at - 8, bool(field & 1), frame[at + 8:],
                            total, frame[at], src, dst, tags, macs)
        elif nxt in _IPV6_EXT:
            if len(frame) < at + 2:
                return "truncated_ipv6"
            size = (frame[at + 1] + 2) * 4 if nxt == 51 else (frame[at + 1] + 1) * 8
            if len(frame) < at + size:
                return "truncated_ipv6"
            nxt, at = frame[at], at + size
        else:
            return _transport(frame, at, nxt, (src, dst, total, tags, macs), depth)
    return "bad_ipv6_header"


_Outer = tuple[bytes, bytes, int, bytes, bytes]  # src, dst, IP bytes, VLAN tags, MACs


def transport(head: bytes, proto: int, src: bytes, dst: bytes, total: int, tags: bytes,
              macs: bytes) -> Result:
    """The flow of a reassembled datagram, from the head of its transport payload."""
    try:
        return _transport(head, 0, proto, (src, dst, total, tags, macs), 0)
    except (IndexError, ValueError):
        return "malformed"


def _transport(frame: bytes, at: int, proto: int, outer: _Outer, depth: int) -> Result:
    src, dst, total, tags, macs = outer
    if proto == 51 and len(src) == 4 and len(frame) >= at + 2:  # IPv4 AH: what it protects follows
        return _transport(frame, at + (frame[at + 1] + 2) * 4, frame[at], outer, depth)
    if proto == 6 or proto == 17:
        if len(frame) < at + (20 if proto == 6 else 8):
            return "truncated_l4"
        sport, dport = frame[at:at + 2], frame[at + 2:at + 4]
        key = src + dst + sport + dport + tags
        if proto == 6:
            # Like tshark, a segment counts only with its whole header (options included) captured: a
            # short snaplen that cuts the options leaves the packet unaccounted in both, by reason.
            size = frame[at + 12] >> 2 & 0x3C
            if size < 20:
                return "bad_tcp_header"
            if len(frame) < at + size:
                return "truncated_l4"
            return (TCP, key, total, frame[at + 13], macs, None, frame[at:])
        port = tunnels.tunnel_port(sport, dport)
        if port is None:
            return (UDP, key, total, 0, macs, None, frame[at:])
        return (TUNNEL, key, total, 0, macs, _tunnelled(tunnels.in_udp, frame, at + 8, port, depth), b"")
    head = proto.to_bytes(1, "big")
    if proto == 1 or proto == 58:
        if len(frame) < at + 2:
            return "truncated_l4"
        requests = _ICMP_REQUEST_OF if proto == 1 else _ICMP6_REQUEST_OF
        kind = requests.get(frame[at], frame[at]).to_bytes(1, "big") + frame[at + 1:at + 2]
        return (OTHER, head + src + dst + kind + tags, total, 0, macs, None, b"")
    inner = _tunnelled(tunnels.in_ip, frame, at, proto, depth)
    return (OTHER, head + src + dst + tags, total, 0, macs, inner, b"")


def _tunnelled(locate: Callable[[bytes, int, int], tunnels.Payload | str | None], frame: bytes, at: int,
               kind: int, depth: int) -> Result | None:
    """Decode what a tunnel carries; a damaged payload never costs the outer flow."""
    if depth >= MAX_TUNNEL_DEPTH:
        return None
    try:
        payload = locate(frame, at, kind)
        if payload is None or isinstance(payload, str):
            return payload
        layer, start = payload
        if layer == "ethernet":
            return _ethernet(frame, start, depth + 1)
        if layer == "ppp":
            return _ppp(frame, start, (), _NO_MACS, depth + 1)
        if layer == "mpls":
            return _mpls(frame, start, [], _NO_MACS, depth + 1)
        if layer == "wlan":
            return _wlan(frame, start, depth + 1)
        return _ip(frame, start, (), _NO_MACS, depth + 1)
    except (IndexError, ValueError):
        return "malformed"
