"""Batches shaped like pcapy-ng's `next_batch`, for driving the flow table without a capture file."""

from __future__ import annotations

import struct
from collections.abc import Iterable


def pack(packets: Iterable[tuple[float, bytes]]) -> tuple[bytes, bytes]:
    """Frames concatenated, then one native-endian (sec, usec, offset, caplen) record per frame."""
    return pack_us((round(ts * 1e6), frame) for ts, frame in packets)


def pack_us(packets: Iterable[tuple[int, bytes]]) -> tuple[bytes, bytes]:
    """The same, with times in integer microseconds."""
    data, meta = bytearray(), bytearray()
    for t, frame in packets:
        sec, usec = divmod(t, 1_000_000)
        meta += struct.pack("=IIII", sec, usec, len(data), len(frame))
        data += frame
    return bytes(data), bytes(meta)
