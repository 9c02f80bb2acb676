"""Detection in the pipeline: flows, hints, device deltas and packet-time ticks to the detector engine.

The engine (agent/detectors/engine.py) sees records only, never packets. This module feeds it in
pipeline order: each finished flow and each hint as it is made, the flow table's second boundaries
as ticks (packet time, so a replay and a live run of the same packets raise the same findings),
device deltas once a minute of packet time, and `finish()` at the end of a capture or at
shutdown, which reports the episodes still held open (a scan reported once it went quiet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from agent.config import DetectorSettings
from agent.detectors import DETECTORS, ON_REQUEST
from agent.detectors.base import Detector
from agent.detectors.engine import DetectorEngine, build_detectors, parse_allow
from agent.inventory import Inventory
from agent.records import Counters, Finding, FlowRecord, ProtoHint

DEVICE_EVERY = 60  # seconds of packet time between device deltas to the detectors


class InventoryContext:
    """What detectors may ask the inventory (agent.detectors.base.Context); empty without one."""

    def __init__(self, inventory: Inventory | None) -> None:
        self._inventory = inventory

    def device(self, key: str) -> dict[str, Any] | None:
        return self._inventory.device_record(key) if self._inventory is not None else None

    def device_of_ip(self, ip: str) -> dict[str, Any] | None:
        return self._inventory.device_of_ip(ip) if self._inventory is not None else None


def with_site_files(settings: DetectorSettings, baseline: str | None, policy: str | None) -> DetectorSettings:
    """The detector settings with a learned baseline and a segmentation policy given on the command line."""
    tuning = {name: dict(table) for name, table in settings.tuning.items()}
    if baseline:
        tuning.setdefault("learned", {})["baseline"] = baseline
    if policy:
        tuning.setdefault("policy_violation", {})["policy"] = policy
        if "learned" in tuning:
            tuning["learned"]["policy"] = policy  # its bulk rules spare scheduled transfers
    return dataclasses.replace(settings, tuning=tuning)


class Detection:
    """The engine with its sinks; `extra` adds detectors built elsewhere (learned ones, the policy)."""

    def __init__(self, settings: DetectorSettings, inventory: Inventory | None, counters: Counters,
                 on_finding: Callable[[Finding], None], extra: dict[str, Detector] | None = None,
                 device_deltas: bool = True) -> None:
        enabled = [name for name in DETECTORS if name not in settings.disabled
                   and (name not in ON_REQUEST or name in settings.tuning)]
        detectors, problems = build_detectors(settings.tuning, InventoryContext(inventory), enabled)
        allow, more = parse_allow(settings.allow)
        if problems or more:  # config.parse checked these already
            raise ValueError("; ".join(problems + more))
        self.engine = DetectorEngine({**detectors, **(extra or {})}, counters, settings.suppress_seconds,
                                     settings.max_per_minute, allow)
        self._inventory = inventory if device_deltas else None
        self._on_finding = on_finding
        self._next_devices = 0

    def flow(self, record: FlowRecord) -> None:
        self._emit(self.engine.on_flow(record))

    def hint(self, hint: ProtoHint) -> None:
        self._emit(self.engine.on_hint(hint))

    def devices(self, changed: list[dict[str, Any]]) -> None:
        for device in changed:
            self._emit(self.engine.on_device(device))

    def second(self, now: int) -> None:
        """Packet time entered second `now`: a tick, and device deltas once a minute."""
        self._emit(self.engine.tick(float(now)))
        if self._inventory is not None and now >= self._next_devices:
            self._next_devices = now + DEVICE_EVERY
            self.devices(self._inventory.delta(float(now)))

    def finish(self) -> None:
        if self._inventory is not None:
            self.devices(self._inventory.delta(float(self._next_devices)))
        self._emit(self.engine.finish())

    def _emit(self, findings: list[Finding]) -> None:
        for finding in findings:
            self._on_finding(finding)
