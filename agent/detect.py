"""Detection in the pipeline: flows, hints, device deltas and packet-time ticks to the detector engine.

The engine (agent/detectors/engine.py) sees records only, never packets. This module feeds it in
pipeline order: each finished flow and each hint as it is made, the flow table's second boundaries
as ticks (packet time, so a replay and a live run of the same packets raise the same findings),
device deltas once a minute of packet time, and `finish()` at the end of a capture or at
shutdown, which reports the episodes still held open (a scan reported once it went quiet).

Cost (scripts/bench.py measures it against the pipeline without detectors): flows and hints go
straight to the engine's methods, which hand what passes their filters to the sink themselves, so a
record costs no call of this module. Device deltas are built only when some detector takes them
(the learned one; building every changed device's record once a minute is the dearest part of the
glue), and the context remembers the device records it built until the inventory changes: the
findings of one tick (a scan report names two devices twice: summary and roles) ask for the same
few devices again and again.
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
    """What detectors may ask the inventory (agent.detectors.base.Context); empty without one.

    Records are remembered in `by_key` / `by_ip` until the inventory changes (its `version` moves
    on each flow and hint it takes). Detectors only read the records, so handing one dict to several
    of them is safe.
    """

    def __init__(self, inventory: Inventory | None) -> None:
        self._inventory = inventory
        self._version = -1
        self.by_key: dict[str, dict[str, Any] | None] = {}
        self.by_ip: dict[str, dict[str, Any] | None] = {}

    def device(self, key: str) -> dict[str, Any] | None:
        inventory = self._inventory
        if inventory is None:
            return None
        if inventory.version != self._version:
            self._forget(inventory.version)
        elif key in self.by_key:
            return self.by_key[key]
        record = self.by_key[key] = inventory.device_record(key)
        return record

    def device_of_ip(self, ip: str) -> dict[str, Any] | None:
        inventory = self._inventory
        if inventory is None:
            return None
        if inventory.version != self._version:
            self._forget(inventory.version)
        elif ip in self.by_ip:
            return self.by_ip[ip]
        record = self.by_ip[ip] = inventory.device_of_ip(ip)
        return record

    def _forget(self, version: int) -> None:
        self.by_key.clear()
        self.by_ip.clear()
        self._version = version


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
    """The engine with its sinks; `extra` adds detectors built elsewhere (learned ones, the policy).

    `flow` and `hint` are the engine's own methods: call them with each finished flow and hint.
    """

    def __init__(self, settings: DetectorSettings, inventory: Inventory | None, counters: Counters,
                 on_finding: Callable[[Finding], None], extra: dict[str, Detector] | None = None,
                 device_deltas: bool = True) -> None:
        enabled = [name for name in DETECTORS if name not in settings.disabled
                   and (name not in ON_REQUEST or name in settings.tuning)]
        self.context = InventoryContext(inventory)
        detectors, problems = build_detectors(settings.tuning, self.context, enabled)
        allow, more = parse_allow(settings.allow)
        if problems or more:  # config.parse checked these already
            raise ValueError("; ".join(problems + more))
        self.engine = DetectorEngine({**detectors, **(extra or {})}, counters, settings.suppress_seconds,
                                     settings.max_per_minute, allow, on_finding=on_finding)
        self._inventory = inventory if device_deltas and self.engine.wants_devices else None
        self._next_devices = 0
        self._end: float | None = None  # no record is later than this: the end of the last second ticked
        self.flow: Callable[[FlowRecord], object] = self.engine.on_flow
        self.hint: Callable[[ProtoHint], object] = self.engine.on_hint

    def devices(self, changed: list[dict[str, Any]]) -> None:
        if not self.engine.wants_devices:
            return
        for device in changed:
            self.engine.on_device(device)

    def second(self, now: int) -> None:
        """Packet time entered second `now`: a tick, and device deltas once a minute (when wanted)."""
        self._end = now + 1.0
        self.engine.tick(float(now))
        if self._inventory is not None and now >= self._next_devices:
            self._next_devices = now + DEVICE_EVERY
            self.devices(self._inventory.delta(float(now)))

    def finish(self) -> None:
        if self._inventory is not None:
            self.devices(self._inventory.delta(float(self._next_devices)))
        self.engine.finish(self._end)
