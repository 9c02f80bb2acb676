"""DNS and mDNS over UDP: the names asked for, the addresses and services answered, NXDOMAIN.

Hostnames are device metadata, not patient data. Answers are `name=address` for A and AAAA,
`name->target` for PTR and `name->target:port` for SRV (how mDNS devices announce their
services), each once. Names are read with compression pointers followed at most MAX_POINTERS
times, so a looping message cannot hang the sensor; bytes outside printable ASCII become `?`.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from agent.hints.base import DatagramFlow, Fields, HintOptions

NAME: Final = "dns"
PROTO: Final = "udp"
PORTS: Final = frozenset({53, 5353, 5355})  # DNS, mDNS, LLMNR
MAX_POINTERS: Final = 16
MAX_RECORDS: Final = 32
HEAD_PACKETS: Final = 32  # a tunnel or resolver may keep one source port for many queries (flowhead.py)
_HEADER: Final = struct.Struct("!2x5H")  # id (skipped), flags, question/answer/authority/additional counts
_RECORD: Final = struct.Struct("!H6xH")  # type, class and TTL (skipped), data length
_PRINTABLE: Final = bytes(c if 0x21 <= c <= 0x7E else ord("?") for c in range(256))  # a bytes.translate table


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    return proto == "udp" and (a_port in PORTS or b_port in PORTS)


def start(options: HintOptions) -> DatagramFlow:
    return _FLOW


def parse(message: bytes) -> Fields:
    """Questions, A/AAAA answers and the response code of one DNS message; ValueError if malformed."""
    if len(message) < 12:
        raise ValueError("DNS header cut short")
    flags, questions_count, answers_count, authority_count, additional_count = _HEADER.unpack_from(message)
    response, rcode = int(bool(flags & 0x8000)), flags & 0x0F
    fields: Fields = {"response": response, "rcode": rcode}
    at, questions = 12, []
    for _ in range(min(questions_count, MAX_RECORDS)):
        name, at = _name(message, at)
        questions.append(name)
        at += 4
    fields["questions"] = questions
    answers: list[str] = []
    for _ in range(min(answers_count + authority_count + additional_count, MAX_RECORDS)):
        name, at = _name(message, at)
        if at + 10 > len(message):
            raise ValueError("DNS record cut short")
        rtype, length = _RECORD.unpack_from(message, at)
        at += 10
        if at + length > len(message):
            raise ValueError("DNS record data cut short")
        answer = _answer(message, at, rtype, name, length)
        if answer is not None and answer not in answers:
            answers.append(answer)
        at += length
    if answers:
        fields["answers"] = answers
    if response and rcode == 3:
        fields["nxdomain"] = 1
    return fields


def _answer(message: bytes, at: int, rtype: int, name: str, length: int) -> str | None:
    """The answer text of a record whose `length` bytes of data start at `at`, if its type is one we keep."""
    if rtype == 1 and length == 4:
        return f"{name}={socket.inet_ntoa(message[at:at + 4])}"
    if rtype == 28 and length == 16:
        return f"{name}={socket.inet_ntop(socket.AF_INET6, message[at:at + 16])}"
    if rtype == 12:
        return f"{name}->{_name(message, at)[0]}"
    if rtype == 33 and length > 6:
        return f"{name}->{_name(message, at + 6)[0]}:{int.from_bytes(message[at + 4:at + 6], 'big')}"
    return None


def _name(message: bytes, at: int) -> tuple[str, int]:
    """A possibly compressed name at `at`, and where the record continues after it."""
    labels: list[bytes] = []
    size = len(message)
    end, pointers = -1, 0
    while True:
        if at >= size:
            raise ValueError("DNS name runs past the message")
        length = message[at]
        if length == 0:  # the labels' bytes outside printable ASCII become "?"; the root is "."
            text = b".".join(labels).translate(_PRINTABLE).decode("ascii") or "."
            return text, (at + 1 if end < 0 else end)
        if length < 64:
            at += 1 + length
            if at > size:
                raise ValueError("bad DNS label")
            labels.append(message[at - length:at])
        elif length >= 0xC0:
            if at + 1 >= size or pointers == MAX_POINTERS:
                raise ValueError("bad DNS compression pointer")
            end = at + 2 if end < 0 else end
            at, pointers = (length & 0x3F) << 8 | message[at + 1], pointers + 1
        else:
            raise ValueError("bad DNS label")


_FLOW: Final = DatagramFlow(parse)  # holds no per-flow state: shared by every flow
