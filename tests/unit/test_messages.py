"""agent.messages: headers, payloads and columnar flow batches round-trip; bad input is a MessageError."""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
import wardgen
from conftest import SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import config, messages
from agent.messages import Header, Message, MessageError
from agent.pipeline import replay
from agent.records import Finding, FlowRecord

T0 = 1_767_225_600_000_000  # 2026-01-01 in microseconds


def _records(capture: Path) -> list[FlowRecord]:
    found: list[FlowRecord] = []
    replay([str(capture)], config.AgentConfig(), found.append)
    return found


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory: pytest.TempPathFactory) -> list[FlowRecord]:
    path = tmp_path_factory.mktemp("wire") / "sample.pcap"
    with wardgen.PcapWriter(path) as writer:
        writer.write_all(wardgen.scenario("sample"))
    return _records(path)


def _flow(**changes: Any) -> FlowRecord:
    base = FlowRecord(T0 / 1e6, (T0 + 1500) / 1e6, "tcp", "10.0.0.1", 49152, "10.0.0.2", 443,
                      "02:00:00:00:00:01", "02:00:00:00:00:02", (), 3, 2, 180, 120, "SA", "SA", "fin")
    return base._replace(**changes)


def _round_trip(message: Message, codec: int | None = None) -> Message:
    header = messages.decode_header(messages.encode_header(message.header))
    return messages.decode_payload(header, messages.encode_payload(message, codec))


_address = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                     st.sampled_from(["::ffff:10.1.2.3", "::1", "fe80::1", "2001:db8::"]))
_mac = st.one_of(st.none(), st.binary(min_size=6, max_size=6).filter(any).map(lambda b: b.hex(":")))
_u32 = st.integers(0, 2**32 - 1)
_flows = st.builds(
    lambda start, dur, proto, a_ip, a_port, b_ip, b_port, a_mac, b_mac, vlan, counts, flags, end: FlowRecord(
        start / 1_000_000, (start + dur) / 1_000_000, proto, a_ip, a_port, b_ip, b_port, a_mac, b_mac,
        tuple(vlan), *counts, *flags, end),
    st.integers(T0 - 10**9, T0 + 10**9), st.integers(0, 10**9),
    st.one_of(st.sampled_from(["tcp", "udp", "icmp", "icmp6"]), st.integers(0, 255)),
    _address, st.integers(0, 65535), _address, st.integers(0, 65535), _mac, _mac,
    st.lists(st.integers(0, 4095), max_size=3), st.tuples(_u32, _u32, _u32, _u32),
    st.tuples(st.sampled_from(["", "S", "SA", "SFPA", "SFRPAUEC"]), st.sampled_from(["", "SA", "R"])),
    st.sampled_from(["fin", "rst", "idle", "active", "evicted", "end"]))


def test_header_round_trips() -> None:
    """A header decodes to the same sensor, boot, seq, kind and version."""
    header = Header("ward7-a", 12, 2**40, "findings")
    assert messages.decode_header(messages.encode_header(header)) == header


@pytest.mark.parametrize("fields", [dict(sensor="a/b"), dict(sensor=""), dict(sensor="x" * 65),
                                    dict(boot=-1), dict(seq=2**63), dict(seq=True), dict(kind="flow")])
def test_invalid_header_is_refused(fields: dict[str, Any]) -> None:
    """Sensor ids unsafe in a topic, out-of-range counters and unknown kinds raise ValueError."""
    with pytest.raises(ValueError):
        Header(**{"sensor": "s1", "boot": 1, "seq": 1, "kind": "flows", **fields})


@pytest.mark.parametrize("raw", [cbor2.dumps([2, "s1", 1, 1, "flows"]), cbor2.dumps([1, "s1", 1, 1]),
                                 cbor2.dumps([1, "s/1", 1, 1, "flows"]), cbor2.dumps({"v": 1}), b"\xff",
                                 b""])
def test_bad_encoded_header_is_a_message_error(raw: bytes) -> None:
    """Unknown schema versions, wrong shapes, bad fields and non-CBOR raise MessageError."""
    with pytest.raises(MessageError):
        messages.decode_header(raw)


