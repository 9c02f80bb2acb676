"""The publisher against a real mosquitto over TLS: delivery, end-to-end acks across broker crashes,
refusals, birth and will. The collector is played by a paho client (broker.AckingCollector) that speaks
the real ack protocol (agent/acks.py); entries are real sealed messages with readable headers."""

from __future__ import annotations

import bisect
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import broker_pki
import pytest
from broker import (
    SITE,
    AckingCollector,
    Broker,
    mosquitto_fixture,  # noqa: F401  (the `mosquitto` fixture)
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import crypto, messages
from agent.acks import ack_topic, encode_ack
from agent.publisher import Publisher, PublisherSettings
from agent.spool import Spool

ROOT = Path(__file__).resolve().parents[2]
UP = f"ward/{SITE}/ward3-a/up/"
STATUS = f"ward/{SITE}/ward3-a/status"
ACK = ack_topic(SITE, "ward3-a")
_SIGNER, _RECIPIENT = Ed25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()


def sealed(seq: int, boot: int = 7, kind: str = "flows") -> bytes:
    """A real sealed message of ward3-a (header readable, body encrypted)."""
    header = messages.Header("ward3-a", boot, seq, kind)
    return crypto.seal(b"body %d" % seq, messages.encode_header(header), _SIGNER, _RECIPIENT)


def fill(spool: MemorySpool, count: int, boot: int = 7) -> list[bytes]:
    payloads = [sealed(seq, boot) for seq in range(count)]
    for payload in payloads:
        spool.append("flows", payload)
    return payloads


def keys(count: int, boot: int = 7) -> set[tuple[str, int, int]]:
    return {("ward3-a", boot, seq) for seq in range(count)}


class MemorySpool:
    """A thread-safe in-memory stand-in for agent/spool.py's peek/remove interface."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[str, bytes]] = {}
        self._ids: list[int] = []  # ascending; removed ids are skipped lazily
        self._head = 0  # every id before it is removed
        self._next = 1
        self._lock = threading.Lock()
        self.peek_limits: list[int] = []

    def append(self, kind: str, payload: bytes) -> int:
        with self._lock:
            entry_id, self._next = self._next, self._next + 1
            self._entries[entry_id] = (kind, payload)
            self._ids.append(entry_id)
            return entry_id

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes]]:
        with self._lock:
            self.peek_limits.append(limit)
            while self._head < len(self._ids) and self._ids[self._head] not in self._entries:
                self._head += 1
            found: list[tuple[int, str, bytes]] = []
            start = bisect.bisect_right(self._ids, after, lo=self._head)
            for entry_id in itertools.islice(self._ids, start, None):
                if entry_id in self._entries:
                    found.append((entry_id, *self._entries[entry_id]))
                    if len(found) == limit:
                        break
            return found

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            for entry_id in ids:
                self._entries.pop(entry_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def settings(broker: Broker, sensor: str = "ward3-a", cert: str = "ward3-a",
             **kw: object) -> PublisherSettings:
    cert_file, key_file = broker.cert(cert)
    options: dict[str, object] = {"backoff_min": 0.05, "backoff_max": 0.5, "refused_backoff_min": 0.2,
                                  "refused_backoff_max": 1.0, "keepalive": 10, **kw}
    return PublisherSettings(host="127.0.0.1", port=broker.port, site=SITE, sensor=sensor,
                             ca_file=broker.ca, cert_file=cert_file, key_file=key_file,
                             boot=7, version="0.1.0", capabilities=("flows",), **options)  # type: ignore[arg-type]


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    started: list[Publisher] = []
    yield started
    for publisher in started:
        publisher.stop(2)


def run(publishers: list[Publisher], broker: Broker, spool: MemorySpool, **kw: object) -> Publisher:
    publisher = Publisher(settings(broker, **kw), spool)  # type: ignore[arg-type]
    publishers.append(publisher)
    publisher.start()
    return publisher


def until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture
def collectors() -> Iterator[list[AckingCollector]]:
    started: list[AckingCollector] = []
    yield started
    for collector in started:
        collector.close()


def acking(collectors: list[AckingCollector], broker: Broker, persistent: bool = False) -> AckingCollector:
    collector = AckingCollector(broker, persistent=persistent)
    collectors.append(collector)
    return collector


def test_every_entry_delivered_and_removed(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """collector_ack off: 500 entries reach a collector subscriber, and each leaves the spool on PUBACK."""
    collector = mosquitto.client("collector")
    collector.subscribe("ward/+/+/up/#")
    spool = MemorySpool()
    for i in range(500):
        spool.append("flows", b"record %d" % i)
    publisher = run(publishers, mosquitto, spool, collector_ack=False)
    assert until(lambda: len(spool) == 0 and len(collector.messages(UP)) >= 500)
    assert sorted(p for _, p, _ in collector.messages(UP)) == sorted(b"record %d" % i for i in range(500))
    assert (publisher.stats()["published"], publisher.stats()["acked"]) == (500, 500)


def test_notify_wakes_an_idle_publisher(mosquitto: Broker, publishers: list[Publisher],
                                        collectors: list[AckingCollector]) -> None:
    """An entry appended while the publisher idles goes out at once after notify(), and is acked at once."""
    acking(collectors, mosquitto)
    spool = MemorySpool()
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats()["connected"])
    time.sleep(0.2)
    began = time.monotonic()
    spool.append("findings", sealed(0, kind="findings"))
    publisher.notify()
    assert until(lambda: len(spool) == 0, 5)
    assert time.monotonic() - began < 0.5


def test_window_never_exceeds_receive_maximum(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """The in-flight window is capped by the broker's Receive Maximum (20) even when 32 are configured."""
    spool = MemorySpool()
    for i in range(300):
        spool.append("flows", b"%d" % i)
    run(publishers, mosquitto, spool, window=32, collector_ack=False)
    assert until(lambda: len(spool) == 0)
    assert max(spool.peek_limits) == 20


@pytest.fixture
def persistent_collector(mosquitto: Broker, collectors: list[AckingCollector]) -> AckingCollector:
    """Broker persistence on, and an acking collector whose session (and subscription) is saved, so it
    survives a SIGKILL: the broker queues for it while it is away, or after a restart."""
    mosquitto.reconfigure(persistence=True)
    mosquitto.restart()
    collector = acking(collectors, mosquitto, persistent=True)
    mosquitto.save()
    return collector


def test_entries_kept_after_puback_until_collector_acks(mosquitto: Broker,
                                                        publishers: list[Publisher]) -> None:
    """PUBACKed entries stay in the spool; a collector ack removes exactly the (boot, seq) it covers."""
    collector = mosquitto.client("collector")
    collector.subscribe("ward/+/+/up/#")
    spool = MemorySpool()
    payloads = fill(spool, 50)
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats().get("acked", 0) == 50 and len(collector.messages(UP)) == 50)
    time.sleep(0.3)
    assert len(spool) == 50 and publisher.stats()["awaiting_ack"] == 50
    [first_half] = encode_ack(7, range(25))
    collector.publish(ACK, first_half)
    assert until(lambda: len(spool) == 25)
    assert [p for _, _, p in spool.peek(100)] == payloads[25:]
    [rest] = encode_ack(7, range(25, 50))
    collector.publish(ACK, rest)
    assert until(lambda: len(spool) == 0)
    assert publisher.stats()["collector_acked"] == 50 and publisher.stats()["awaiting_ack"] == 0


