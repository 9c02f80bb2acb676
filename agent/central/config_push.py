"""The centre's side of remote configuration: validate, version, seal and publish a sensor's document.

`push` checks the TOML with the sensor's own validator (agent.config.parse) and that it names the sensor
(uplink.sensor_id), takes the next version for that sensor, seals it (agent/config_envelope.py: signed by
the central Ed25519 key, encrypted to the sensor's box key), refuses an envelope above the sensor's size
limit, and publishes it retained at QoS 1 on `ward/<site>/<sensor>/config`.

Versions live in the collector's database, table config_versions(sensor, version, created, published,
sha256, bytes; PK (sensor, version)); portable SQL with qmark placeholders. The next version is one
above the highest pushed *or reported* (config_acks) for that sensor, so a rebuilt database does not
make every new push stale; two pushes racing for a number meet the primary key and the loser takes the
next. A row whose `published` is NULL was reserved but never acknowledged by the broker. The desired
version of a sensor is its highest published one; the reported version, the one its latest successful
ack names (`status_rows`).

MQTT (the centre's edge; the only paho use on this side besides mqtt_in.py): TLS with the certificate
of collector.toml's [broker] (CN `collector`, the ACL user that may write `ward/+/+/config`). The broker
names a session by the certificate's CN (use_username_as_clientid), so this connection takes over the
running collector's session for a moment. It therefore resumes that session (clean start off, the same
session expiry) and acknowledges nothing it is sent (Receive Maximum 1): what arrives for the collector
meanwhile stays queued in the session and goes to the collector when it reconnects. A certificate of its
own for pushes avoids the takeover (see the report of issue 6).
"""

from __future__ import annotations

import hashlib
import ssl
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import config
from agent.central.mqtt_in import BrokerSettings
from agent.central.store import Store
from agent.config import ConfigError
from agent.config_envelope import seal_document

MAX_BYTES: Final = 65536  # the sensor's default limit (RemoteConfig max_bytes)
_DDL: Final = ("CREATE TABLE IF NOT EXISTS config_versions(sensor TEXT NOT NULL, version INTEGER NOT NULL, "
               "created REAL NOT NULL, published REAL, sha256 TEXT, bytes INTEGER, "
               "PRIMARY KEY(sensor, version))")


class PushError(Exception):
    """The broker could not be reached, or refused the document."""


@dataclass(frozen=True, slots=True)
class Pushed:
    sensor: str
    site: str
    version: int
    topic: str
    bytes: int
    sha256: str
    seconds: float  # connect to PUBACK


