"""The collector's MQTT edge: subscribe to every sensor's uplink and hand (topic, payload) to ingest.

MQTT v5 over TLS with the collector's client certificate (the broker's ACL lets CN `collector` read
`ward/+/+/up/#`, `.../status` and `.../config/ack`), QoS 1.

At-least-once into the database
    The session is persistent (clean start off, session expiry `session_expiry`, default 7 days): while
    the collector is away, the broker keeps its subscriptions and queues what the sensors publish (up
    to its max_queued_messages), instead of answering the sensors "no matching subscribers" and
    dropping it. Acknowledgements are manual: a PUBACK goes out only after `handle` returned, i.e.
    after the message's transaction committed (or it was refused). When `handle` raises (the database
    failed), the message is not acknowledged, the connection is dropped, and after the back-off the
    broker re-sends every unacknowledged message of the session; ingest drops what was stored already.
    A broker restart without persistence loses the session and its queue: the sensors' spools cannot
    know (they had their PUBACK), so run the broker with persistence where that matters.

Reconnects back off exponentially from `backoff_min` to `backoff_max` with jitter (uniform in
[d/2, d]); the back-off resets after a connection that stayed up `stable_after` seconds. Subscriptions
are renewed on every connect with retain handling 1 (retained birth/will messages only when the
subscription is new). `share_group` subscribes through `$share/<group>/...` so several collectors
split the load (issue 6).

Shared subscriptions (measured with mosquitto 2.0.11, tests/integration/test_postgres.py)
    The broker hands each message to one member, round robin. Every member needs its own certificate:
    the broker pins the client id to the CN, so two members with one certificate would take over each
    other's session. The group shares the collector's X25519 key and, for exactly-once storage, one
    database (PostgreSQL). A member that dies keeps its persistent session, and the broker keeps
    routing its share of new messages into that session (eclipse-mosquitto#2662): they wait there until
    the member comes back (run it under systemd with Restart=always), and nothing is lost. With
    session_expiry 0 the survivors get every new message at once, but what the dead member had queued
    or in flight is dropped by the broker, and only the sensor's resend can bring it back.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import acks, crypto, messages

TOPICS: Final = ("ward/+/+/up/#", "ward/+/+/status", "ward/+/+/config/ack")
_ACKED: Final = frozenset({"stored", "duplicate", "bad_payload"})  # verified messages only
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_id: str = "collector"  # the broker replaces it by the certificate's CN anyway
    keepalive: int = 30
    session_expiry: int = 7 * 86400
    receive_maximum: int = 256
    share_group: str = ""
    connect_timeout: float = 10.0
    backoff_min: float = 0.5
    backoff_max: float = 60.0
    stable_after: float = 10.0

    def topics(self) -> list[str]:
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        return [prefix + topic for topic in TOPICS]


class Subscriber:
    """`run(stop)` blocks, connecting and re-connecting until `stop` is set; `stats()` from any thread."""

    def __init__(self, settings: BrokerSettings, handle: Callable[[str, bytes], object],
                 on_subscribed: Callable[[], None] | None = None) -> None:
        self._s, self._handle, self._on_subscribed = settings, handle, on_subscribed
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._connected = False
        self._alive = False
        self._sub_mid = -1
        self._committed: list[tuple[str, str, int, int]] = []  # (site, sensor, boot, seq) to acknowledge

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "connected": self._connected}

    def run(self, stop: threading.Event) -> None:
        delay = self._s.backoff_min
        while not stop.is_set():
            began = time.monotonic()
            try:
                self._session(stop)
            except Exception:  # a paho or TLS surprise must not end the collector
                _log.exception("collector session failed")
                self._count("errors")
            with self._lock:
                self._connected = False
            if stop.is_set():
                break
            if time.monotonic() - began >= self._s.stable_after:
                delay = self._s.backoff_min
            stop.wait(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._s.backoff_max)

    # -- one connection -------------------------------------------------------------------------------

    def _session(self, stop: threading.Event) -> None:
        s = self._s
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.tls_set(ca_certs=str(s.ca_file), certfile=str(s.cert_file), keyfile=str(s.key_file),
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.connect_timeout = s.connect_timeout
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.receive_maximum
        self._alive = False
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._count(f"connect_failed:{type(exc).__name__}")
            _log.info("collector cannot connect to %s:%d: %s", s.host, s.port, exc)
            _close(client)
            return
        self._alive = True
        deadline = time.monotonic() + s.connect_timeout
        try:
            while self._alive and not stop.is_set():
                rc = client.loop(timeout=0.5)
                self._send_acks(client)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._count(f"lost:{rc.name}")
                    break
                if not self.connected and time.monotonic() > deadline:
                    self._count("connect_failed:no CONNACK")
                    break
            if stop.is_set() and self._alive:
                client.disconnect()
                client.loop(timeout=0.2)
        finally:
            _close(client)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode,
                    _p: Properties | None) -> None:
        if reason.is_failure:
            self._count(f"connect_failed:{reason.getName()}")
            self._alive = False
            return
        with self._lock:
            self._connected = True
        self._count("connects")
        _log.info("collector connected (session present: %s)", flags.session_present)
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        _, mid = client.subscribe([(topic, options) for topic in self._s.topics()])
        self._sub_mid = -1 if mid is None else mid

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        if mid != self._sub_mid:
            return
        refused = [f"{topic}: {reason.getName()}"
                   for topic, reason in zip(self._s.topics(), reasons, strict=False) if reason.is_failure]
        if refused:
            self._count("subscribe_refused")
            _log.error("collector subscriptions refused: %s", "; ".join(refused))
            self._alive = False
            return
        self._count("subscribed")
        if self._on_subscribed is not None:
            self._on_subscribed()

    def _send_acks(self, client: mqtt.Client) -> None:
        """Tell the sensors which messages are stored, batched per loop round (never the rejected)."""
        committed, self._committed = self._committed, []
        for topic, body in acks.ack_messages(committed):
            client.publish(topic, body, qos=1)
            self._count("acks_sent")

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if not self._alive:  # a failed message earlier in this read: leave the rest for the re-send
            return
        payload = bytes(message.payload)
        try:
            outcome = self._handle(message.topic, payload)
        except Exception:
            _log.exception("storing a message failed; it stays unacknowledged and comes again")
            self._count("store_failed")
            self._alive = False
            return
        self._count("messages")
        if outcome in _ACKED:  # committed (or already stored): the sensor may delete it (agent/acks.py)
            header = messages.decode_header(crypto.read_header(payload))
            self._committed.append((message.topic.split("/")[1], header.sensor, header.boot, header.seq))
        if message.qos > 0:
            client.ack(message.mid, message.qos)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.value:
            _log.info("collector disconnected: %s", reason.getName())
        self._alive = False

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1


def _close(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
