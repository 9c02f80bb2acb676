"""SNMP v1/v2c over UDP 161/162: a community string crossed the wire in cleartext; never the community.

Each datagram is one message. For v1 and v2c it reads the version, steps over the community (its
bytes are never looked at, its length never kept) and reads the PDU type and request id. The first
request (or trap) gives the flow's version and "pdu" type; a Response from the other side carrying
one of the request ids means the community was accepted: {"login": "snmp", "version": "v1"|"v2c",
"outcome": "success", "pdu": ...} at once. Without one, close() gives the same with "unknown" (v1/v2c
agents stay silent on a wrong community, so "failure" is never claimed). SNMPv3 has no community:
{"snmp": "v3"} once and nothing else.

BER is read strictly and bounded: definite lengths of at most 3 length octets, every element inside
its parent, the message exactly filling the datagram, known versions and PDU tags only.
"""

from __future__ import annotations

from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "snmp"
PROTO: Final = "udp"
PORTS: Final = frozenset({161, 162})
MAX_REQUESTS: Final = 16  # request ids remembered per flow
_SEQUENCE, _INTEGER, _OCTETS = 0x30, 0x02, 0x04
_VERSIONS: Final = {0: "v1", 1: "v2c"}
_PDUS: Final = {0xA0: "get", 0xA1: "get_next", 0xA2: "response", 0xA3: "set", 0xA4: "trap", 0xA5: "get_bulk",
                0xA6: "inform", 0xA7: "trap_v2", 0xA8: "report"}
_ALLOWED: Final = {0: frozenset({0xA0, 0xA1, 0xA2, 0xA3, 0xA4}),  # v1
                   1: frozenset({0xA0, 0xA1, 0xA2, 0xA3, 0xA5, 0xA6, 0xA7, 0xA8})}  # v2c
_RESPONSE: Final = 0xA2


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    return proto == "udp" and bool(PORTS & {a_port, b_port})


def start(options: HintOptions) -> SnmpFlow:
    return SnmpFlow()


def parse(message: bytes) -> tuple[int, int, int | None]:
    """(version, PDU tag, request id) of one SNMP message; PDU tag and request id are 0/None for v3."""
    tag, at, end = _element(message, 0, len(message))
    if tag != _SEQUENCE or end != len(message):
        raise ValueError("SNMP message is not one SEQUENCE filling the datagram")
    tag, value, at = _element(message, at, end)
    if tag != _INTEGER or at - value != 1 or message[value] not in (0, 1, 3):
        raise ValueError("unknown SNMP version")
    version = message[value]
    if version == 3:
        if _element(message, at, end)[0] != _SEQUENCE:
            raise ValueError("SNMPv3 header is not a SEQUENCE")
        return 3, 0, None
    tag, _, at = _element(message, at, end)  # the community: stepped over, never read
    if tag != _OCTETS:
        raise ValueError("SNMP community is not an OCTET STRING")
    pdu, value, at = _element(message, at, end)
    if at != end or pdu not in _ALLOWED[version]:
        raise ValueError("bad SNMP PDU")
    if pdu == 0xA4:
        return version, pdu, None
    tag, start_id, end_id = _element(message, value, at)
    if tag != _INTEGER or not 1 <= end_id - start_id <= 4:
        raise ValueError("bad SNMP request id")
    return version, pdu, int.from_bytes(message[start_id:end_id], "big", signed=True)


def _element(data: bytes, at: int, end: int) -> tuple[int, int, int]:
    """Tag, value start and value end of the BER element at `at`, which must lie before `end`."""
    if at + 2 > end:
        raise ValueError("BER element cut short")
    tag, length = data[at], data[at + 1]
    at += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("BER high tag number")
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 3 or at + count > end:
            raise ValueError("BER length indefinite, too long or cut short")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > end:
        raise ValueError("BER element runs past its parent")
    return tag, at, at + length


class SnmpFlow:
    """Whether the community sent on one SNMP flow was answered."""

    def __init__(self) -> None:
        self.done = False
        self._version = ""
        self._pdu = ""
        self._requester: bool | None = None
        self._ids: set[int] = set()

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        version, pdu, request_id = parse(payload)
        if version == 3:
            if self._requester is None:
                self.done = True
                return [{"snmp": "v3"}]
            return []
        if pdu == _RESPONSE:
            if self._requester is not None and from_a != self._requester and request_id in self._ids:
                self.done = True
                return [self._login("success")]
            return []
        if self._requester is None:
            self._requester, self._version, self._pdu = from_a, _VERSIONS[version], _PDUS[pdu]
        if from_a == self._requester and request_id is not None and len(self._ids) < MAX_REQUESTS:
            self._ids.add(request_id)
        return []

    def close(self) -> list[Fields]:
        found = [self._login("unknown")] if self._requester is not None and not self.done else []
        self.done = True
        return found

    def _login(self, outcome: str) -> Fields:
        return {"login": "snmp", "version": self._version, "outcome": outcome, "pdu": self._pdu}
