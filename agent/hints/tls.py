"""TLS over TCP, on any port: what a client offers and what the server picks, read from the two hellos.

From the ClientHello: the server name (SNI), the offered versions, the number of cipher suites, the
ALPN list and a JA4 fingerprint (FoxIO's JA4 for TLS over TCP, technical_details/JA4.md: GREASE
ignored, ciphers sorted, extensions sorted without SNI and ALPN, then the signature algorithms in
their order). From the ServerHello: the chosen version and cipher suite. Nothing after the hellos
is read (no certificate, key share or application data). A hello may span TCP segments and TLS
records; each side keeps bytes only until its hello is whole, at most MAX_HELLO of handshake data.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "tls"
PROTO: Final = "tcp"
MAX_HELLO: Final = 16384
MAX_RECORD: Final = 16384 + 2048
MAX_ALPN: Final = 8
MAX_VERSIONS: Final = 8
MIN_REPEAT: Final = 8  # a segment this long repeated at once is taken for a retransmission
JA4_CACHE: Final = 256  # distinct hello shapes remembered (functools.lru_cache; a few per TLS stack)
_CLIENT_HELLO, _SERVER_HELLO = 1, 2
_HANDSHAKE, _ALERT = 22, 21
_SNI, _SIGNATURE_ALGORITHMS, _ALPN, _SUPPORTED_VERSIONS = 0x0000, 0x000D, 0x0010, 0x002B
_VERSIONS: Final = {0x0304: "TLS1.3", 0x0303: "TLS1.2", 0x0302: "TLS1.1", 0x0301: "TLS1.0", 0x0300: "SSL3.0"}
_JA4_VERSIONS: Final = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
                        0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}
_GREASE: Final = frozenset(0x0A0A + 0x1010 * i for i in range(16))  # RFC 8701: 0x0a0a, 0x1a1a ... 0xfafa
_PAST_END: Final = "TLS field runs past its message"
_RECORD_HEADER: Final = struct.Struct("!BBxH")  # content type, major version (minor skipped), length
_U16: Final = struct.Struct("!H")
_TYPE_LENGTH: Final = struct.Struct("!HH")
_HOSTNAME: Final = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
_PRINTABLE: Final = re.compile(r"^[\x20-\x7e]{1,32}$")


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """The initiator opens with a TLS handshake record (0x16 0x03 0x0x) holding a ClientHello."""
    return (proto == "tcp" and from_a and len(payload) >= 6 and payload[0] == _HANDSHAKE and payload[1] == 3
            and payload[2] <= 4 and payload[5] == _CLIENT_HELLO)


def start(options: HintOptions) -> TlsFlow:
    return TlsFlow()


class TlsFlow:
    """The ClientHello from side a and the ServerHello from side b of one TCP flow; done after both."""

    def __init__(self) -> None:
        self.done = False
        self._sides = {True: _Side(_CLIENT_HELLO), False: _Side(_SERVER_HELLO)}

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        side = self._sides[from_a]
        hello = side.feed(payload)
        self.done = self._sides[True].finished and self._sides[False].finished
        if hello is None:
            return []
        return [client_hello(hello) if from_a else server_hello(hello)]

    def close(self) -> list[Fields]:
        return []


class _Side:
    """One direction's record layer, read until its first handshake message (the hello) is whole."""

    def __init__(self, expected: int) -> None:
        self.finished = False
        self._expected = expected
        self._header = bytearray()
        self._left = 0  # bytes of the current record still to come
        self._kind = 0
        self._handshake = bytearray()
        self._last = b""

    def feed(self, payload: bytes) -> bytes | None:
        """The hello's body once it is complete; None before (and after) that."""
        if self.finished or (len(payload) >= MIN_REPEAT and payload == self._last):
            return None  # the same segment again is a TCP retransmission
        self._last = payload
        at = 0
        while at < len(payload):
            if self._left == 0:
                at = self._read_header(payload, at)
                if self.finished:
                    return None
                continue
            chunk = payload[at:at + self._left]
            at += len(chunk)
            self._left -= len(chunk)
            if self._kind == _HANDSHAKE:
                self._handshake += chunk
                hello = self._hello()
                if hello is not None:
                    self.finished = True
                    return hello
        return None

    def _read_header(self, payload: bytes, at: int) -> int:
        if self._header or at + 5 > len(payload):  # a header split across segments
            need = 5 - len(self._header)
            self._header += payload[at:at + need]
            at += need
            if len(self._header) < 5:
                return at
            kind, major, length = _RECORD_HEADER.unpack(self._header)
            self._header.clear()
        else:
            kind, major, length = _RECORD_HEADER.unpack_from(payload, at)
            at += 5
        if major != 3 or length > MAX_RECORD:
            raise ValueError("not a TLS record header")
        if kind == _ALERT and not self._handshake:  # refused before any hello: nothing to read
            self.finished = True
        elif kind != _HANDSHAKE:
            raise ValueError("TLS record before the hello is complete")
        self._kind, self._left = kind, length
        return at

    def _hello(self) -> bytes | None:
        if len(self._handshake) < 4:
            return None
        if self._handshake[0] != self._expected:
            raise ValueError("first TLS handshake message is not the expected hello")
        length = int.from_bytes(self._handshake[1:4], "big")
        if length > MAX_HELLO:
            raise ValueError("TLS hello longer than the buffer")
        return bytes(self._handshake[4:4 + length]) if len(self._handshake) >= 4 + length else None


