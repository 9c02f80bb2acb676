"""agent.remote_config and agent.config_envelope: only an authentic, newer, valid, harmless document for this
sensor is stored and applied; everything else is nacked with its reasons and changes nothing; probation rolls
back a document that cuts the broker off. Also the centre's status logic (agent.central.config_push)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import config, crypto, messages
from agent.central import config_push
from agent.central.store import Store
from agent.config import AgentConfig, ConfigError
from agent.config_envelope import decrypt_envelope, seal_document, verify_envelope
from agent.remote_config import LAST_GOOD, STORED, RemoteConfig, harmful, load_start

SENSOR = "ward3-a"
CENTRAL = Ed25519PrivateKey.generate()
BOX = X25519PrivateKey.generate()


def toml_text(state_dir: Path, **sections: dict[str, Any]) -> str:
    """A whole agent.toml for SENSOR (uplink on, capture on eth1), sections overridden key by key."""
    tables: dict[str, dict[str, Any]] = {
        "capture": {"interface": "eth1"},
        "uplink": {"enabled": True, "site": "ward3", "sensor_id": SENSOR, "state_dir": str(state_dir),
                   "spool_max_mb": 8}}
    for name, values in sections.items():
        tables[name] = {**tables.get(name, {}), **values}
    return "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                   for name, table in tables.items())


def seal(text: str, version: int, sensor: str = SENSOR, signer: Ed25519PrivateKey = CENTRAL,
         box: X25519PrivateKey = BOX) -> bytes:
    return seal_document(text.encode(), sensor, version, signer, box.public_key())


class Sensor:
    """A RemoteConfig over a real state directory, recording apply and ack calls."""

    def __init__(self, state: Path, version: int = 0, current: AgentConfig | None = None, **kw: Any) -> None:
        self.state = state
        self.applied: list[tuple[AgentConfig, AgentConfig]] = []
        self.acks: list[dict[str, Any]] = []
        self.fail_apply = False
        self.start = current or config.parse(tomllib.loads(toml_text(state)))
        self.remote = RemoteConfig(self.start, version, CENTRAL.public_key(), SENSOR, BOX, state,
                                   apply=self._apply, ack=self.acks.append, **kw)

    def _apply(self, old: AgentConfig, new: AgentConfig) -> None:
        self.applied.append((old, new))
        if self.fail_apply and len(self.applied) == 1:
            raise RuntimeError("capture would not reopen")

    def push(self, version: int, **sections: dict[str, Any]) -> dict[str, Any]:
        return self.remote.handle(seal(toml_text(self.state, **sections), version))

    def assert_refused(self, ack: dict[str, Any], reason: str) -> None:
        """A nack with this reason as the last ack, and nothing applied or stored."""
        assert ack["ok"] is False and ack["reason"] == reason, ack
        assert self.acks[-1] == ack and all(e.startswith(f"{reason}: ") for e in ack["errors"])
        assert self.applied == [] and self.remote.config == self.start
        assert not (self.state / STORED).exists()


@pytest.fixture
def sensor(tmp_path: Path) -> Sensor:
    return Sensor(tmp_path)


def timed_handle(sensor: Sensor, payload: bytes) -> dict[str, Any]:
    began = time.perf_counter()
    ack = sensor.remote.handle(payload)
    assert time.perf_counter() - began < 2.0
    return ack


# ---- the envelope -----------------------------------------------------------------------------------------

def test_envelope_round_trip() -> None:
    """The signed header names sensor and version; the box key decrypts the document."""
    envelope = seal("[log]\nlevel = \"debug\"\n", 7)
    assert verify_envelope(envelope, CENTRAL.public_key()) == (SENSOR, 7)
    assert decrypt_envelope(envelope, BOX, CENTRAL.public_key()) == b"[log]\nlevel = \"debug\"\n"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_flipped_bit_is_refused(data: st.DataObject) -> None:
    """A single flipped bit anywhere fails the framing or the signature, never anything else."""
    envelope = bytearray(seal("[log]\nlevel = \"info\"\n", 3))
    position = data.draw(st.integers(0, len(envelope) * 8 - 1))
    envelope[position // 8] ^= 1 << (position % 8)
    with pytest.raises(crypto.OpenError) as refused:
        verify_envelope(bytes(envelope), CENTRAL.public_key())
    assert refused.value.reason in ("malformed", "signature")


def test_every_truncation_is_refused() -> None:
    """An envelope cut at any offset is refused as malformed or unsigned."""
    envelope = seal("[log]\nlevel = \"info\"\n", 3)
    for cut in range(len(envelope)):
        with pytest.raises(crypto.OpenError):
            verify_envelope(envelope[:cut], CENTRAL.public_key())


def test_header_cannot_be_moved_to_another_ciphertext() -> None:
    """Re-signing another document's ciphertext under this header does not decrypt (header bound by info)."""
    first, second = seal("[log]\nlevel = \"info\"\n", 3), seal("[log]\nlevel = \"debug\"\n", 4)
    n = first[5]
    spliced = first[:6 + n] + second[6 + second[5]:-64]
    spliced += crypto.sign_document(spliced, CENTRAL)
    assert verify_envelope(spliced, CENTRAL.public_key()).version == 3
    with pytest.raises(crypto.OpenError, match="decrypt"):
        decrypt_envelope(spliced, BOX, CENTRAL.public_key())


