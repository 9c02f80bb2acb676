"""The uplink: spool entries to the broker over MQTT v5 + TLS (client certificate), QoS 1, in one thread.

The only module that imports paho-mqtt. It never blocks the capture pipeline: the pipeline appends to the
(thread-safe) spool and may call `notify()`, which writes a byte to a non-blocking socket pair and returns.
Everything else happens in the publisher's own thread, which drives paho's socket with its own select().

Delivery
    Entries are published to `ward/<site>/<sensor>/up/<kind>` (kind `config-ack`: `.../config/ack`) at
    QoS 1, at most `window` at a time (and never more than the broker's Receive Maximum). A PUBACK with a
    success reason code (< 0x80; 0x10 "no matching subscribers" is one) frees the window slot. A refusal
    (>= 0x80, e.g. 0x87 not authorized, 0x97 quota exceeded) is counted by reason name and the entry
    KEPT: refused entries are re-sent after a back-off that doubles up to `refused_backoff_max` (an ACL
    refusal will not heal, but the spool's byte cap bounds what is kept, and a quota or broker fault may).
    Each connection is a fresh paho client with a clean start and no broker session: after a reconnect
    every entry still in the spool is published again, so the collector sees duplicates and drops them
    by (sensor, boot, seq), which every message carries in its readable header.

End-to-end acknowledgement (`collector_ack`, the default)
    mosquitto PUBACKs what it holds only in memory, and a SIGKILL loses it, so a PUBACK does not remove
    the entry: it only marks it delivered to the broker. The publisher subscribes to its own
    `ward/<site>/<sensor>/ack`, where the collector acknowledges what it committed (agent/acks.py), and
    an entry leaves the spool only when such an ack covers its (boot, seq); acks for older boots apply
    too. An entry PUBACKed but not acknowledged within `ack_timeout` is published again ("republished")
    once an ack shows the collector alive, else one entry per `ack_timeout` as a probe (acks.Outstanding).
    An entry whose header cannot be read is dropped and counted ("unreadable"). With collector_ack
    False an entry leaves the spool on its PUBACK, as before; a broker crash can then lose data.

Connection
    Reconnects back off exponentially (from `backoff_min`, doubling to `backoff_max`) with jitter (a
    uniform draw in [d/2, d]); the back-off resets after a connection that stayed up `stable_after`
    seconds. On every connect a retained birth message goes to `.../status` (online, boot counter,
    version, capabilities); the Last Will (offline, retained) is published by the broker when the
    sensor dies, and by `stop()` through a DISCONNECT with reason 0x04 ("disconnect with will message").
    With `on_config`, the sensor's retained `.../config` is subscribed and handed over, in this thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.acks import Outstanding, decode_ack

_log = logging.getLogger(__name__)
_LEVEL: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KIND: Final = re.compile(r"[a-z0-9_-]{1,32}")
_WITH_WILL: Final = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")  # 0x04


class Spool(Protocol):
    """What the publisher needs from agent/spool.py (thread-safe)."""

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes]]: ...
    def remove(self, ids: Iterable[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    host: str
    port: int
    site: str
    sensor: str  # = the CN of the client certificate (the broker's ACL keys on it)
    ca_file: Path
    cert_file: Path
    key_file: Path
    boot: int = 0
    version: str = ""
    capabilities: tuple[str, ...] = ()
    window: int = 32
    keepalive: int = 30
    connect_timeout: float = 10.0
    backoff_min: float = 0.5
    backoff_max: float = 60.0
    stable_after: float = 10.0
    refused_backoff_min: float = 5.0
    refused_backoff_max: float = 300.0
    collector_ack: bool = True  # remove entries on the collector's ack (True) or on the broker's PUBACK
    ack_timeout: float = 30.0  # PUBACKed, no collector ack this long: publish again (acks.Outstanding)

    def __post_init__(self) -> None:
        for name in ("site", "sensor"):
            if not _LEVEL.fullmatch(getattr(self, name)) or getattr(self, name) in (".", ".."):
                raise ValueError(f"{name} must be one topic level of [A-Za-z0-9_.-]")
        if self.window < 1 or self.keepalive < 5 or not 0 < self.backoff_min <= self.backoff_max:
            raise ValueError("need window >= 1, keepalive >= 5, 0 < backoff_min <= backoff_max")
        if self.ack_timeout <= 0:
            raise ValueError("ack_timeout must be > 0")


def topic_for(site: str, sensor: str, kind: str) -> str:
    """The topic of a spool entry of `kind`; ValueError for a kind that is not one plain topic level."""
    if kind == "config-ack":
        return f"ward/{site}/{sensor}/config/ack"
    if not _KIND.fullmatch(kind):
        raise ValueError(f"bad message kind {kind!r}")
    return f"ward/{site}/{sensor}/up/{kind}"


def status_json(online: bool, settings: PublisherSettings) -> bytes:
    """The default birth / will payload (compact JSON)."""
    return json.dumps({"online": online, "boot": settings.boot, "version": settings.version,
                       "capabilities": list(settings.capabilities)}, separators=(",", ":")).encode()


class Publisher:
    """Drains a spool to the broker in its own thread: `start()`, `notify()`, `stats()`, `stop(timeout)`."""

    def __init__(self, settings: PublisherSettings, spool: Spool, *,
                 status: Callable[[bool], bytes] | None = None,
                 on_config: Callable[[bytes], None] | None = None) -> None:
        self._s, self._spool, self._on_config = settings, spool, on_config
        self._status = status or (lambda online: status_json(online, settings))
        self._prefix = f"ward/{settings.site}/{settings.sensor}"
        self._ack_topic = f"{self._prefix}/ack"
        self._track = Outstanding(settings.ack_timeout) if settings.collector_ack else None
        self._pruned_at = 0.0
        self._wake_r, self._wake_w = socket.socketpair()  # closed sockets refuse writes; fds could be reused
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._drain_until = 0.0
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._connected = False
        # per-connection state, touched only by the publisher thread
        self._inflight: dict[int, int] = {}  # paho mid -> spool entry id
        self._inflight_ids: set[int] = set()
        self._acked: list[int] = []
        self._cursor = 0
        self._window = settings.window
        self._alive = False
        self._birth_mid = -1
        self._connack: ReasonCode | None = None
        self._lost = ""  # why the connection broke, once it has
        self._rewind_at: float | None = None
        self._rewound_upto = 0
        self._refused_delay = settings.refused_backoff_min

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """New entries are in the spool. Never blocks."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (stopped)
            self._wake_w.send(b"\0")

    def stop(self, timeout: float = 5.0) -> bool:
        """Publish what the spool holds and await PUBACKs for up to timeout/2, go offline, end the thread;
        False if it hangs."""
        self._drain_until = time.monotonic() + timeout / 2
        self._stopping.set()
        self.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """Counters: connects, reconnects, connect_failed:<why>, published (republished included),
        acked (broker PUBACKs), failed {reason name: n}, status_acked, errors; with collector_ack:
        republished, acks (ack messages), acks_bad, collector_acked (entries removed), unreadable,
        vanished (gone from the spool before their ack), subscribe_failed. Absent counters are zero.
        Gauges: in_flight, awaiting_ack (published, not acknowledged by the collector), connected."""
        with self._lock:
            return {**self._counts, "failed": dict(self._failed), "in_flight": len(self._inflight),
                    "awaiting_ack": len(self._track or ()), "connected": self._connected}

    # -- the thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._s.backoff_min
        sessions = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                client = self._open()
                if client is not None:
                    sessions += 1
                    self._count("reconnects" if sessions > 1 else "connects")
                    try:
                        self._session(client)
                    finally:
                        _close(client)
            except Exception:  # a bug or a spool failure must not kill the uplink for good
                _log.exception("publisher session failed")
                self._count("errors")
            self._end_session()
            if time.monotonic() - began >= self._s.stable_after:
                delay = self._s.backoff_min
            self._stopping.wait(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._s.backoff_max)
        self._wake_w.close()
        self._wake_r.close()

    def _open(self) -> mqtt.Client | None:
        """A connected client that has its CONNACK, or None (counted) after a failure."""
        s = self._s
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.sensor, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(s.ca_file), certfile=str(s.cert_file), keyfile=str(s.key_file),
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.will_set(f"{self._prefix}/status", self._status(False), qos=1, retain=True)
        client.max_inflight_messages_set(0)  # the window is ours
        client.connect_timeout = s.connect_timeout
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self._alive, self._connected, self._connack, self._lost = False, False, None, ""
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive, clean_start=True, properties=props)
            deadline = time.monotonic() + s.connect_timeout
            while self._connack is None and not self._lost and time.monotonic() < deadline:
                self._pump(client, 0.2)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._fail_connect(type(exc).__name__, exc)
            _close(client)
            return None
        if self._connack is None:  # e.g. our certificate refused (TLS 1.3 says so after the handshake)
            self._fail_connect("no CONNACK", self._lost or "timeout")
        if not self._alive:
            _close(client)
            return None
        return client

    def _session(self, client: mqtt.Client) -> None:
        while self._alive:
            now = time.monotonic()
            if self._stopping.is_set() and (now >= self._drain_until or self._drained()):
                client.disconnect(reasoncode=_WITH_WILL)
                return
            if self._rewind_at is not None and now >= self._rewind_at:
                self._rewind_at, self._rewound_upto, self._cursor = None, self._cursor, 0
            self._fill(client)  # stopping too: what the last flush spooled goes out within the drain time
            self._pump(client, 1.0 if self._rewind_at is None else min(1.0, max(0.0, self._rewind_at - now)))

    def _drained(self) -> bool:
        """Nothing in flight and nothing in the spool past the cursor."""
        return not self._inflight and not self._spool.peek(1, after=self._cursor)

    def _fill(self, client: mqtt.Client) -> None:
        room = self._window - len(self._inflight)
        track = self._track
        if track is not None and room > 0:
            room = self._republish(client, track, room)
        while room > 0 and self._alive:
            entries = self._spool.peek(room, after=self._cursor)
            if not entries:
                return
            for entry_id, kind, payload in entries:
                self._cursor = entry_id
                if entry_id in self._inflight_ids or (track is not None and track.is_delivered(entry_id)):
                    continue
                if track is not None and not track.sent(entry_id, payload):
                    self._count("unreadable")
                    self._acked.append(entry_id)
                    continue
                if not self._send(client, entry_id, kind, payload):
                    return
                room -= 1

    def _republish(self, client: mqtt.Client, track: Outstanding, room: int) -> int:
        """Publish again what waited `ack_timeout` for the collector; the window room left."""
        now = time.monotonic()
        if now - self._pruned_at >= 1.0:  # forget entries the spool evicted (drop-oldest)
            self._pruned_at = now
            oldest = self._spool.peek(1)
            self._count("vanished", track.forget_before(oldest[0][0] if oldest else None))
        for entry_id in track.due(now, room):
            found = self._spool.peek(1, after=entry_id - 1)
            if not found or found[0][0] != entry_id:
                track.forget(entry_id)
                self._count("vanished")
                continue
            if not self._send(client, entry_id, found[0][1], found[0][2]):
                return 0
            self._count("republished")
            room -= 1
        return room

    def _send(self, client: mqtt.Client, entry_id: int, kind: str, payload: bytes) -> bool:
        """Publish one entry (True), or count a bad kind (True) / note a dead connection (False)."""
        try:
            topic = topic_for(self._s.site, self._s.sensor, kind)
        except ValueError:
            self._refused("bad kind")
            return True
        info = client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._alive = False
            return False
        self._inflight[info.mid] = entry_id
        self._inflight_ids.add(entry_id)
        self._count("published")
        return True

    def _pump(self, client: mqtt.Client, timeout: float) -> None:
        """One round of socket IO (reads, writes, keepalive), waking early on notify()."""
        sock = client.socket()
        if sock is None:
            self._alive, self._lost = False, self._lost or "closed"
            return
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            fd = sock.fileno()
            wake = self._wake_r.fileno()
            readable, _, _ = select.select([fd, wake], [fd] if client.want_write() else [], [],
                                           0.0 if pending else timeout)
            if wake in readable:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            if fd in readable or pending:
                rc = client.loop_read()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.want_write():
                rc = client.loop_write()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = client.loop_misc()
        except (OSError, ValueError) as exc:  # TLS alerts (our certificate refused), a closed socket
            _log.info("broker connection failed: %s", exc)
            self._lost = type(exc).__name__
            rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._acked:
            self._spool.remove(self._acked)
            self._acked = []
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._alive, self._lost = False, self._lost or rc.name

    def _end_session(self) -> None:
        if self._acked:
            self._spool.remove(self._acked)
        self._acked, self._cursor, self._rewind_at = [], 0, None
        self._inflight, self._inflight_ids, self._alive = {}, set(), False
        if self._track is not None:
            self._track.new_session()
        with self._lock:
            self._connected = False

    # -- paho callbacks (called from inside loop_read, in this thread) --------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode,
                    props: Properties | None) -> None:
        self._connack = reason
        if reason.is_failure:
            self._fail_connect(reason.getName(), None)
            return
        self._window = min(self._s.window, int(getattr(props, "ReceiveMaximum", self._s.window)))
        with self._lock:
            self._connected = True
        self._alive = True
        self._birth_mid = client.publish(f"{self._prefix}/status", self._status(True), qos=1, retain=True).mid
        if self._track is not None:
            client.subscribe(self._ack_topic, qos=1)
        if self._on_config is not None:
            client.subscribe(f"{self._prefix}/config", qos=1)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties) -> None:
        if mid == self._birth_mid:
            self._count("status_acked" if reason.value < 0x80 else "status_refused")
            return
        entry_id = self._inflight.pop(mid, None)
        if entry_id is None:
            return
        self._inflight_ids.discard(entry_id)
        if reason.value < 0x80:
            if self._track is None:
                self._acked.append(entry_id)
            else:
                self._track.delivered(entry_id, time.monotonic())
            self._count("acked")
            if entry_id <= self._rewound_upto:
                self._refused_delay = self._s.refused_backoff_min
        else:
            self._refused(reason.getName())

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.value:
            _log.info("broker connection lost: %s", reason.getName())
        self._alive = False

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        if any(reason.is_failure for reason in reasons):
            self._count("subscribe_failed")

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._ack_topic:
            self._on_ack(bytes(message.payload))
            return
        if self._on_config is None:
            return
        try:
            self._on_config(bytes(message.payload))
        except Exception:
            _log.exception("config handler failed")
            self._count("config_handler_errors")

    def _on_ack(self, payload: bytes) -> None:
        if self._track is None:
            return
        try:
            boot, spans = decode_ack(payload)
        except ValueError:
            self._count("acks_bad")
            return
        done = self._track.ack(boot, spans, time.monotonic())
        self._acked.extend(done)
        self._count("acks")
        self._count("collector_acked", len(done))

    # -- bookkeeping ----------------------------------------------------------------------------------------

    def _refused(self, reason: str) -> None:
        with self._lock:
            self._failed[reason] += 1
        if self._rewind_at is None:
            self._rewind_at = time.monotonic() + self._refused_delay
            self._refused_delay = min(self._refused_delay * 2, self._s.refused_backoff_max)

    def _fail_connect(self, reason: str, detail: object) -> None:
        self._alive = False
        self._count(f"connect_failed:{reason}")
        _log.info("broker connect failed: %s%s", reason, f" ({detail})" if detail else "")

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts[name] += n


def _close(client: mqtt.Client) -> None:
    """Drop a client's socket without a DISCONNECT (the broker then publishes the will, if it is up)."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
