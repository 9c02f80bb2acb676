"""agent.hints.mqtt: CONNECT metadata, password logins judged by CONNACK; no client id, no password."""

from __future__ import annotations

import json

import pytest

from agent.hints import mqtt
from agent.hints.base import Fields, HintOptions

CLIENT_ID = b"pump-bed-12"
PASSWORD = b"s3cret-pass"
ACCEPTED = b"\x20\x02\x00\x00"


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def _connect(flags: int = 0xC2, level: int = 4, name: bytes = b"MQTT", will: bool = False) -> bytes:
    body = _string(name) + bytes([level, flags | (0x04 if will else 0)]) + b"\x00\x3c"
    body += b"\x00" if level == 5 else b""
    body += _string(CLIENT_ID)
    if will:
        body += (b"\x00" if level == 5 else b"") + _string(b"ward/lwt") + _string(b"offline")
    body += (_string(b"nurse") if flags & 0x80 else b"") + (_string(PASSWORD) if flags & 0x40 else b"")
    return b"\x10" + bytes([len(body)]) + body


def _run(session: list[tuple[bool, bytes]], record_user: bool = False) -> list[Fields]:
    flow = mqtt.start(HintOptions(record_user=record_user))
    found: list[Fields] = []
    for from_a, payload in session:
        if not flow.done:
            found += flow.feed(payload, from_a)
    return found + flow.close()


def _connect_hint(level: int = 4) -> Fields:
    return {"mqtt": "connect", "protocol_level": level, "client_id_len": len(CLIENT_ID)}


def test_accepted_password_login() -> None:
    """CONNECT with a password and CONNACK 0: connect metadata and a successful login, nothing secret."""
    found = _run([(True, _connect()), (False, ACCEPTED)], record_user=True)
    assert found == [_connect_hint(), {"login": "mqtt", "outcome": "success", "user": "nurse"}]
    assert "pass" not in json.dumps(found) and CLIENT_ID.decode() not in json.dumps(found)


def test_refused_v311_login() -> None:
    """Return code 5 (not authorised) is a failure."""
    found = _run([(True, _connect()), (False, b"\x20\x02\x00\x05")])
    assert found[1] == {"login": "mqtt", "outcome": "failure"}


def test_refused_v5_login() -> None:
    """MQTT 5: reason code 0x86 (bad user name or password) is a failure."""
    found = _run([(True, _connect(level=5)), (False, b"\x20\x03\x00\x86\x00")])
    assert found == [_connect_hint(5), {"login": "mqtt", "outcome": "failure"}]


def test_no_password_no_login() -> None:
    """A CONNECT without the password flag gives the connect hint only, and the hinter is done."""
    flow = mqtt.start(HintOptions())
    assert flow.feed(_connect(flags=0x82), True) == [_connect_hint()] and flow.done and flow.close() == []


def test_unanswered_connect_is_unknown() -> None:
    """No CONNACK before close: 'unknown'."""
    assert _run([(True, _connect())])[1:] == [{"login": "mqtt", "outcome": "unknown"}]


def test_connect_split_byte_by_byte() -> None:
    """A CONNECT arriving one byte per segment is read once it is whole enough."""
    packet = _connect(will=True)
    session = [(True, packet[i:i + 1]) for i in range(len(packet))]
    session += [(False, ACCEPTED[:1]), (False, ACCEPTED[1:])]
    assert _run(session, record_user=True) == [_connect_hint(), {"login": "mqtt", "outcome": "success",
                                                                  "user": "nurse"}]


def test_mqtt31_protocol_name() -> None:
    """MQTT 3.1 ('MQIsdp', level 3) is read too."""
    assert _run([(True, _connect(level=3, name=b"MQIsdp")), (False, ACCEPTED)])[0] == _connect_hint(3)


def test_roles_come_from_the_connect() -> None:
    """The side that sends CONNECT is the client, whichever side is a."""
    assert _run([(False, _connect()), (True, ACCEPTED)])[1] == {"login": "mqtt", "outcome": "success"}


@pytest.mark.parametrize("session", [
    [(True, _connect(flags=0xC3))],  # reserved flag bit
    [(True, _connect(flags=0x42))],  # password without user name in 3.1.1
    [(True, _connect(level=4, name=b"MQIsdp"))],  # name and level disagree
    [(True, _connect(flags=0xD2))],  # will QoS without a will
    [(True, b"\x10\xff\xff\xff\xff\x7f")],  # remaining length over 4 bytes
    [(True, _connect()), (False, b"\x20\x03\x00\x00\x00")],  # 3.1.1 CONNACK of length 3
    [(True, _connect()), (False, b"\x30\x02\x00\x00")],  # server answers with a PUBLISH
    [(True, b"\x16\x03\x01\x02\x00")],  # TLS on the MQTT port
    [(True, b"\x10\xa0\x8d\x06" + b"\0\x04MQTT\x04\xc2\0\x3c\xff\xff" + b"x" * mqtt.MAX_CONNECT)],  # too long
])
def test_garbage_is_refused(session: list[tuple[bool, bytes]]) -> None:
    """Bad flags, names, lengths, answers or an over-long CONNECT: ValueError."""
    with pytest.raises(ValueError):
        _run(session, record_user=True)


def test_accepts_port_1883_or_a_connect() -> None:
    """Port 1883, or a CONNECT naming MQTT on another port."""
    assert mqtt.accepts("tcp", 40000, 1883, b"", True)
    assert mqtt.accepts("tcp", 40000, 11883, _connect(), True)
    assert not mqtt.accepts("tcp", 40000, 11883, b"\x10\x00junk", True)
    assert not mqtt.accepts("udp", 40000, 1883, _connect(), True)