# ---- accepted documents -----------------------------------------------------------------------------------

def test_newer_document_is_applied_and_acked(sensor: Sensor) -> None:
    """apply sees (old, new); the ack names the version and the changed keys."""
    ack = timed_handle(sensor, seal(toml_text(sensor.state, capture={"bpf": "not port 22"}), 1))
    assert ack == {"version": 1, "ok": True, "changed": ["capture.bpf"]} and sensor.acks == [ack]
    old, new = sensor.applied[0]
    assert old == sensor.start and new.capture.bpf == "not port 22" and sensor.remote.config == new
    assert sensor.remote.version == 1


def test_document_is_stored_stamped_and_private(sensor: Sensor) -> None:
    """agent.toml holds the stamp line and the document, mode 0600."""
    text = toml_text(sensor.state, log={"level": "debug"})
    sensor.remote.handle(seal(text, 5))
    stored = (sensor.state / STORED).read_text()
    assert stored.startswith(f"# ward-agent remote configuration version=5 sensor={SENSOR} sha256=")
    assert stored.endswith(text) and stat.S_IMODE((sensor.state / STORED).stat().st_mode) == 0o600


def test_previous_push_is_kept_as_last_good(sensor: Sensor) -> None:
    """The second push moves the first document to agent.toml.last-good."""
    sensor.push(1, log={"level": "debug"})
    first = (sensor.state / STORED).read_text()
    sensor.push(2, log={"level": "warning"})
    assert (sensor.state / LAST_GOOD).read_text() == first
    assert config.load(sensor.state / STORED).log.level == "warning"


# ---- refused documents ------------------------------------------------------------------------------------

