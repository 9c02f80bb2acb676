"""Device reports come in rounds, a bounded number of devices a second (agent/device_reports.py)."""

from __future__ import annotations

from agent.device_reports import DeviceReports
from agent.inventory import Inventory
from agent.records import FlowRecord


def _mac(i: int) -> str:
    return f"02:00:00:00:00:{i:02x}"


def _seen(inventory: Inventory, i: int, t: float = 100.0, host: int | None = None) -> None:
    """Device i sent an unanswered datagram from 10.0.0.<host> (default i; a new address is a change)."""
    inventory.on_flow(FlowRecord(t, t + 1.0, "udp", f"10.0.0.{i if host is None else host}", 50000,
                                 "10.0.0.250", 53, _mac(i), None, (), 1, 0, 60, 0, "", "", "idle"))


def _inventory(devices: int, capacity: int = 64) -> Inventory:
    inventory = Inventory(capacity)
    for i in range(devices):
        _seen(inventory, i)
    return inventory


def _macs(records: list[dict[str, object]]) -> list[str]:
    return [str(record["mac"]) for record in records]


def test_a_round_reports_at_most_per_second_devices_a_step_in_key_order() -> None:
    reports = DeviceReports(_inventory(10), per_second=4)
    parts = [reports.step(float(t)) for t in range(4)]
    assert [len(part.records) if part else 0 for part in parts] == [4, 4, 2, 0]
    assert [mac for part in parts if part for mac in _macs(part.records)] == [_mac(i) for i in range(10)]


def test_a_new_round_starts_only_after_the_interval() -> None:
    inventory = _inventory(3)
    reports = DeviceReports(inventory, interval=10.0)
    assert reports.step(0.0) is not None
    _seen(inventory, 1, host=101)  # a new address: a change
    assert reports.step(5.0) is None
    part = reports.step(10.0)
    assert part is not None and (part.mode, _macs(part.records)) == ("delta", [_mac(1)])


def test_a_snapshot_round_reports_every_device_and_only_the_due_ones_as_changed() -> None:
    inventory = _inventory(3)
    reports = DeviceReports(inventory, interval=10.0)
    reports.step(0.0)
    _seen(inventory, 2, host=102)
    part = reports.step(10.0, lambda now: "snapshot")
    assert part is not None and part.mode == "snapshot"
    assert (_macs(part.records), _macs(part.changed)) == ([_mac(0), _mac(1), _mac(2)], [_mac(2)])


def test_a_device_evicted_mid_round_is_skipped_and_a_new_one_waits_for_the_next_round() -> None:
    inventory = _inventory(3, capacity=3)
    reports = DeviceReports(inventory, per_second=1, interval=10.0)
    first = reports.step(0.0)
    _seen(inventory, 0, t=200.0)
    _seen(inventory, 2, t=200.0)
    _seen(inventory, 3, t=200.0)  # evicts device 1, the least recently touched
    second, third = reports.step(1.0), reports.step(2.0)
    reported = [_macs(part.records) if part else [] for part in (first, second, third)]
    assert reported == [[_mac(0)], [_mac(2)], []]
    fourth = reports.step(10.0)  # 0 and 2 were only seen again since their reports
    assert fourth is not None and _macs(fourth.records) == [_mac(3)]