def test_ack_for_an_older_boot_applies(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """An ack for boot 6 removes boot 6's entries left in the spool, and nothing of boot 7."""
    collector = mosquitto.client("collector")
    collector.subscribe("ward/+/+/up/#")
    spool = MemorySpool()
    fill(spool, 10, boot=6)
    fill(spool, 10, boot=7)
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats().get("acked", 0) == 20)
    [ack] = encode_ack(6, range(10))
    collector.publish(ACK, ack)
    assert until(lambda: len(spool) == 10)
    time.sleep(0.2)
    remaining = [messages.decode_header(crypto.read_header(p)) for _, _, p in spool.peek(100)]
    assert [(h.boot, h.seq) for h in remaining] == [(7, seq) for seq in range(10)]


def test_nothing_lost_across_broker_sigkills(mosquitto: Broker, persistent_collector: AckingCollector,
                                            publishers: list[Publisher], tmp_path: Path) -> None:
    """Broker SIGKILLed and restarted 3 times during a 3,000-message stream into the real spool: every
    (boot, seq) reaches the collector and the spool ends empty."""
    spool = Spool(tmp_path / "spool", 64 << 20, fsync_interval=0.05)
    payloads = [sealed(seq) for seq in range(3000)]
    publisher = Publisher(settings(mosquitto, ack_timeout=1.0), spool)
    publishers.append(publisher)
    publisher.start()

    def feed() -> None:
        for payload in payloads:
            spool.append("flows", payload)
            publisher.notify()
            time.sleep(0.001)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        depths = []
        for stored in (500, 1300, 2100):
            assert until(lambda n=stored: len(persistent_collector.keys()) >= n)  # type: ignore[misc]
            mosquitto.kill()
            depths.append(spool.stats.depth)
            mosquitto.start()
        feeder.join()
        assert until(lambda: persistent_collector.keys() == keys(3000), 90)
        assert until(lambda: spool.stats.depth == 0, 30)
        assert min(depths) > 0  # each kill hit entries not yet acknowledged by the collector
        assert publisher.stats()["reconnects"] == 3
        assert publisher.stats()["collector_acked"] == 3000
    finally:
        feeder.join()
        publisher.stop(2)
        spool.close()


