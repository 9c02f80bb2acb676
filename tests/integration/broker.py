"""A real mosquitto for integration tests: its own PKI and config in a directory, on a free loopback port.

`Broker.create(directory)` issues a CA, the server certificate and client certificates (`collector`,
`ward3-a`, `ward3-b` by default), writes the configuration with scripts/broker_conf.py (the
dynamic-security plugin knowing those CNs; `acl_file=True` for the plain ACL file) and picks a free port;
`start()` runs /usr/sbin/mosquitto and returns once it completes TLS handshakes; `stop()` (SIGTERM),
`kill()` (SIGKILL) and `restart()` (same port, same files). `client(cn)` gives a connected paho client
(MQTT v5, loop thread running) wrapped in a `Peer` that records its events for assertions.
`AckingCollector(broker)` plays the collector's side of the end-to-end acknowledgement (agent/acks.py)
for the tests and scripts/reliability.py.

The pytest fixture `mosquitto` lives here too; a test module takes it with
`from broker import mosquitto_fixture  # noqa: F401` (a tests/integration/conftest.py would shadow the
root conftest that other tests import `SHARED_PCAPS` from).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import broker_conf
import broker_pki
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import crypto, messages
from agent.acks import ack_messages

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SITE = "ward3"
CLIENTS = ("collector", "ward3-a", "ward3-b")


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(tmp_path: Path) -> Iterator[Broker]:
    """A running broker with certificates for `collector`, `ward3-a` and `ward3-b`; killed afterwards."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto is not installed")
    broker = Broker.create(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.close_clients()
        broker.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """One mosquitto process (or none), its directory, port and certificates."""

    directory: Path
    settings: broker_conf.BrokerSettings
    process: subprocess.Popen[bytes] | None = None
    clients: list[Peer] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, cns: tuple[str, ...] = CLIENTS, **overrides: Any) -> Broker:
        pki = directory / "pki"
        broker_pki.init_ca(pki)
        broker_pki.issue_server(pki)
        for cn in cns:
            broker_pki.issue_client(pki, cn)
        settings = broker_conf.BrokerSettings(pki=pki, port=free_port(), run_as=getpass.getuser(),
                                              **overrides)
        broker_conf.write(settings, directory / "conf")
        return cls(directory, settings)

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def ca(self) -> Path:
        return self.settings.pki / "ca.crt"

    @property
    def log(self) -> Path:
        return self.directory / "mosquitto.log"

    def cert(self, cn: str) -> tuple[Path, Path]:
        """(certificate, key) of client `cn`."""
        return broker_pki.client_paths(self.settings.pki, cn)

    def reconfigure(self, **overrides: Any) -> None:
        """Rewrite the configuration (takes effect at the next start)."""
        self.settings = replace(self.settings, **overrides)
        broker_conf.write(self.settings, self.directory / "conf")

    def start(self, timeout: float = 10.0) -> None:
        conf = self.directory / "conf" / "mosquitto.conf"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self._handshake():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not come up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (mosquitto saves its persistence file, if any)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: nothing is saved, clients see their connections drop."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self, hard: bool = False) -> None:
        self.kill() if hard else self.stop()
        self.start()

    def client(self, cn: str, client_id: str | None = None, *, persistent: bool = False,
               on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None) -> Peer:
        """A paho client (MQTT v5) as `cn`, connecting with its loop thread running; see Peer.

        persistent: no clean start and a one-hour session, so its subscriptions and queued messages
        outlive a disconnect (and a broker restart, once saved with persistence on). on_message: a
        handler instead of recording messages, installed before the session's queue can arrive."""
        peer = Peer(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or cn, protocol=mqtt.MQTTv5))
        if on_message is not None:
            peer.client.on_message = on_message
        cert, key = self.cert(cn)
        peer.client.tls_set(ca_certs=str(self.ca), certfile=str(cert), keyfile=str(key))
        peer.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600 if persistent else 0
        peer.client.connect("127.0.0.1", self.port, keepalive=10, clean_start=not persistent,
                            properties=props)
        peer.client.loop_start()
        self.clients.append(peer)
        return peer

    def save(self, timeout: float = 10.0) -> None:
        """SIGUSR1: mosquitto writes its persistence file now; returns once it has."""
        db = self.directory / "conf" / "data" / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not (db.exists() and db.stat().st_mtime_ns != before) and time.monotonic() < deadline:
            time.sleep(0.01)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: mosquitto re-reads its ACL file (acl_file=True; the dynamic-security plugin reads its
        file at start only); returns once its log says so."""
        count = self.log.read_text().count("Reloading config")
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log.read_text().count("Reloading config") == count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)

    def close_clients(self) -> None:
        for peer in self.clients:
            peer.client.disconnect()
            peer.client.loop_stop()
        self.clients.clear()

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout)
        self.process = None

    def _handshake(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(*map(str, self.cert(CLIENTS[0])))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
        except OSError:
            return False


class Peer:
    """A paho client whose callbacks append (kind, ...) tuples to `events`: connect, disconnect, puback,
    suback, message (topic, payload, retain)."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.events: list[tuple[Any, ...]] = []
        self._arrived = threading.Condition()
        self._topics: list[tuple[str, int]] = []
        client.on_connect = self._on_connect
        client.on_disconnect = lambda c, u, f, rc, p: self._record("disconnect", rc)
        client.on_publish = lambda c, u, mid, rc, p: self._record("puback", mid, rc)
        client.on_subscribe = lambda c, u, mid, rcs, p: self._record("suback", mid, rcs)
        client.on_message = lambda c, u, m: self._record("message", m.topic, bytes(m.payload), m.retain)

    def wait_for(self, predicate: Callable[[list[tuple[Any, ...]]], bool],
                 timeout: float = 10.0) -> list[tuple[Any, ...]]:
        """Wait until predicate(events) holds or `timeout` passes; the events so far (assert on them)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not predicate(self.events) and time.monotonic() < deadline:
                self._arrived.wait(deadline - time.monotonic())
            return list(self.events)

    def connected(self, timeout: float = 10.0) -> ReasonCode | None:
        """The CONNACK's reason code, or None if none came."""
        events = self.wait_for(lambda ev: any(e[0] in ("connect", "disconnect") for e in ev), timeout)
        return next((e[1] for e in events if e[0] == "connect"), None)

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe (once connected) and return the SUBACK's reason codes."""
        self.connected()
        self._topics.append((topic, qos))
        _, mid = self.client.subscribe(topic, qos=qos)
        events = self.wait_for(lambda ev: any(e[0] == "suback" and e[1] == mid for e in ev))
        return next(e[2] for e in events if e[0] == "suback" and e[1] == mid)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode | None:
        """Publish at QoS 1 and return the PUBACK's reason code, or None if none came."""
        self.connected()
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        events = self.wait_for(lambda ev: any(e[0] == "puback" and e[1] == mid for e in ev))
        return next((e[2] for e in events if e[0] == "puback" and e[1] == mid), None)

    def messages(self, topic_prefix: str = "") -> list[tuple[str, bytes, bool]]:
        """(topic, payload, retain) of the messages received so far under `topic_prefix`."""
        events = self.wait_for(lambda ev: True, 0)
        return [(e[1], e[2], e[3]) for e in events if e[0] == "message" and e[1].startswith(topic_prefix)]

    def wait_messages(self, prefix: str, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, bool]]:
        """Wait until `count` messages under topic `prefix` have arrived; those that did."""
        self.wait_for(lambda ev: sum(e[0] == "message" and e[1].startswith(prefix) for e in ev) >= count,
                      timeout)
        return self.messages(prefix)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if not reason.is_failure and not flags.session_present:
            for topic, qos in self._topics:  # after a reconnect without a session: subscribe again
                client.subscribe(topic, qos=qos)
        self._record("connect", reason)

    def _record(self, *event: Any) -> None:
        with self._arrived:
            self.events.append(event)
            self._arrived.notify_all()


