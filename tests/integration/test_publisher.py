"""The publisher against a real mosquitto over TLS: delivery, broker crashes, refusals, birth and will."""

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
    Broker,
    Peer,
    mosquitto_fixture,  # noqa: F401  (the `mosquitto` fixture)
)

from agent.publisher import Publisher, PublisherSettings

ROOT = Path(__file__).resolve().parents[2]
UP = f"ward/{SITE}/ward3-a/up/"
STATUS = f"ward/{SITE}/ward3-a/status"


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


def test_every_entry_delivered_and_removed(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """500 entries reach a collector subscriber, and each leaves the spool after its PUBACK."""
    collector = mosquitto.client("collector")
    collector.subscribe("ward/+/+/up/#")
    spool = MemorySpool()
    for i in range(500):
        spool.append("flows", b"record %d" % i)
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: len(spool) == 0 and len(collector.messages(UP)) >= 500)
    assert sorted(p for _, p, _ in collector.messages(UP)) == sorted(b"record %d" % i for i in range(500))
    assert (publisher.stats()["published"], publisher.stats()["acked"]) == (500, 500)


def test_notify_wakes_an_idle_publisher(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """An entry appended while the publisher idles goes out at once after notify(), not at the next tick."""
    collector = mosquitto.client("collector")
    collector.subscribe("ward/+/+/up/#")
    spool = MemorySpool()
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats()["connected"])
    time.sleep(0.2)
    began = time.monotonic()
    spool.append("findings", b"urgent")
    publisher.notify()
    assert until(lambda: len(spool) == 0, 5)
    assert time.monotonic() - began < 0.5


def test_window_never_exceeds_receive_maximum(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """The in-flight window is capped by the broker's Receive Maximum (20) even when 32 are configured."""
    spool = MemorySpool()
    for i in range(300):
        spool.append("flows", b"%d" % i)
    run(publishers, mosquitto, spool, window=32)
    assert until(lambda: len(spool) == 0)
    assert max(spool.peek_limits) == 20


@pytest.fixture
def persistent_collector(mosquitto: Broker) -> Peer:
    """Broker persistence on, and a collector whose session (and subscription) is saved to survive SIGKILL."""
    mosquitto.reconfigure(persistence=True)
    mosquitto.restart()
    collector = mosquitto.client("collector", persistent=True)
    collector.subscribe("ward/+/+/up/#")
    mosquitto.save()
    return collector


def test_unacknowledged_entries_resent_after_broker_sigkill(mosquitto: Broker, persistent_collector: Peer,
                                                            publishers: list[Publisher]) -> None:
    """Broker SIGKILLed twice mid-stream: the spool drains; what was not PUBACKed at the last kill arrives."""
    spool = MemorySpool()
    for i in range(3000):
        spool.append("flows", b"%d" % i)
    publisher = run(publishers, mosquitto, spool)
    pending: set[bytes] = set()
    for remaining in (2400, 1200):
        assert until(lambda r=remaining: len(spool) <= r)  # type: ignore[misc]
        mosquitto.kill()
        assert until(lambda: not publisher.stats()["connected"])
        pending = {payload for _, _, payload in spool.peek(10_000)}
        mosquitto.start()
    assert until(lambda: len(spool) == 0, 60)
    assert publisher.stats()["acked"] == 3000
    assert publisher.stats()["reconnects"] == 2
    assert len(pending) > 500  # the re-send below is exercised, not vacuous
    assert until(lambda: pending <= {p for _, p, _ in persistent_collector.messages(UP)})


def test_broker_acknowledges_then_loses_on_sigkill(mosquitto: Broker, persistent_collector: Peer,
                                                   publishers: list[Publisher]) -> None:
    """mosquitto PUBACKs what it queues for an offline collector, and SIGKILL loses it (DESIGN.md, 5)."""
    persistent_collector.client.disconnect()
    spool = MemorySpool()
    for i in range(100):
        spool.append("flows", b"%d" % i)
    run(publishers, mosquitto, spool)
    assert until(lambda: len(spool) == 0)  # all 100 acknowledged by the broker, gone from the spool
    mosquitto.restart(hard=True)
    persistent_collector.client.reconnect()
    persistent_collector.wait_for(lambda ev: sum(e[0] == "connect" for e in ev) >= 2)
    time.sleep(1)
    assert persistent_collector.messages(UP) == []


def test_refused_publish_counted_and_kept(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """Publishing as ward3-b with ward3-a's certificate: each PUBACK is 0x87, counted; entries kept."""
    spool = MemorySpool()
    for i in range(5):
        spool.append("flows", b"%d" % i)
    publisher = run(publishers, mosquitto, spool, sensor="ward3-b")
    assert until(lambda: publisher.stats()["failed"].get("Not authorized", 0) >= 5)
    assert len(spool) == 5
    assert publisher.stats().get("acked", 0) == 0


def test_refused_entry_resent_after_backoff(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """A refused entry is published again after the refusal back-off, without a reconnect."""
    spool = MemorySpool()
    spool.append("flows", b"x")
    publisher = run(publishers, mosquitto, spool, sensor="ward3-b")
    assert until(lambda: publisher.stats()["failed"].get("Not authorized", 0) >= 3, 10)
    assert publisher.stats()["published"] >= 3
    assert publisher.stats().get("reconnects", 0) == 0


def test_refused_entry_delivered_once_allowed(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """Entries refused by the ACL go out and leave the spool after the ACL is fixed and reloaded (SIGHUP)."""
    acl = mosquitto.directory / "conf" / "acl"
    original = acl.read_text()
    acl.write_text(original.replace("pattern write ward/+/%u/up/#", "pattern write ward/+/%u/up/health"))
    mosquitto.reload()
    spool = MemorySpool()
    spool.append("flows", b"x")
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


def test_reconnects_when_broker_comes_up(mosquitto: Broker, publishers: list[Publisher]) -> None:
    """Started while the broker is down, the publisher backs off, then connects and delivers."""
    mosquitto.stop()
    spool = MemorySpool()
    spool.append("health", b"h")
    publisher = run(publishers, mosquitto, spool)
    assert until(lambda: publisher.stats().get("connect_failed:ConnectionRefusedError", 0) >= 2)
    mosquitto.start()
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
    spool.append("flows", b"x")
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
