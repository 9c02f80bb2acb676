"""Bidirectional flow table: packets in, FlowRecords out (DESIGN.md section 1, hot path).

Layout, chosen by measurement (scripts/bench.py): one dict per table (TCP, UDP, other) maps each
direction's key to `2 * slot + direction`, so a packet finds its counters with one lookup and no
direction test. Per-direction columns are indexed by that number: `_count` packs
`bytes << 28 | packets` so one add counts both (a record holds up to 2**28 - 1 packets per
direction: with active_timeout at most 600 s that takes over 447 k packets/s in one direction of
one flow), `_flags` unions TCP flags, `_last` holds the time of the last packet in microseconds.
These three, written for every packet, are lists: CPython 3.11 reads and writes list items with
specialised instructions, array and bytearray items through generic calls. That costs ~150 B per
live flow (a pointer per item, an int object per count and time) and saves ~5% of the live
pipeline's instructions. The other columns are arrays and bytearrays. Nothing per flow is a
container the garbage collector has to chase (ints are not tracked), and it stays off while a
batch runs.

Time is packet time in integer microseconds and never goes backwards (late packets take the
current time and are counted). Expiry and eviction live in expiry.py, the Ethernet fast path in
fastpath.py.
"""

from __future__ import annotations

import gc
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from agent.decode import (
    DLT_EN10MB,
    OTHER,
    TCP,
    UDP,
    Decoded,
    Result,
    decode_frame,
    transport,
)
from agent.expiry import CLOSING, FREE, OPEN, US, Expiry
from agent.fastpath import META_RECORDS, PKT_BITS, EthernetFastPath
from agent.flowhead import HEAD, FlowContext, FlowHeads, HintSettings, Ports
from agent.flowkeys import address, describe_key, flow_record, reverse_key
from agent.fragments import Fragment, FragmentTable
from agent.framehints import FRAME_TYPES, FrameHints
from agent.hints import HINTERS
from agent.nonip import ethertype_name
from agent.records import Counters, FlowRecord, ProtoHint

PKT_MASK: Final = (1 << PKT_BITS) - 1
MAX_TEXTS: Final = 65_536  # address and MAC texts cached for flow heads (starts afresh when full)
NO_MAC: Final = bytes(6)


@dataclass(frozen=True, slots=True)
class FlowSettings:
    idle_timeout: float = 60.0
    active_timeout: float = 300.0
    tcp_close_grace: float = 2.0
    max_flows: int = 262_144


