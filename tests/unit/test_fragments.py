"""agent.fragments: datagrams complete once, and every bound is counted."""

from __future__ import annotations

from agent.fragments import Fragment, FragmentTable
from agent.records import Counters


def _fragment(datagram: bytes, offset: int, size: int, more: bool) -> Fragment:
    return Fragment(datagram, offset, size, more, bytes(range(offset % 256, offset % 256 + 8)), size + 20,
                    17, b"\x0a\0\0\x01", b"\x0a\0\0\x02", b"", bytes(12))


def test_datagram_completes_when_every_byte_arrived() -> None:
    """The last missing piece completes the datagram and returns its head and total IP bytes."""
    table = FragmentTable(Counters())
    assert table.add(_fragment(b"d", 0, 16, True), 1) is None
    whole = table.add(_fragment(b"d", 16, 8, False), 2)
    assert whole is not None
    first, head, iplen, _ = whole
    assert first.offset == 0 and iplen == 16 + 20 + 8 + 20 and head[:8] == bytes(range(8))


def test_pending_datagrams_are_bounded_and_the_drop_is_counted() -> None:
    """With the table full, the oldest pending datagram is dropped and counted."""
    counters = Counters()
    table = FragmentTable(counters, max_datagrams=2)
    for name in (b"a", b"b", b"c"):
        table.add(_fragment(name, 0, 16, True), 1)
    assert counters.get("ip_fragments.dropped_for_room") == 1
    assert table.add(_fragment(b"a", 16, 8, False), 2) is None  # its first fragment was dropped


def test_old_incomplete_datagrams_expire_in_packet_time() -> None:
    """A datagram still incomplete after the timeout is forgotten and counted."""
    counters = Counters()
    table = FragmentTable(counters, timeout_us=30)
    table.add(_fragment(b"a", 0, 16, True), 0)
    table.expire(29)
    assert counters.get("ip_fragments.incomplete") == 0
    table.expire(30)
    assert counters.get("ip_fragments.incomplete") == 1