def test_flipped_bit_is_nacked(sensor: Sensor) -> None:
    """A flipped ciphertext bit breaks the signature: nack, nothing applied."""
    envelope = bytearray(seal(toml_text(sensor.state), 1))
    envelope[len(envelope) // 2] ^= 0x10
    sensor.assert_refused(timed_handle(sensor, bytes(envelope)), "signature")
    assert sensor.acks[-1]["version"] is None


def test_wrong_central_key_is_nacked(sensor: Sensor) -> None:
    """A document signed by any key but the pinned central key is refused."""
    ack = timed_handle(sensor, seal(toml_text(sensor.state), 1, signer=Ed25519PrivateKey.generate()))
    sensor.assert_refused(ack, "signature")


def test_oversized_document_is_nacked(tmp_path: Path) -> None:
    """Past max_bytes the envelope is not even verified."""
    sensor = Sensor(tmp_path, max_bytes=512)
    ack = timed_handle(sensor, seal(toml_text(tmp_path) + "# " + "x" * 600 + "\n", 1))
    sensor.assert_refused(ack, "too_large")


def test_other_sensors_document_is_nacked(sensor: Sensor) -> None:
    """A document sealed for ward3-b is refused by ward3-a."""
    ack = timed_handle(sensor, seal(toml_text(sensor.state), 1, sensor="ward3-b"))
    sensor.assert_refused(ack, "other_sensor")


def test_document_for_another_box_key_is_nacked(sensor: Sensor) -> None:
    """Signed for this sensor but encrypted to another box key: it does not decrypt."""
    ack = timed_handle(sensor, seal(toml_text(sensor.state), 1, box=X25519PrivateKey.generate()))
    sensor.assert_refused(ack, "decrypt")


def test_old_version_is_nacked_stale(tmp_path: Path) -> None:
    """A freshly signed document whose version is not above the running one is stale."""
    sensor = Sensor(tmp_path, version=4)
    sensor.assert_refused(timed_handle(sensor, seal(toml_text(tmp_path), 4)), "stale")
    assert sensor.acks[-1]["version"] == 4


def test_replayed_older_envelope_is_nacked_stale(sensor: Sensor) -> None:
    """Version 1's exact bytes, replayed after version 2 was applied, change nothing."""
    first = seal(toml_text(sensor.state, log={"level": "debug"}), 1)
    sensor.remote.handle(first)
    sensor.push(2, log={"level": "warning"})
    ack = timed_handle(sensor, first)
    assert ack["ok"] is False and ack["reason"] == "stale" and sensor.remote.config.log.level == "warning"
    assert len(sensor.applied) == 2


def test_retained_copy_of_running_document_is_ignored(sensor: Sensor) -> None:
    """The same envelope again (the retained copy after a reconnect) is ignored without an answer."""
    envelope = seal(toml_text(sensor.state, log={"level": "debug"}), 1)
    sensor.remote.handle(envelope)
    assert sensor.remote.handle(envelope) == {} and len(sensor.acks) == 1 and len(sensor.applied) == 1


def test_malformed_toml_is_nacked(sensor: Sensor) -> None:
    """A document that is not TOML is refused with the parser's reason."""
    ack = timed_handle(sensor, seal("[capture\nsnaplen = 100\n", 1))
    sensor.assert_refused(ack, "toml")


def test_unknown_keys_are_nacked_with_every_problem(sensor: Sensor) -> None:
    """Two unknown keys give two errors, each with its dotted path."""
    ack = timed_handle(sensor, seal(toml_text(sensor.state, capture={"snapln": 100}, flows={"idle": 3}), 1))
    sensor.assert_refused(ack, "invalid")
    assert [e.split(":")[1].strip() for e in ack["errors"]] == ["capture.snapln", "flows.idle"]


def test_snaplen_zero_is_nacked(sensor: Sensor) -> None:
    """snaplen 0 is out of the validator's range."""
    ack = timed_handle(sensor, seal(toml_text(sensor.state, capture={"snaplen": 0}), 1))
    sensor.assert_refused(ack, "invalid")
    assert "capture.snaplen" in ack["errors"][0]


def test_interval_zero_is_nacked(sensor: Sensor) -> None:
    """A health interval of 0 is refused."""
    ack = timed_handle(sensor, seal(toml_text(sensor.state, health={"interval": 0}), 1))
    sensor.assert_refused(ack, "invalid")
    assert "health.interval" in ack["errors"][0]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A state directory on a file system with less than 64 GiB free (the spool cap's maximum)."""
    for base in (tmp_path, Path("/dev/shm")):
        if base.is_dir() and shutil.disk_usage(base).free < 60 << 30:
            folder = Path(tempfile.mkdtemp(dir=base))
            yield folder
            shutil.rmtree(folder)
            return
    pytest.skip("no file system with less than 60 GiB free to test the spool cap against")


def test_spool_cap_above_free_disk_is_nacked(small_disk: Path) -> None:
    """A spool cap larger than the state directory's free space is harmful."""
    sensor = Sensor(small_disk)
    too_big = (shutil.disk_usage(small_disk).free >> 20) + 1024
    ack = timed_handle(sensor, seal(toml_text(small_disk, uplink={"spool_max_mb": too_big}), 1))
    sensor.assert_refused(ack, "harmful")
    assert "uplink.spool_max_mb" in ack["errors"][0]


def test_identity_changes_are_harmful(sensor: Sensor) -> None:
    """Renaming the sensor or switching the uplink off would strand the box: both listed."""
    renamed = toml_text(sensor.state, uplink={"sensor_id": "ward3-z", "enabled": False})
    ack = timed_handle(sensor, seal(renamed, 1))
    sensor.assert_refused(ack, "harmful")
    assert ["uplink.sensor_id" in ack["errors"][0], "uplink.enabled" in ack["errors"][1]] == [True, True]


def test_zero_interval_past_the_validator_is_harmful(tmp_path: Path) -> None:
    """Should the validator ever let an interval of 0 through, the harm check still refuses it."""
    base = config.parse(tomllib.loads(toml_text(tmp_path)))
    zero = dataclasses.replace(base, health=dataclasses.replace(base.health, interval=0),
                               flows=dataclasses.replace(base.flows, tcp_close_grace=0))
    assert harmful(base, zero, tmp_path) == ["health.interval: 0 would stop or spin its stage; it must be "
                                             "above 0"]


def test_refused_version_stays_refused(sensor: Sensor) -> None:
    """After an invalid version 1, its redelivery is ignored and another version 1 is stale."""
    bad = seal(toml_text(sensor.state, capture={"snaplen": 0}), 1)
    sensor.remote.handle(bad)
    assert sensor.remote.handle(bad) == {}
    assert sensor.push(1)["reason"] == "stale" and sensor.push(2)["ok"] is True


def test_failing_apply_is_nacked_and_undone(sensor: Sensor) -> None:
    """apply raising: nack, the old settings applied again, no stored file."""
    sensor.fail_apply = True
    ack = sensor.push(1, capture={"snaplen": 9000})
    assert ack["reason"] == "apply_failed" and "capture would not reopen" in ack["errors"][0]
    assert sensor.applied[1] == (sensor.applied[0][1], sensor.start) and sensor.remote.config == sensor.start
    assert not (sensor.state / STORED).exists()


# ---- probation and rollback -------------------------------------------------------------------------------

def test_cut_off_push_rolls_back_after_grace(tmp_path: Path) -> None:
    """Disconnected for `grace` after applying: settings and files go back, and the rollback is acked."""
    sensor = Sensor(tmp_path, grace=30.0)
    sensor.push(1, log={"level": "debug"})
    first = (tmp_path / STORED).read_text()
    sensor.push(2, uplink={"broker_port": 1})
    assert sensor.remote.tick(100.0, True) is None and sensor.remote.tick(101.0, False) is None
    assert sensor.remote.tick(130.0, False) is None
    ack = sensor.remote.tick(131.0, False)
    assert ack is not None and ack["version"] == 1 and ack["rolled_back"] == 2 and sensor.acks[-1] == ack
    assert sensor.applied[-1][1].uplink.broker_port == 8883 and sensor.remote.version == 1
    assert (tmp_path / STORED).read_text() == first


def test_rollback_to_the_packaged_file_removes_the_stored_one(sensor: Sensor) -> None:
    """Rolling back the first push leaves no agent.toml, so the packaged file runs after a restart."""
    sensor.push(1, uplink={"broker_port": 1})
    sensor.remote.tick(0.0, False)
    assert sensor.remote.tick(200.0, False) is not None
    assert not (sensor.state / STORED).exists() and sensor.remote.config == sensor.start


def test_short_outage_does_not_roll_back(sensor: Sensor) -> None:
    """An outage shorter than grace, then the connection back: still on the new version."""
    sensor.push(1, log={"level": "debug"})
    for now, up in ((0.0, False), (100.0, False), (110.0, True), (200.0, False), (310.0, False)):
        assert sensor.remote.tick(now, up) is None
    assert sensor.remote.version == 1 and not sensor.remote.on_probation


def test_next_document_confirms_probation(sensor: Sensor) -> None:
    """A document arriving through the broker proves the new settings reach it."""
    sensor.push(1, log={"level": "debug"})
    assert sensor.remote.on_probation
    sensor.push(1)
    assert not sensor.remote.on_probation


# ---- start-up ---------------------------------------------------------------------------------------------

def test_start_prefers_the_newer_stored_document(sensor: Sensor, tmp_path: Path) -> None:
    """The stored push, newer than the packaged file, is what starts, with its version."""
    packaged = tmp_path / "packaged.toml"
    packaged.write_text(toml_text(sensor.state))
    os.utime(packaged, (time.time() - 60, time.time() - 60))
    sensor.push(3, log={"level": "debug"})
    start = load_start(packaged, sensor.state)
    assert (start.version, start.config.log.level, start.source) == (3, "debug", sensor.state / STORED)


def test_start_prefers_a_packaged_file_edited_later(sensor: Sensor, tmp_path: Path) -> None:
    """A packaged file edited after the push wins, and the pushed version is still remembered."""
    sensor.push(3, log={"level": "debug"})
    packaged = tmp_path / "packaged.toml"
    packaged.write_text(toml_text(sensor.state, log={"level": "error"}))
    os.utime(packaged, (time.time() + 60, time.time() + 60))
    start = load_start(packaged, sensor.state)
    assert (start.version, start.config.log.level, start.source) == (3, "error", packaged)


def test_start_falls_back_to_last_good(sensor: Sensor) -> None:
    """An unreadable stored document gives way to agent.toml.last-good, with a note."""
    sensor.push(1, log={"level": "debug"})
    sensor.push(2, log={"level": "warning"})
    (sensor.state / STORED).write_text("garbage")
    start = load_start(None, sensor.state)
    assert (start.version, start.config.log.level) == (1, "debug") and start.notes


def test_restarted_sensor_ignores_retained_copy_and_refuses_older(sensor: Sensor) -> None:
    """After a restart from the stored file, the retained copy is ignored and version 1 is stale."""
    first = seal(toml_text(sensor.state, log={"level": "debug"}), 1)
    sensor.remote.handle(first)
    second = seal(toml_text(sensor.state, log={"level": "warning"}), 2)
    sensor.remote.handle(second)
    start = load_start(None, sensor.state)
    again = Sensor(sensor.state, start.version, start.config)
    assert again.remote.handle(second) == {} and again.remote.handle(first)["reason"] == "stale"
    assert again.applied == []


# ---- the centre -------------------------------------------------------------------------------------------

def test_push_refuses_a_document_naming_another_sensor(tmp_path: Path) -> None:
    """The centre validates with the sensor's validator and checks uplink.sensor_id."""
    with pytest.raises(ConfigError, match=r"uplink\.sensor_id"):
        config_push.validate(toml_text(tmp_path), "ward3-b")


def _ack(store: Store, seq: int, body: dict[str, Any]) -> None:
    header = messages.Header(SENSOR, 1, seq, "config_ack")
    store.add(messages.Message(header, 1000.0 + seq, body), 100, 1000.0 + seq)


@pytest.mark.parametrize(("acks", "state", "reported"), [
    ([{"version": 2, "ok": True}], "applied", 2),
    ([{"version": 1, "ok": True}, {"version": 2, "ok": False, "errors": ["invalid: x"]}], "rejected", 1),
    ([{"version": 2, "ok": True}, {"version": 1, "ok": True, "rolled_back": 2, "errors": ["rolled_back: y"]}],
     "rolled back", 1),
    ([{"version": 1, "ok": True}], "pending", 1),
])
def test_status_compares_desired_and_reported(tmp_path: Path, acks: list[dict[str, Any]], state: str,
                                              reported: int) -> None:
    """Desired is the latest published version, reported the latest applied one; the state follows."""
    store = Store(tmp_path / "central.db")
    config_push.ensure_schema(store)
    for version in (1, 2):
        store.query("INSERT INTO config_versions VALUES (?, ?, ?, ?, ?, ?)", SENSOR, version, 1.0, 2.0, "x",
                    9)
    for seq, body in enumerate(acks):
        _ack(store, seq, body)
    [row] = config_push.status_rows(store)
    assert (row["desired"], row["reported"], row["state"]) == (2, reported, state)
