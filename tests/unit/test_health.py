"""agent/health.py: the health record, its interval deltas, and the three health findings.

A controlled wall clock drives the monitor; psutil, the disk, the spool and adjtimex(2) are real.
"""

from __future__ import annotations

import ctypes
import dataclasses
import platform
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import psutil  # type: ignore[import-untyped]
import pytest

from agent.capture import KernelStats
from agent.config import HealthSettings
from agent.health import HealthMonitor, Timex, clock_synced
from agent.records import SEVERITIES, Counters, Finding
from agent.spool import Spool

START = 1_700_000_000.0


class _Reading(NamedTuple):
    """One psutil.sensors_temperatures() reading."""

    label: str
    current: float
    high: float | None
    critical: float | None


class _Clock:
    """Wall time under the test's control."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _table() -> Mapping[str, int]:
    return {"live": 7, "peak": 12}


def _monitor(tmp_path: Path, clock: _Clock, counters: Counters | None = None,
             settings: HealthSettings | None = None,
             synced: Callable[[], bool | None] = lambda: True,
             table: Callable[[], Mapping[str, int]] = _table,
             spool: Callable[[], Mapping[str, int]] | None = None) -> HealthMonitor:
    return HealthMonitor(settings or HealthSettings(), counters or Counters(), spool, table, str(tmp_path),
                         clock=clock, synced=synced)


def _kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    opened = Spool(tmp_path / "spool", max_bytes=1 << 20)
    yield opened
    opened.close()


def test_due_after_one_interval(tmp_path: Path, clock: _Clock) -> None:
    """A sample is due once `interval` seconds of wall time have passed since the last one."""
    monitor = _monitor(tmp_path, clock, settings=HealthSettings(interval=60))
    assert not monitor.due(START + 59.9)
    assert monitor.due(START + 60)
    monitor.sample(START + 60)
    assert not monitor.due(START + 100)
    assert monitor.due(START + 120)


def test_record_carries_real_system_measurements(tmp_path: Path, clock: _Clock) -> None:
    """CPU, memory and disk come from psutil and the file system; no uplink means spool is None."""
    counters = Counters()
    monitor = _monitor(tmp_path, clock, counters)
    record, _ = monitor.sample(START + 60)
    assert record["type"] == "health" and record["ts"] == START + 60 and record["interval_s"] == 60
    assert isinstance(record["cpu_percent"]["process"], float)
    assert 0.0 <= record["cpu_percent"]["system"] <= 100.0
    assert record["memory"]["rss"] > 1 << 20
    assert 0.0 < record["memory"]["system_percent"] <= 100.0
    assert record["disk_free_bytes"] > 0
    assert record["spool"] is None
    assert record["flows"] == {"live": 7, "peak": 12, "evicted": 0}
    assert record["clock_synced"] is True
    assert counters.get("health.errors") == 0


def test_spool_fields_from_a_real_spool(tmp_path: Path, clock: _Clock, spool: Spool) -> None:
    """The spool's depth and bytes as they are now, its drop and quarantine counters as it reports them."""
    spool.append("flows", b"x" * 100)
    spool.append("flows", b"y" * 100)
    monitor = _monitor(tmp_path, clock, spool=lambda: dataclasses.asdict(spool.stats))
    record, _ = monitor.sample(START + 60)
    assert record["spool"]["depth"] == 2
    assert record["spool"]["bytes"] >= 200
    assert record["spool"]["dropped_entries"] == record["spool"]["dropped_bytes"] == 0
    assert record["spool"]["quarantined"] == 0
    assert set(record["spool"]) == {"depth", "bytes", "dropped_entries", "dropped_bytes", "quarantined"}


def test_deltas_over_two_intervals(tmp_path: Path, clock: _Clock) -> None:
    """Packets, kernel drops and counter groups are reported per interval, not cumulatively."""
    counters = Counters()
    counters.add("skipped.truncated", 100)  # before the monitor started: never reported
    monitor = _monitor(tmp_path, clock, counters)
    monitor.observe(KernelStats(received=600, dropped=0, if_dropped=0), 600)
    monitor.observe(KernelStats(received=600, dropped=0, if_dropped=0), 600)
    counters.add("skipped.truncated", 3)
    counters.add("skipped.bad_ip_header", 2)
    counters.add("detectors.errors.scan", 1)
    counters.add("flows.evicted", 4)
    first, _ = monitor.sample(START + 60)
    assert (first["packets"], first["packets_per_s"]) == (1200, 20.0)
    assert first["kernel"] == {"received": 1200, "dropped": 0, "if_dropped": 0}
    assert (first["decode_errors"], first["detector_errors"], first["flows"]["evicted"]) == (5, 1, 4)
    monitor.observe(KernelStats(received=310, dropped=7, if_dropped=3), 300)
    counters.add("skipped.truncated", 1)
    counters.add("detectors.errors.policy", 2)
    second, _ = monitor.sample(START + 120)
    assert (second["packets"], second["packets_per_s"]) == (300, 5.0)
    assert second["kernel"] == {"received": 310, "dropped": 7, "if_dropped": 3}
    assert (second["decode_errors"], second["detector_errors"], second["flows"]["evicted"]) == (1, 2, 0)


