"""The collector process against a real TLS mosquitto: exactly-once storage, restarts, refusals, CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import (
    SITE,
    Broker,
    Peer,
    mosquitto_fixture,  # noqa: F401  (the `mosquitto` fixture)
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent import crypto, messages
from agent.central import cli
from agent.config import ConfigError
from agent.messages import Header, Message
from agent.publisher import Publisher, PublisherSettings
from agent.records import FlowRecord
from agent.spool import Spool

ROOT = Path(__file__).resolve().parents[2]
SENSOR = "ward3-a"
T0 = 1_767_225_600.0
PER_BATCH = 50


class Setup:
    """Keys, the collector's configuration and its database path, for one broker."""

    def __init__(self, broker: Broker, root: Path) -> None:
        crypto.write_keypair(root / "keys", "collector")
        for name in (SENSOR, "ward3-b"):
            crypto.write_keypair(root / name, "sensor")
        self.sensor_key: Ed25519PrivateKey = crypto.load_signing_key(root / SENSOR / "sensor.key")
        self.other_key = crypto.load_signing_key(root / "ward3-b" / "sensor.key")
        self.collector_pub: X25519PublicKey = crypto.load_encryption_key(root / "keys" / "collector.pub")
        cert, key = broker.cert("collector")
        self.db = root / "central.db"
        self.config = root / "collector.toml"
        self.config.write_text(f"""
[broker]
host = "127.0.0.1"
port = {broker.port}
ca = "{broker.ca}"
cert = "{cert}"
key = "{key}"
keepalive = 10
[collector]
keys = "keys"
db = "central.db"
stats_interval = 1
[sensors]
{SENSOR} = {{ key = "{SENSOR}/sensor.pub", site = "{SITE}" }}
""")
        self.log = root / "collector.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start `central collect` and return once it has subscribed."""
        before = self._log_text().count("collector_subscribed")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "agent.central.cli", "central", "collect",
                                             "--config", str(self.config)], cwd=ROOT, stdout=log, stderr=log)
        subscribed = until(lambda: self._log_text().count("collector_subscribed") > before, timeout)
        assert subscribed, self._log_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(20)
        self.process = None
        return code

    def seal(self, seq: int, boot: int = 1, kind: str = "flows") -> bytes:
        body = [_flow(seq * PER_BATCH + i) for i in range(PER_BATCH)] if kind == "flows" else {"cpu": 0.1}
        header = Header(SENSOR, boot, seq, kind)
        payload = messages.encode_payload(Message(header, T0 + seq, body))
        return crypto.seal(payload, messages.encode_header(header), self.sensor_key, self.collector_pub)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db, timeout=10) as db:
            return db.execute(sql).fetchall()

    def stored(self) -> int:
        rows = self.query("SELECT COUNT(*) FROM messages")
        return int(rows[0][0]) if rows else 0

    def sensor(self) -> dict[str, Any]:
        names = ("online", "messages", "flows", "duplicates", "last_boot", "last_seq")
        rows = self.query(f"SELECT {', '.join(names)} FROM sensors WHERE id = '{SENSOR}'")
        return dict(zip(names, rows[0], strict=True)) if rows else {}

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def setup(mosquitto: Broker, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(mosquitto, tmp_path)
    yield made
    if made.process is not None:
        made.process.kill()
        made.process.wait(10)


def until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _flow(i: int) -> FlowRecord:
    return FlowRecord(T0 + i * 0.01, T0 + i * 0.01 + 0.5, "tcp", f"10.3.{i // 200 % 256}.{i % 200 + 1}",
                      40000 + i % 20000, "10.3.0.250", 2575, "02:00:00:00:00:01", "02:00:00:00:00:fa", (),
                      6, 4, 900, 400, "SPA", "SPA", "fin")


def publish_all(peer: Peer, items: list[tuple[str, bytes]], timeout: float = 60.0) -> None:
    """Publish at QoS 1 without waiting in between; assert every PUBACK is a plain success (0x00)."""
    peer.connected()
    mids = {peer.client.publish(topic, payload, qos=1).mid for topic, payload in items}
    events = peer.wait_for(lambda ev: mids <= {e[1] for e in ev if e[0] == "puback"}, timeout)
    codes = {e[2].value for e in events if e[0] == "puback" and e[1] in mids}
    assert len(mids) == len(items) and codes == {0}  # 0x10 would mean: no collector subscription matched


def test_batches_stored_exactly_once_and_copies_dropped(mosquitto: Broker, setup: Setup) -> None:
    """300 flow batches from a sensor certificate are stored once; 100 re-published copies change nothing."""
    setup.start()
    sensor = mosquitto.client(SENSOR)
    topic = messages.topic(SITE, SENSOR, "flows")
    sealed = [(topic, setup.seal(seq)) for seq in range(300)]
    began = time.monotonic()
    publish_all(sensor, sealed)
    assert until(lambda: setup.stored() == 300)
    elapsed = time.monotonic() - began
    print(f"\n300 batches ({300 * PER_BATCH} flows) through TLS mosquitto into SQLite in {elapsed:.2f} s")
    publish_all(sensor, random.Random(3).sample(sealed, 100))
    assert until(lambda: setup.sensor().get("duplicates") == 100)
    assert setup.stop() == 0
    assert setup.stored() == 300 and setup.query("SELECT COUNT(*) FROM flows") == [(300 * PER_BATCH,)]
    assert setup.query("SELECT COUNT(*) FROM (SELECT DISTINCT seq FROM flows)") == [(300,)]
    assert setup.sensor() | {"online": None} == {"online": None, "messages": 300, "flows": 300 * PER_BATCH,
                                                 "duplicates": 100, "last_boot": 1, "last_seq": 299}


def test_tampered_and_foreign_messages_are_refused(mosquitto: Broker, setup: Setup) -> None:
    """Through the broker: bit-flipped envelopes, an unconfigured sensor and a replay on another topic are
    refused and counted by reason; nothing of them is stored."""
    setup.start()
    sensor, other = mosquitto.client(SENSOR), mosquitto.client("ward3-b")
    good = setup.seal(1)
    rng = random.Random(11)
    tampered = []
    for _ in range(30):
        flipped = bytearray(good)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        tampered.append((messages.topic(SITE, SENSOR, "flows"), bytes(flipped)))
    publish_all(sensor, [*tampered, (messages.topic(SITE, SENSOR, "health"), good)])
    header = Header("ward3-b", 1, 1, "health")
    foreign = crypto.seal(messages.encode_payload(Message(header, T0, {"cpu": 0.1})),
                          messages.encode_header(header), setup.other_key, setup.collector_pub)
    publish_all(other, [(messages.topic(SITE, "ward3-b", "health"), foreign)])
    assert until(lambda: setup.query("SELECT SUM(count) FROM rejects") == [(32,)])
    reasons = dict(setup.query("SELECT reason, SUM(count) FROM rejects GROUP BY reason"))
    assert reasons["unknown_sensor"] == 1 and reasons["topic_mismatch"] >= 1 and "signature" in reasons
    assert setup.stored() == 0


def test_messages_sent_while_collector_is_down_arrive_after_restart(mosquitto: Broker, setup: Setup) -> None:
    """The collector's persistent session makes the broker queue messages while it is stopped."""
    setup.start()
    assert setup.stop() == 0
    sensor = mosquitto.client(SENSOR)
    publish_all(sensor, [(messages.topic(SITE, SENSOR, "flows"), setup.seal(seq)) for seq in range(100)])
    setup.start()
    assert until(lambda: setup.stored() == 100)


def test_collector_sigkilled_mid_stream_stores_each_message_once(mosquitto: Broker, setup: Setup) -> None:
    """SIGKILL while messages stream in: after a restart every message is stored, none twice (a message
    is acknowledged only after its commit, and re-deliveries are dropped by (sensor, boot, seq))."""
    setup.start()
    sensor = mosquitto.client(SENSOR)
    topic = messages.topic(SITE, SENSOR, "flows")
    sealed = [(topic, setup.seal(seq, boot=2)) for seq in range(600)]
    sensor.connected()
    for item in sealed:
        sensor.client.publish(*item, qos=1)
    assert until(lambda: setup.stored() >= 50)
    assert setup.stop(signal.SIGKILL) == -signal.SIGKILL
    at_kill = setup.stored()
    setup.start()
    assert until(lambda: setup.stored() == 600, 60)
    assert at_kill < 600 and setup.query("SELECT COUNT(*) FROM flows") == [(600 * PER_BATCH,)]


def test_real_publisher_delivers_and_reports_status(mosquitto: Broker, setup: Setup, tmp_path: Path) -> None:
    """The sensor side for real (agent.spool + agent.publisher): every spooled message is stored once,
    the birth message sets the sensor online and the will (on stop) offline."""
    setup.start()
    spool = Spool(tmp_path / "spool", max_bytes=64 << 20)
    for seq in range(200):
        kind = "flows" if seq % 10 else "health"
        spool.append(kind, setup.seal(seq, kind=kind))
    cert, key = mosquitto.cert(SENSOR)
    settings = PublisherSettings("127.0.0.1", mosquitto.port, SITE, SENSOR, mosquitto.ca, cert, key, boot=1,
                                 backoff_min=0.05, backoff_max=0.5)
    publisher = Publisher(settings, spool)
    publisher.start()
    try:
        assert until(lambda: setup.stored() == 200 and setup.sensor().get("online") == 1)
    finally:
        assert publisher.stop(5)
        spool.close()
    assert until(lambda: setup.sensor().get("online") == 0)
    assert setup.query("SELECT COUNT(*) FROM health") == [(20,)]


def test_sensors_command_lists_what_arrived(mosquitto: Broker, setup: Setup,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`central sensors` prints the sensor with its counts, as a table and as JSON."""
    setup.start()
    topic = messages.topic(SITE, SENSOR, "flows")
    publish_all(mosquitto.client(SENSOR), [(topic, setup.seal(seq)) for seq in (1, 2)])
    assert until(lambda: setup.stored() == 2)
    assert cli.main(["central", "sensors", "--config", str(setup.config)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(SENSOR))
    assert line.split()[1:3] == [SITE, "?"] and line.split()[5:9] == ["2", "2", str(2 * PER_BATCH), "0"]
    assert cli.main(["central", "sensors", "--db", str(setup.db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["flows"] == 2 * PER_BATCH


def test_invalid_configuration_lists_every_problem(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Missing files, bad values, unknown keys and a key file open to others: all listed, exit 78."""
    crypto.write_keypair(tmp_path / "keys", "collector")
    os.chmod(tmp_path / "keys" / "collector.key", 0o644)
    (tmp_path / "bad.toml").write_text("""
[broker]
host = ""
port = 70000
ca = "nowhere.crt"
colour = "blue"
[collector]
keys = "keys"
db = "no/such/folder/central.db"
synchronous = "off"
[sensors]
s1 = { key = "s1.pub", site = "a/b" }
""")
    assert cli.main(["central", "collect", "--config", str(tmp_path / "bad.toml")]) == 78
    err = capsys.readouterr().err
    for expected in ("broker.host", "broker.port", "broker.ca", "broker.cert: missing", "broker.key: missing",
                     "broker.colour: unknown key", "collector.keys", "mode 0644", "collector.db",
                     "collector.synchronous", "sensors.s1"):
        assert expected in err, expected


def test_sensor_keys_folder_configures_sensors(mosquitto: Broker, setup: Setup, tmp_path: Path) -> None:
    """A folder of <id>.pub files pins those sensors; the sample collector.toml's keys are all accepted."""
    folder = tmp_path / "pubs"
    folder.mkdir()
    (folder / f"{SENSOR}.pub").write_bytes((tmp_path / SENSOR / "sensor.pub").read_bytes())
    text = setup.config.read_text().split("[sensors]")[0].replace("[collector]", "[collector]\nsensor_keys = "
                                                                   f'"pubs"\nsensor_site = "{SITE}"')
    setup.config.write_text(text)
    loaded = cli.load_config(setup.config)
    assert list(loaded.sensors) == [SENSOR] and loaded.sensors[SENSOR].site == SITE
    with pytest.raises(ConfigError) as refused:
        cli.load_config(ROOT / "firmware-config" / "collector.toml")
    assert not [p for p in refused.value.problems if "unknown" in p]  # only the absent files are refused
