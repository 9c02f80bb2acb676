"""DNS and mDNS over UDP: the names asked for, the addresses and services answered, NXDOMAIN.

Hostnames are device metadata, not patient data. Answers are `name=address` for A and AAAA,
`name->target` for PTR and `name->target:port` for SRV (how mDNS devices announce their
services), each once. Names are read with compression pointers followed at most MAX_POINTERS
times, so a looping message cannot hang the sensor; bytes outside printable ASCII become `?`.
"""

from __future__ import annotations

import re
import socket
from typing import Final

from agent.hints.base import DatagramFlow, Fields, HintOptions

NAME: Final = "dns"
PORTS: Final = frozenset({53, 5353, 5355})  # DNS, mDNS, LLMNR
MAX_POINTERS: Final = 16
MAX_RECORDS: Final = 32
HEAD_PACKETS: Final = 32  # a tunnel or resolver may keep one source port for many queries (flowhead.py)
_UNPRINTABLE: Final = re.compile(r"[^\x21-\x7e]")


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    return proto == "udp" and (a_port in PORTS or b_port in PORTS)


def start(options: HintOptions) -> DatagramFlow:
    return DatagramFlow(parse)


def parse(message: bytes) -> Fields:
    """Questions, A/AAAA answers and the response code of one DNS message; ValueError if malformed."""
    if len(message) < 12:
        raise ValueError("DNS header cut short")
    flags = int.from_bytes(message[2:4], "big")
    counts = [int.from_bytes(message[i:i + 2], "big") for i in (4, 6, 8, 10)]
    fields: Fields = {"response": int(bool(flags & 0x8000)), "rcode": flags & 0x0F}
    at, questions = 12, []
    for _ in range(min(counts[0], MAX_RECORDS)):
        name, at = _name(message, at)
        questions.append(name)
        at += 4
    fields["questions"] = questions
    answers: list[str] = []
    for _ in range(min(counts[1] + counts[2] + counts[3], MAX_RECORDS)):
        name, at = _name(message, at)
        if at + 10 > len(message):
            raise ValueError("DNS record cut short")
        rtype = int.from_bytes(message[at:at + 2], "big")
        length = int.from_bytes(message[at + 8:at + 10], "big")
        data = message[at + 10:at + 10 + length]
        if len(data) != length:
            raise ValueError("DNS record data cut short")
        answer = _answer(message, at + 10, rtype, name, data)
        if answer is not None and answer not in answers:
            answers.append(answer)
        at += 10 + length
    if answers:
        fields["answers"] = answers
    if fields["response"] and fields["rcode"] == 3:
        fields["nxdomain"] = 1
    return fields


def _answer(message: bytes, at: int, rtype: int, name: str, data: bytes) -> str | None:
    if rtype == 1 and len(data) == 4:
        return f"{name}={socket.inet_ntoa(data)}"
    if rtype == 28 and len(data) == 16:
        return f"{name}={socket.inet_ntop(socket.AF_INET6, data)}"
    if rtype == 12:
        return f"{name}->{_name(message, at)[0]}"
    if rtype == 33 and len(data) > 6:
        return f"{name}->{_name(message, at + 6)[0]}:{int.from_bytes(data[4:6], 'big')}"
    return None


def _name(message: bytes, at: int) -> tuple[str, int]:
    """A possibly compressed name at `at`, and where the record continues after it."""
    labels: list[str] = []
    end, pointers = -1, 0
    while True:
        if at >= len(message):
            raise ValueError("DNS name runs past the message")
        length = message[at]
        if length & 0xC0 == 0xC0:
            if at + 1 >= len(message) or pointers == MAX_POINTERS:
                raise ValueError("bad DNS compression pointer")
            end = at + 2 if end < 0 else end
            at, pointers = (length & 0x3F) << 8 | message[at + 1], pointers + 1
        elif length == 0:
            return ".".join(labels) or ".", (at + 1 if end < 0 else end)
        elif length > 63 or at + 1 + length > len(message):
            raise ValueError("bad DNS label")
        else:
            labels.append(_UNPRINTABLE.sub("?", message[at + 1:at + 1 + length].decode("latin-1")))
            at += 1 + length
