"""The detector contract (DESIGN.md section 3): plain records in, Findings out, no IO.

A detector module offers NAME, a frozen `Settings` dataclass with its defaults (range checks in
`Settings.problems() -> list[str]`), and `make(settings, context) -> Detector`. The engine hands
each detector every finished flow, every protocol hint and every device delta, and calls `tick`
with packet time at least once per second of traffic, never raw packets; a detector may narrow
what it is handed with the optional attributes `flow_ports`, `hint_apps`, `hint_ports`, `takes_flows`
and `takes_devices` (agent.detectors.engine), which must never hide a record it would act on. A
detector returns the findings it raises; the engine de-duplicates them by `key` within a
suppression window and rate-limits them, counting both. An exception in one detector is counted and
logged at most once per interval; the others keep running.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.records import Finding, FlowRecord, ProtoHint

Device = dict[str, Any]  # a device record as agent.inventory builds it (type "device")


class Context(Protocol):
    """What detectors may ask about the ward: devices by MAC (or "ip:<addr>") and by address."""

    def device(self, key: str) -> Device | None: ...

    def device_of_ip(self, ip: str) -> Device | None: ...


class Detector(Protocol):
    def on_flow(self, flow: FlowRecord) -> list[Finding]: ...

    def on_hint(self, hint: ProtoHint) -> list[Finding]: ...

    def on_device(self, device: Device) -> list[Finding]: ...

    def tick(self, now: float) -> list[Finding]: ...