def test_flow_batch_of_a_replay_round_trips_exactly(sample_records: list[FlowRecord]) -> None:
    """The records of a generated capture come back identical, in order, microseconds included."""
    message = Message(Header("s1", 1, 7, "flows"), 1_767_225_700.25, sample_records)
    back = _round_trip(message)
    assert len(sample_records) > 20 and back.body == sample_records and back.created == message.created


@pytest.mark.shared
def test_flow_batch_of_a_shared_capture_round_trips_exactly() -> None:
    """A real capture's records (public addresses, real MACs) come back identical."""
    capture = SHARED_PCAPS / "malware-emotet-infection.pcap"
    if not capture.exists():
        pytest.skip("shared captures absent")
    records = _records(capture)
    assert messages.decode_flows(messages.encode_flows(records)) == records


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(_flows, max_size=40))
def test_any_flow_batch_round_trips_exactly(records: list[FlowRecord]) -> None:
    """IPv4, IPv6 (mapped forms too), missing MACs, VLAN stacks and protocol numbers survive exactly."""
    assert messages.decode_flows(messages.encode_flows(records)) == records


def test_millisecond_unit_floors_times() -> None:
    """With unit_us=1000 times come back floored to the millisecond, the rest unchanged."""
    record = _flow(first=(T0 + 1999) / 1e6, last=(T0 + 5_000_999) / 1e6)
    back = messages.decode_flows(messages.encode_flows([record], unit_us=1000))[0]
    assert back == record._replace(first=(T0 + 1000) / 1e6, last=(T0 + 5_000_000) / 1e6)


@pytest.mark.parametrize("mac", ["02:00:00:00:00:0A", "00:00:00:00:00:00", "0200.0000.0001"])
def test_mac_that_cannot_be_carried_is_refused(mac: str) -> None:
    """Upper-case, all-zero (stands for None) and dotted MACs raise ValueError at encode time."""
    with pytest.raises(ValueError):
        messages.encode_flows([_flow(a_mac=mac)])


def test_odd_address_text_is_carried_verbatim() -> None:
    """An address that inet_ntop would rewrite (or that is not one) travels as text, unchanged."""
    records = [_flow(a_ip="2001:DB8::1"), _flow(b_ip="not-an-ip")]
    assert messages.decode_flows(messages.encode_flows(records)) == records


@pytest.mark.parametrize(("kind", "body"), [
    ("devices", {"mode": "snapshot", "devices": [{"mac": "02:00:00:00:00:01", "role": "monitor"}]}),
    ("devices", {"mode": "delta", "devices": []}),
    ("findings", [Finding("scan", "high", 1.5, "10.0.0.9", None, None, None, "tcp", None, None, None,
                          "10.0.0.9 probed 300 ports", {"ports": 300}, "scan|10.0.0.9").to_dict()]),
    ("health", {"cpu": 0.25, "drops": 0, "counters": {"flows.idle": 3}}),
    ("status", {"online": True, "boot": 4, "version": "0.1.0", "capabilities": ["flows"]}),
    ("config_ack", {"version": 3, "errors": []}),
])
def test_other_kinds_round_trip(kind: str, body: Any) -> None:
    """Device, finding, health, status and config-ack bodies come back equal."""
    assert _round_trip(Message(Header("s1", 1, 1, kind), 5.0, body)).body == body


@pytest.mark.parametrize(("kind", "body"), [("devices", {"mode": "full", "devices": []}),
                                            ("findings", {"kind": "scan"}), ("health", [1, 2]),
                                            ("status", {"at": {1, 2}})])
def test_body_of_the_wrong_shape_is_refused(kind: str, body: Any) -> None:
    """A body that does not fit its kind, or is not plain data, raises ValueError at encode time."""
    with pytest.raises(ValueError):
        messages.encode_payload(Message(Header("s1", 1, 1, kind), 5.0, body))


@pytest.mark.parametrize("codec", [messages.CODEC_NONE, messages.CODEC_ZLIB, messages.CODEC_LZMA])
def test_every_codec_round_trips(codec: int, sample_records: list[FlowRecord]) -> None:
    """Uncompressed, zlib and LZMA2 payloads all decode to the same records."""
    message = Message(Header("s1", 1, 1, "flows"), 5.0, sample_records)
    assert _round_trip(message, codec).body == sample_records


