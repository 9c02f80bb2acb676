"""SMB over TCP (445, or 139 with NetBIOS sessions): the dialects offered and the dialect chosen.

Only the negotiate exchange is read: the dialect strings of an SMB1 NEGOTIATE request (with the
choice its response makes by index) and the dialect codes of an SMB2 NEGOTIATE request and
response. Any other SMB1 message flags the session as SMB1 once, which is a hygiene risk on its
own. Nothing else is read: no file name, path, user, share or data. Each NetBIOS message is
framed by its 4-byte header; only the first MAX_PREFIX bytes of a message are kept, the rest is
skipped unread, so large reads and writes cost nothing.
"""

from __future__ import annotations

import re
from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "smb"
PROTO: Final = "tcp"
PORTS: Final = frozenset({139, 445})
MAX_PREFIX: Final = 1024
MAX_DIALECTS: Final = 32
MIN_REPEAT: Final = 8  # a message-start segment this long repeated at once is taken for a retransmission
_SMB1, _SMB2 = b"\xffSMB", b"\xfeSMB"
_ENCRYPTED, _COMPRESSED = b"\xfdSMB", b"\xfcSMB"
_SESSION_MESSAGE: Final = 0x00
_NBSS_TYPES: Final = frozenset({0x00, 0x81, 0x82, 0x83, 0x84, 0x85})
_NEGOTIATE1, _NEGOTIATE2 = 0x72, 0x0000
_WILDCARD: Final = 0x02FF
_DIALECTS: Final = {0x0202: "2.0.2", 0x0210: "2.1", 0x0222: "2.2.2", 0x0224: "2.2.4", 0x0300: "3.0",
                    0x0302: "3.0.2", 0x0310: "3.1", 0x0311: "3.1.1", _WILDCARD: "2.???"}
_DIALECT_NAME: Final = re.compile(r"^[\x20-\x7e]{1,32}$")


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """A NetBIOS session header on port 139/445, or on any port one carrying an SMB1/SMB2 header."""
    if proto != "tcp" or len(payload) < 4:
        return False
    if payload[0] == _SESSION_MESSAGE and payload[4:8] in (_SMB1, _SMB2):
        return True
    return (a_port in PORTS or b_port in PORTS) and payload[0] in _NBSS_TYPES


def start(options: HintOptions) -> SmbFlow:
    return SmbFlow()