def client_hello(body: bytes) -> Fields:
    """The allow-listed fields of a ClientHello body (after the 4-byte handshake header)."""
    if len(body) < 34:  # legacy version and random
        raise ValueError(_PAST_END)
    legacy = _U16.unpack_from(body)[0]
    at = _vector(body, 34, 1)[1]  # the session id is skipped
    cipher_list, at = _vector(body, at, 2)
    ciphers = _u16_list(cipher_list)
    at = _vector(body, at, 1)[1]  # so are the compression methods
    extensions = _extensions(body, at)
    types = tuple(kind for kind, _ in extensions)
    data = dict(reversed(extensions))  # the first of a repeated extension counts
    offered = [v for v in _u16_list(_content(data.get(_SUPPORTED_VERSIONS), 1)) if v not in _GREASE]
    alpn = _alpn(data[_ALPN]) if _ALPN in data else []
    sigalgs = _u16_list(_content(data.get(_SIGNATURE_ALGORITHMS), 2))
    fields: Fields = {"tls": "client_hello"}
    sni = _server_name(data[_SNI]) if _SNI in data else ""
    if sni:
        fields["sni"] = sni
    fields["versions"] = [_version(v) for v in offered[:MAX_VERSIONS]] or [_version(legacy)]
    fields["ciphers"] = len([c for c in ciphers if c not in _GREASE])
    fields["alpn"] = [name for name in (_text(p, _PRINTABLE) for p in alpn[:MAX_ALPN]) if name]
    version = max(offered) if offered else legacy
    fields["ja4"] = ja4(version, _SNI in data, ciphers, types, alpn[0] if alpn else b"", sigalgs)
    return fields


def server_hello(body: bytes) -> Fields:
    """The chosen version and cipher suite of a ServerHello body."""
    if len(body) < 34:  # version and random
        raise ValueError(_PAST_END)
    version = _U16.unpack_from(body)[0]
    at = _vector(body, 34, 1)[1]  # the session id is skipped
    if at + 3 > len(body):  # cipher suite and compression method
        raise ValueError(_PAST_END)
    cipher = _U16.unpack_from(body, at)[0]
    for kind, data in _extensions(body, at + 3):
        if kind == _SUPPORTED_VERSIONS and len(data) == 2:
            version = int.from_bytes(data, "big")
    return {"tls": "server_hello", "version": _version(version), "cipher": f"0x{cipher:04x}"}


def ja4(version: int, has_sni: bool, ciphers: Sequence[int], extensions: Sequence[int], first_alpn: bytes,
        sigalgs: Sequence[int]) -> str:
    """JA4 for TLS over TCP from the parts (16-bit values) of a ClientHello, GREASE ignored everywhere."""
    return _ja4(version, has_sni, tuple(ciphers), tuple(extensions), first_alpn, tuple(sigalgs))