def test_interval_is_the_wall_time_since_the_last_sample(tmp_path: Path, clock: _Clock) -> None:
    """A late sample reports the real interval and divides packets by it."""
    monitor = _monitor(tmp_path, clock)
    monitor.observe(KernelStats(received=900), 900)
    record, _ = monitor.sample(START + 90)
    assert record["interval_s"] == 90 and record["packets_per_s"] == 10.0


def test_capture_loss_medium_above_threshold(tmp_path: Path, clock: _Clock) -> None:
    """Socket drops above loss_percent of what was received raise a medium capture_loss."""
    monitor = _monitor(tmp_path, clock, settings=HealthSettings(loss_percent=1.0))
    monitor.observe(KernelStats(received=1000, dropped=15, if_dropped=5), 980)
    _, findings = monitor.sample(START + 60)
    assert _kinds(findings) == ["capture_loss"]
    loss = findings[0]
    assert loss.severity == "medium" and loss.severity in SEVERITIES
    assert loss.key == "health:capture_loss:capture"
    assert (loss.src_ip, loss.dst_ip, loss.src_port, loss.dst_port, loss.device) == (None,) * 5
    assert loss.evidence["dropped"] == 15 and loss.evidence["if_dropped"] == 5
    assert loss.evidence["lost_percent"] == pytest.approx(100 * 15 / 1000, abs=0.01)
    assert "1.5%" in loss.summary and "(15 of 1000)" in loss.summary


def test_capture_loss_high_above_ten_percent(tmp_path: Path, clock: _Clock) -> None:
    """More than 10% lost is high severity."""
    monitor = _monitor(tmp_path, clock)
    monitor.observe(KernelStats(received=1000, dropped=150), 850)
    _, findings = monitor.sample(START + 60)
    assert [(f.kind, f.severity) for f in findings] == [("capture_loss", "high")]


def test_capture_loss_not_at_or_below_threshold(tmp_path: Path, clock: _Clock) -> None:
    """Exactly loss_percent, or no drops at all, raises nothing."""
    monitor = _monitor(tmp_path, clock, settings=HealthSettings(loss_percent=1.0))
    monitor.observe(KernelStats(received=1000, dropped=10), 990)
    _, at_threshold = monitor.sample(START + 60)
    monitor.observe(KernelStats(received=1000), 1000)
    _, clean = monitor.sample(START + 120)
    assert at_threshold == [] and clean == []


def test_capture_loss_every_lossy_interval(tmp_path: Path, clock: _Clock) -> None:
    """Loss is judged per interval: a lossy interval after a clean one raises again."""
    monitor = _monitor(tmp_path, clock)
    results = []
    for i, dropped in enumerate((50, 0, 50), start=1):
        monitor.observe(KernelStats(received=1000, dropped=dropped), 1000 - dropped)
        results.append(_kinds(monitor.sample(START + 60 * i)[1]))
    assert results == [["capture_loss"], [], ["capture_loss"]]


def test_interface_drops_alone_are_no_capture_loss(tmp_path: Path, clock: _Clock) -> None:
    """Interface drops (frames the stack discarded after the capture got them) raise nothing."""
    monitor = _monitor(tmp_path, clock)
    monitor.observe(KernelStats(received=1000, dropped=0, if_dropped=47), 1000)
    record, findings = monitor.sample(START + 60)
    assert findings == [] and record["kernel"]["if_dropped"] == 47


def test_no_traffic_raised_once_per_silence(tmp_path: Path, clock: _Clock) -> None:
    """A tap silent for no_traffic_minutes raises no_traffic once, not again while it stays silent."""
    monitor = _monitor(tmp_path, clock, settings=HealthSettings(no_traffic_minutes=10))
    clock.now = START + 30
    monitor.observe(KernelStats(received=5), 5)
    kinds = [_kinds(monitor.sample(START + 60 * i)[1]) for i in range(1, 14)]
    assert kinds[:9] == [[]] * 9  # 9.5 minutes after the last packet: not yet
    assert kinds[10] == ["no_traffic"]  # 10.5 minutes
    assert kinds[11:] == [[], []]


def test_no_traffic_summary_and_key(tmp_path: Path, clock: _Clock) -> None:
    """The finding names the silent minutes and is high severity, keyed without sensor or address."""
    monitor = _monitor(tmp_path, clock, settings=HealthSettings(no_traffic_minutes=10))
    _, findings = monitor.sample(START + 12 * 60)
    assert len(findings) == 1
    silence = findings[0]
    assert (silence.kind, silence.severity, silence.key) == ("no_traffic", "high", "health:no_traffic:tap")
    assert silence.summary == "The tap has carried no traffic for 12 minutes: check the mirror port"
    assert silence.evidence["silent_s"] == 720.0 and silence.evidence["last_traffic"] == START