class _Side:
    """One direction's NetBIOS framing: yields the first MAX_PREFIX bytes of each whole session message."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._left = 0
        self._keep = False
        self._prefix = bytearray()
        self._last = b""

    def feed(self, payload: bytes) -> list[bytes]:
        at_start = self._left == 0 and not self._header
        repeated = at_start and len(payload) >= MIN_REPEAT and payload == self._last
        self._last = payload
        if repeated:
            return []
        messages: list[bytes] = []
        at = 0
        while at < len(payload):
            if self._left == 0:
                at = self._read_header(payload, at)
                if self._keep and self._left == 0 and not self._header:
                    messages.append(b"")  # an empty session message
                continue
            chunk = payload[at:at + self._left]
            at += len(chunk)
            self._left -= len(chunk)
            if self._keep:
                self._prefix += chunk[:MAX_PREFIX - len(self._prefix)]
                if len(self._prefix) >= 4 and self._prefix[:4] not in (_SMB1, _SMB2, _ENCRYPTED, _COMPRESSED):
                    raise ValueError("NetBIOS session message without an SMB header")
                if self._left == 0:
                    messages.append(bytes(self._prefix))
        return messages

    def _read_header(self, payload: bytes, at: int) -> int:
        need = 4 - len(self._header)
        self._header += payload[at:at + need]
        at += need
        if len(self._header) == 4:
            kind, length = self._header[0], int.from_bytes(self._header[1:4], "big")
            if kind not in _NBSS_TYPES:
                raise ValueError("not a NetBIOS session header")
            self._header.clear()
            self._keep, self._left = kind == _SESSION_MESSAGE, length
            self._prefix.clear()
        return at


class SmbFlow:
    """The negotiate exchange of one SMB connection, and whether it runs SMB1."""

    def __init__(self) -> None:
        self.done = False
        self._sides = {True: _Side(), False: _Side()}
        self._offered: list[str] = []  # the SMB1 dialect strings, by index
        self._smb1_flagged = False

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        found: list[Fields] = []
        for message in self._sides[from_a].feed(payload):
            fields = self._message(message)
            if fields is not None:
                found.append(fields)
        return found

    def close(self) -> list[Fields]:
        return []

    def _message(self, message: bytes) -> Fields | None:
        if message[:4] == _SMB1:
            return self._smb1(message)
        if message[:4] == _SMB2:
            return self._smb2(message)
        return None  # encrypted or compressed SMB3, or an empty message: nothing to read

    def _smb1(self, message: bytes) -> Fields | None:
        if len(message) < 33:
            raise ValueError("SMB1 header cut short")
        command, reply = message[4], bool(message[9] & 0x80)
        if command != _NEGOTIATE1:
            if self._smb1_flagged:
                return None
            self._smb1_flagged = self.done = True
            return {"smb": "smb1_session", "smb1": True}
        words = message[32]
        if not reply:
            return self._smb1_request(message, 33 + 2 * words)
        if words == 0 or len(message) < 35:  # an error answer without a dialect index
            return None
        index = int.from_bytes(message[33:35], "little")
        fields: Fields = {"smb": "negotiate_response", "smb1": True}
        if index < len(self._offered) and self._offered[index]:
            fields["dialect"] = self._offered[index]
        return fields

    def _smb1_request(self, message: bytes, at: int) -> Fields:
        if at + 2 > len(message):
            raise ValueError("SMB1 NEGOTIATE cut short")
        count = int.from_bytes(message[at:at + 2], "little")
        names = message[at + 2:at + 2 + count].split(b"\x00")
        if names and names[-1] == b"":
            names.pop()
        if any(name[:1] != b"\x02" for name in names):
            raise ValueError("SMB1 dialect without its buffer format byte")
        self._offered = [_dialect_name(name[1:]) for name in names[:MAX_DIALECTS]]
        return {"smb": "negotiate_request", "dialects": [name for name in self._offered if name],
                "smb1_offered": any(name and not name.startswith("SMB 2.") for name in self._offered)}

    def _smb2(self, message: bytes) -> Fields | None:
        if len(message) < 64:
            raise ValueError("SMB2 header cut short")
        command = int.from_bytes(message[12:14], "little")
        response = bool(int.from_bytes(message[16:20], "little") & 1)
        if command != _NEGOTIATE2:
            return None
        if not response:
            if len(message) < 100:
                raise ValueError("SMB2 NEGOTIATE request cut short")
            count = min(int.from_bytes(message[66:68], "little"), MAX_DIALECTS)
            codes = message[100:100 + 2 * count]
            dialects = [_dialect(codes[i] | codes[i + 1] << 8) for i in range(0, len(codes) - 1, 2)]
            return {"smb": "negotiate_request", "dialects": dialects, "smb1_offered": False}
        if int.from_bytes(message[8:12], "little") != 0:  # an error status: no dialect chosen
            return None
        if len(message) < 70:
            raise ValueError("SMB2 NEGOTIATE response cut short")
        code = int.from_bytes(message[68:70], "little")
        self.done = self.done or code != _WILDCARD
        return {"smb": "negotiate_response", "dialect": _dialect(code), "smb1": False}


def _dialect(code: int) -> str:
    return _DIALECTS.get(code, f"0x{code:04x}")


def _dialect_name(raw: bytes) -> str:
    text = raw.decode("ascii", "replace")
    return text if _DIALECT_NAME.match(text) else ""
