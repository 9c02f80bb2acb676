"""The sensor's side of the uplink before the network: batch, encode, seal once, spool (DESIGN.md 4-5).

Records become messages: flows in batches (at most `batch_flows` records, or `batch_seconds` of
packet time since the batch began), device deltas and snapshots in parts (agent.device_reports),
findings at once (one message each), health and status as they come. Each message takes the next
sequence number of this boot, is encoded (agent.messages), sealed once (agent.crypto: signed by
the sensor, encrypted to the collector) and appended to the spool; the publisher thread re-sends
those same bytes until the broker acknowledges them. The boot counter lives in the state
directory and grows by one at every start, written atomically before it is used, so (sensor,
boot, seq) never repeats.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent import crypto, messages
from agent.records import Counters, Finding, FlowRecord


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    enabled: bool = False
    site: str = "site"
    sensor_id: str = "sensor"  # must equal the CN of the sensor's client certificate
    state_dir: str = "/var/lib/ward-agent"  # boot counter and spool
    keys_dir: str = "/etc/ward-agent/keys"  # sensor.key (Ed25519) and collector.pub (X25519)
    broker_host: str = "127.0.0.1"
    broker_port: int = 8883
    ca_file: str = "/etc/ward-agent/tls/ca.pem"
    cert_file: str = "/etc/ward-agent/tls/sensor.pem"
    key_file: str = "/etc/ward-agent/tls/sensor.key"
    spool_max_mb: int = 256
    fsync_interval: float = 1.0
    batch_flows: int = 1000
    batch_seconds: float = 10.0
    snapshot_seconds: float = 3600.0  # a full device snapshot this often, deltas in between


class SpoolWriter(Protocol):
    def append(self, kind: str, payload: bytes) -> int: ...


@dataclass(frozen=True, slots=True)
class SensorKeys:
    signing: Ed25519PrivateKey
    collector: X25519PublicKey

    @classmethod
    def load(cls, keys_dir: str | Path) -> SensorKeys:
        """The sensor's signing key and the collector's public key; crypto.KeyFileError if unusable."""
        signing, _ = crypto.key_paths(keys_dir, "sensor")
        _, collector = crypto.key_paths(keys_dir, "collector")
        return cls(crypto.load_signing_key(signing), crypto.load_encryption_key(collector))


def next_boot(state_dir: str | Path) -> int:
    """Read, increment and durably store the boot counter (temp file, fsync, rename)."""
    path = Path(state_dir) / "boot"
    try:
        boot = int(path.read_text().strip()) + 1
    except FileNotFoundError:
        boot = 1
    except ValueError as exc:
        raise ValueError(f"{path}: not a boot counter") from exc
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{boot}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return boot


class Uplink:
    """Turns records into sealed messages in the spool; never touches the network."""

    def __init__(self, settings: UplinkSettings, keys: SensorKeys, spool: SpoolWriter, boot: int,
                 counters: Counters, notify: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._keys = keys
        self._spool = spool
        self._boot = boot
        self._seq = 0
        self._counters = counters
        self.notify = notify
        self._clock = clock
        self._flows: list[FlowRecord] = []
        self._batch_start = 0.0
        self._last_snapshot: float | None = None

    def reconfigure(self, settings: UplinkSettings) -> None:
        """New batching for the running uplink (ids, keys and directories change only at a restart)."""
        self._settings = settings

    def flow(self, record: FlowRecord) -> None:
        if not self._flows:
            self._batch_start = record.last
        self._flows.append(record)
        if (len(self._flows) >= self._settings.batch_flows
                or record.last - self._batch_start >= self._settings.batch_seconds):
            self.flush()

    def flush(self) -> None:
        """Send the flows batched so far."""
        if self._flows:
            batch, self._flows = self._flows, []
            self._send("flows", batch, len(batch))

    def device_round(self, now: float) -> str:
        """The mode of a round of device reports starting now (agent.device_reports): "snapshot" for
        the first and then once every snapshot_seconds, "delta" in between."""
        if self._last_snapshot is None or now - self._last_snapshot >= self._settings.snapshot_seconds:
            self._last_snapshot = now
            return "snapshot"
        return "delta"

    def devices(self, mode: str, records: Sequence[dict[str, Any]]) -> None:
        """One message of device records: a delta, or (part of) a snapshot."""
        self._send("devices", {"mode": mode, "devices": list(records)}, len(records))

    def finding(self, finding: Finding) -> None:
        self._send("findings", [finding.to_dict()], 1)

    def health(self, sample: dict[str, Any]) -> None:
        self._send("health", sample, 1)

    def config_ack(self, ack: dict[str, Any]) -> None:
        self._send("config_ack", ack, 1)

    def _send(self, kind: str, body: Any, records: int) -> None:
        header = messages.Header(self._settings.sensor_id, self._boot, self._seq, kind)
        self._seq += 1
        payload = messages.encode_payload(messages.Message(header, self._clock(), body))
        sealed = crypto.seal(payload, messages.encode_header(header), self._keys.signing,
                             self._keys.collector)
        self._spool.append("config-ack" if kind == "config_ack" else kind, sealed)
        self._counters.add(f"uplink.messages.{kind}")
        self._counters.add(f"uplink.records.{kind}", records)
        self._counters.add("uplink.bytes", len(sealed))
        self.notify()
