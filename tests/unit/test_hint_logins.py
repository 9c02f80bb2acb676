"""Cleartext-login hinters (telnet, ftp, mail, snmp, mqtt): the shared captures, and no secret ever leaves.

Each hinter gets one realistic session carrying the secret SECRET (password or community). However
the session is cut or re-segmented, and whatever random bytes come, only ValueError escapes and the
secret (also in its base64 form) appears in no output and, once the session is through, in no state.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
from collections import deque
from types import ModuleType

import pytest
from conftest import SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hints import ftp, mail, mqtt, snmp, telnet
from agent.hints.base import Fields, HintOptions

FUZZ = settings(max_examples=200, deadline=None, derandomize=True)
SECRET = b"S3cretPw!"
CLIENT_ID = b"bed12-monitor"
Session = list[tuple[bool, bytes]]  # (from_a, payload) in arrival order


def _plain_b64() -> bytes:
    return base64.b64encode(b"\0nurse\0" + SECRET)


def _telnet() -> Session:
    session: Session = [(False, b"\xff\xfd\x18\xff\xfd\x20"), (True, b"\xff\xfb\x18\xff\xfc\x20"),
                        (False, b"\r\nward-gw login: ")]
    for key in b"nurse":
        session += [(True, bytes([key])), (False, bytes([key]))]
    session += [(True, b"\r\n"), (False, b"\r\n"), (False, b"Password:")]
    session += [(True, bytes([key])) for key in SECRET]
    return [*session, (True, b"\r\n"), (False, b"\r\nLast login: Mon Jan  5 08:00:00 on pts/1\r\nward-gw$ ")]


def _ftp() -> Session:
    return [(False, b"220 (vsFTPd 3.0.3)\r\n"), (True, b"USER nurse\r\n"), (False, b"331 Password?\r\n"),
            (True, b"PASS " + SECRET + b"\r\n"), (False, b"530 Login incorrect.\r\n"),
            (True, b"USER nurse\r\n"), (False, b"331 Password?\r\n"), (True, b"PASS " + SECRET + b"\r\n"),
            (False, b"230 Login successful.\r\n")]


def _pop3() -> Session:
    return [(False, b"+OK Dovecot ready.\r\n"), (True, b"CAPA\r\n"),
            (False, b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"), (True, b"USER nurse\r\n"), (False, b"+OK\r\n"),
            (True, b"PASS " + SECRET + b"\r\n"),
            (False, b"-ERR [AUTH] Authentication failed.\r\n"), (True, b"AUTH PLAIN\r\n"), (False, b"+ \r\n"),
            (True, _plain_b64() + b"\r\n"), (False, b"+OK Logged in.\r\n")]


def _imap() -> Session:
    return [(False, b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready.\r\n"),
            (True, b'a1 LOGIN nurse "' + SECRET + b'"\r\n'), (False, b"a1 NO [AUTHENTICATIONFAILED] No.\r\n"),
            (True, b"a2 AUTHENTICATE PLAIN\r\n"), (False, b"+ \r\n"), (True, _plain_b64() + b"\r\n"),
            (False, b"a2 OK Logged in\r\n")]


def _ber(tag: int, value: bytes) -> bytes:
    length = bytes([len(value)]) if len(value) < 128 else b"\x81" + bytes([len(value)])
    return bytes([tag]) + length + value


def snmp_message(version: int, pdu: int, request_id: int = 7, community: bytes = SECRET) -> bytes:
    """A v1/v2c message with one null-valued binding for sysDescr.0."""
    binding = _ber(0x30, _ber(0x06, b"\x2b\x06\x01\x02\x01\x01\x01\x00") + b"\x05\x00")
    body = _ber(0x02, request_id.to_bytes(2, "big")) + _ber(0x02, b"\0") + _ber(0x02, b"\0")
    body += _ber(0x30, binding)
    return _ber(0x30, _ber(0x02, bytes([version])) + _ber(0x04, community) + _ber(pdu, body))


def _snmp() -> Session:
    return [(True, snmp_message(1, 0xA0)), (False, snmp_message(1, 0xA2))]


def _mqtt_string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def mqtt_connect(flags: int = 0xC2, level: int = 4, user: bytes = b"nurse") -> bytes:
    """A CONNECT with the given flags; user and SECRET as password when their flags are set."""
    body = _mqtt_string(b"MQTT") + bytes([level, flags]) + b"\x00\x3c" + (b"\0" if level == 5 else b"")
    body += _mqtt_string(CLIENT_ID) + (_mqtt_string(user) if flags & 0x80 else b"")
    body += _mqtt_string(SECRET) if flags & 0x40 else b""
    return b"\x10" + bytes([len(body)]) + body


def _mqtt() -> Session:
    return [(True, mqtt_connect()), (False, b"\x20\x02\x00\x00"), (True, b"\x30\x07\x00\x01tabcd")]


SESSIONS: dict[str, tuple[ModuleType, Session, list[Fields]]] = {
    "telnet": (telnet, _telnet(), [{"login": "telnet", "outcome": "success"}]),
    "ftp": (ftp, _ftp(), [{"ftp": "banner", "server": "(vsFTPd 3.0.3)"},
                          {"login": "ftp", "outcome": "failure"}, {"login": "ftp", "outcome": "success"}]),
    "pop3": (mail, _pop3(), [{"login": "pop3", "outcome": "failure"},
                             {"login": "pop3", "outcome": "success"}]),
    "imap": (mail, _imap(), [{"login": "imap", "outcome": "failure"},
                             {"login": "imap", "outcome": "success"}]),
    "snmp": (snmp, _snmp(), [{"login": "snmp", "version": "v2c", "outcome": "success", "pdu": "get"}]),
    "mqtt": (mqtt, _mqtt(), [{"mqtt": "connect", "protocol_level": 4, "client_id_len": len(CLIENT_ID)},
                             {"login": "mqtt", "outcome": "success"}]),
}
FORBIDDEN = (SECRET.decode(), _plain_b64().decode(), CLIENT_ID.decode())


def run(module: ModuleType, session: Session, record_user: bool = False) -> list[Fields]:
    """Feed a session as the flow table would (stop when done), then close."""
    flow = module.start(HintOptions(record_user=record_user))
    found: list[Fields] = []
    for from_a, payload in session:
        if flow.done:
            break
        found += flow.feed(payload, from_a)
    closing: list[Fields] = flow.close()
    return found + closing


def _leaks(found: list[Fields]) -> bool:
    text = json.dumps(found)
    return any(secret in text for secret in FORBIDDEN)


def _holds(value: object, depth: int = 0) -> bool:
    """Whether the secret sits anywhere in a hinter's state."""
    if isinstance(value, bytes | bytearray | str):
        raw = value.encode("latin-1", "replace") if isinstance(value, str) else bytes(value)
        return SECRET.lower() in raw.lower() or _plain_b64() in raw
    if isinstance(value, dict):
        return any(_holds(k, depth + 1) or _holds(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset | deque):
        return any(_holds(item, depth + 1) for item in value)
    return depth < 6 and hasattr(value, "__dict__") and _holds(vars(value), depth + 1)


@pytest.mark.parametrize("name", SESSIONS)
def test_session_gives_the_expected_hints(name: str) -> None:
    """Each hand-built session yields exactly its login (and software) hints, no user by default."""
    module, session, expected = SESSIONS[name]
    assert run(module, session) == expected


@pytest.mark.parametrize("name", [n for n in SESSIONS if n != "snmp"])
def test_user_only_with_record_user(name: str) -> None:
    """With record_user every login hint names the user; the secret still never appears."""
    module, session, _ = SESSIONS[name]
    found = run(module, session, record_user=True)
    logins = [f for f in found if "login" in f]
    assert logins and all(f.get("user") == "nurse" for f in logins)
    assert not _leaks(found)


@pytest.mark.parametrize("name", SESSIONS)
def test_no_secret_in_state_after_the_session(name: str) -> None:
    """Once a session is through, the secret is held nowhere in the hinter."""
    module, session, _ = SESSIONS[name]
    for record_user in (False, True):
        flow = module.start(HintOptions(record_user=record_user))
        for from_a, payload in session:
            flow.feed(payload, from_a)
            if flow.done:
                break
        assert not _holds(flow)


def test_telnet_never_buffers_password_keystrokes() -> None:
    """Telnet: at no point while the password is typed does its key sequence sit in the hinter."""
    flow = telnet.start(HintOptions(record_user=True))
    for from_a, payload in _telnet():
        flow.feed(payload, from_a)
        assert not _holds(flow)


@pytest.mark.parametrize("name", SESSIONS)
def test_every_truncation_gives_hints_or_value_error(name: str) -> None:
    """The session's byte stream cut at every offset: only ValueError escapes, no secret leaks."""
    module, session, _ = SESSIONS[name]
    total = sum(len(p) for _, p in session)
    for cut in range(total + 1):
        prefix: Session = []
        left = cut
        for from_a, payload in session:
            if left <= 0:
                break
            prefix.append((from_a, payload[:left]))
            left -= len(payload)
        with contextlib.suppress(ValueError):
            assert not _leaks(run(module, prefix, record_user=True))


@FUZZ
@given(st.sampled_from(sorted(set(SESSIONS) - {"snmp"})), st.data())
def test_resegmented_session_gives_the_same_hints(name: str, data: st.DataObject) -> None:
    """A TCP session split into arbitrary segments gives the same hints as the original."""
    module, session, expected = SESSIONS[name]
    resegmented: Session = []
    for from_a, payload in session:
        cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(payload) - 1)), max_size=4)))
        resegmented += [(from_a, payload[a:b]) for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)
                        if payload[a:b]]
    assert run(module, resegmented) == expected


