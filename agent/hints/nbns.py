"""NetBIOS name service (UDP 137): the names a Windows-style host claims or looks for.

Registrations, refreshes and releases tell which computer name and workgroup a host holds; queries
tell which names it looks for; node status answers list every name a host holds, with its MAC.
Names come in the RFC 1001/1002 first-level encoding (32 letters A-P for 16 bytes: 15 name bytes,
padded with spaces, and one suffix byte that says what the name is for: 0x00 workstation, 0x20
file server, 0x1b domain master browser, 0x1c domain controllers, 0x1d master browser, 0x1e
browser election). Everything is bounded: at most MAX_NAMES names and MAX_ADDRESSES addresses,
compression pointers followed at most MAX_POINTERS times.
"""

from __future__ import annotations

import socket
from typing import Final

from agent.hints.base import DatagramFlow, Fields, HintOptions

NAME: Final = "nbns"
PROTO: Final = "udp"
PORT: Final = 137
MAX_NAMES: Final = 32
MAX_ADDRESSES: Final = 16
MAX_POINTERS: Final = 8
_MAX_RECORDS: Final = 32
_REQUESTS: Final = {0: "query", 5: "registration", 6: "release", 8: "refresh", 9: "refresh",
                    15: "registration"}
_RESPONSES: Final = {0: "response", 5: "registration_response", 6: "release_response", 7: "wait_ack",
                     8: "refresh_response", 9: "refresh_response", 15: "registration_response"}
_TYPE_NB: Final = 0x20
_TYPE_NBSTAT: Final = 0x21
_GROUP: Final = 0x8000


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    return proto == "udp" and PORT in (a_port, b_port)


def start(options: HintOptions) -> DatagramFlow:
    return _FLOW


def parse(message: bytes) -> Fields:
    """Kind, names with their suffix types, group flag and addresses of one NBNS message."""
    if len(message) < 12:
        raise ValueError("NBNS header cut short")
    flags = int.from_bytes(message[2:4], "big")
    opcode, response = (flags >> 11) & 0x0F, bool(flags & 0x8000)
    kind = (_RESPONSES if response else _REQUESTS).get(opcode)
    if kind is None:
        raise ValueError(f"unknown NBNS opcode {opcode}")
    counts = [int.from_bytes(message[i:i + 2], "big") for i in (4, 6, 8, 10)]
    if sum(counts) == 0 or sum(counts) > _MAX_RECORDS:
        raise ValueError("implausible NBNS record counts")
    names: list[tuple[str, int]] = []
    group_names: list[str] = []
    addresses: list[str] = []
    groups: set[bool] = set()
    mac = ""
    at = 12
    for _ in range(counts[0]):
        name, at = _name(message, at)
        _add(names, name)
        at += 4
        if at > len(message):
            raise ValueError("NBNS question cut short")
    for _ in range(counts[1] + counts[2] + counts[3]):
        name, at = _name(message, at)
        if at + 10 > len(message):
            raise ValueError("NBNS record cut short")
        rtype = int.from_bytes(message[at:at + 2], "big")
        length = int.from_bytes(message[at + 8:at + 10], "big")
        data = message[at + 10:at + 10 + length]
        if len(data) != length:
            raise ValueError("NBNS record data cut short")
        at += 10 + length
        if rtype == _TYPE_NBSTAT:
            kind = "status_response" if response else kind
            mac = _node_status(data, names, group_names) or mac
            continue
        _add(names, name)
        if rtype == _TYPE_NB:
            groups.update(_nb_entries(data, addresses))
    fields: Fields = {"nbns": kind, "names": [n for n, _ in names], "name_types": [t for _, t in names]}
    if response and flags & 0x0F:
        fields["rcode"] = flags & 0x0F
    if len(groups) == 1:
        fields["group"] = groups.pop()
    if group_names:
        fields["group_names"] = group_names
    if addresses:
        fields["addresses"] = addresses
    if mac:
        fields["mac"] = mac
    return fields


def _add(names: list[tuple[str, int]], name: tuple[str, int]) -> None:
    if name not in names and len(names) < MAX_NAMES:
        names.append(name)


def _nb_entries(data: bytes, addresses: list[str]) -> set[bool]:
    """NB resource data: (flags, IPv4 address) pairs; returns which group flags were seen."""
    if len(data) % 6:
        raise ValueError("NB record data is not a list of 6-byte entries")
    seen: set[bool] = set()
    for at in range(0, len(data), 6):
        seen.add(bool(int.from_bytes(data[at:at + 2], "big") & _GROUP))
        address = socket.inet_ntoa(data[at + 2:at + 6])
        if address not in addresses and len(addresses) < MAX_ADDRESSES:
            addresses.append(address)
    return seen


def _node_status(data: bytes, names: list[tuple[str, int]], group_names: list[str]) -> str:
    """NBSTAT resource data: the host's name table (18 bytes per name), then its unit id (the MAC)."""
    if not data or len(data) < 1 + 18 * data[0]:
        raise ValueError("node status name table cut short")
    for at in range(1, 1 + 18 * data[0], 18):
        name = (_printable(data[at:at + 15]), data[at + 15])
        _add(names, name)
        is_group = int.from_bytes(data[at + 16:at + 18], "big") & _GROUP
        if is_group and name[0] not in group_names and len(group_names) < MAX_NAMES:
            group_names.append(name[0])
    unit = data[1 + 18 * data[0]:7 + 18 * data[0]]
    return unit.hex(":") if len(unit) == 6 and any(unit) else ""


def _name(message: bytes, at: int) -> tuple[tuple[str, int], int]:
    """A first-level encoded name (scope labels skipped) at `at`, and where the record goes on."""
    first: bytes | None = None
    end, pointers = -1, 0
    while True:
        if at >= len(message):
            raise ValueError("NBNS name runs past the message")
        length = message[at]
        if length & 0xC0 == 0xC0:
            if at + 1 >= len(message) or pointers == MAX_POINTERS:
                raise ValueError("bad NBNS compression pointer")
            end = at + 2 if end < 0 else end
            at, pointers = (length & 0x3F) << 8 | message[at + 1], pointers + 1
        elif length == 0:
            if first is None:
                raise ValueError("NBNS name without its encoded label")
            return _decode(first), (at + 1 if end < 0 else end)
        elif length > 63 or at + 1 + length > len(message):
            raise ValueError("bad NBNS label")
        else:
            if first is None:
                first = message[at + 1:at + 1 + length]
            at += 1 + length


def _decode(label: bytes) -> tuple[str, int]:
    """First-level decoding: two letters A-P per byte; the last byte is the suffix type."""
    if len(label) != 32 or any(not 0x41 <= c <= 0x50 for c in label):
        raise ValueError("NBNS name is not first-level encoded")
    raw = bytes((label[i] - 0x41) << 4 | (label[i + 1] - 0x41) for i in range(0, 32, 2))
    return _printable(raw[:15]), raw[15]


def _printable(raw: bytes) -> str:
    """The 15 name bytes without their padding; other bytes shown as <xx>, as Wireshark does."""
    raw = raw.rstrip(b" \x00")
    return "".join(chr(c) if 0x20 <= c < 0x7F and c != 0x3C else f"<{c:02x}>" for c in raw)


_FLOW: Final = DatagramFlow(parse)  # holds no per-flow state: shared by every flow