class FlowTable(Expiry, EthernetFastPath):
    """Accounts packets into flows and hands each finished flow to `emit`."""

    def __init__(self, settings: FlowSettings, emit: Callable[[FlowRecord], None], counters: Counters,
                 linktype: int = DLT_EN10MB, fast_path: bool = True,
                 on_hint: Callable[[ProtoHint], object] | None = None,
                 hints: HintSettings | None = None) -> None:
        self._emit = emit
        self._counters = counters
        self.linktype = linktype
        self._fast_path = fast_path
        super().__init__(settings.idle_timeout, settings.active_timeout, settings.tcp_close_grace)
        self._max_flows = settings.max_flows
        self._tables: tuple[dict[bytes, int], ...] = ({}, {}, {}, {})  # TCP, UDP, OTHER, TUNNEL
        self._count: list[int] = []  # lists, not arrays: see the module docstring
        self._flags: list[int] = []
        self._last: list[int] = []
        self._keys: list[bytes] = []
        self._macs = bytearray()  # 12 bytes a slot: a MAC then b MAC
        self._first = array("Q")
        self._due = array("I")  # packet-time second of the wheel slot a flow is filed in
        self._state = bytearray()
        self._table_of = bytearray()
        self._texts: dict[bytes, str] = {}  # raw address or MAC -> its text, shared by the heads
        self._free: list[int] = []
        self._continuing: dict[bytes, int] = {}  # a-keys of flows cut by the active timeout
        self._fragments = FragmentTable(counters)
        hints = hints or HintSettings()
        self._heads = (FlowHeads(hints, HINTERS, on_hint, counters, self._ports, self._context)
                       if on_hint is not None and hints.enabled else None)
        self._frame_hints = FrameHints(on_hint, counters) if on_hint is not None and hints.enabled else None
        self.live = 0
        self.peak_live = 0
        self._now = 0

    # ---- the hot loop --------------------------------------------------------------------------
    def ingest(self, packets: bytes, meta: bytes) -> None:
        """Account one batch from `next_batch`: concatenated frames and 16-byte (sec, usec, off, len)."""
        self._counters.add("frames", len(meta) // 16)
        enabled = gc.isenabled()
        gc.disable()
        try:
            if self._fast_path and self.linktype == DLT_EN10MB:
                self._ingest_ethernet(packets, meta)
            else:
                self._ingest_any(packets, meta)
        finally:
            if enabled:
                gc.enable()

    def _ingest_any(self, packets: bytes, meta: bytes) -> None:
        now, tick, slow = self._now, self._tick, self._slow
        for sec, usec, off, caplen in META_RECORDS(meta):
            t = sec * US + usec
            if not now <= t < tick:
                t = self._clock(t, now)
                tick = self._tick
            now = t
            slow(packets[off:off + caplen], t)
        self._now = now

    def reconfigure(self, settings: FlowSettings, hints: HintSettings) -> None:
        """New timeouts, table bound and head limits for a running table; flows in it are kept.

        ValueError for what only a restart can change (hints switched on or off, longer horizons)."""
        if (self._heads is not None) != hints.enabled:
            raise ValueError("hints.enabled changes only at a restart")
        self.retime(settings.idle_timeout, settings.active_timeout, settings.tcp_close_grace)
        self._max_flows = settings.max_flows
        if self._heads is not None:
            self._heads.reconfigure(hints)

    def advance(self, seconds: float) -> None:
        """Move packet time forward on a quiet live link (wall time), so idle flows still expire."""
        t = round(seconds * US)
        if t >= self._tick and t > self._now:
            self._now = self._clock(t, self._now)

    # ---- the general path ----------------------------------------------------------------------
    def _slow(self, frame: bytes, t: int) -> None:
        """Every frame the fast path does not take, new UDP flows included (they may be tunnels)."""
        result = decode_frame(frame, self.linktype)
        if type(result) is tuple:  # a Decoded packet (a Fragment is a tuple subclass, not a tuple)
            packet = cast(Decoded, result)
            self._account(packet[0], packet[1], packet[2], packet[3], packet[4], t, packet[6])
            if packet[5] is not None:
                self._decapsulated(packet[5], t)
        elif type(result) is int:
            self._counters.add("non_ip." + ethertype_name(result))
            if self._frame_hints is not None and result in FRAME_TYPES and self.linktype == DLT_EN10MB:
                self._frame_hints.feed(frame, result, t)
        elif type(result) is Fragment:
            self._counters.add("ip_fragments")
            self._reassembled(result, t)
        else:
            self._counters.add(f"skipped.{result}")

    def _reassembled(self, fragment: Fragment, t: int) -> None:
        """A fragment that completes its datagram: the datagram joins its flow now, once."""
        whole = self._fragments.add(fragment, t)
        if whole is None:
            return
        first, head, iplen, macs = whole
        result = transport(head, first.proto, first.src, first.dst, iplen, first.tags, macs)
        if type(result) is tuple:
            packet = cast(Decoded, result)
            self._counters.add("reassembled")
            self._account(packet[0], packet[1], packet[2], packet[3], packet[4], t)
            if packet[5] is not None:  # a fragmented tunnel datagram (VXLAN over a 1500 MTU)
                self._decapsulated(packet[5], t)
        else:
            self._counters.add("ip_fragments.undecodable")

    def _decapsulated(self, inner: Result | None, t: int) -> None:
        """A tunnelled packet also joins its own flow; the frame is accounted once, by its outer flow."""
        while type(inner) is tuple:
            packet = cast(Decoded, inner)
            self._account(packet[0], packet[1], packet[2], packet[3], packet[4], t, packet[6])
            self._counters.add("decapsulated")
            inner = packet[5]
        if inner is not None:
            self._counters.add("tunnel_inner_not_counted")

    def _account(self, table: int, key: bytes, iplen: int, tcp_flags: int, macs: bytes, t: int,
                 segment: bytes = b"") -> None:
        j = self._tables[table].get(key)
        in_head = j is not None and j >= HEAD
        if in_head:
            j -= HEAD  # type: ignore[operator]
        if j is not None and table == TCP and tcp_flags & 7:
            j = self._tcp_control(j, tcp_flags, t)
        if j is None:
            self._open(table, key, iplen, tcp_flags, macs, t, segment)
            return
        self._count[j] += iplen << PKT_BITS | 1
        self._flags[j] |= tcp_flags
        self._last[j] = t
        if in_head and segment:
            self._feed_head(j, table, segment, t)

    def _feed_head(self, j: int, table: int, segment: bytes, t: int) -> None:
        """A packet of a flow in its head: to the hinters; when the head is over, the flow goes fast."""
        assert self._heads is not None
        if self._heads.feed(j >> 1, not j & 1, segment, table == TCP, t):
            ja = j & ~1
            tab = self._tables[table]
            a_key, b_key = self._keys[ja], self._keys[ja + 1]
            tab[a_key] = ja
            if b_key != a_key:
                tab[b_key] = ja + 1

    def _ports(self, slot: int) -> Ports:
        """Protocol and ports of the TCP or UDP flow in `slot`, the little hinters choose by."""
        key = self._keys[slot << 1]
        at = 8 if len(key) < 36 else 32
        proto = "tcp" if self._table_of[slot] == TCP else "udp"
        return proto, key[at] << 8 | key[at + 1], key[at + 2] << 8 | key[at + 3]

    def _context(self, slot: int) -> FlowContext:
        """Who the flow in `slot` is between, for the hints read from it.

        The head keeps it while it lasts, so its texts come from one bounded cache: thousands of
        live flows share a few hosts' address and MAC strings, and each is formatted once.
        """
        ja = slot << 1
        key = self._keys[ja]
        if len(key) == 12:  # untagged IPv4, most flows: describe_key inlined
            proto: str | int = "tcp" if self._table_of[slot] == TCP else "udp"
            a_ip, b_ip, a_port, b_port = key[:4], key[4:8], key[8] << 8 | key[9], key[10] << 8 | key[11]
        else:
            proto, a_ip, a_port, b_ip, b_port, _ = describe_key(self._table_of[slot], key)
        macs = bytes(self._macs[12 * slot:12 * slot + 12])
        a_mac, b_mac = macs[:6], macs[6:]
        texts = self._texts
        if len(texts) >= MAX_TEXTS:
            texts.clear()
        return (proto, texts.get(a_ip) or texts.setdefault(a_ip, address(a_ip)), a_port,
                texts.get(b_ip) or texts.setdefault(b_ip, address(b_ip)), b_port,
                None if a_mac == NO_MAC else texts.get(a_mac) or texts.setdefault(a_mac, a_mac.hex(":")),
                None if b_mac == NO_MAC else texts.get(b_mac) or texts.setdefault(b_mac, b_mac.hex(":")))

    def _tcp_control(self, j: int, tcp_flags: int, t: int) -> int | None:
        """SYN, FIN or RST on a known flow; returns the number to count into (None: a new flow)."""
        slot = j >> 1
        if tcp_flags & 0x12 == 0x02 and self._state[slot] == CLOSING:
            self._end(slot, "rst" if (self._flags[j] | self._flags[j ^ 1]) & 4 else "fin")
            return None  # a fresh SYN on a closing connection: the port was reused
        if tcp_flags & 5 and self._state[slot] == OPEN:
            self._state[slot] = CLOSING
            self._schedule(j & ~1, (t + self._grace) // US + 1)
        return j

    def _open(self, table: int, key: bytes, iplen: int, tcp_flags: int, macs: bytes, t: int,
              segment: bytes = b"") -> None:
        if self.live >= self._max_flows:
            self._evict()
        if table != OTHER and len(key) == 12:  # untagged IPv4 TCP or UDP, most flows: reverse_key inlined
            rkey = key[4:8] + key[:4] + key[10:12] + key[8:10]
        else:
            rkey = reverse_key(table, key)
        swapped = table == TCP and tcp_flags & 0x12 == 0x12  # a SYN-ACK seen first: its receiver began
        in_head = self._heads is not None and table <= UDP
        if self._continuing:
            continued = self._continued_orientation(key, rkey)
            if continued is not None:
                swapped, in_head = continued, False  # its head was read before the active cut
        slot = self._free.pop() if self._free else self._allocate()
        ja = slot << 1
        a_key, b_key = (rkey, key) if swapped else (key, rkey)
        tab = self._tables[table]
        filed = ja + HEAD if in_head else ja
        tab[a_key] = filed
        if b_key != a_key:
            tab[b_key] = filed + 1
        keys, count, flags, last = self._keys, self._count, self._flags, self._last
        keys[ja] = a_key
        keys[ja + 1] = b_key
        j, other = (ja + 1, ja) if swapped and b_key != a_key else (ja, ja + 1)
        count[j] = iplen << PKT_BITS | 1
        count[other] = 0
        flags[j] = tcp_flags
        flags[other] = 0
        last[ja] = last[ja + 1] = t
        if not macs:
            macs = bytes(12)
        self._macs[12 * slot:12 * slot + 12] = macs if swapped else macs[6:12] + macs[:6]
        self._first[slot] = t
        self._table_of[slot] = table
        self.live += 1
        if self.live > self.peak_live:
            self.peak_live = self.live
        if tcp_flags & 5 and table == TCP:
            self._state[slot] = CLOSING
            self._schedule(ja, (t + self._grace) // US + 1)
        else:
            self._state[slot] = OPEN
            self._schedule(ja, (t + self._idle) // US + 1)
        if in_head and segment:
            self._feed_head(j, table, segment, t)

    def _continued_orientation(self, key: bytes, rkey: bytes) -> bool | None:
        """Whether a flow cut by the active timeout continues swapped; None if it is no continuation."""
        if self._continuing.pop(key, None) is not None:
            return False
        if self._continuing.pop(rkey, None) is not None:
            return True
        return None

    def _allocate(self) -> int:
        """A new slot at the end of every column (freed slots are reused first, by _open)."""
        slot = len(self._first)
        self._count.extend((0, 0))
        self._flags.extend((0, 0))
        self._last.extend((0, 0))
        self._keys.extend((b"", b""))
        self._macs.extend(bytes(12))
        self._first.append(0)
        self._due.append(0)
        self._state.append(FREE)
        self._table_of.append(0)
        return slot

    def _end(self, slot: int, reason: str) -> None:
        ja = slot << 1
        if self._heads is not None:
            self._heads.end(slot, max(self._last[ja], self._last[ja + 1]))
        table = self._table_of[slot]
        tab = self._tables[table]
        a_key, b_key = self._keys[ja], self._keys[ja + 1]
        tab.pop(a_key, None)
        tab.pop(b_key, None)
        self._keys[ja] = self._keys[ja + 1] = b""
        self._state[slot] = FREE
        self._free.append(slot)
        self.live -= 1
        if reason == "active":
            self._continuing[a_key] = self._last[ja] // US
        self._counters.add("flows." + reason)
        self._emit(self._record(slot, table, a_key, reason))

    def _record(self, slot: int, table: int, a_key: bytes, reason: str) -> FlowRecord:
        ja = slot << 1
        last_a, last_b = self._last[ja], self._last[ja + 1]
        count_a, count_b = self._count[ja], self._count[ja + 1]
        return flow_record(
            table, a_key, self._first[slot] / US, (last_a if last_a > last_b else last_b) / US,
            (count_a & PKT_MASK, count_b & PKT_MASK), (count_a >> PKT_BITS, count_b >> PKT_BITS),
            (self._flags[ja], self._flags[ja + 1]), bytes(self._macs[12 * slot:12 * slot + 12]), reason,
        )

    def flush(self, reason: str = "end") -> None:
        """End every live flow (end of capture or shutdown), in table order: no memory needed."""
        state = self._state
        for slot in range(len(state)):
            if state[slot] != FREE:
                self._end(slot, reason)
        self._continuing.clear()
