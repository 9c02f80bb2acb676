"""agent.central.store: one transaction per message, rows per kind, duplicates and rollbacks.

The tests are written for either backend: tests/integration/test_postgres.py runs them again with
`target` overridden by a fresh PostgreSQL database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.central.store import Store
from agent.messages import Header, Message
from agent.records import Finding, FlowRecord

T0 = 1_767_225_600.0


def _flow(**changes: Any) -> FlowRecord:
    base = FlowRecord(T0, T0 + 1.5, "tcp", "10.0.0.1", 49152, "10.0.0.2", 443, "02:00:00:00:00:01",
                      "02:00:00:00:00:02", (), 3, 2, 180, 120, "SA", "SA", "fin")
    return base._replace(**changes)


def _msg(kind: str, body: Any, seq: int = 1, boot: int = 1, sensor: str = "s1") -> Message:
    return Message(Header(sensor, boot, seq, kind), T0 + seq, body)


def _device(mac: str = "02:00:00:00:00:01", **changes: Any) -> dict[str, Any]:
    return {"type": "device", "mac": mac, "role": "infusion_pump", "risk_score": 40, "vendor": "Acme",
            "hostname": "pump-1", "software": {"http_server": ["acme/1.0"]}, "first_seen": T0,
            "last_seen": T0 + 5, **changes}


@pytest.fixture
def target(tmp_path: Path) -> str:
    """Where the store lives: a SQLite file here, a postgresql:// URL in test_postgres.py."""
    return str(tmp_path / "central.db")


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    db = Store(target)
    db.register("s1", "ward3", "ab:cd")
    yield db
    db.close()


def test_database_is_in_wal_mode(store: Store) -> None:
    """The file is opened in WAL mode."""
    assert store.query("PRAGMA journal_mode") == [("wal",)]


def test_flow_rows_keep_every_field(store: Store) -> None:
    """A flow batch becomes one row per record with the record's values, VLANs as text."""
    records = [_flow(), _flow(proto=47, vlan=(10, 20), a_mac=None, end="idle")]
    assert store.add(_msg("flows", records), 300, T0 + 9)
    rows = store.query("SELECT first, last, proto, a_ip, a_port, b_ip, b_port, a_mac, b_mac, vlan, a_pkts, "
                       "b_pkts, a_bytes, b_bytes, a_flags, b_flags, end_reason FROM flows "
                       "ORDER BY proto DESC")
    assert rows == [(T0, T0 + 1.5, "tcp", "10.0.0.1", 49152, "10.0.0.2", 443, "02:00:00:00:00:01",
                     "02:00:00:00:00:02", "", 3, 2, 180, 120, "SA", "SA", "fin"),
                    (T0, T0 + 1.5, "47", "10.0.0.1", 49152, "10.0.0.2", 443, None, "02:00:00:00:00:02",
                     "10,20", 3, 2, 180, 120, "SA", "SA", "idle")]


def test_same_message_is_stored_once(store: Store) -> None:
    """A second add of (sensor, boot, seq) returns False, adds no row and counts a duplicate."""
    assert store.add(_msg("flows", [_flow()]), 300, T0)
    assert not store.add(_msg("flows", [_flow(), _flow()]), 300, T0)
    assert (store.count("messages"), store.count("flows")) == (1, 1)
    assert store.sensors()[0]["duplicates"] == 1


def test_sensor_row_tracks_the_highest_boot_and_seq(store: Store) -> None:
    """last_boot/last_seq follow the highest pair, even when an older boot's message arrives later."""
    for boot, seq in ((1, 5), (2, 1), (1, 9), (2, 3), (2, 2)):
        store.add(_msg("health", {"cpu": 0.1}, seq=seq, boot=boot), 100, T0 + seq)
    row = store.sensors()[0]
    assert (row["last_boot"], row["last_seq"], row["messages"]) == (2, 3, 5)
    assert (row["first_seen"], row["last_seen"]) == (T0 + 5, T0 + 9)


def test_sensor_counts_flows(store: Store) -> None:
    """The sensor row counts stored messages and flow records."""
    store.add(_msg("flows", [_flow()] * 3, seq=1), 300, T0)
    store.add(_msg("flows", [_flow()] * 4, seq=2), 300, T0)
    row = store.sensors()[0]
    assert (row["messages"], row["flows"], row["site"], row["fingerprint"]) == (2, 7, "ward3", "ab:cd")


def test_device_keeps_the_latest_record(store: Store) -> None:
    """devices holds one row per (sensor, mac) with the newest record and the earliest first_seen."""
    store.add(_msg("devices", {"mode": "delta", "devices": [_device()]}, seq=1), 100, T0)
    store.add(_msg("devices", {"mode": "snapshot", "devices": [_device(role="monitor", first_seen=T0 + 1,
                                                                       last_seen=T0 + 50)]}, seq=2), 100, T0)
    rows = store.query("SELECT mac, role, first_seen, last_seen, record FROM devices")
    assert len(rows) == 1 and rows[0][:4] == ("02:00:00:00:00:01", "monitor", T0, T0 + 50)
    assert json.loads(rows[0][4])["role"] == "monitor"


def test_device_history_grows_only_on_change(store: Store) -> None:
    """A device seen again unchanged adds no history row; a new software version adds one."""
    for seq, device in enumerate([_device(), _device(last_seen=T0 + 99),
                                  _device(software={"http_server": ["acme/1.1"]})], start=1):
        store.add(_msg("devices", {"mode": "delta", "devices": [device]}, seq=seq), 100, T0)
    history = store.query("SELECT ts, software FROM device_history ORDER BY ts")
    assert [json.loads(s)["http_server"] for _, s in history] == [["acme/1.0"], ["acme/1.1"]]
    assert history[1][0] == T0 + 3


