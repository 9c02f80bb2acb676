"""`ward-agent run`: the sensor as a service, live on the tap (DESIGN.md section 1, issue 7).

Order matters. The capture is opened first (it needs CAP_NET_RAW); then the process drops to its
user with no capability left, before any thread exists (capabilities are per thread); only then
do the spool's flusher and the publisher start. The loop reads batches, and once a second of
wall time it moves packet time on over a quiet tap, sends device deltas and the flows batched so
far, takes a health sample when one is due, and pings systemd's watchdog only while capture keeps
returning. SIGTERM or SIGINT ends it: every live flow is reported (end), the spool flushed, the
publisher given a few seconds to drain, and systemd told STOPPING.
"""

from __future__ import annotations

import dataclasses
import encodings.idna  # noqa: F401  socket imports it lazily, which may fail once privileges are dropped
import os
import queue
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent import __version__, privileges
from agent.capture import Capture, CaptureError, KernelStats, LiveSettings, open_live
from agent.config import EX_CONFIG, AgentConfig, CaptureSettings
from agent.detect import Detection
from agent.flows import FlowTable
from agent.health import HealthMonitor
from agent.inventory import Inventory
from agent.pipeline import RunTotals, build_inventory
from agent.publisher import Publisher, PublisherSettings
from agent.records import Counters, Finding, FlowRecord, ProtoHint
from agent.remote_config import RemoteConfig, load_start
from agent.sdnotify import Notifier, Watchdog
from agent.service_config import drain, remote_config
from agent.spool import Spool
from agent.uplink import SensorKeys, Uplink, next_boot

log = structlog.get_logger("agent.service")
_META = struct.Struct("=IIII")  # next_batch's per-frame (sec, usec, offset, length)
EX_UNAVAILABLE, EX_NOPERM = 69, 77


@dataclass(slots=True)
class Outbound:
    """The uplink's parts, present only when [uplink] is enabled; `inbox` holds pushed configurations."""

    uplink: Uplink
    spool: Spool
    publisher: Publisher
    boot: int
    inbox: queue.SimpleQueue[bytes] = field(default_factory=queue.SimpleQueue)
    remote: RemoteConfig | None = None

    def restart_publisher(self, settings: AgentConfig) -> None:
        """A new broker address or TLS files: a new publisher on the same spool."""
        self.publisher.stop(timeout=2.0)
        self.publisher = _publisher(settings, self.spool, self.boot, self.inbox)
        self.uplink.notify = self.publisher.notify
        self.publisher.start()

    def drain(self, timeout: float) -> bool:
        """Flush and wait (wall time) until the spool is empty; False if it is not within `timeout`."""
        self.uplink.flush()
        self.spool.flush()
        self.publisher.notify()
        deadline = time.monotonic() + timeout
        while self.spool.stats.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.spool.stats.depth == 0

    def close(self, drain_seconds: float) -> None:
        self.uplink.flush()
        self.spool.flush()
        self.publisher.stop(timeout=drain_seconds)
        self.spool.close()