@FUZZ
@given(st.sampled_from(sorted(SESSIONS)), st.integers(0, 40), st.integers(0, 400), st.binary(max_size=60))
def test_damaged_session_gives_hints_or_value_error(name: str, index: int, cut: int, tail: bytes) -> None:
    """One payload of a session cut and given a random tail: only ValueError escapes, no secret leaks."""
    module, session, _ = SESSIONS[name]
    damaged = list(session)
    at = index % len(damaged)
    damaged[at] = (damaged[at][0], damaged[at][1][:cut] + tail)
    with contextlib.suppress(ValueError):
        assert not _leaks(run(module, damaged, record_user=True))


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=200)), max_size=8))
def test_random_payloads_give_hints_or_value_error(session: Session) -> None:
    """Random segments in both directions: every login hinter returns hints or raises ValueError."""
    for module in (telnet, ftp, mail, snmp, mqtt):
        with contextlib.suppress(ValueError):
            for fields in run(module, session, record_user=True):
                assert all(isinstance(key, str) for key in fields)


def _streams(capture: str, proto: str = "tcp") -> list[tuple[int, int, Session]]:
    """(a port, b port, payloads in order) of each TCP stream; side a sent the stream's first packet."""
    command = ["tshark", "-r", str(SHARED_PCAPS / capture), "-T", "fields", "-e", "tcp.stream",
               "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.payload"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    flows: dict[int, tuple[int, int, Session]] = {}
    for line in out.splitlines():
        stream, source, destination, payload = line.split("\t")
        a_port, _, session = flows.setdefault(int(stream), (int(source), int(destination), []))
        if payload:
            session.append((int(source) == a_port, bytes.fromhex(payload.replace(":", ""))))
    return [flows[key] for key in sorted(flows)]


def _shared(capture: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_PCAPS / capture).exists(), reason="shared captures absent")