def test_tagged_cbor_in_a_body_is_refused() -> None:
    """CBOR tags (dates, regexes, ...) in a decoded body raise MessageError, not odd objects."""
    payload = bytes([messages.CODEC_NONE]) + cbor2.dumps([5.0, {"at": cbor2.CBORTag(1, 5)}])
    with pytest.raises(MessageError):
        messages.decode_payload(Header("s1", 1, 1, "health"), payload)


def test_compression_bomb_is_refused() -> None:
    """A payload that inflates past MAX_PAYLOAD raises MessageError."""
    bomb = bytes([messages.CODEC_ZLIB]) + zlib.compress(bytes(messages.MAX_PAYLOAD + 10), 9)
    with pytest.raises(MessageError):
        messages.decode_payload(Header("s1", 1, 1, "health"), bomb)


def test_truncated_payload_is_a_message_error(sample_records: list[FlowRecord]) -> None:
    """A flow payload cut at any offset raises MessageError and nothing else."""
    header = Header("s1", 1, 1, "flows")
    payload = messages.encode_payload(Message(header, 5.0, sample_records[:30]))
    for cut in range(len(payload)):
        with pytest.raises(MessageError):
            messages.decode_payload(header, payload[:cut])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(messages.KINDS), st.binary(max_size=300))
def test_random_payload_is_a_message_error_or_decodes(kind: str, data: bytes) -> None:
    """Random bytes never raise anything but MessageError."""
    with contextlib.suppress(MessageError):
        messages.decode_payload(Header("s1", 1, 1, kind), data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_tampered_flow_columns_are_a_message_error(data: st.DataObject) -> None:
    """A flow body with any one item replaced by another value decodes or raises MessageError only."""
    body = messages.encode_flows([_flow(), _flow(a_ip="2001:db8::5", vlan=(7,), b_mac=None)])
    at = data.draw(st.integers(0, len(body) - 1))
    body[at] = data.draw(st.one_of(st.integers(-2**64, 2**64), st.binary(max_size=40), st.text(max_size=5),
                                   st.lists(st.integers(-3, 300), max_size=4), st.none(), st.floats()))
    with contextlib.suppress(MessageError):
        messages.decode_flows(body)


def test_index_past_the_endpoint_table_is_a_message_error() -> None:
    """An endpoint index beyond the table raises MessageError."""
    body = messages.encode_flows([_flow()])
    body[10] = [5]
    with pytest.raises(MessageError):
        messages.decode_flows(body)


@pytest.mark.parametrize(("kind", "expected"), [("flows", "ward/icu/s1/up/flows"),
                                                ("findings", "ward/icu/s1/up/findings"),
                                                ("status", "ward/icu/s1/status"),
                                                ("config_ack", "ward/icu/s1/config/ack")])
def test_topics_follow_the_design(kind: str, expected: str) -> None:
    """Data kinds go under up/, status and config/ack beside it (DESIGN.md section 4)."""
    assert messages.topic("icu", "s1", kind) == expected


def test_topic_refuses_wildcards() -> None:
    """A site or sensor with MQTT wildcards or separators is refused."""
    with pytest.raises(ValueError):
        messages.topic("icu/#", "s1", "flows")


@pytest.mark.parametrize(("column", "value"), [(9, -1), (10, -1), (12, 65536), (14, -1), (16, -5)])
def test_out_of_range_column_value_is_a_message_error(column: int, value: int) -> None:
    """Negative durations, indices (which Python would wrap) and counts, and ports over 65535 are refused."""
    body = messages.encode_flows([_flow()])
    body[column] = [value]
    with pytest.raises(MessageError):
        messages.decode_flows(body)


@pytest.mark.parametrize(("column", "value"), [(4, "x" * 16), (5, "10.0.0.1"), (6, "ab" * 6), (3, [2**33]),
                                               (7, [["tcp", [1.5], "", "", "fin"]])])
def test_table_of_the_wrong_type_is_a_message_error(column: int, value: Any) -> None:
    """Address, MAC and category tables of the wrong type or range raise MessageError."""
    body = messages.encode_flows([_flow()])
    body[column] = value
    with pytest.raises(MessageError):
        messages.decode_flows(body)