def test_finding_columns_and_record(store: Store) -> None:
    """A finding lands with its columns, evidence and whole record as JSON."""
    finding = Finding("port_scan", "high", T0, "10.0.0.9", None, "10.0.0.2", None, "tcp", "02:00:00:00:00:09",
                      "workstation", None, "10.0.0.9 probed 300 ports", {"ports": 300}, "scan|10.0.0.9")
    store.add(_msg("findings", [finding.to_dict()]), 100, T0)
    row = store.query("SELECT kind, severity, ts, src_ip, src_port, proto, device, key, evidence, record "
                      "FROM findings")[0]
    assert row[:8] == ("port_scan", "high", T0, "10.0.0.9", None, "tcp", "02:00:00:00:00:09", "scan|10.0.0.9")
    assert json.loads(row[8]) == {"ports": 300} and json.loads(row[9]) == finding.to_dict()


@pytest.mark.parametrize(("body", "ok"), [({"version": 3, "errors": []}, 1),
                                          ({"version": 4, "errors": ["capture.snaplen: too small"]}, 0),
                                          ({"version": 5, "ok": False, "errors": []}, 0)])
def test_config_ack_ok_flag(store: Store, body: dict[str, Any], ok: int) -> None:
    """ok comes from the body's `ok`, else from an empty error list."""
    store.add(_msg("config_ack", body), 100, T0)
    assert store.query("SELECT version, ok, errors FROM config_acks") == [
        (body["version"], ok, json.dumps(body["errors"], separators=(",", ":")))]


def test_status_message_sets_online(store: Store) -> None:
    """A status body updates the sensor's online flag and status document."""
    store.add(_msg("status", {"online": True, "boot": 1}), 100, T0)
    store.set_status("s1", {"online": False, "boot": 1}, T0 + 1)
    row = store.sensors()[0]
    assert (row["online"], json.loads(row["status"]), row["status_ts"]) == (0, {"online": False, "boot": 1},
                                                                            T0 + 1)


def test_bad_device_rolls_the_whole_message_back(store: Store) -> None:
    """A device record without a MAC raises ValueError and leaves no message, device or history row."""
    body = {"mode": "delta", "devices": [_device(), {"role": "monitor"}]}
    with pytest.raises(ValueError):
        store.add(_msg("devices", body), 100, T0)
    assert [store.count(t) for t in ("messages", "devices", "device_history")] == [0, 0, 0]
    assert store.add(_msg("devices", {"mode": "delta", "devices": [_device()]}), 100, T0)


def test_count_beyond_int64_rolls_back(store: Store) -> None:
    """A count beyond 64 bits raises OverflowError (SQLite) or ValueError and stores nothing."""
    with pytest.raises((OverflowError, ValueError)):
        store.add(_msg("flows", [_flow(), _flow(a_bytes=1 << 64)]), 100, T0)
    assert store.count("messages") + store.count("flows") == 0


def test_rejects_are_counted_per_reason_sensor_and_topic(store: Store) -> None:
    """The same refusal twice is one row with count 2 and the first and last times."""
    for at in (T0, T0 + 5):
        store.reject("signature", "s1", "ward/ward3/s1/up/flows", at)
    store.reject("bad_topic", "", "ward/x", T0)
    assert store.query("SELECT reason, sensor, first, last, count FROM rejects ORDER BY reason") == [
        ("bad_topic", "", T0, T0, 1), ("signature", "s1", T0, T0 + 5, 2)]
    assert store.sensors()[0]["rejects"] == 2


def test_reopening_keeps_the_data(target: str) -> None:
    """A second Store on the same database sees what the first stored."""
    first = Store(target)
    first.add(_msg("flows", [_flow()]), 100, T0)
    first.close()
    again = Store(target)
    assert again.seen("s1", 1, 1) and not again.seen("s1", 1, 2)
    again.close()


def test_other_schema_version_is_refused(target: str) -> None:
    """A database written by another schema version raises ValueError instead of being mixed."""
    first = Store(target)
    first.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    first.close()
    with pytest.raises(ValueError, match="schema version 99"):
        Store(target)


def test_unknown_synchronous_mode_is_refused(target: str) -> None:
    """Only normal and full are accepted."""
    with pytest.raises(ValueError):
        Store(target, synchronous="off")


def test_device_history_follows_arrival_order(store: Store) -> None:
    """History compares with the stored device, so an older message arriving last still adds its change."""
    for seq, version in ((2, "acme/1.1"), (1, "acme/1.0")):
        device = _device(software={"http_server": [version]})
        store.add(_msg("devices", {"mode": "delta", "devices": [device]}, seq=seq), 100, T0 + 10 - seq)
    assert [json.loads(s)["http_server"] for (s,) in store.query(
        "SELECT software FROM device_history ORDER BY received")] == [["acme/1.1"], ["acme/1.0"]]


def test_status_document_with_text_only_is_kept_whole(store: Store) -> None:
    """set_status with a non-boolean online stores NULL online and the document."""
    store.set_status("s1", {"online": "yes"}, T0)
    row = store.sensors()[0]
    assert (row["online"], json.loads(row["status"])) == (None, {"online": "yes"})
