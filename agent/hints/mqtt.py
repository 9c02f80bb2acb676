"""MQTT CONNECT: the client's protocol level, that a password was sent in cleartext and whether it worked.

From a CONNECT (TCP 1883, or a first payload that is a CONNECT on any port): {"mqtt": "connect",
"protocol_level": 3|4|5, "client_id_len": n}. The client id itself stays out (it may name a person or
a bed), and so does the password: the packet is read only up to the client id, or up to the user name
when record_user is on, never further. With the password flag set, the server's CONNACK gives
{"login": "mqtt", "outcome": "success" (code 0) | "failure" (any refusal)}, or close() gives
"unknown"; without it there is no login hint. The side that sends the CONNECT is the client.

The CONNECT is kept while it arrives, at most MAX_CONNECT bytes; it is parsed strictly (protocol
name and level, reserved flag bit, will QoS, lengths inside the packet).
"""

from __future__ import annotations

from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "mqtt"
PROTO: Final = "tcp"
PORT: Final = 1883
MAX_CONNECT: Final = 8192
MAX_USER: Final = 64
_CONNECT, _CONNACK = 0x10, 0x20
_PROTOCOLS: Final = {b"MQTT": (4, 5), b"MQIsdp": (3,)}


class _Incomplete(Exception):
    """The packet has not all arrived yet."""


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """TCP 1883, or a payload that starts like a CONNECT (0x10, then the protocol name) on any port."""
    if proto != "tcp":
        return False
    return PORT in (a_port, b_port) or (payload[:1] == b"\x10" and (
        b"\x00\x04MQTT" in payload[2:10] or b"\x00\x06MQIsdp" in payload[2:12]))


def start(options: HintOptions) -> MqttFlow:
    return MqttFlow(options)


class _Cursor:
    """Reads a packet still arriving: reading past what arrived is _Incomplete, past its end ValueError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.at, self.end = 1, 0
        self.length = self.varint()
        self.end = self.at + self.length

    def take(self, count: int) -> bytes:
        stop = self.at + count
        if self.end and stop > self.end:
            raise ValueError("MQTT field runs past its packet")
        if stop > len(self._data):
            raise _Incomplete
        chunk, self.at = self._data[self.at:stop], stop
        return chunk

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ValueError("MQTT variable byte integer longer than 4 bytes")


def _connect(data: bytes, want_user: bool) -> tuple[int, int, bool, bytes]:
    """(protocol level, client id length, password flag, user name or b"") of a CONNECT."""
    if data[0] != _CONNECT:
        raise ValueError("not an MQTT CONNECT")
    cursor = _Cursor(data)
    name = cursor.take(cursor.u16())
    level, flags = cursor.take(1)[0], cursor.take(1)[0]
    if level not in _PROTOCOLS.get(name, ()):
        raise ValueError("unknown MQTT protocol name or level")
    will, will_qos, has_user, has_password = flags & 0x04, (flags >> 3) & 3, flags & 0x80, bool(flags & 0x40)
    if flags & 0x01 or will_qos == 3 or (not will and flags & 0x38) or (level < 5 and has_password
                                                                         and not has_user):
        raise ValueError("bad MQTT CONNECT flags")
    cursor.take(2)  # keep alive
    if level == 5:
        cursor.take(cursor.varint())  # properties
    client_id_length = cursor.u16()
    cursor.take(client_id_length)  # the client id: skipped, never decoded
    user = b""
    if want_user and has_user:
        if will:
            if level == 5:
                cursor.take(cursor.varint())
            cursor.take(cursor.u16())  # will topic
            cursor.take(cursor.u16())  # will payload
        user = cursor.take(cursor.u16())  # the password after it is never read
    return level, client_id_length, has_password, user


class MqttFlow:
    """Reads the CONNECT and, when it carried a password, the CONNACK that answers it."""

    def __init__(self, options: HintOptions) -> None:
        self.done = False
        self._record_user = options.record_user
        self._client_is_a: bool | None = None
        self._buffers = {True: bytearray(), False: bytearray()}
        self._level = 0
        self._waiting = False  # a CONNECT with a password waits for its CONNACK
        self._user = ""

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        if not payload or self.done:
            return []
        if self._client_is_a is None:
            if payload[0] not in (_CONNECT, _CONNACK):
                raise ValueError("MQTT flow starts with neither CONNECT nor CONNACK")
            self._client_is_a = from_a == (payload[0] == _CONNECT)
        if from_a == self._client_is_a:
            return self._from_client(payload)
        if not self._level:  # no CONNECT seen: this CONNACK answers nothing we know
            self.done = True
            return []
        return self._from_server(payload)

    def close(self) -> list[Fields]:
        found = [self._login("unknown")] if self._waiting and not self.done else []
        self.done = True
        return found

    def _from_client(self, payload: bytes) -> list[Fields]:
        if self._level:
            return []  # PUBLISH and the rest after the CONNECT: not read
        buffer = self._buffers[True]
        buffer += payload
        try:
            level, client_id_length, has_password, user = _connect(bytes(buffer), self._record_user)
        except _Incomplete:
            if len(buffer) > MAX_CONNECT:
                raise ValueError("MQTT CONNECT longer than the buffer") from None
            return []
        buffer.clear()
        self._level, self._waiting = level, has_password
        self._user = _text(user)
        self.done = not has_password
        return [{"mqtt": "connect", "protocol_level": level, "client_id_len": client_id_length}]

    def _from_server(self, payload: bytes) -> list[Fields]:
        buffer = self._buffers[False]
        buffer += payload[:8 - len(buffer)]
        if buffer[0] != _CONNACK:
            raise ValueError("MQTT server did not answer with a CONNACK")
        try:
            cursor = _Cursor(bytes(buffer))
            flags, code = cursor.take(1)[0], cursor.take(1)[0]
        except _Incomplete:
            return []
        bad = (cursor.length != 2 or code > 5) if self._level < 5 else 0 < code < 0x80
        if bad or flags & 0xFE:
            raise ValueError("bad MQTT CONNACK")
        self.done = True
        return [self._login("success" if code == 0 else "failure")] if self._waiting else []

    def _login(self, outcome: str) -> Fields:
        fields: Fields = {"login": "mqtt", "outcome": outcome}
        if self._record_user and self._user:
            fields["user"] = self._user
        return fields


def _text(raw: bytes) -> str:
    """A printable UTF-8 user name of at most MAX_USER characters, or ""."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return text if len(text) <= MAX_USER and text.isprintable() else ""
