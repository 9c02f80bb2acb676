"""Where a tunnel's payload starts: IP-in-IP, IPv6-in-IPv4, GRE (with ERSPAN, MPLS, PPTP), EtherIP,
VXLAN, GENEVE, Teredo, GTP-U, L2TPv2 and CAPWAP data.

These functions only locate the encapsulated packet, as tshark dissects it; decode.py decodes it.
A result is `(layer, offset)` with layer "ethernet", "ip", "ppp", "mpls" or "wlan", None when
nothing decodable is carried, or a skip reason.
"""

from __future__ import annotations

from typing import Final, Literal

Payload = tuple[Literal["ethernet", "ip", "ppp", "mpls", "wlan"], int]

VXLAN, GENEVE, TEREDO, GTP_U, L2TP, CAPWAP_DATA = 4789, 6081, 3544, 2152, 1701, 5247
TUNNEL_PORTS: Final = frozenset({VXLAN, GENEVE, TEREDO, GTP_U, L2TP, CAPWAP_DATA})


def tunnel_port(sport: bytes, dport: bytes) -> int | None:
    """The tunnel a UDP flow carries, by registered port alone, so every packet lands in one table."""
    for port in (int.from_bytes(dport, "big"), int.from_bytes(sport, "big")):
        if port in TUNNEL_PORTS:
            return port
    return None


def in_ip(frame: bytes, at: int, proto: int) -> Payload | str | None:
    """The packet inside IP-in-IP (4), IPv6-in-IP (41), GRE (47) or EtherIP (97) starting at `at`."""
    if proto in (4, 41):
        return "ip", at
    if proto == 97:
        return "ethernet", at + 2
    if proto != 47 or len(frame) < at + 4:
        return None
    flags, etype = frame[at], int.from_bytes(frame[at + 2:at + 4], "big")
    version = frame[at + 1] & 0x07
    if version == 1:  # PPTP's enhanced GRE: key (length, call id), sequence and ack optional
        if etype != 0x880B or frame[at + 4:at + 6] == b"\0\0":  # not PPP, or an acknowledgement only
            return None
        return "ppp", at + 8 + (4 if flags & 0x10 else 0) + (4 if frame[at + 1] & 0x80 else 0)
    if version:
        return None
    pos = at + 4 + 4 * bin(flags & 0xB0).count("1")  # checksum+reserved, key, sequence number
    if etype in (0x0800, 0x86DD):
        return "ip", pos
    if etype in (0x8847, 0x8848):
        return "mpls", pos
    if etype == 0x880B:
        return "ppp", pos
    if etype == 0x6558 or (etype == 0x88BE and flags & 0x10):  # bridged Ethernet, ERSPAN type II
        return "ethernet", pos + (8 if etype == 0x88BE else 0)
    if etype == 0x22EB:  # ERSPAN type III, with its optional platform sub-header
        return "ethernet", pos + 12 + (8 if len(frame) > pos + 11 and frame[pos + 11] & 1 else 0)
    return None


def in_udp(frame: bytes, at: int, port: int) -> Payload | str | None:
    """The packet inside a UDP tunnel (by its port) whose UDP payload starts at `at`."""
    if len(frame) < at + 8:
        return None
    if port == L2TP:
        return _l2tp(frame, at)
    if port == CAPWAP_DATA:
        return _capwap(frame, at)
    if port == VXLAN:
        return ("ethernet", at + 8) if frame[at] & 0x08 else None
    if port == GENEVE:
        return _geneve(frame, at)
    if port == TEREDO:
        return _teredo(frame, at)
    return _gtp_u(frame, at)


def _l2tp(frame: bytes, at: int) -> Payload | None:
    """L2TPv2 data messages carry PPP; control messages (T bit) carry none."""
    flags = int.from_bytes(frame[at:at + 2], "big")
    if flags & 0x8000 or flags & 0x000F != 2:
        return None
    pos = at + 2 + (2 if flags & 0x4000 else 0) + 4 + (4 if flags & 0x0800 else 0)  # length, ids, Ns/Nr
    if flags & 0x0200:  # offset size, then that much padding
        pos += 2 + int.from_bytes(frame[pos:pos + 2], "big")
    return "ppp", pos


def _capwap(frame: bytes, at: int) -> Payload | None:
    """CAPWAP data: an 802.3 frame, or (T bit) a native 802.11 one; fragments are not rebuilt."""
    word = int.from_bytes(frame[at:at + 4], "big")
    if word >> 28 or word & 0x80:  # not CAPWAP version 0 / type 0, or a fragment
        return None
    return ("wlan" if word & 0x100 else "ethernet"), at + ((word >> 19) & 0x1F) * 4


def _geneve(frame: bytes, at: int) -> Payload | None:
    pos = at + 8 + (frame[at] & 0x3F) * 4
    etype = int.from_bytes(frame[at + 2:at + 4], "big")
    if etype == 0x6558:
        return "ethernet", pos
    if etype in (0x0800, 0x86DD):
        return "ip", pos
    return None


def _teredo(frame: bytes, at: int) -> Payload | None:
    pos = at
    if frame[pos:pos + 2] == b"\x00\x01":  # authentication indicator
        pos += 13 + frame[pos + 2] + frame[pos + 3]
    if frame[pos:pos + 2] == b"\x00\x00":  # origin indication
        pos += 8
    if len(frame) > pos and frame[pos] >> 4 == 6:
        return "ip", pos
    return None


def _gtp_u(frame: bytes, at: int) -> Payload | str | None:
    flags = frame[at]
    if flags >> 5 != 1 or frame[at + 1] != 0xFF:  # version 1, a G-PDU
        return None
    pos = at + 8
    if flags & 0x07:
        next_ext = frame[pos + 3]
        pos += 4
        while next_ext:
            size = frame[pos] * 4
            if size == 0:
                return "malformed"
            next_ext = frame[pos + size - 1]
            pos += size
    if len(frame) > pos and frame[pos] >> 4 in (4, 6):
        return "ip", pos
    return None