def test_no_traffic_again_after_traffic_returns_and_stops(tmp_path: Path, clock: _Clock) -> None:
    """Traffic coming back re-arms no_traffic; the next silence raises it again."""
    monitor = _monitor(tmp_path, clock, settings=HealthSettings(no_traffic_minutes=1))
    first = _kinds(monitor.sample(START + 60)[1])
    clock.now = START + 90
    monitor.observe(KernelStats(received=1), 1)
    during = _kinds(monitor.sample(START + 120)[1])
    second = _kinds(monitor.sample(START + 150)[1])
    assert (first, during, second) == (["no_traffic"], [], ["no_traffic"])


def test_kernel_received_counts_as_traffic(tmp_path: Path, clock: _Clock) -> None:
    """Packets the kernel saw but dropped mean the tap is fed: capture_loss, not no_traffic."""
    monitor = _monitor(tmp_path, clock, settings=HealthSettings(no_traffic_minutes=1))
    clock.now = START + 59
    monitor.observe(KernelStats(received=100, dropped=100), 0)
    assert _kinds(monitor.sample(START + 60)[1]) == ["capture_loss"]


def test_clock_unsynced_once_per_transition(tmp_path: Path, clock: _Clock) -> None:
    """Unsynchronised raises once; it raises again only after the clock was synchronised in between."""
    states = iter([False, False, True, None, False, None, False])
    monitor = _monitor(tmp_path, clock, synced=lambda: next(states))
    kinds = [_kinds(monitor.sample(START + 60 * i)[1]) for i in range(1, 8)]
    assert kinds == [["clock_unsynced"], [], [], [], ["clock_unsynced"], [], []]


def test_clock_unsynced_finding_shape(tmp_path: Path, clock: _Clock) -> None:
    """clock_unsynced is low severity with a constant key, and the record says clock_synced False."""
    monitor = _monitor(tmp_path, clock, synced=lambda: False)
    record, findings = monitor.sample(START + 60)
    assert record["clock_synced"] is False
    assert [(f.kind, f.severity, f.key) for f in findings] == [
        ("clock_unsynced", "low", "health:clock_unsynced:clock")]


def test_real_adjtimex_answers_bool_or_none() -> None:
    """adjtimex(2) on this machine gives a bool, or None where it is unavailable."""
    assert clock_synced() in (True, False, None)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="LP64 Linux layout only")
def test_timex_struct_matches_the_platform() -> None:
    """struct timex is 208 bytes on x86_64 and aarch64 Linux, with status at offset 40."""
    assert ctypes.sizeof(Timex) == 208
    assert Timex.status.offset == 40


def test_default_synced_source_is_the_real_kernel(tmp_path: Path, clock: _Clock) -> None:
    """Without an injected source the record's clock_synced comes from adjtimex(2)."""
    monitor = HealthMonitor(HealthSettings(), Counters(), None, _table, str(tmp_path), clock=clock)
    record, _ = monitor.sample(START + 60)
    assert record["clock_synced"] == clock_synced()


def test_missing_temperature_sensors(tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A psutil without sensors_temperatures gives temperature_c None and counts no error."""
    monkeypatch.delattr(psutil, "sensors_temperatures")
    counters = Counters()
    record, _ = _monitor(tmp_path, clock, counters).sample(START + 60)
    assert record["temperature_c"] is None and counters.get("health.errors") == 0


def test_temperature_prefers_the_pi_sensor(tmp_path: Path, clock: _Clock,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The Pi's cpu_thermal is reported even when another sensor is hotter."""
    readings = {"nvme": [_Reading("Composite", 61.0, 80.0, 85.0)],
                "cpu_thermal": [_Reading("", 54.53, None, None)]}
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: readings)
    record, _ = _monitor(tmp_path, clock).sample(START + 60)
    assert record["temperature_c"] == 54.5


def test_temperature_falls_back_to_the_hottest(tmp_path: Path, clock: _Clock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a known CPU sensor the hottest reading stands in; no sensors at all gives None."""
    readings = {"acpitz": [_Reading("", 40.0, None, None)], "nvme": [_Reading("Composite", 61.0, 80.0, 85.0)]}
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: readings)
    hottest, _ = _monitor(tmp_path, clock).sample(START + 60)
    monkeypatch.setattr(psutil, "sensors_temperatures", dict)
    nothing, _ = _monitor(tmp_path, clock).sample(START + 60)
    assert (hottest["temperature_c"], nothing["temperature_c"]) == (61.0, None)


def test_failing_sources_give_none_and_count(tmp_path: Path, clock: _Clock) -> None:
    """A failing table, spool or disk leaves its fields None, counts health.errors, and never raises."""
    def broken() -> Mapping[str, int]:
        raise RuntimeError("gone")

    counters = Counters()
    monitor = HealthMonitor(HealthSettings(), counters, broken, broken, str(tmp_path / "absent"), clock=clock,
                            synced=lambda: True)
    record, _ = monitor.sample(START + 60)
    assert record["flows"] == {"live": None, "peak": None, "evicted": 0}
    assert set(record["spool"].values()) == {None}
    assert record["disk_free_bytes"] is None
    assert counters.get("health.errors") == 3
