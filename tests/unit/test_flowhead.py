"""Tests for agent/flowhead.py: flow heads handed to the hinters through the flow table."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import wardgen
from batches import pack
from wardgen import ACK, FIN, PSH, SYN, Host

from agent.flowhead import HintSettings
from agent.flows import FlowSettings, FlowTable
from agent.hints import hl7
from agent.records import Counters, FlowRecord, ProtoHint

T0 = wardgen.EPOCH + 10.5
MONITOR = Host("10.1.0.5", "02:00:00:00:01:05")
ENGINE = Host("10.1.0.9", "02:00:00:00:01:09")

Pkt = tuple[float, bytes]


class Run:
    """A flow table with hints on, fed whole packet lists; keeps flows, hints and counters."""

    def __init__(self, frames: list[Pkt], fast_path: bool = True, **hints: Any) -> None:
        self.flows: list[FlowRecord] = []
        self.hints: list[ProtoHint] = []
        self.counters = Counters()
        table = FlowTable(FlowSettings(), self.flows.append, self.counters, fast_path=fast_path,
                          on_hint=self.hints.append, hints=HintSettings(**hints))
        table.ingest(*pack(frames))
        table.flush()


def _session(payloads: list[tuple[int, bytes]], retransmit: int = -1) -> Iterator[Pkt]:
    """A TCP session monitor -> engine:2575 carrying (direction, bytes) segments in order."""
    conn = wardgen._Tcp(wardgen._Pair(MONITOR, ENGINE), 40100, 2575)
    t = T0
    for frame in (conn.seg(0, SYN), conn.seg(1, SYN | ACK), conn.seg(0, ACK)):
        yield t, frame
        t += 0.001
    for i, (d, data) in enumerate(payloads):
        before = list(conn.seq)
        frame = conn.seg(d, ACK | PSH, data)
        yield t, frame
        if i == retransmit:
            conn.seq = before
            yield t + 0.2, conn.seg(d, ACK | PSH, data)
        yield t + 0.0005, conn.seg(1 - d, ACK)
        t += 0.01
    yield t, conn.seg(0, FIN | ACK)
    yield t + 0.001, conn.seg(1, FIN | ACK)
    yield t + 0.002, conn.seg(0, ACK)


def _message(n: int) -> bytes:
    return wardgen.hl7_message(f"C{n}", T0, patient="CANARY^ZZQX", mrn="MRN-CANARY-1")


def _types(run: Run) -> list[str]:
    return [str(h.fields.get("message_type")) for h in run.hints]


def test_hl7_exchange_gives_one_hint_per_message_with_its_sender() -> None:
    """Each MLLP message of the head yields one hint, oriented by its sender."""
    run = Run(list(_session([(0, _message(1)), (1, wardgen.hl7_ack("C1", T0))])))
    assert [(h.app, h.src_ip, h.dst_port, h.initiator) for h in run.hints] == [
        ("hl7", MONITOR.ip, 2575, True), ("hl7", ENGINE.ip, 40100, False)]
    assert _types(run) == ["ORU^R01", "ACK^R01"]


def test_message_split_across_segments_is_read_once_whole() -> None:
    """An MSH cut across three segments still gives one hint."""
    message = _message(1)
    run = Run(list(_session([(0, message[:9]), (0, message[9:40]), (0, message[40:])])))
    assert _types(run) == ["ORU^R01"]


def test_retransmitted_segment_reaches_the_hinter_once() -> None:
    """A retransmission's bytes are cut, so a message is not hinted twice."""
    run = Run(list(_session([(0, _message(1))], retransmit=0)))
    assert _types(run) == ["ORU^R01"]
    assert run.counters.get("hints.retransmissions") == 1


def test_only_the_first_k_payload_packets_per_direction_are_read() -> None:
    """With packets=2 the third message of the same direction is not inspected."""
    run = Run(list(_session([(0, _message(n)) for n in range(4)])), packets=2)
    assert len(run.hints) == 2


def test_byte_budget_cuts_the_head() -> None:
    """A budget smaller than the first message stops the hinter before the MSH ends."""
    run = Run(list(_session([(0, _message(1))])), bytes=64)
    assert run.hints == []
    assert run.counters.get("hints.byte_budget_reached") == 1


