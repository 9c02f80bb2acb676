"""Tests for agent/uplink.py: records become sealed messages in the real spool, numbered per boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import crypto, messages
from agent.records import Counters, Finding, FlowRecord
from agent.spool import Spool
from agent.uplink import SensorKeys, Uplink, UplinkSettings, next_boot


def _flow(i: int, last: float = 1000.0) -> FlowRecord:
    return FlowRecord(last - 1, last, "tcp", "10.1.0.5", 40000 + i, "10.1.0.9", 2575, "02:00:00:00:00:05",
                      "02:00:00:00:00:09", (), 5, 4, 700, 300, "SPA", "SA", "fin")


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    crypto.write_keypair(tmp_path / "keys", "sensor")
    crypto.write_keypair(tmp_path / "keys", "collector")
    return tmp_path / "keys"


def _opened(spool: Spool, keys: Path) -> list[messages.Message]:
    private, _ = crypto.key_paths(keys, "collector")
    _, verify = crypto.key_paths(keys, "sensor")
    result = []
    recipient, sender = crypto.load_decryption_key(private), crypto.load_verify_key(verify)
    for _, _, sealed in spool.peek(1000):
        opened = crypto.open_sealed(sealed, recipient, sender)
        result.append(messages.decode_payload(messages.decode_header(opened.header), opened.plaintext))
    return result


def _uplink(tmp_path: Path, keys: Path, **settings: object) -> tuple[Uplink, Spool]:
    spool = Spool(tmp_path / "spool", 1 << 20, fsync_interval=0)
    wanted = UplinkSettings(sensor_id="ward3-a", **settings)  # type: ignore[arg-type]
    uplink = Uplink(wanted, SensorKeys.load(keys), spool, 7, Counters(), clock=lambda: 1234.5)
    return uplink, spool


def test_flows_are_batched_by_count_and_come_back_exactly(tmp_path: Path, keys: Path) -> None:
    """Five flows with batch_flows=2: three sealed messages that open to the same records, in order."""
    uplink, spool = _uplink(tmp_path, keys, batch_flows=2)
    flows = [_flow(i) for i in range(5)]
    for record in flows:
        uplink.flow(record)
    uplink.flush()
    opened = _opened(spool, keys)
    assert [m.header.seq for m in opened] == [0, 1, 2]
    assert [r for m in opened for r in m.body] == flows
    assert {(m.header.sensor, m.header.boot, m.header.kind) for m in opened} == {("ward3-a", 7, "flows")}


def test_a_batch_closes_after_batch_seconds_of_packet_time(tmp_path: Path, keys: Path) -> None:
    """A flow ending batch_seconds after the batch began sends the batch."""
    uplink, spool = _uplink(tmp_path, keys, batch_seconds=10.0)
    uplink.flow(_flow(0, last=1000.0))
    uplink.flow(_flow(1, last=1010.0))
    assert len(spool.peek(10)) == 1


def test_first_device_round_is_a_snapshot_then_deltas(tmp_path: Path, keys: Path) -> None:
    """Device rounds: a full snapshot first, deltas until snapshot_seconds pass, then a snapshot again."""
    uplink, _ = _uplink(tmp_path, keys, snapshot_seconds=60.0)
    modes = [uplink.device_round(now) for now in (0.0, 30.0, 40.0, 61.0, 70.0)]
    assert modes == ["snapshot", "delta", "delta", "snapshot", "delta"]


def test_device_records_leave_in_one_message_of_their_mode(tmp_path: Path, keys: Path) -> None:
    uplink, spool = _uplink(tmp_path, keys)
    records = [{"mac": "a"}, {"mac": "b"}]
    uplink.devices("snapshot", records)
    assert [m.body for m in _opened(spool, keys)] == [{"mode": "snapshot", "devices": records}]


def test_findings_leave_at_once(tmp_path: Path, keys: Path) -> None:
    """A finding is its own message, without waiting for a batch."""
    uplink, spool = _uplink(tmp_path, keys)
    finding = Finding("port_scan", "high", 1.0, "10.0.0.1", None, "10.0.0.2", None, "tcp", None, None, None,
                      "scan", {"ports": 100}, "port_scan:10.0.0.1->10.0.0.2")
    uplink.finding(finding)
    assert _opened(spool, keys)[0].body == [finding.to_dict()]


def test_boot_counter_grows_by_one_per_start(tmp_path: Path) -> None:
    """next_boot starts at 1 and persists each increment."""
    assert [next_boot(tmp_path) for _ in range(3)] == [1, 2, 3]
    assert (tmp_path / "boot").read_text() == "3\n"


def test_a_damaged_boot_counter_is_refused(tmp_path: Path) -> None:
    """A boot file that is not a number stops the start instead of reusing sequence numbers."""
    (tmp_path / "boot").write_text("garbage")
    with pytest.raises(ValueError, match="boot counter"):
        next_boot(tmp_path)
