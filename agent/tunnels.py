"""Where a tunnel's payload starts: IP-in-IP, IPv6-in-IPv4, GRE, VXLAN, GENEVE, Teredo, GTP-U.

These functions only locate the encapsulated packet, as tshark dissects it; decode.py decodes it.
A result is `("ethernet" | "ip", offset)`, None when nothing decodable is carried, or a skip reason.
"""

from __future__ import annotations

from typing import Final, Literal

Payload = tuple[Literal["ethernet", "ip"], int]

VXLAN, GENEVE, TEREDO, GTP_U = 4789, 6081, 3544, 2152
TUNNEL_PORTS: Final = frozenset({VXLAN, GENEVE, TEREDO, GTP_U})


def tunnel_port(sport: bytes, dport: bytes) -> int | None:
    """The tunnel a UDP flow carries, by registered port alone, so every packet lands in one table."""
    for port in (int.from_bytes(dport, "big"), int.from_bytes(sport, "big")):
        if port in TUNNEL_PORTS:
            return port
    return None


def in_ip(frame: bytes, at: int, proto: int) -> Payload | str | None:
    """The packet inside IP-in-IP (4), IPv6-in-IP (41) or GRE (47) whose header starts at `at`."""
    if proto in (4, 41):
        return "ip", at
    if proto != 47 or len(frame) < at + 4:
        return None
    flags, etype = frame[at], int.from_bytes(frame[at + 2:at + 4], "big")
    if frame[at + 1] & 0x07:  # only GRE version 0 carries packets
        return None
    pos = at + 4 + 4 * bin(flags & 0xB0).count("1")  # checksum+reserved, key, sequence number
    if etype in (0x0800, 0x86DD):
        return "ip", pos
    if etype == 0x6558 or (etype == 0x88BE and flags & 0x10):  # bridged Ethernet, ERSPAN type II
        return "ethernet", pos + (8 if etype == 0x88BE else 0)
    if etype == 0x22EB:  # ERSPAN type III, with its optional platform sub-header
        return "ethernet", pos + 12 + (8 if len(frame) > pos + 11 and frame[pos + 11] & 1 else 0)
    return None


def in_udp(frame: bytes, at: int, port: int) -> Payload | str | None:
    """The packet inside VXLAN, GENEVE, Teredo or GTP-U whose UDP payload starts at `at`."""
    if len(frame) < at + 8:
        return None
    if port == VXLAN:
        return ("ethernet", at + 8) if frame[at] & 0x08 else None
    if port == GENEVE:
        return _geneve(frame, at)
    if port == TEREDO:
        return _teredo(frame, at)
    return _gtp_u(frame, at)


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
