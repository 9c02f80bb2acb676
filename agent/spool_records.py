"""The spool's record format: how one entry is laid out in a segment file, and how a file is read back.

A record is `magic "WS", kind length (1 byte), payload length (4), id (8)`, then a CRC32 of all of
that and of the kind and payload, then the kind and the payload. Reading a segment keeps every intact
record and tells a torn tail (a crash during the last write: zeros, or a record cut short by the end
of the file) from damage (anything else), which the spool quarantines (agent/spool.py).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

PREFIX: Final = struct.Struct("<2sBIQ")  # magic, kind length, payload length, id; then CRC32 (4 bytes)
HEAD: Final = PREFIX.size + 4
MAGIC: Final = b"WS"


def encode(entry_id: int, kind: bytes, payload: bytes) -> bytes:
    prefix = PREFIX.pack(MAGIC, len(kind), len(payload), entry_id)
    crc = zlib.crc32(payload, zlib.crc32(kind, zlib.crc32(prefix)))
    return prefix + crc.to_bytes(4, "little") + kind + payload


def decode(data: bytes, off: int, low: int, high: int) -> tuple[int, int] | None:
    """(id, length) of an intact record at `off` whose id is in [low, high), else None."""
    if len(data) - off < HEAD:
        return None
    magic, klen, plen, entry_id = PREFIX.unpack_from(data, off)
    end = off + HEAD + klen + plen
    if magic != MAGIC or end > len(data) or not low <= entry_id < high:
        return None
    crc = zlib.crc32(data[off + HEAD:end], zlib.crc32(data[off:off + PREFIX.size]))
    stored = int.from_bytes(data[off + PREFIX.size:off + HEAD], "little")
    return (entry_id, end - off) if crc == stored else None


def scan(data: bytes, first: int, high: int) -> tuple[list[tuple[int, int, int]], int, bool]:
    """Intact records (id, offset, length), where the clean part ends, and whether bytes were damaged.

    Invalid bytes followed by an intact record, or that are neither zeros nor a record cut short by
    the end of the file, are damage; otherwise they are a torn tail from a crash.
    """
    records: list[tuple[int, int, int]] = []
    off, low, damaged = 0, first, False
    while off < len(data):
        found = decode(data, off, low, high)
        if found:
            records.append((found[0], off, found[1]))
            low, off = found[0] + 1, off + found[1]
            continue
        nxt = data.find(MAGIC, off + 1)
        while nxt != -1 and decode(data, nxt, low, high) is None:
            nxt = data.find(MAGIC, nxt + 1)
        if nxt == -1:
            rest = data[off:]
            magic, klen, plen, _ = PREFIX.unpack_from(rest.ljust(HEAD, b"\0"))
            torn = not rest.strip(b"\0") or len(rest) < HEAD or (
                magic == MAGIC and off + HEAD + klen + plen > len(data))
            return records, off, damaged or not torn
        damaged, off = True, nxt
    return records, off, damaged
