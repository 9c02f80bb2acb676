"""Remote configuration against a real TLS mosquitto: push, apply, ack, status with the real collector; every
negative nacked within 2 s with nothing applied; retained documents after reconnects; rollback of a push that
cuts the sensor off. The sensor side is a harness (a real Publisher, Spool, Uplink and RemoteConfig), run
the way agent/service.py should: documents queued by the publisher thread, handled and ticked in a loop."""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import (
    SITE,
    Broker,
    Peer,
    free_port,
    mosquitto_fixture,  # noqa: F401  (the `mosquitto` fixture)
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import config, crypto, messages
from agent.central.config_cli import add_config_commands
from agent.config import AgentConfig
from agent.config_envelope import seal_document
from agent.publisher import Publisher, PublisherSettings
from agent.records import Counters
from agent.remote_config import RemoteConfig
from agent.spool import Spool
from agent.uplink import SensorKeys, Uplink

ROOT = Path(__file__).resolve().parents[2]
SENSOR = "ward3-a"
CONFIG_TOPIC = f"ward/{SITE}/{SENSOR}/config"
ACK_TOPIC = f"ward/{SITE}/{SENSOR}/config/ack"


def until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Keys:
    """Every key of the test: collector, central, the sensor's signing and box keys, written as files."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "keys"
        crypto.write_keypair(self.dir, "collector")
        crypto.write_keypair(self.dir, "central")
        crypto.write_keypair(root / SENSOR, "sensor")
        self.collector = crypto.load_decryption_key(self.dir / "collector.key")
        self.central = crypto.load_signing_key(self.dir / "central.key")
        self.sensor = crypto.load_signing_key(root / SENSOR / "sensor.key")
        self.sensor_pub = self.sensor.public_key()
        self.box = X25519PrivateKey.generate()
        (self.dir / "boxes").mkdir()
        (self.dir / "boxes" / f"{SENSOR}.pub").write_bytes(self.box.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def document(state: Path, port: int, **sections: dict[str, Any]) -> str:
    tables: dict[str, dict[str, Any]] = {
        "capture": {"interface": "eth1"},
        "uplink": {"enabled": True, "site": SITE, "sensor_id": SENSOR, "state_dir": str(state),
                   "broker_port": port, "spool_max_mb": 8}}
    for name, values in sections.items():
        tables[name] = {**tables.get(name, {}), **values}
    return "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                   for name, table in tables.items())


class Harness:
    """The sensor: publisher thread -> inbox -> a loop thread that handles documents and ticks probation."""

    def __init__(self, broker: Broker, keys: Keys, state: Path, *, collector_ack: bool, grace: float = 60.0):
        self.broker, self.keys, self.state = broker, keys, state
        self.collector_ack = collector_ack
        current = config.parse(tomllib.loads(document(state, broker.port)))
        self.spool = Spool(state / "spool", 8 << 20, 0.05)
        self.publisher: Publisher | None = None
        self.uplink = Uplink(current.uplink, SensorKeys(keys.sensor, keys.collector.public_key()), self.spool,
                             1, Counters(), notify=self._notify)
        self.applied: list[tuple[AgentConfig, AgentConfig]] = []
        self.acks: list[tuple[float, dict[str, Any]]] = []
        self.delivered: list[float] = []
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.remote = RemoteConfig(current, 0, keys.central.public_key(), SENSOR, keys.box, state,
                                   apply=self._apply, ack=self._ack, grace=grace, confirm_after=2.0)
        self._stop = threading.Event()
        self.start_publisher(broker.port)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def start_publisher(self, port: int) -> None:
        cert, key = self.broker.cert(SENSOR)
        settings = PublisherSettings("127.0.0.1", port, SITE, SENSOR, self.broker.ca, cert, key, boot=1,
                                     backoff_min=0.1, backoff_max=0.5, collector_ack=self.collector_ack)
        self.publisher = Publisher(settings, self.spool, on_config=self._deliver)
        self.publisher.start()

    def stop_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.stop(2.0)
            self.publisher = None

    def connected(self) -> bool:
        return self.publisher is not None and bool(self.publisher.stats()["connected"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.stop_publisher()
        self.spool.close()

    def _notify(self) -> None:
        if self.publisher is not None:
            self.publisher.notify()

    def _deliver(self, payload: bytes) -> None:  # the publisher thread
        self.delivered.append(time.monotonic())
        self.inbox.put(payload)

    def _ack(self, ack: dict[str, Any]) -> None:
        self.acks.append((time.monotonic(), ack))
        self.uplink.config_ack(ack)

    def _apply(self, old: AgentConfig, new: AgentConfig) -> None:  # the loop thread
        self.applied.append((old, new))
        if new.uplink.broker_port != old.uplink.broker_port:
            self.stop_publisher()
            self.start_publisher(new.uplink.broker_port)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            while not self.inbox.empty():
                self.remote.handle(self.inbox.get())
            self.remote.tick(time.monotonic(), self.connected())


class Centre:
    """The collector's side as one paho client (CN collector): publishes documents, reads config acks."""

    def __init__(self, broker: Broker, keys: Keys) -> None:
        self.keys = keys
        self.peer: Peer = broker.client("collector")
        self.peer.subscribe("ward/+/+/config/ack")

    def acks(self) -> list[dict[str, Any]]:
        found = []
        for _, payload, _ in self.peer.messages(ACK_TOPIC):
            opened = crypto.open_sealed(payload, self.keys.collector, self.keys.sensor_pub)
            header = messages.decode_header(opened.header)
            found.append(messages.decode_payload(header, opened.plaintext).body)
        return found

    def send(self, envelope: bytes, retain: bool = True) -> tuple[dict[str, Any], float]:
        """Publish a document; the next config ack and the seconds it took to arrive."""
        before = len(self.peer.messages(ACK_TOPIC))
        began = time.monotonic()
        assert self.peer.publish(CONFIG_TOPIC, envelope, retain=retain) is not None
        self.peer.wait_messages(ACK_TOPIC, before + 1, timeout=5.0)
        took = time.monotonic() - began
        acks = self.acks()
        assert len(acks) > before, "no config ack arrived"
        return acks[before], took

    def seal(self, text: str, version: int, sensor: str = SENSOR, signer: Ed25519PrivateKey | None = None,
             box: X25519PrivateKey | None = None) -> bytes:
        return seal_document(text.encode(), sensor, version, signer or self.keys.central,
                             (box or self.keys.box).public_key())


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The sensor's state directory, on a file system with less than 60 GiB free (the spool-cap negative)."""
    for base in (tmp_path, Path("/dev/shm")):
        if shutil.disk_usage(base).free < 60 << 30:
            folder = Path(tempfile.mkdtemp(dir=base))
            yield folder
            shutil.rmtree(folder, ignore_errors=True)
            return
    pytest.skip("no file system with less than 60 GiB free")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def test_every_negative_is_nacked_within_2s_and_changes_nothing(mosquitto: Broker, keys: Keys,
                                                                  state: Path) -> None:
    """Flipped bit, wrong key, old version, replay, other sensor, bad TOML, unknown keys, snaplen 0,
    interval 0, spool cap above free disk: each one a nack within 2 s, no apply, the settings unchanged."""
    sensor = Harness(mosquitto, keys, state, collector_ack=False)
    centre = Centre(mosquitto, keys)
    try:
        assert until(sensor.connected)
        v1 = centre.seal(document(state, mosquitto.port, log={"level": "debug"}), 1)
        assert centre.send(v1)[0]["ok"] is True
        assert centre.send(centre.seal(document(state, mosquitto.port, log={"level": "warning"}), 2))[0]["ok"]
        running, applied = sensor.remote.config, len(sensor.applied)
        flipped = bytearray(centre.seal(document(state, mosquitto.port), 3))
        flipped[len(flipped) // 2] ^= 0x01
        free_mb = shutil.disk_usage(state).free >> 20
        plain = document(state, mosquitto.port)

        def doc(version: int, **sections: dict[str, Any]) -> bytes:
            return centre.seal(document(state, mosquitto.port, **sections), version)

        cases = {
            "flipped bit": (bytes(flipped), "signature"),
            "wrong key": (centre.seal(plain, 3, signer=Ed25519PrivateKey.generate()), "signature"),
            "old version": (doc(2, log={"level": "error"}), "stale"),
            "replay": (v1, "stale"),
            "other sensor": (centre.seal(plain, 3, sensor="ward3-b"), "other_sensor"),
            "malformed TOML": (centre.seal("[capture\nsnaplen = 9000\n", 3), "toml"),
            "unknown keys": (doc(4, capture={"snapln": 9000}), "invalid"),
            "snaplen 0": (doc(5, capture={"snaplen": 0}), "invalid"),
            "interval 0": (doc(6, health={"interval": 0}), "invalid"),
            "spool cap above free disk": (doc(7, uplink={"spool_max_mb": free_mb + 1024}), "harmful"),
        }
        latencies = {}
        for name, (envelope, reason) in cases.items():
            ack, latencies[name] = centre.send(envelope)
            assert (ack["ok"], ack["reason"]) == (False, reason), (name, ack)
            assert latencies[name] < 2.0, (name, latencies[name])
            assert sensor.remote.config == running and len(sensor.applied) == applied, name
        assert config.load(state / "agent.toml").log.level == "warning"
        print("nack latency (s):", {name: round(seconds, 3) for name, seconds in latencies.items()})
    finally:
        sensor.close()


class Collector:
    """The real `ward-agent central collect` process, storing into central.db."""

    def __init__(self, broker: Broker, keys: Keys, root: Path) -> None:
        cert, key = broker.cert("collector")
        self.db, self.config, self.log = root / "central.db", root / "collector.toml", root / "collector.log"
        self.config.write_text(f"""
[broker]
host = "127.0.0.1"
port = {broker.port}
ca = "{broker.ca}"
cert = "{cert}"
key = "{key}"
[collector]
keys = "keys"
db = "central.db"
stats_interval = 1
[sensors]
{SENSOR} = {{ key = "{SENSOR}/sensor.pub", site = "{SITE}" }}
""")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "agent.central.cli", "central", "collect",
                                             "--config", str(self.config)], cwd=ROOT, stdout=log, stderr=log)
        subscribed = until(lambda: "collector_subscribed" in self.log.read_text(errors="replace"))
        assert subscribed, self.log.read_text()

    def cli(self, *argv: str) -> int:
        parser = argparse.ArgumentParser()
        central = parser.add_subparsers(dest="command").add_parser("central").add_subparsers(dest="central")
        add_config_commands(central)
        args = parser.parse_args(["central", *argv])
        status: int = args.handler(args)
        return status

    def push(self, path: Path) -> int:
        return self.cli("config", "push", "--sensor", SENSOR, "--file", str(path), "--broker-config",
                        str(self.config))

    def acked(self, version: int) -> float | None:
        """When the collector stored an ack of `version` (its clock), or None."""
        with sqlite3.connect(self.db, timeout=10) as db:
            row = db.execute("SELECT MIN(received) FROM config_acks WHERE version = ?", (version,)).fetchone()
        return row[0] if row else None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(20)


