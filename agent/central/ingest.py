"""Collector ingest: (topic, payload) from the broker in, verified and de-duplicated rows in the store out.

Pure logic: no network, no files besides the Store it is given. For every message, in this order:

1. topic  `ward/<site>/<sensor>/up/<flows|devices|findings|health>`, `.../status` or `.../config/ack`;
   anything else is `bad_topic`.
2. status birth and will messages are plain JSON (the publisher's status_json; the broker sends the will
   after the sensor is gone, so it cannot be signed per message). They are trusted as far as the broker's
   ACL goes (only the sensor's certificate may publish there) and only update sensors.online/status.
3. read the sealed envelope's header (not yet authenticated): `malformed` if it cannot be read.
4. the header's sensor and kind must be the topic's: `topic_mismatch` (a signed message replayed on
   another topic, or a header edited in transit).
5. the sensor must be configured (`unknown_sensor`) and publish under its pinned site (`wrong_site`).
6. a (sensor, boot, seq) already stored is a duplicate: the publisher re-sends after every reconnect,
   and a replayed old envelope is exactly such a copy. It is still opened, so that a forged copy is
   counted as what it is (`signature`, `decrypt`) and not as a duplicate; then it is dropped.
7. open_sealed with the sensor's pinned Ed25519 key and the collector's X25519 key: `signature` or
   `decrypt` (or `malformed`), then decode_payload: `bad_payload` for an authentic payload that does not
   decode or cannot be stored (a sensor bug, not an attack).
8. store it (the store's PRIMARY KEY makes a racing duplicate a no-op).

A lower boot counter than the sensor's latest is accepted: after a reboot the spool still sends what
the previous boot sealed. An attacker cannot make new (boot, seq) pairs: the header is signed.

Outcomes (`handle`'s return value and the keys of `counts`): "stored", "duplicate", "status", one of
REASONS (also counted per reason, sensor and topic in the store's rejects table), or "error" when the
code failed unexpectedly (the payload is quarantined in the store). Bad input never raises; only a
failing database does (sqlite3.OperationalError and the like), and then the message must not be
acknowledged to the broker, so that it comes again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import crypto, messages
from agent.central.store import Store
from agent.messages import Header, MessageError

REASONS: Final = ("bad_topic", "malformed", "topic_mismatch", "unknown_sensor", "wrong_site", "signature",
                  "decrypt", "bad_payload")
DATA_KINDS: Final = ("flows", "devices", "findings", "health")
_DATA_ERRORS: Final = (ValueError, TypeError, OverflowError, sqlite3.IntegrityError, sqlite3.InterfaceError,
                       sqlite3.DataError)
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sensor:
    """A configured sensor: its pinned signing key, and the site it must publish under (None: any)."""

    key: Ed25519PublicKey
    site: str | None = None


class Ingest:
    """Feeds one store; `handle(topic, payload)` per broker message, `counts` and `flows` for the log."""

    def __init__(self, store: Store, collector_key: X25519PrivateKey, sensors: Mapping[str, Sensor],
                 clock: Callable[[], float] = time.time) -> None:
        self._store, self._key, self._sensors, self._clock = store, collector_key, dict(sensors), clock
        self.counts: Counter[str] = Counter()
        self.flows = 0
        for sensor_id, sensor in self._sensors.items():
            store.register(sensor_id, sensor.site, crypto.fingerprint(sensor.key))

    def handle(self, topic: str, payload: bytes) -> str:
        """Verify, decrypt, de-duplicate and store one message; its outcome (module docstring)."""
        received = self._clock()
        payload = bytes(payload)
        try:
            outcome, sensor = self._handle(topic, payload, received)
        except (sqlite3.Error, OSError):  # the database failed (data errors are caught in _store_message)
            raise
        except Exception as exc:  # a bug must not stop the collector, nor lose the message
            _log.exception("ingest failed on %s", topic)
            self._store.quarantine(topic, payload, f"{type(exc).__name__}: {exc}", received)
            outcome, sensor = "error", ""
        if outcome in REASONS:
            self._store.reject(outcome, sensor, topic, received)
        self.counts[outcome] += 1
        return outcome

    def _handle(self, topic: str, payload: bytes, received: float) -> tuple[str, str]:
        parsed = parse_topic(topic)
        if parsed is None:
            return "bad_topic", ""
        site, sensor_id, kind = parsed
        if kind == "status" and payload[:1] != bytes([crypto.WIRE_VERSION]):
            return self._plain_status(site, sensor_id, payload, received), sensor_id
        try:
            header = messages.decode_header(crypto.read_header(payload))
        except (crypto.OpenError, MessageError):
            return "malformed", sensor_id
        if header.sensor != sensor_id or header.kind != kind:
            return "topic_mismatch", sensor_id
        refused = self._check_sensor(site, sensor_id)
        if refused:
            return refused, sensor_id
        duplicate = self._store.seen(header.sensor, header.boot, header.seq)
        try:
            opened = crypto.open_sealed(payload, self._key, self._sensors[sensor_id].key)
        except crypto.OpenError as exc:
            return exc.reason if exc.reason in REASONS else "malformed", sensor_id
        if duplicate:
            self._store.note_duplicate(sensor_id)
            return "duplicate", sensor_id
        return self._store_message(header, opened.plaintext, len(payload), received), sensor_id

    def _store_message(self, header: Header, plaintext: bytes, size: int, received: float) -> str:
        try:
            message = messages.decode_payload(header, plaintext)
            if not self._store.add(message, size, received):
                return "duplicate"
        except _DATA_ERRORS as exc:  # MessageError is a ValueError
            _log.warning("authentic %s message %s/%d/%d not stored: %s", header.kind, header.sensor,
                         header.boot, header.seq, exc)
            return "bad_payload"
        if header.kind == "flows":
            self.flows += len(message.body)
        return "stored"

    def _plain_status(self, site: str, sensor_id: str, payload: bytes, received: float) -> str:
        refused = self._check_sensor(site, sensor_id)
        if refused:
            return refused
        try:
            status = json.loads(payload)
        except (ValueError, RecursionError):
            return "malformed"
        if not isinstance(status, dict) or not isinstance(status.get("online"), bool):
            return "malformed"
        self._store.set_status(sensor_id, status, received)
        return "status"

    def _check_sensor(self, site: str, sensor_id: str) -> str:
        sensor = self._sensors.get(sensor_id)
        if sensor is None:
            return "unknown_sensor"
        if sensor.site is not None and sensor.site != site:
            return "wrong_site"
        return ""


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """(site, sensor, kind) of an uplink topic, or None; kind is a messages.KINDS name."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "ward" or not parts[1] or not parts[2]:
        return None
    rest = parts[3:]
    if rest == ["status"]:
        kind = "status"
    elif rest == ["config", "ack"]:
        kind = "config_ack"
    elif len(rest) == 2 and rest[0] == "up" and rest[1] in DATA_KINDS:
        kind = rest[1]
    else:
        return None
    return parts[1], parts[2], kind
