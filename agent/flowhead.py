"""Flow heads: the first payload packets of each flow, handed to the hinters (DESIGN.md section 3).

A TCP or UDP flow starts in its head. While it is there, the flow table files it in its dict as
`2 * slot + direction + HEAD`: the fast path sees a number at or above HEAD and hands the packet
to the general path, which brings it here. The hinters are offered the flow's first payload in
each direction; the first that accepts gets up to `packets` payload packets per direction and
`bytes` bytes in all. Then the hinter is closed, the flow leaves its head and costs nothing more.
A flow no hinter wants leaves as soon as each direction has been offered a payload (UDP: at its
first payload). TCP payloads reach the hinter in sequence order with retransmitted bytes cut. A
hinter whose protocol needs more packets (telnet types a login one key per segment) says so in
its module's HEAD_PACKETS; its flows get that many.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from agent.hints import FlowHinter, HinterModule
from agent.hints.base import Fields, HintOptions
from agent.records import Counters, ProtoHint, make_record

HEAD: Final = 1 << 40
_SEQ_MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000

log = structlog.get_logger("agent.flowhead")

# proto, a IP, a port, b IP, b port, a MAC, b MAC
FlowContext = tuple[str | int, str, int, str, int, str | None, str | None]
Ports = tuple[str, int, int]  # proto, a port, b port


@dataclass(frozen=True, slots=True)
class HintSettings:
    enabled: bool = True
    packets: int = 4  # payload packets inspected per direction
    bytes: int = 32768  # payload bytes per flow, both directions (a DICOM request can take 16 KiB)
    record_user: bool = False  # user names of cleartext logins (personal data: off by default)
    disabled: tuple[str, ...] = ()  # hinter names switched off at this site


class _Head:
    """What the head of one flow has read so far, made at its first payload.

    Per direction as plain fields (a DNS-heavy ward holds tens of thousands of heads): `offered` is a
    bit per direction (1: b, 2: a), `expect_*` the next TCP sequence number (-1: none yet).
    """

    __slots__ = ("budget", "context", "expect_a", "expect_b", "hinter", "limit", "name", "offered",
                 "packets_a", "packets_b")

    def __init__(self, budget: int, limit: int) -> None:  # a plain class: made twice as fast as a dataclass
        self.budget = budget
        self.limit = limit
        self.hinter: FlowHinter | None = None
        self.name = ""
        self.offered = 0
        self.packets_a = self.packets_b = 0
        self.expect_a = self.expect_b = -1
        self.context: FlowContext | None = None


class FlowHeads:
    """Head state of the flows the table holds in their head, by slot."""

    def __init__(self, settings: HintSettings, hinters: Sequence[HinterModule],
                 on_hint: Callable[[ProtoHint], object], counters: Counters,
                 ports: Callable[[int], Ports], context: Callable[[int], FlowContext]) -> None:
        self._all_hinters = tuple(hinters)
        self._hinters = _by_proto(hinters, settings.disabled)
        self._options = HintOptions(record_user=settings.record_user)
        self._packets = settings.packets
        self._bytes = settings.bytes
        self._on_hint = on_hint
        self._counters = counters
        self._ports = ports
        self._context = context
        self._heads: list[_Head | None] = []  # by slot, like the flow table's columns: no dict entry per head
        self._failed_logged: set[str] = set()

    def reconfigure(self, settings: HintSettings) -> None:
        """New limits and options for flows whose first payload comes from now on."""
        self._hinters = _by_proto(self._all_hinters, settings.disabled)
        self._options = HintOptions(record_user=settings.record_user)
        self._packets, self._bytes = settings.packets, settings.bytes

    def feed(self, slot: int, from_a: bool, segment: bytes, tcp: bool, t: int) -> bool:
        """One packet of a flow in its head; True when the head is over (the flow may go fast)."""
        if tcp:
            if len(segment) < 20 or len(segment) <= (segment[12] >> 4) * 4:
                return False  # no payload (or a cut header): nothing to read, no head state needed
        elif len(segment) <= 8:
            return False
        heads = self._heads
        if slot >= len(heads):
            heads.extend([None] * (slot + 1 - len(heads) + len(heads) // 2))
        head = heads[slot]
        if head is None:
            head = heads[slot] = _Head(self._bytes, self._packets)
        payload = _tcp_payload(head, segment, from_a, self._counters) if tcp else segment[8:]
        if not payload:
            return False
        if head.hinter is None:
            head.offered |= 2 if from_a else 1
            if not self._choose(head, slot, payload, from_a):
                if head.offered == 3 or not tcp:
                    heads[slot] = None
                    return True
                return False
        if from_a:
            head.packets_a = packets = head.packets_a + 1
        else:
            head.packets_b = packets = head.packets_b + 1
        if packets > head.limit:  # this direction has had its share
            self.end(slot, t)
            return True
        budget = head.budget - len(payload)
        if budget < 0:
            payload = payload[:head.budget]
            self._counters.add("hints.byte_budget_reached")
        head.budget = budget
        hinter = head.hinter
        assert hinter is not None
        try:
            found = hinter.feed(payload, from_a)
        except Exception as exc:
            self._failed(head, exc)
            self.end(slot, t)
            return True
        if found:
            self._emit(head, slot, from_a, found, t)
        if hinter.done or budget <= 0 or (head.packets_a >= head.limit and head.packets_b >= head.limit):
            self.end(slot, t)
            return True
        return False

    def end(self, slot: int, t: int) -> None:
        """The head is over (or the flow ended): what the hinter still holds is emitted."""
        heads = self._heads
        head = heads[slot] if slot < len(heads) else None
        if head is None:
            return
        heads[slot] = None
        if head.hinter is None:
            return
        try:
            found = head.hinter.close()
        except Exception as exc:
            self._failed(head, exc)
            return
        if found:
            self._emit(head, slot, True, found, t)

    def _choose(self, head: _Head, slot: int, payload: bytes, from_a: bool) -> bool:
        proto, a_port, b_port = self._ports(slot)
        for module in self._hinters[proto]:
            if module.accepts(proto, a_port, b_port, payload, from_a):
                head.hinter, head.name = module.start(self._options), module.NAME
                head.limit = max(head.limit, getattr(module, "HEAD_PACKETS", 0))
                self._counters.add("hints.flows." + module.NAME)
                return True
        return False

    def _failed(self, head: _Head, exc: Exception) -> None:
        """A hinter raised: garbage (ValueError) is counted as malformed, a hinter bug as failed and
        logged once per hinter; either way the flow's hinter is dropped and the capture goes on."""
        if isinstance(exc, ValueError):
            self._counters.add("hints.malformed." + head.name)
        else:
            self._counters.add("hints.failed." + head.name)
            if head.name not in self._failed_logged:
                self._failed_logged.add(head.name)
                log.error("hinter_failed", hinter=head.name, error=repr(exc))
        head.hinter = None

    def _emit(self, head: _Head, slot: int, from_a: bool, found: list[Fields], t: int) -> None:
        if head.context is None:
            head.context = self._context(slot)
        proto, a_ip, a_port, b_ip, b_port, a_mac, b_mac = head.context
        name, ts, on_hint = head.name, t / 1_000_000, self._on_hint
        self._counters.add("hints." + name, len(found))
        make = make_record
        for fields in found:
            if from_a:
                on_hint(make(ProtoHint, (ts, name, proto, a_mac, a_ip, a_port, b_mac, b_ip, b_port, True,
                                         fields)))
            else:
                on_hint(make(ProtoHint, (ts, name, proto, b_mac, b_ip, b_port, a_mac, a_ip, a_port, False,
                                         fields)))


def _by_proto(hinters: Sequence[HinterModule],
              disabled: Sequence[str]) -> dict[str, tuple[HinterModule, ...]]:
    """The enabled hinters of each transport, in their order: a flow is offered only its own."""
    return {proto: tuple(h for h in hinters if proto == h.PROTO and h.NAME not in disabled)
            for proto in ("tcp", "udp")}


def _tcp_payload(head: _Head, segment: bytes, from_a: bool, counters: Counters) -> bytes:
    """The segment's new bytes in sequence order: a retransmission's old bytes are cut."""
    data = segment[(segment[12] >> 4) * 4:]
    seq = int.from_bytes(segment[4:8], "big")
    expect = head.expect_a if from_a else head.expect_b
    if expect >= 0:
        behind = (expect - seq) & _SEQ_MASK
        if behind < _HALF:
            if behind >= len(data):
                counters.add("hints.retransmissions")
                return b""
            data, seq = data[behind:], expect
    if from_a:
        head.expect_a = (seq + len(data)) & _SEQ_MASK
    else:
        head.expect_b = (seq + len(data)) & _SEQ_MASK
    return data