@pytest.mark.shared
@_shared("telnet-cleartext-login.pcap")
def test_shared_telnet_login_succeeds() -> None:
    """The public telnet session: one successful login by 'fake'; its password 'user' never comes out."""
    [(a_port, b_port, session)] = _streams("telnet-cleartext-login.pcap")
    assert telnet.accepts("tcp", a_port, b_port, session[0][1], session[0][0])
    assert run(telnet, session) == [{"login": "telnet", "outcome": "success"}]
    with_user = run(telnet, session, record_user=True)
    assert with_user == [{"login": "telnet", "outcome": "success", "user": "fake"}]
    assert "user" not in json.dumps(run(telnet, session)) and "user" not in with_user[0].values()


@pytest.mark.shared
@_shared("ftp-bruteforce.pcap")
def test_shared_ftp_bruteforce_gives_thirty_failures() -> None:
    """The public FTP brute force: 30 connections, each a banner and one failed login of 'bro'."""
    flows = _streams("ftp-bruteforce.pcap")
    banner = {"ftp": "banner", "server": "redmint FTP server (Version 6.4/OpenBSD/Linux-ftpd-0.17) ready."}
    assert len(flows) == 30
    for a_port, b_port, session in flows:
        assert ftp.accepts("tcp", a_port, b_port, session[0][1], session[0][0])
        assert run(ftp, session) == [banner, {"login": "ftp", "outcome": "failure"}]
        assert run(ftp, session, record_user=True)[1] == {"login": "ftp", "outcome": "failure", "user": "bro"}


@pytest.mark.shared
@_shared("mqtt311-publish-userpass.pcap")
def test_shared_mqtt_connect_with_password() -> None:
    """The public MQTT 3.1.1 session: level 4, a 19-byte client id, accepted; 'pass' never comes out."""
    [(a_port, b_port, session)] = _streams("mqtt311-publish-userpass.pcap")
    assert mqtt.accepts("tcp", a_port, b_port, session[0][1], session[0][0])
    connect = {"mqtt": "connect", "protocol_level": 4, "client_id_len": 19}
    assert run(mqtt, session) == [connect, {"login": "mqtt", "outcome": "success"}]
    found = run(mqtt, session, record_user=True)
    assert found == [connect, {"login": "mqtt", "outcome": "success", "user": "user"}]
    assert "pass" not in json.dumps(found)