def test_push_apply_ack_status_and_reconnects(mosquitto: Broker, keys: Keys, state: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI push is applied (apply sees old/new), acked into the collector's DB, and status shows
    reported == desired; a reconnect re-reads the retained document and applies it only if newer."""
    collector = Collector(mosquitto, keys, tmp_path)
    sensor = Harness(mosquitto, keys, state, collector_ack=True)
    try:
        assert until(sensor.connected)
        first = tmp_path / "v1.toml"
        first.write_text(document(state, mosquitto.port, capture={"bpf": "not port 22"}))
        began = time.time()
        assert collector.push(first) == 0
        assert until(lambda: collector.acked(1) is not None), collector.log.read_text()[-2000:]
        stored = collector.acked(1)
        with capsys.disabled():
            print(f"\npush to ack stored by the collector: {(stored or 0) - began:.3f} s")
        old, new = sensor.applied[0]
        assert (old.capture.bpf, new.capture.bpf) == ("", "not port 22")
        capsys.readouterr()
        assert collector.cli("config", "status", "--db", str(collector.db), "--json") == 0
        [row] = json.loads(capsys.readouterr().out)
        assert (row["desired"], row["reported"], row["state"]) == (1, 1, "applied")

        delivered = len(sensor.delivered)  # reconnect, nothing new: the retained copy is ignored
        sensor.stop_publisher()
        sensor.start_publisher(mosquitto.port)
        assert until(lambda: len(sensor.delivered) > delivered)
        time.sleep(0.3)
        assert len(sensor.applied) == 1 and len(sensor.acks) == 1

        sensor.stop_publisher()  # pushed while the sensor is away: applied after the reconnect
        second = tmp_path / "v2.toml"
        second.write_text(document(state, mosquitto.port, capture={"bpf": "not port 23"}))
        assert collector.push(second) == 0
        sensor.start_publisher(mosquitto.port)
        assert until(lambda: collector.acked(2) is not None)
        assert sensor.applied[-1][1].capture.bpf == "not port 23" and len(sensor.applied) == 2
        capsys.readouterr()
        assert collector.cli("config", "status", "--db", str(collector.db), "--json") == 0
        [row] = json.loads(capsys.readouterr().out)
        assert (row["desired"], row["reported"], row["state"]) == (2, 2, "applied")
    finally:
        sensor.close()
        collector.stop()


def test_push_refused_by_the_validator_is_not_published(mosquitto: Broker, keys: Keys, state: Path,
                                                        tmp_path: Path) -> None:
    """`config push` lists the validator's problems, exits 65, and takes no version."""
    collector = Collector(mosquitto, keys, tmp_path)
    try:
        bad = tmp_path / "bad.toml"
        bad.write_text(document(state, mosquitto.port, capture={"snaplen": 0}))
        assert collector.push(bad) == 65
        with sqlite3.connect(collector.db) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert "config_versions" not in tables or db.execute(
                "SELECT COUNT(*) FROM config_versions").fetchone()[0] == 0
    finally:
        collector.stop()


def test_push_that_cuts_the_sensor_off_is_rolled_back(mosquitto: Broker, keys: Keys, state: Path) -> None:
    """A document pointing the uplink at a dead port is rolled back after the grace period; the rollback
    ack reaches the centre once the old settings reconnect."""
    sensor = Harness(mosquitto, keys, state, collector_ack=False, grace=1.0)
    centre = Centre(mosquitto, keys)
    try:
        assert until(sensor.connected)
        assert centre.send(centre.seal(document(state, mosquitto.port, log={"level": "debug"}), 1))[0]["ok"]
        dead = free_port()
        began = time.monotonic()
        centre.peer.publish(CONFIG_TOPIC, centre.seal(document(state, dead, log={"level": "debug"}), 2),
                            retain=True)
        assert until(lambda: any(ack.get("rolled_back") == 2 for ack in centre.acks()), 15.0)
        print(f"cut off to rollback ack at the centre: {time.monotonic() - began:.2f} s (grace 1 s)")
        assert [port for _, new in sensor.applied for port in (new.uplink.broker_port,)] == [
            mosquitto.port, dead, mosquitto.port]
        assert sensor.remote.version == 1 and config.load(state / "agent.toml").uplink.broker_port == \
            mosquitto.port
    finally:
        sensor.close()
