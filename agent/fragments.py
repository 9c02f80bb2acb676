"""IP fragments, counted the way tshark counts them: a datagram joins its flow once, in the frame
that completes it; an incomplete datagram joins no flow.

Only the head of each datagram (the first HEAD_BYTES of its transport payload, which hold every
header the flow table reads) is kept while its fragments arrive. Pending datagrams are bounded in
number and in age (packet time); dropping one is counted.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from agent.records import Counters

HEAD_BYTES: Final = 128


class Fragment(NamedTuple):
    """One IP fragment as decode.py hands it over."""

    datagram: bytes  # what identifies the datagram: version, addresses, protocol, id, VLAN ids
    offset: int  # where this fragment's payload starts in the datagram's payload, in bytes
    size: int  # payload bytes this fragment carries, by its IP header
    more: bool  # more fragments follow
    payload: bytes  # the captured part of this fragment's payload
    iplen: int  # this fragment's IP-layer bytes
    proto: int
    src: bytes
    dst: bytes
    tags: bytes
    macs: bytes


class _Pending:
    __slots__ = ("first", "head", "iplen", "macs", "offsets", "received", "started", "total")

    def __init__(self, started: int) -> None:
        self.head = bytearray()
        self.offsets: set[int] = set()
        self.received = 0
        self.total = -1
        self.iplen = 0
        self.first: Fragment | None = None
        self.macs = b""
        self.started = started


Complete = tuple[Fragment, bytes, int, bytes]  # the first fragment, the datagram head, IP bytes, MACs


class FragmentTable:
    """Collects fragments until a datagram is whole."""

    def __init__(self, counters: Counters, max_datagrams: int = 4096, timeout_us: int = 30_000_000) -> None:
        self._counters = counters
        self._max = max_datagrams
        self._timeout = timeout_us
        self._pending: dict[bytes, _Pending] = {}

    def add(self, fragment: Fragment, t: int) -> Complete | None:
        """Take a fragment; when it completes its datagram, return what the flow table needs."""
        pending = self._pending.get(fragment.datagram)
        if pending is None:
            if len(self._pending) >= self._max:
                del self._pending[next(iter(self._pending))]
                self._counters.add("ip_fragments.dropped_for_room")
            pending = self._pending[fragment.datagram] = _Pending(t)
        if fragment.offset in pending.offsets:
            return None  # a repeated fragment adds nothing
        pending.offsets.add(fragment.offset)
        pending.received += fragment.size
        pending.iplen += fragment.iplen
        if fragment.offset < HEAD_BYTES:
            end = fragment.offset + len(fragment.payload)
            if len(pending.head) < end:
                pending.head.extend(bytes(end - len(pending.head)))
            pending.head[fragment.offset:end] = fragment.payload
        if fragment.offset == 0:
            pending.first = fragment
        if not fragment.more:
            pending.total = fragment.offset + fragment.size
        if pending.first is None or pending.total < 0 or pending.received < pending.total:
            return None
        del self._pending[fragment.datagram]
        return pending.first, bytes(pending.head[:HEAD_BYTES]), pending.iplen, pending.first.macs

    def expire(self, now: int) -> None:
        """Forget datagrams older than the timeout (the oldest come first in the dict)."""
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if now - pending.started < self._timeout:
                return
            del self._pending[key]
            self._counters.add("ip_fragments.incomplete")