def open_outbound(settings: AgentConfig, counters: Counters) -> Outbound:
    """Boot counter, keys, spool and publisher from [uplink]; raises OSError/ValueError if unusable."""
    up = settings.uplink
    state = Path(up.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    boot = next_boot(state)
    keys = SensorKeys.load(up.keys_dir)
    spool = Spool(state / "spool", up.spool_max_mb << 20, up.fsync_interval)
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    publisher = _publisher(settings, spool, boot, inbox)
    uplink = Uplink(up, keys, spool, boot, counters, notify=publisher.notify)
    return Outbound(uplink, spool, publisher, boot, inbox)


def _publisher(settings: AgentConfig, spool: Spool, boot: int, inbox: queue.SimpleQueue[bytes]) -> Publisher:
    up = settings.uplink
    return Publisher(PublisherSettings(
        host=up.broker_host, port=up.broker_port, site=up.site, sensor=up.sensor_id,
        ca_file=Path(up.ca_file), cert_file=Path(up.cert_file), key_file=Path(up.key_file), boot=boot,
        version=__version__, capabilities=("flows", "devices", "findings", "health", "config")), spool,
        on_config=inbox.put)


class Service:
    """One live sensor: capture -> flow table (with heads) -> inventory -> uplink."""

    def __init__(self, settings: AgentConfig, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.totals = RunTotals()
        self.inventory: Inventory | None = (build_inventory(settings, self.totals)
                                            if settings.inventory.enabled else None)
        self.outbound: Outbound | None = None
        self.table = FlowTable(settings.flows, self._on_flow, self.totals.counters, on_hint=self._on_hint,
                               hints=settings.hints)
        self.health: HealthMonitor | None = None
        counters = self.totals.counters
        self.detection = (Detection(settings.detectors, self.inventory, counters, self._on_finding,
                                    device_deltas=False) if settings.detectors.enabled else None)
        if self.detection is not None:
            self.table.on_second = self.detection.second
        self.capture: Capture | None = None
        self.frames_since = 0
        self.next_devices = 0.0  # wall time of the next device delta

    def _on_flow(self, record: FlowRecord) -> None:
        self.totals.count_flow(record)
        if self.inventory is not None:
            self.inventory.on_flow(record)
        if self.outbound is not None:
            self.outbound.uplink.flow(record)
        if self.detection is not None:
            self.detection.flow(record)

    def _on_hint(self, hint: ProtoHint) -> None:
        if self.inventory is not None:
            self.inventory.on_hint(hint)
        if self.detection is not None:
            self.detection.hint(hint)

    def _on_finding(self, finding: Finding) -> None:
        log.warning("finding", kind=finding.kind, severity=finding.severity, summary=finding.summary)
        if self.outbound is not None:
            self.outbound.uplink.finding(finding)

    def start_health(self) -> None:
        """Health samples of this run (after the privilege drop: it reads the state directory)."""
        outbound = self.outbound
        self.health = HealthMonitor(
            self.settings.health, self.totals.counters,
            (lambda: dataclasses.asdict(outbound.spool.stats)) if outbound is not None else None,
            lambda: {"live": self.table.live, "peak": self.table.peak_live},
            self.settings.uplink.state_dir if outbound is not None else "/")

    def every_second(self, now: float, kernel: KernelStats) -> None:
        self.table.advance(now)
        if self.outbound is not None and self.outbound.remote is not None:
            self.outbound.remote.tick(now, bool(self.outbound.publisher.stats().get("connected")))
        if self.inventory is not None and now >= self.next_devices:  # device deltas every ten seconds
            self.next_devices = now + 10.0
            changed = self.inventory.delta(now)
            if self.outbound is not None:
                self.outbound.uplink.devices(changed, self.inventory.devices, now)
            if self.detection is not None:
                self.detection.devices(changed)
        if self.health is None:
            return
        self.health.observe(kernel, self.frames_since)
        self.frames_since = 0
        if self.health.due(now):
            record, findings = self.health.sample(now)
            log.info("health", packets=record.get("packets"), kernel=record.get("kernel"))
            if self.outbound is not None:
                self.outbound.uplink.health(record)
            for finding in findings:
                self._on_finding(finding)

    def reopen_capture(self, wanted: CaptureSettings) -> None:
        """Open the capture with `wanted` and swap it in; flows, devices and baselines stay.

        What the old handle holds from before the new one opened is read first, and what it caught
        after is left to the new one, so no frame is lost or counted twice (but those of the few
        milliseconds the open takes). ValueError (the old capture keeps running) if CAP_NET_RAW was
        given up or the new capture cannot be opened."""
        old = self.capture
        opened_at = time.time()
        try:
            with privileges.raised_net_raw():
                new = _open_capture(wanted)
        except (CaptureError, PermissionError) as exc:
            raise ValueError(f"capture not reopened, the running one is kept: {exc}; "
                             "restart the service to apply this change") from exc
        if old is not None:
            self._read_until(old, opened_at)
            if self.health is not None:
                self.health.observe(old.kernel_stats(), 0)
            old.close()
        self.capture = new
        self.table.linktype = new.linktype
        log.info("capture_reopened", interface=wanted.interface, snaplen=wanted.snaplen)

    def _read_until(self, capture: Capture, cutoff: float) -> None:
        """Ingest the frames `capture` holds that arrived before `cutoff` (wall time); drop the rest."""
        cutoff_us = int(cutoff * 1_000_000)
        while True:
            packets, meta = capture.next_batch()
            count = len(meta) // 16
            keep = next((i for i, (sec, usec, _, _) in enumerate(_META.iter_unpack(meta))
                         if sec * 1_000_000 + usec >= cutoff_us), count)
            if keep:
                self.table.ingest(packets, meta[:keep * 16])
                self.frames_since += keep
            if keep < count or not count:
                return

    def status(self) -> str:
        values = self.totals.counters.values
        return (f"{values.get('frames', 0)} frames, {self.totals.flows} flows, {self.table.live} live, "
                f"{len(self.inventory) if self.inventory is not None else 0} devices")


def run(settings: AgentConfig, config_path: str | None = None, stop: threading.Event | None = None) -> int:
    """The service loop; returns an exit status (78 bad config, 69 capture unavailable, 77 no drop).

    With an uplink, a configuration pushed earlier (state_dir/agent.toml) wins over `config_path` when
    it is newer (agent/remote_config.py)."""
    stop = stop or threading.Event()
    version = 0
    if settings.uplink.enabled:
        start = load_start(config_path, settings.uplink.state_dir)
        settings, version = start.config, start.version
        for note in start.notes:
            log.info("config_start", note=note)
    if not settings.capture.interface:
        log.error("no_interface", hint="set capture.interface to the mirror-port interface")
        return EX_CONFIG
    try:
        capture = _open_capture(settings.capture)
    except CaptureError as exc:
        log.error("capture_unavailable", error=str(exc))
        return EX_UNAVAILABLE
    try:
        privileges.drop_privileges(settings.health.drop_to_user, keep_net_raw=settings.capture.reopen_on_push)
    except (KeyError, PermissionError, OSError) as exc:
        log.error("privilege_drop_failed", user=settings.health.drop_to_user, error=str(exc))
        capture.close()
        return EX_NOPERM
    service = Service(settings, stop)
    service.capture = capture
    service.table.linktype = capture.linktype
    try:
        if settings.uplink.enabled:
            service.outbound = open_outbound(settings, service.totals.counters)
            service.outbound.remote = remote_config(service, service.outbound, version)
    except (OSError, ValueError) as exc:
        log.error("uplink_unavailable", error=str(exc))
        capture.close()
        return EX_CONFIG
    return _loop(service, capture)


def _open_capture(wanted: CaptureSettings) -> Capture:
    live = LiveSettings(wanted.interface, wanted.snaplen, wanted.promiscuous, wanted.buffer_mb << 20,
                        wanted.timeout_ms, wanted.bpf)
    return open_live(live, wanted.batch_size)


def _loop(service: Service, capture: Capture) -> int:
    notifier, watchdog = Notifier.from_env(), Watchdog.from_env()
    if service.outbound is not None:
        service.outbound.publisher.start()
    service.start_health()
    _install_signals(service.stop)
    notifier.ready(service.status())
    log.info("started", interface=service.settings.capture.interface, pid=os.getpid())
    last_second = 0.0
    try:
        while not service.stop.is_set():
            capture = service.capture or capture  # a pushed capture change swaps it (reopen_capture)
            packets, meta = capture.next_batch()
            if meta:
                service.table.ingest(packets, meta)
                service.frames_since += len(meta) // 16
            if service.outbound is not None:
                drain(service.outbound.remote, service.outbound.inbox)
            now = time.time()
            if now - last_second >= 1.0:
                last_second = now
                service.every_second(now, capture.kernel_stats())
                notifier.status(service.status())
            watchdog.beat(True)
    finally:
        service.table.flush()
        if service.detection is not None:
            service.detection.finish()
        if service.outbound is not None:
            if service.inventory is not None:
                service.outbound.uplink.devices(service.inventory.delta(time.time()),
                                                service.inventory.devices, time.time())
            service.outbound.close(drain_seconds=5.0)
        (service.capture or capture).close()
        notifier.stopping(service.status())
        log.info("stopped", status=service.status())
    return 0


def _install_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