def test_broker_acknowledges_then_loses_on_sigkill(mosquitto: Broker, persistent_collector: AckingCollector,
                                                   publishers: list[Publisher]) -> None:
    """collector_ack off: mosquitto PUBACKs what it queues for an offline collector, and SIGKILL loses it."""
    persistent_collector.disconnect()
    spool = MemorySpool()
    fill(spool, 100)
    run(publishers, mosquitto, spool, collector_ack=False)
    assert until(lambda: len(spool) == 0)  # all 100 acknowledged by the broker, gone from the spool
    mosquitto.restart(hard=True)
    persistent_collector.connect()
    time.sleep(1)
    assert persistent_collector.keys() == set()


def test_collector_ack_survives_sigkill_with_collector_away(mosquitto: Broker,
                                                            persistent_collector: AckingCollector,
                                                            publishers: list[Publisher]) -> None:
    """The same crash with collector acks: the PUBACKed entries stay, are re-sent, and all 100 arrive."""
    persistent_collector.disconnect()
    spool = MemorySpool()
    fill(spool, 100)
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats().get("acked", 0) == 100)
    assert len(spool) == 100
    mosquitto.restart(hard=True)
    persistent_collector.connect()
    assert until(lambda: persistent_collector.keys() == keys(100) and len(spool) == 0)


def test_collector_away_without_session_nothing_lost(mosquitto: Broker, publishers: list[Publisher],
                                                     collectors: list[AckingCollector]) -> None:
    """No collector subscribed (PUBACK 0x10, the broker drops): entries stay, only a probe per ack_timeout
    is re-sent meanwhile, and everything arrives once the collector subscribes."""
    spool = MemorySpool()
    fill(spool, 200)
    publisher = run(publishers, mosquitto, spool, ack_timeout=0.5)
    assert until(lambda: publisher.stats().get("acked", 0) >= 200)
    time.sleep(2.0)
    assert len(spool) == 200
    assert 1 <= publisher.stats().get("republished", 0) <= 6
    collector = acking(collectors, mosquitto)
    assert until(lambda: collector.keys() == keys(200) and len(spool) == 0, 10)


def test_lost_copy_republished_after_ack_timeout(mosquitto: Broker, publishers: list[Publisher],
                                                 collectors: list[AckingCollector]) -> None:
    """A copy that never reaches the collector's database is published again after ack_timeout."""
    collector = acking(collectors, mosquitto)
    collector.lose.add(("ward3-a", 7, 3))
    spool = MemorySpool()
    fill(spool, 10)
    publisher = run(publishers, mosquitto, spool, ack_timeout=0.5)
    assert until(lambda: len(spool) == 0, 10)
    assert collector.keys() == keys(10)
    assert publisher.stats()["republished"] >= 1 and publisher.stats().get("reconnects", 0) == 0