def validate(text: str, sensor: str) -> config.AgentConfig:
    """The document's settings; ConfigError listing every problem (TOML, validator, wrong sensor)."""
    try:
        settings = config.parse(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"]) from None
    if settings.uplink.sensor_id != sensor:
        raise ConfigError([f"uplink.sensor_id: the document names {settings.uplink.sensor_id!r}, "
                           f"not {sensor!r}"])
    return settings


def push(store: Store, broker: BrokerSettings, central_key: Ed25519PrivateKey, box_key: X25519PublicKey,
         sensor: str, text: str, *, site: str | None = None, max_bytes: int = MAX_BYTES,
         timeout: float = 10.0, clock: Callable[[], float] = time.time) -> Pushed:
    """Validate, version, seal and publish; ConfigError (document), ValueError (too big), PushError."""
    settings = validate(text, sensor)
    site = site or settings.uplink.site
    if site != settings.uplink.site:
        raise ConfigError([f"uplink.site: the document names {settings.uplink.site!r}, the sensor is "
                           f"registered under {site!r}"])
    ensure_schema(store)
    version = _reserve(store, sensor, clock())
    envelope = seal_document(text.encode(), sensor, version, central_key, box_key)
    if len(envelope) > max_bytes:
        store.query("DELETE FROM config_versions WHERE sensor = ? AND version = ?", sensor, version)
        raise ValueError(f"the sealed document takes {len(envelope)} bytes; the sensor accepts {max_bytes}")
    topic = f"ward/{site}/{sensor}/config"
    started = time.monotonic()
    for attempt in range(1, 4):  # the running collector may take its session back mid-push
        try:
            publish_retained(broker, topic, envelope, timeout)
            break
        except PushError:
            if attempt == 3:
                raise
            time.sleep(0.2 * attempt)
    digest = hashlib.sha256(envelope).hexdigest()
    store.query("UPDATE config_versions SET published = ?, sha256 = ?, bytes = ? WHERE sensor = ? AND "
                "version = ?", clock(), digest, len(envelope), sensor, version)
    return Pushed(sensor, site, version, topic, len(envelope), digest, time.monotonic() - started)


def ensure_schema(store: Store) -> None:
    store.db.create(_DDL)


def status_rows(store: Store) -> list[dict[str, Any]]:
    """Per sensor (pushed to or acking): desired and reported version, the latest ack, and a state:
    "applied" (reported == desired), "rejected" (the latest ack refused the desired version),
    "rolled back" (the latest ack went back to an older version), else "pending"."""
    ensure_schema(store)
    sensors = sorted({row[0] for row in store.query(
        "SELECT sensor FROM config_versions UNION SELECT sensor FROM config_acks")})
    rows = []
    for sensor in sensors:
        desired, published = store.query(
            "SELECT MAX(version), MAX(published) FROM config_versions WHERE sensor = ? AND published IS NOT "
            "NULL", sensor)[0]
        good = store.query("SELECT version FROM config_acks WHERE sensor = ? AND ok = 1 ORDER BY boot DESC, "
                           "seq DESC LIMIT 1", sensor)
        last = store.query("SELECT version, ok, errors, received FROM config_acks WHERE sensor = ? ORDER BY "
                           "boot DESC, seq DESC LIMIT 1", sensor)
        reported = good[0][0] if good else None
        ack_version, ok, errors, received = last[0] if last else (None, None, "[]", None)
        if desired is not None and reported == desired:
            state = "applied"
        elif last and not ok and ack_version == desired:
            state = "rejected"
        elif last and ok and errors not in ("[]", None):
            state = "rolled back"
        else:
            state = "pending"
        rows.append({"sensor": sensor, "desired": desired, "published": published, "reported": reported,
                     "state": state, "last_ack_version": ack_version, "last_ack_ok": None if ok is None
                     else bool(ok), "last_ack_received": received, "errors": errors or "[]"})
    return rows


def publish_retained(broker: BrokerSettings, topic: str, payload: bytes, timeout: float = 10.0) -> None:
    """One retained QoS 1 publish over TLS; PushError unless the broker acknowledged it (< 0x80)."""
    done: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=broker.client_id, protocol=mqtt.MQTTv5,
                         manual_ack=True)
    client.tls_set(ca_certs=str(broker.ca_file), certfile=str(broker.cert_file), keyfile=str(broker.key_file),
                   cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_connect = lambda _c, _u, _f, reason, _p: done.setdefault("connack", reason)
    client.on_publish = lambda _c, _u, mid, reason, _p: done.setdefault(f"puback{mid}", reason)
    client.on_disconnect = lambda _c, _u, _f, reason, _p: done.setdefault("gone", reason)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = broker.session_expiry
    props.ReceiveMaximum = 1
    deadline = time.monotonic() + timeout
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive, clean_start=False,
                       properties=props)
        _loop_until(client, lambda: "connack" in done or "gone" in done, deadline)
        connack = done.get("connack")
        if not isinstance(connack, ReasonCode) or connack.is_failure:
            raise PushError(f"broker {broker.host}:{broker.port} refused the connection: "
                            f"{connack.getName() if isinstance(connack, ReasonCode) else 'no CONNACK'}")
        mid = client.publish(topic, payload, qos=1, retain=True).mid
        _loop_until(client, lambda: f"puback{mid}" in done or "gone" in done, deadline)
        reason = done.get(f"puback{mid}")
        if not isinstance(reason, ReasonCode) or reason.value >= 0x80:
            raise PushError(f"{topic}: not acknowledged: "
                            f"{reason.getName() if isinstance(reason, ReasonCode) else 'connection lost'}")
        client.disconnect()
        _loop_until(client, lambda: "gone" in done, time.monotonic() + 1.0)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise PushError(f"broker {broker.host}:{broker.port}: {exc}") from None
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()


def _loop_until(client: mqtt.Client, done: Callable[[], bool], deadline: float) -> None:
    while not done() and time.monotonic() < deadline:
        if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return


def _reserve(store: Store, sensor: str, now: float) -> int:
    """The next version for `sensor`, reserved by a row of its own (the primary key settles races)."""
    for _ in range(10):
        pushed, reported = (store.query(f"SELECT MAX(version) FROM {table} WHERE sensor = ?", sensor)[0][0]
                            for table in ("config_versions", "config_acks"))
        version = max(pushed or 0, reported or 0) + 1
        if store.query("INSERT INTO config_versions(sensor, version, created) VALUES (?, ?, ?) "
                       "ON CONFLICT DO NOTHING RETURNING version", sensor, version, now):
            return version
    raise PushError(f"could not reserve a version for {sensor}: too many concurrent pushes")
