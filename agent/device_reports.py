"""Device records for the uplink and the detectors, spread over seconds (issue 7).

Building, encoding and sealing one device record takes ~0.1 ms here, so a snapshot of 4,096
devices sent at once held the capture loop for about half a second: more than the kernel buffer
absorbs on a busy tap. Reports therefore come in rounds. Every `interval` seconds of wall time a
round starts over the devices in key order: a delta round reports the devices that are due
(changed, or seen again and due a refresh: Inventory.report); a snapshot round (the uplink's
device_round says when) reports every device. Each call of `step`, once a second, reports at most
`per_second` devices; the next round starts only after this one has gone through every key it
began with, so no device waits longer than one round. A device created mid-round waits for the
next; one evicted mid-round is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from agent.inventory import Inventory

DEVICES_PER_SECOND: Final = 256  # ~30 ms of records, encoding and sealing a second on this machine
DELTA_INTERVAL: Final = 10.0  # seconds between the starts of two rounds


class DeviceReport(NamedTuple):
    mode: str  # "delta" or "snapshot"
    records: list[dict[str, Any]]  # for the uplink
    changed: list[dict[str, Any]]  # the due ones among them, for the detectors


class DeviceReports:
    """Rounds of device reports over one inventory, at most `per_second` devices a step."""

    def __init__(self, inventory: Inventory, per_second: int = DEVICES_PER_SECOND,
                 interval: float = DELTA_INTERVAL) -> None:
        if per_second < 1:
            raise ValueError("per_second must be at least 1")
        self._inventory = inventory
        self._per_second = per_second
        self._interval = interval
        self._next_round: float | None = None
        self._mode = "delta"
        self._keys: list[str] = []
        self._at = 0

    @property
    def in_round(self) -> bool:
        return self._at < len(self._keys)

    def step(self, now: float, round_mode: Callable[[float], str] | None = None) -> DeviceReport | None:
        """The next part of the current round, starting one when it is time; None if nothing is due.

        `round_mode(now)` names a new round's mode (Uplink.device_round); without it, deltas only.
        """
        if not self.in_round:
            if self._next_round is not None and now < self._next_round:
                return None
            self._next_round = now + self._interval
            self._mode = round_mode(now) if round_mode is not None else "delta"
            self._keys, self._at = self._inventory.keys(), 0
        everything = self._mode == "snapshot"
        records: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        keys, report = self._keys, self._inventory.report
        while self._at < len(keys) and len(records) < self._per_second:
            found = report(keys[self._at], now, everything)
            self._at += 1
            if found is not None:
                records.append(found[0])
                if found[1]:
                    changed.append(found[0])
        if not self.in_round:
            self._keys = []
        return DeviceReport(self._mode, records, changed) if records else None