def test_a_disabled_hinter_is_absent() -> None:
    """hints.disabled = ["hl7"] leaves MLLP traffic unread."""
    run = Run(list(_session([(0, _message(1))])), disabled=("hl7",))
    assert run.hints == [] and run.counters.get("hints.flows.hl7") == 0


def test_flows_are_the_same_with_hints_on_fast_and_general_path() -> None:
    """Holding flows in their head changes no flow record, on either path."""
    packets = list(_session([(0, _message(n)) for n in range(6)] + [(1, b"x" * 300)]))
    plain: list[FlowRecord] = []
    table = FlowTable(FlowSettings(), plain.append, Counters())
    table.ingest(*pack(packets))
    table.flush()
    assert Run(packets).flows == plain
    assert Run(packets, fast_path=False).flows == plain


def test_a_flow_no_hinter_wants_leaves_its_head_after_both_sides_spoke() -> None:
    """Unknown payloads in both directions end the head: later messages are not hinted."""
    packets = list(_session([(0, b"HELLO"), (1, b"WORLD"), (0, _message(1))]))
    run = Run(packets)
    assert run.hints == []


def test_a_hinter_bug_is_counted_and_the_capture_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception other than ValueError from a hinter is counted; flows are still reported."""
    def broken(self: hl7.Hl7Flow, payload: bytes, from_a: bool) -> list[Any]:
        raise KeyError("bug")

    monkeypatch.setattr(hl7.Hl7Flow, "feed", broken)
    run = Run(list(_session([(0, _message(1))])))
    assert run.counters.get("hints.failed.hl7") == 1 and len(run.flows) == 1


def test_malformed_payload_is_counted_and_the_flow_kept() -> None:
    """A hinter's ValueError is counted by hinter name; the flow record is unchanged."""
    run = Run(list(_session([(0, b"\x0bMSH\r\x1c\r" + b"\x0bXYZ|junk\r\x1c\r")])))
    assert run.counters.get("hints.malformed.hl7") == 1 and run.flows[0].a_pkts == 5


@pytest.mark.shared
def test_shared_captures_give_the_same_flows_with_hints_on() -> None:
    """On every shared capture, reading flow heads changes no flow record."""
    from conftest import SHARED_PCAPS

    from agent.config import AgentConfig
    from agent.pipeline import replay

    captures = sorted(SHARED_PCAPS.glob("*.pcap")) if SHARED_PCAPS.is_dir() else []
    if not captures:
        pytest.skip("../shared/pcaps is absent")
    for capture in captures:
        plain: list[FlowRecord] = []
        hinted: list[FlowRecord] = []
        hints: list[ProtoHint] = []
        replay([str(capture)], AgentConfig(), plain.append)
        replay([str(capture)], AgentConfig(), hinted.append, on_hint=hints.append)
        assert hinted == plain, capture.name


def _held_bytes(frames: list[Pkt], hints: bool) -> int:
    """Memory a flow table still holds after ingesting frames (flows live, nothing flushed)."""
    batch = pack(frames)
    tracemalloc.start()
    try:
        table = FlowTable(FlowSettings(), lambda record: None, Counters(), on_hint=lambda hint: None,
                          hints=HintSettings(enabled=hints))
        table.ingest(*batch)
        held = tracemalloc.get_traced_memory()[0]
        del table
    finally:
        tracemalloc.stop()
    return held


def test_flows_without_payload_hold_no_head_state() -> None:
    """Scan SYNs and refused connections never reach a hinter, so hints on cost them nothing."""
    scan = list(wardgen.syn_scan(T0, MONITOR, ENGINE, range(1, 2001)))
    extra = _held_bytes(scan, hints=True) - _held_bytes(scan, hints=False)
    assert extra < 2000 * 100  # the flow's two table entries filed as in its head; head state is more


def test_a_dns_flow_in_its_head_holds_under_400_bytes_of_head_state() -> None:
    """DNS flows stay in their head (a tunnel may reuse a port): a DNS-heavy ward holds many at once."""
    lookups = [p for i in range(2000) for p in wardgen.dns_lookup(
        T0 + i * 0.001, MONITOR, ENGINE, 20000 + i, f"host{i}.ward.example", ["10.1.0.9"], txid=i)]
    extra = _held_bytes(lookups, hints=True) - _held_bytes(lookups, hints=False)
    assert 0 < extra < 2000 * 400
