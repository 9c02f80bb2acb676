"""Protocol hints: allow-listed metadata from the first payload packets of a flow (DESIGN.md section 3).

A hinter module offers `accepts(proto, a_port, b_port, payload) -> bool`, decided on a flow's first
payload, and `start() -> FlowHinter`, one per flow. The flow table will hand a FlowHinter only the
first K payload packets of each direction (issue 3 wires this into the flow head). `feed` returns
the metadata it could read; it raises ValueError on garbage, which the caller counts and stops
feeding that flow. A hinter never returns anything outside its allow-list: no HL7 segment but MSH
and MSA, no DICOM data set, no secret.
"""

from __future__ import annotations

from typing import Protocol

from agent.hints import dhcp, dns, hl7
from agent.hints.base import Fields


class FlowHinter(Protocol):
    done: bool

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]: ...


class HinterModule(Protocol):
    NAME: str

    def accepts(self, proto: str, a_port: int, b_port: int, payload: bytes) -> bool: ...

    def start(self) -> FlowHinter: ...


HINTERS: tuple[HinterModule, ...] = (dhcp, dns, hl7)