def test_unreadable_entry_dropped_and_counted(mosquitto: Broker, publishers: list[Publisher],
                                              collectors: list[AckingCollector]) -> None:
    """An entry without a readable sealed header is removed unsent and counted; the others go through."""
    collector = acking(collectors, mosquitto)
    spool = MemorySpool()
    spool.append("flows", b"not a sealed message")
    fill(spool, 3)
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: len(spool) == 0)
    assert publisher.stats()["unreadable"] == 1 and publisher.stats()["published"] == 3
    assert collector.keys() == keys(3) and collector.malformed == 0


def test_malformed_ack_counted_and_ignored(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """A malformed ack payload is counted (acks_bad) and removes nothing."""
    spool = MemorySpool()
    fill(spool, 3)
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats().get("acked", 0) == 3)
    mosquitto.client("collector").publish(ACK, b'{"boot": 7, "seqs": [[2, 0]]}')
    assert until(lambda: publisher.stats().get("acks_bad", 0) == 1)
    assert len(spool) == 3


def test_refused_publish_counted_and_kept(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """Publishing as ward3-b with ward3-a's certificate: each PUBACK is 0x87, counted; entries kept."""
    spool = MemorySpool()
    fill(spool, 5)
    publisher = run(publishers, mosquitto, spool, sensor="ward3-b")
    assert until(lambda: publisher.stats()["failed"].get("Not authorized", 0) >= 5)
    assert len(spool) == 5
    assert publisher.stats().get("acked", 0) == 0


def test_refused_entry_resent_after_backoff(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """A refused entry is published again after the refusal back-off, without a reconnect."""
    spool = MemorySpool()
    fill(spool, 1)
    publisher = run(publishers, mosquitto, spool, sensor="ward3-b")
    assert until(lambda: publisher.stats()["failed"].get("Not authorized", 0) >= 3, 10)
    assert publisher.stats()["published"] >= 3
    assert publisher.stats().get("reconnects", 0) == 0


def test_refused_entry_delivered_once_allowed(mosquitto: Broker, publishers: list[Publisher],
                                              collectors: list[AckingCollector]) -> None:
    """Entries refused by the ACL go out and leave the spool after the ACL is fixed and reloaded (SIGHUP)."""
    mosquitto.reconfigure(acl_file=True)  # SIGHUP re-reads an acl_file; the plugin's file is read at start
    mosquitto.restart()
    acking(collectors, mosquitto)
    acl = mosquitto.directory / "conf" / "acl"
    original = acl.read_text()
    acl.write_text(original.replace("pattern write ward/+/%u/up/#", "pattern write ward/+/%u/up/health"))
    mosquitto.reload()
    spool = MemorySpool()
    fill(spool, 1)
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats()["failed"].get("Not authorized", 0) >= 1)
    acl.write_text(original)
    mosquitto.reload()
    assert until(lambda: len(spool) == 0)


def test_birth_message_retained(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """On connect the sensor's status topic holds a retained online message (boot, version, capabilities)."""
    publisher = run(publishers, mosquitto, MemorySpool())
    assert until(lambda: publisher.stats().get("status_acked", 0) == 1)
    collector = mosquitto.client("collector")
    collector.subscribe(STATUS)
    [(_, payload, retained)] = collector.wait_messages(STATUS, 1)
    assert retained
    assert json.loads(payload) == {"online": True, "boot": 7, "version": "0.1.0", "capabilities": ["flows"]}


def test_stop_publishes_offline(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """stop() ends the session with DISCONNECT 0x04, so the broker publishes the offline will."""
    collector = mosquitto.client("collector")
    collector.subscribe(STATUS)
    publisher = Publisher(settings(mosquitto), MemorySpool())
    publisher.start()
    assert until(lambda: publisher.stats()["connected"])
    assert publisher.stop(5)
    statuses = [json.loads(p)["online"] for _, p, _ in collector.wait_messages(STATUS, 2)]
    assert statuses == [True, False]


def test_stop_publishes_what_was_spooled_just_before(mosquitto: Broker) -> None:
    """Entries spooled right before stop() (the agent's last flush) still reach the broker."""
    collector = mosquitto.client("collector")
    collector.subscribe(UP + "#")
    spool = MemorySpool()
    publisher = Publisher(settings(mosquitto, collector_ack=False), spool)  # type: ignore[arg-type]
    publisher.start()
    assert until(lambda: publisher.stats()["connected"])
    payloads = fill(spool, 30)
    assert publisher.stop(5)
    assert len(spool) == 0
    assert [p for _, p, _ in collector.wait_messages(UP + "flows", 30)] == payloads


def test_will_published_when_sensor_killed(mosquitto: Broker) -> None:
    """A sensor process killed with SIGKILL leaves a retained offline status behind (the Last Will)."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(mosquitto.port), str(mosquitto.directory)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "connected"
        collector = mosquitto.client("collector")
        collector.subscribe(STATUS)
        collector.wait_messages(STATUS, 1)
        os.kill(child.pid, signal.SIGKILL)
        statuses = [json.loads(p)["online"] for _, p, _ in collector.wait_messages(STATUS, 2)]
        assert statuses == [True, False]
    finally:
        child.kill()
        child.wait()


def test_reconnects_when_broker_comes_up(mosquitto: Broker, publishers: list[Publisher],
                                        collectors: list[AckingCollector]) -> None:
    """Started while the broker is down, the publisher backs off, then connects and delivers."""
    mosquitto.stop()
    spool = MemorySpool()
    spool.append("health", sealed(0, kind="health"))
    publisher = run(publishers, mosquitto, spool, ack_timeout=0.5)  # it may beat the collector (0x10)
    assert until(lambda: publisher.stats().get("connect_failed:ConnectionRefusedError", 0) >= 2)
    mosquitto.start()
    acking(collectors, mosquitto)
    assert until(lambda: len(spool) == 0)
    failures = publisher.stats()["connect_failed:ConnectionRefusedError"]
    assert failures < 40  # bounded back-off, not a busy loop


def test_refused_certificate_counted_as_connect_failure(mosquitto: Broker,
                                                        publishers: list[Publisher]) -> None:
    """A client certificate from a stranger's CA: each attempt fails fast and is counted, nothing is sent."""
    rogue = mosquitto.directory / "rogue"
    broker_pki.init_ca(rogue)
    issued = broker_pki.issue_client(rogue, "ward3-a")
    spool = MemorySpool()
    fill(spool, 1)
    publisher = Publisher(replace(settings(mosquitto), cert_file=issued.cert, key_file=issued.key), spool)
    publishers.append(publisher)
    publisher.start()
    def failures() -> int:
        return sum(v for k, v in publisher.stats().items() if k.startswith("connect_failed:"))

    assert until(lambda: failures() >= 3, 10)
    assert len(spool) == 1 and "published" not in publisher.stats()


def test_retained_config_handed_to_on_config(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """With on_config, the sensor's retained config document is passed to the handler."""
    mosquitto.client("collector").publish(f"ward/{SITE}/ward3-a/config", b"version 3", retain=True)
    documents: list[bytes] = []
    publisher = Publisher(settings(mosquitto), MemorySpool(), on_config=documents.append)
    publishers.append(publisher)
    publisher.start()
    assert until(lambda: documents == [b"version 3"], 10)


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from agent.publisher import Publisher, PublisherSettings
    port, pki = int(sys.argv[1]), Path(sys.argv[2]) / "pki"
    class Empty:
        def peek(self, limit, after=0): return []
        def remove(self, ids): pass
    s = PublisherSettings(host="127.0.0.1", port=port, site="ward3", sensor="ward3-a",
                          ca_file=pki / "ca.crt", cert_file=pki / "clients/ward3-a.crt",
                          key_file=pki / "clients/ward3-a.key", keepalive=10)
    p = Publisher(s, Empty())
    p.start()
    while not p.stats().get("status_acked"):
        time.sleep(0.01)
    print("connected", flush=True)
    time.sleep(60)
""")
