"""HL7 v2 over MLLP, on any port: who sends what to whom, never a patient.

Only the MSH segment (sending/receiving application and facility, message type, version) and the
first field of MSA (the acknowledgement code) are read. Every other segment (PID, OBX, NK1 ...) is
skipped without being parsed. A field must look like what it claims to be (short, printable, no
separator characters) or it is left out. Messages may be split across TCP segments: bytes are kept
until the end of the MSH segment or of the MSA code, never beyond MAX_BUFFER.
"""

from __future__ import annotations

import re
from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "hl7"
PROTO: Final = "tcp"
START, END = b"\x0b", b"\x1c\x0d"
MAX_BUFFER: Final = 4096
MAX_FIELD: Final = 64
_HD: Final = re.compile(rb"[\x20-\x25\x27-\x5b\x5d\x5f-\x7d]*")  # printable, none of ^ ~ \ &
_MESSAGE_TYPE: Final = re.compile(rb"[A-Z0-9]{2,3}(\^[A-Z0-9]{2,3}(\^[A-Z0-9_]{3,7})?)?")
_VERSION: Final = re.compile(rb"2\.[0-9](\.[0-9])?")
# field number -> name and the pattern its whole value must match
_MSH_FIELDS: Final = {3: ("sending_app", _HD), 4: ("sending_facility", _HD), 5: ("receiving_app", _HD),
                      6: ("receiving_facility", _HD), 9: ("message_type", _MESSAGE_TYPE),
                      12: ("version", _VERSION)}
_ACK_CODES: Final = frozenset({b"AA", b"AE", b"AR", b"CA", b"CE", b"CR"})


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """An MLLP frame start followed by an MSH segment, whatever the port (a sender may write the
    start byte, or the first few bytes, in a segment of their own)."""
    return proto == "tcp" and (payload[:4] == START + b"MSH" or (START + b"MSH").startswith(payload))


def start(options: HintOptions) -> Hl7Flow:
    return Hl7Flow()


class Hl7Flow:
    """Reads the header of each HL7 message in either direction of one flow."""

    def __init__(self) -> None:
        self.done = False
        self._buffers = {True: bytearray(), False: bytearray()}

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        buffer = self._buffers[from_a]
        buffer += payload
        found: list[Fields] = []
        while True:
            begin = buffer.find(START)
            if begin < 0:
                buffer.clear()
                return found
            del buffer[:begin]
            header = _header(bytes(buffer))
            if header is None:  # the MSH (or the MSA code) is not all here yet
                if len(buffer) > MAX_BUFFER:
                    raise ValueError("HL7 header longer than the buffer")
                return found
            found.append(header)
            stop = buffer.find(END)
            if stop < 0:  # the rest of this message (patient segments) is skipped unread
                buffer.clear()
                self._buffers[from_a] = bytearray()
                return found
            del buffer[:stop + len(END)]

    def close(self) -> list[Fields]:
        return []


def _header(message: bytes) -> Fields | None:
    """The allow-listed MSH fields (and MSA-1), or None while the message is still incomplete."""
    if len(message) >= 4 and message[1:4] != b"MSH":
        raise ValueError("MLLP frame without an MSH segment")
    if len(message) < 9:
        return None
    separator = message[4:5]
    msh_end = message.find(b"\r", 4)
    if msh_end < 0:
        return None
    if not separator or separator.isalnum() or separator in b"\r\n":
        raise ValueError("bad HL7 field separator")
    fields = message[4:msh_end].split(separator)
    component = message[5:6] or b"^"
    result: Fields = {}
    for index, (name, pattern) in _MSH_FIELDS.items():
        if index <= len(fields):
            raw = fields[index - 1]
            if name != "message_type":
                raw = raw.partition(component)[0]  # the namespace id of an HD field
            elif component != b"^":
                raw = raw.replace(component, b"^")
            if raw and len(raw) <= MAX_FIELD and pattern.fullmatch(raw):
                result[name] = raw.decode("ascii")
    if str(result.get("message_type", "")).startswith("ACK"):
        ack = _ack_code(message, msh_end, separator)
        if ack is None:
            return None
        if ack:
            result["ack_code"] = ack
    return result


def _ack_code(message: bytes, msh_end: int, separator: bytes) -> str | None:
    """MSA-1 of an acknowledgement: "" when there is no MSA, None when it has not all arrived."""
    msa = message.find(b"\rMSA" + separator, msh_end)
    if msa < 0:
        return "" if b"\x1c" in message[msh_end:] else None
    code_start = msa + 5
    code_end = min((i for i in (message.find(separator, code_start), message.find(b"\r", code_start))
                    if i >= 0), default=-1)
    if code_end < 0:
        return None
    code = message[code_start:code_end]
    return code.decode("ascii") if code in _ACK_CODES else ""