@lru_cache(maxsize=JA4_CACHE)
def _ja4(version: int, has_sni: bool, all_ciphers: tuple[int, ...], all_extensions: tuple[int, ...],
         first_alpn: bytes, sigalgs: tuple[int, ...]) -> str:
    """ja4, remembered: a ward's clients are a few TLS stacks, each sending the same hello shape."""
    ciphers = [c for c in all_ciphers if c not in _GREASE]
    extensions = [e for e in all_extensions if e not in _GREASE]
    part_a = (f"t{_JA4_VERSIONS.get(version, '00')}{'d' if has_sni else 'i'}{min(len(ciphers), 99):02d}"
              f"{min(len(extensions), 99):02d}{_alpn_chars(first_alpn)}")
    part_b = _hash12(_hex_list(sorted(ciphers))) if ciphers else "0" * 12
    listed = sorted(e for e in extensions if e not in (_SNI, _ALPN))
    text = _hex_list(listed)
    algorithms = [s for s in sigalgs if s not in _GREASE]
    if algorithms:
        text += "_" + _hex_list(algorithms)
    return f"{part_a}_{part_b}_{_hash12(text) if listed else '0' * 12}"


def _extensions(body: bytes, at: int) -> list[tuple[int, bytes]]:
    """(type, data) of each extension in the block at `at`; none when the hello ends before the block."""
    if at == len(body):
        return []
    block = _vector(body, at, 2)[0]
    found = []
    at, end = 0, len(block)
    while at < end:
        if at + 4 > end:
            raise ValueError(_PAST_END)
        kind, length = _TYPE_LENGTH.unpack_from(block, at)
        at += 4 + length
        if at > end:
            raise ValueError(_PAST_END)
        found.append((kind, block[at - length:at]))
    return found


def _vector(data: bytes, at: int, width: int) -> tuple[bytes, int]:
    """The content of the vector at `at` with a 1- or 2-byte (`width`) length prefix, and where it ends."""
    start = at + width
    if start > len(data):
        raise ValueError(_PAST_END)
    end = start + (data[at] if width == 1 else data[at] << 8 | data[at + 1])
    if end > len(data):
        raise ValueError(_PAST_END)
    return data[start:end], end


def _content(data: bytes | None, width: int) -> bytes:
    """The content of an extension that is one vector (empty when the extension is absent)."""
    return b"" if data is None else _vector(data, 0, width)[0]


def _u16_list(data: bytes) -> tuple[int, ...]:
    if len(data) % 2:
        raise ValueError("odd length of a TLS 16-bit list")
    return struct.unpack(f"!{len(data) // 2}H", data)


def _server_name(data: bytes) -> str:
    names = _content(data, 2)
    at = 0
    while at < len(names):
        kind = names[at]
        name, at = _vector(names, at + 1, 2)
        if kind == 0:  # a host name
            return _text(name, _HOSTNAME)
    return ""


def _alpn(data: bytes) -> list[bytes]:
    protocols = _content(data, 2)
    found = []
    at = 0
    while at < len(protocols):
        protocol, at = _vector(protocols, at, 1)
        found.append(protocol)
    return found


def _alpn_chars(value: bytes) -> str:
    """First and last character of the first ALPN value; their hex digits if either is not alphanumeric."""
    if not value:
        return "00"
    if value[:1].isalnum() and value[-1:].isalnum():  # bytes.isalnum: ASCII letters and digits only
        return chr(value[0]) + chr(value[-1])
    digits = value.hex()
    return digits[0] + digits[-1]


def _version(value: int) -> str:
    return _VERSIONS.get(value) or f"0x{value:04x}"


def _hex_list(values: list[int]) -> str:
    """16-bit values as comma-separated 4-digit hex ("1301,c02b"); packed first, as that is far quicker."""
    return struct.pack(f"!{len(values)}H", *values).hex(",", 2)


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _text(raw: bytes, pattern: re.Pattern[str]) -> str:
    text = raw.decode("ascii", "replace")
    return text if pattern.match(text) else ""
