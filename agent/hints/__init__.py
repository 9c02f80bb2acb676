"""Protocol hints: allow-listed metadata from the first payload packets of a flow (DESIGN.md section 3).

A hinter module names the one transport it reads in `PROTO` ("tcp" or "udp") and offers
`accepts(proto, a_port, b_port, payload, from_a) -> bool`, asked for each of a flow of that
transport's head payloads until one hinter accepts (side a is the flow's initiator), and
`start(options) -> FlowHinter`, one per flow. The flow table hands a FlowHinter only the first K
payload packets of each direction. `feed` returns the metadata it could read; it raises ValueError
on garbage, which the caller counts and stops feeding that flow; `done` set by the hinter ends the
head early. `close` is called once when the flow leaves its head (or ends) and returns what the
hinter still held (a login whose outcome never came, say). A hinter never returns anything outside
its allow-list: no HL7 segment but MSH and MSA, no DICOM data set, no secret.
"""

from __future__ import annotations

from typing import Protocol

from agent.hints import dhcp, dicom, dns, ftp, hl7, http, mail, mqtt, nbns, smb, snmp, ssdp, telnet, tls
from agent.hints.base import Fields, HintOptions


class FlowHinter(Protocol):
    done: bool

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]: ...

    def close(self) -> list[Fields]: ...


class HinterModule(Protocol):
    NAME: str
    PROTO: str

    def accepts(self, proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool: ...

    def start(self, options: HintOptions) -> FlowHinter: ...


# Port-decided UDP hinters first, then those that recognise their payload on any port, then the
# server-speaks-first protocols (decided by port or banner).
HINTERS: tuple[HinterModule, ...] = (
    dhcp, dns, nbns, ssdp, snmp, hl7, dicom, mqtt, tls, http, smb, telnet, ftp, mail,
)
