"""agent.hints.snmp: v1/v2c community use and whether it was answered; strict BER; never the community."""

from __future__ import annotations

import json

import pytest

from agent.hints import snmp
from agent.hints.base import Fields, HintOptions

COMMUNITY = b"wardC0mmunity-7"


def _ber(tag: int, value: bytes) -> bytes:
    length = bytes([len(value)]) if len(value) < 128 else b"\x81" + bytes([len(value)])
    return bytes([tag]) + length + value


def _message(version: int, pdu: int, request_id: int = 7) -> bytes:
    binding = _ber(0x30, _ber(0x06, b"\x2b\x06\x01\x02\x01\x01\x05\x00") + b"\x05\x00")
    body = _ber(0x02, request_id.to_bytes(2, "big")) + _ber(0x02, b"\0") + _ber(0x02, b"\0")
    body += _ber(0x30, binding)
    return _ber(0x30, _ber(0x02, bytes([version])) + _ber(0x04, COMMUNITY) + _ber(pdu, body))


def _v1_trap() -> bytes:
    body = _ber(0x06, b"\x2b\x06\x01\x04\x01") + _ber(0x40, b"\x0a\0\0\x01") + b"\x02\x01\x06\x02\x01\x01"
    body += _ber(0x43, b"\x01") + _ber(0x30, b"")
    return _ber(0x30, b"\x02\x01\x00" + _ber(0x04, COMMUNITY) + _ber(0xA4, body))


def _run(messages: list[tuple[bool, bytes]]) -> list[Fields]:
    flow = snmp.start(HintOptions(record_user=True))
    found: list[Fields] = []
    for from_a, message in messages:
        if not flow.done:
            found += flow.feed(message, from_a)
    return found + flow.close()


def test_answered_v1_get_is_a_success() -> None:
    """A v1 GetRequest answered by a Response with its request id: the community worked."""
    found = _run([(True, _message(0, 0xA0)), (False, _message(0, 0xA2))])
    assert found == [{"login": "snmp", "version": "v1", "outcome": "success", "pdu": "get"}]


def test_unanswered_v2c_trap_is_unknown() -> None:
    """A v2c trap gets no response: 'unknown' at close, with the PDU type."""
    assert _run([(True, _message(1, 0xA7))]) == [
        {"login": "snmp", "version": "v2c", "outcome": "unknown", "pdu": "trap_v2"}]


def test_v1_trap_is_read() -> None:
    """A v1 Trap-PDU (no request id) still shows the community in use."""
    assert _run([(True, _v1_trap())])[0]["pdu"] == "trap"


def test_response_must_match_a_request_from_the_other_side() -> None:
    """A response with another request id, or from the requesting side, is no evidence."""
    found = _run([(True, _message(1, 0xA1, 7)), (False, _message(1, 0xA2, 8)), (True, _message(1, 0xA2, 7))])
    assert found == [{"login": "snmp", "version": "v2c", "outcome": "unknown", "pdu": "get_next"}]


def test_v3_has_no_login() -> None:
    """An SNMPv3 message gives {'snmp': 'v3'} and ends the hints."""
    v3 = _ber(0x30, b"\x02\x01\x03" + _ber(0x30, b"\x02\x01\x01") + _ber(0x04, b"") + _ber(0x30, b""))
    flow = snmp.start(HintOptions())
    assert flow.feed(v3, True) == [{"snmp": "v3"}] and flow.done and flow.close() == []


def test_community_never_leaves_not_even_its_length() -> None:
    """Outputs hold only version, outcome and PDU type: no community bytes, no length."""
    found = _run([(True, _message(1, 0xA0)), (False, _message(1, 0xA2))])
    assert set(found[0]) == {"login", "version", "outcome", "pdu"}
    assert COMMUNITY.decode() not in json.dumps(found) and str(len(COMMUNITY)) not in json.dumps(found)


@pytest.mark.parametrize("end", range(len(_message(1, 0xA0))))
def test_every_truncation_is_refused(end: int) -> None:
    """BER is strict: every proper prefix of a message is a parse error."""
    with pytest.raises(ValueError):
        snmp.parse(_message(1, 0xA0)[:end])


@pytest.mark.parametrize("message", [
    _message(1, 0xA0) + b"\0",  # trailing byte
    b"\x30\x80" + _message(1, 0xA0)[2:] + b"\0\0",  # indefinite length
    _message(0, 0xA5),  # GetBulk in v1
    _message(1, 0xA4),  # v1 trap in v2c
    b"\x30\x03\x02\x01\x02",  # version 2 does not exist
    b"\x30\x84\x00\x00\x00\x03\x02\x01\x00",  # four length octets
    _ber(0x30, b"\x02\x01\x01" + b"\x04\x05abc"),  # community runs past the message
])
def test_malformed_ber_is_refused(message: bytes) -> None:
    """Trailing bytes, indefinite or over-long lengths, wrong PDU for the version: ValueError."""
    with pytest.raises(ValueError):
        snmp.parse(message)


def test_accepts_udp_161_and_162() -> None:
    """Agent and trap ports over UDP only."""
    assert snmp.accepts("udp", 40000, 161, b"", True) and snmp.accepts("udp", 40000, 162, b"", True)
    assert not snmp.accepts("tcp", 40000, 161, b"", True) and not snmp.accepts("udp", 40000, 53, b"", True)
