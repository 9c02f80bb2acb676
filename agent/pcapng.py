"""A pcapng reader for the files libpcap refuses: interfaces with different link types in one file.

libpcap reads a pcapng file only when every interface has the first one's link type, so a capture
taken on an Ethernet port and `any` (Linux cooked v2), or on Wi-Fi and Ethernet at once, fails to
open ("an interface has a type ... different from the type of the first interface") although
tshark reads it. capture.py falls back to this reader then; everything else stays with libpcap.

`packets(stream)` yields `(linktype, seconds, microseconds, frame)` for each Enhanced, Simple and
obsolete Packet Block, in file order, across sections (each Section Header Block restarts the
interface list and may change byte order). Interface timestamp resolution (if_tsresol) and offset
(if_tsoffset) are applied. Other blocks are skipped. A damaged or cut file raises PcapngError after
the packets before the damage have been yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

SECTION_HEADER: Final = 0x0A0D0D0A
_INTERFACE, _OBSOLETE_PACKET, _SIMPLE_PACKET, _ENHANCED_PACKET = 1, 2, 3, 6
_BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
_MAX_BLOCK: Final = 1 << 26  # 64 MiB: larger is a damaged length field, not a packet
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14


class PcapngError(ValueError):
    """The file is not pcapng, or is damaged at some block."""


@dataclass(frozen=True, slots=True)
class _Interface:
    linktype: int
    snaplen: int
    units_per_second: int
    offset_seconds: int


def is_pcapng(path: str) -> bool:
    """True if the file starts with a pcapng Section Header Block."""
    with open(path, "rb") as stream:
        head = stream.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] == SECTION_HEADER


def packets(stream: BinaryIO) -> Iterator[tuple[int, int, int, bytes]]:
    """(linktype, seconds, microseconds, frame) of each packet block; PcapngError where damaged."""
    order = "<"
    interfaces: list[_Interface] = []
    first = True
    while True:
        head = stream.read(8)
        if not head:
            return
        if len(head) < 8:
            raise PcapngError("cut short inside a block header")
        kind = struct.unpack(order + "I", head[:4])[0]
        if kind == SECTION_HEADER or first:
            if struct.unpack("<I", head[:4])[0] != SECTION_HEADER:
                raise PcapngError("not a pcapng file (no section header block)")
            magic = stream.read(4)
            if len(magic) < 4:
                raise PcapngError("cut short inside a section header")
            order = "<" if struct.unpack("<I", magic)[0] == _BYTE_ORDER_MAGIC else ">"
            if struct.unpack(order + "I", magic)[0] != _BYTE_ORDER_MAGIC:
                raise PcapngError("bad byte-order magic in a section header")
            length = struct.unpack(order + "I", head[4:])[0]
            _body(stream, length, 12)
            interfaces, first = [], False
            continue
        length = struct.unpack(order + "I", head[4:])[0]
        body = _body(stream, length, 8)
        if kind == _INTERFACE:
            interfaces.append(_interface(body, order))
        elif kind in (_ENHANCED_PACKET, _OBSOLETE_PACKET, _SIMPLE_PACKET):
            yield _packet(kind, body, order, interfaces)


def _body(stream: BinaryIO, length: int, consumed: int) -> bytes:
    """The rest of a block of total `length` after `consumed` bytes, without the trailing length."""
    if length % 4 or length < consumed + 4 or length > _MAX_BLOCK:
        raise PcapngError(f"bad block length {length}")
    rest = stream.read(length - consumed)
    if len(rest) < length - consumed:
        raise PcapngError("cut short inside a block")
    return rest[:-4]


def _interface(body: bytes, order: str) -> _Interface:
    if len(body) < 8:
        raise PcapngError("interface description block too short")
    linktype, _, snaplen = struct.unpack(order + "HHI", body[:8])
    units, offset = 1_000_000, 0
    at = 8
    while at + 4 <= len(body):
        code, size = struct.unpack(order + "HH", body[at:at + 4])
        value = body[at + 4:at + 4 + size]
        if code == 0:
            break
        if code == _OPT_TSRESOL and size == 1:
            exponent = value[0] & 0x7F
            units = (2 if value[0] & 0x80 else 10) ** min(exponent, 30 if value[0] & 0x80 else 18)
        elif code == _OPT_TSOFFSET and size == 8:
            offset = struct.unpack(order + "q", value)[0]
        at += 4 + size + (-size % 4)
    return _Interface(linktype, snaplen, units, offset)


def _packet(kind: int, body: bytes, order: str, interfaces: list[_Interface]) -> tuple[int, int, int, bytes]:
    if kind == _SIMPLE_PACKET:  # no interface id (always the first) and no timestamp
        if not interfaces or len(body) < 4:
            raise PcapngError("simple packet block without an interface")
        original = struct.unpack(order + "I", body[:4])[0]
        snaplen = interfaces[0].snaplen or original
        return interfaces[0].linktype, 0, 0, body[4:4 + min(original, snaplen)]
    if kind == _ENHANCED_PACKET:
        if len(body) < 20:
            raise PcapngError("enhanced packet block too short")
        index, high, low, captured = struct.unpack(order + "IIII", body[:16])
        start = 20
    else:
        if len(body) < 20:
            raise PcapngError("packet block too short")
        index, _, high, low, captured = struct.unpack(order + "HHIII", body[:16])
        start = 20
    if index >= len(interfaces):
        raise PcapngError(f"packet of undescribed interface {index}")
    if start + captured > len(body):
        raise PcapngError("packet data longer than its block")
    interface = interfaces[index]
    seconds, fraction = divmod(high << 32 | low, interface.units_per_second)
    micros = fraction * 1_000_000 // interface.units_per_second
    return interface.linktype, seconds + interface.offset_seconds, micros, body[start:start + captured]