class AckingCollector:
    """The collector's protocol without its database: subscribes to `ward/+/+/up/#` as CN `collector`,
    "commits" each message (the first copy into `stored` by (sensor, boot, seq), later ones counted in
    `duplicates`) and, every `interval` seconds, publishes acks for all it committed since on
    `ward/<site>/<sensor>/ack` (agent.acks.ack_messages, QoS 1), as agent/central does after a commit.

    A message whose header cannot be read is counted in `malformed` and not acknowledged. Keys put in
    `lose` are discarded once, unacknowledged, as if the broker had dropped that copy. `disconnect()`
    and `connect()` take it away and back (with `persistent`, its broker session survives meanwhile).
    """

    def __init__(self, broker: Broker, *, persistent: bool = False, interval: float = 0.02) -> None:
        self.broker, self.persistent, self.interval = broker, persistent, interval
        self.stored: dict[tuple[str, int, int], bytes] = {}
        self.duplicates = self.malformed = self.received = self.ack_payloads = 0
        self.lose: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()
        self._committed: list[tuple[str, str, int, int]] = []
        self._stop = threading.Event()
        self.peer: Peer | None = None
        self.connect()
        self._thread = threading.Thread(target=self._run, name="acking-collector", daemon=True)
        self._thread.start()

    def connect(self) -> None:
        self.peer = self.broker.client("collector", persistent=self.persistent, on_message=self._on_message)
        self.peer.subscribe("ward/+/+/up/#")

    def disconnect(self) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.client.disconnect()
            peer.client.loop_stop()
            self.broker.clients.remove(peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.disconnect()

    def keys(self) -> set[tuple[str, int, int]]:
        with self._lock:
            return set(self.stored)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        try:
            header = messages.decode_header(crypto.read_header(payload))
        except ValueError:
            with self._lock:
                self.malformed += 1
            return
        key = (header.sensor, header.boot, header.seq)
        with self._lock:
            self.received += 1
            if key in self.lose:
                self.lose.discard(key)
                return
            if key in self.stored:
                self.duplicates += 1
            else:
                self.stored[key] = payload
            self._committed.append((message.topic.split("/")[1], *key))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                batch, self._committed = self._committed, []
            peer = self.peer
            for topic, payload in ack_messages(batch):
                if peer is not None:
                    peer.client.publish(topic, payload, qos=1)
                    self.ack_payloads += 1
