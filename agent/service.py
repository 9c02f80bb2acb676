"""`ward-agent run`: the sensor as a service, live on the tap (DESIGN.md section 1, issue 7).

Order matters. The capture is opened first (it needs CAP_NET_RAW); then the process drops to its
user with no capability left, before any thread exists (capabilities are per thread); only then
do the spool's flusher and the publisher start. The loop reads batches, and once a second of
wall time it moves packet time on over a quiet tap, assesses a few changed devices ahead of their
report, reports a few hundred devices (agent.device_reports), takes a health sample when one is
due, and pings systemd's watchdog only while capture keeps returning. SIGTERM or SIGINT ends it:
every live flow is reported (end), the spool flushed, the publisher given a few seconds to drain,
and systemd told STOPPING.

With capture.workers = N > 1, N captures join one fanout group and are opened before the drop;
right after it, one worker process per capture is forked (agent/workers.py), still before any
thread. This process then runs no flow table of its own: it takes the workers' records and counters
and feeds them to the same inventory, detection and uplink, and pings the watchdog only while every
worker reports. A worker that dies ends the service with status 70, so systemd restarts it.
"""

from __future__ import annotations

import dataclasses
import encodings.idna  # noqa: F401  socket imports it lazily, which may fail once privileges are dropped
import os
import signal
import struct
import threading
import time

import structlog

from agent import privileges
from agent.capture import Capture, CaptureError, KernelStats, LiveSettings, fanout_group, open_live
from agent.config import EX_CONFIG, AgentConfig, CaptureSettings
from agent.detect import Detection
from agent.device_reports import DeviceReports
from agent.flows import FlowTable
from agent.health import HealthMonitor
from agent.inventory import Inventory
from agent.outbound import Outbound, open_outbound
from agent.pipeline import RunTotals, build_inventory
from agent.records import Finding, FlowRecord, ProtoHint
from agent.remote_config import load_start
from agent.sdnotify import Notifier, Watchdog
from agent.service_config import drain, remote_config
from agent.workers import EX_SOFTWARE, WorkerPool, spawn

log = structlog.get_logger("agent.service")
_META = struct.Struct("=IIII")  # next_batch's per-frame (sec, usec, offset, length)
EX_UNAVAILABLE, EX_NOPERM = 69, 77
ASSESS_PER_SECOND = 200  # stale device assessments done ahead of their report (Inventory.assess_pending)


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
        self.pool: WorkerPool | None = None  # capture.workers > 1: the flows come from these processes
        self.frames_since = 0
        self.reports = DeviceReports(self.inventory) if self.inventory is not None else None

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
            lambda: {"live": self.live_flows(), "peak": self.peak_flows()},
            self.settings.uplink.state_dir if outbound is not None else "/")

    def every_second(self, now: float, kernel: KernelStats) -> None:
        self.table.advance(now)
        if self.outbound is not None and self.outbound.remote is not None:
            self.outbound.remote.tick(now, bool(self.outbound.publisher.stats().get("connected")))
        if self.inventory is not None:
            self.inventory.assess_pending(ASSESS_PER_SECOND)
        if self.reports is not None:  # a round every ten seconds, a few hundred devices a second
            uplink = self.outbound.uplink if self.outbound is not None else None
            report = self.reports.step(now, uplink.device_round if uplink is not None else None)
            if report is not None and uplink is not None:
                uplink.devices(report.mode, report.records)
            if report is not None and report.changed and self.detection is not None:
                self.detection.devices(report.changed)
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

    def live_flows(self) -> int:
        return self.pool.live if self.pool is not None else self.table.live

    def peak_flows(self) -> int:
        return self.pool.peak if self.pool is not None else self.table.peak_live

    def status(self) -> str:
        values = self.totals.counters.values
        return (f"{values.get('frames', 0)} frames, {self.totals.flows} flows, {self.live_flows()} live, "
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
        captures = _open_captures(settings.capture)
    except CaptureError as exc:
        log.error("capture_unavailable", error=str(exc))
        return EX_UNAVAILABLE
    capture = captures[0]
    try:
        keep = settings.capture.reopen_on_push and settings.capture.workers == 1  # workers reopen nothing
        privileges.drop_privileges(settings.health.drop_to_user, keep_net_raw=keep)
    except (KeyError, PermissionError, OSError) as exc:
        log.error("privilege_drop_failed", user=settings.health.drop_to_user, error=str(exc))
        for each in captures:
            each.close()
        return EX_NOPERM
    pool = spawn(captures, settings) if len(captures) > 1 else None  # before any thread: fork, capabilities
    service = Service(settings, stop)
    service.pool = pool
    if pool is None:
        service.capture = capture
    service.table.linktype = capture.linktype
    try:
        if settings.uplink.enabled:
            service.outbound = open_outbound(settings, service.totals.counters)
            service.outbound.remote = remote_config(service, service.outbound, version)
    except (OSError, ValueError) as exc:
        log.error("uplink_unavailable", error=str(exc))
        if pool is not None:
            pool.stop(timeout=5.0)
        else:
            capture.close()
        return EX_CONFIG
    return _loop(service, capture) if pool is None else _loop_workers(service, pool)


def _open_capture(wanted: CaptureSettings, group: int | None = None) -> Capture:
    live = LiveSettings(wanted.interface, wanted.snaplen, wanted.promiscuous, wanted.buffer_mb << 20,
                        wanted.timeout_ms, wanted.bpf)
    return open_live(live, wanted.batch_size, group)


def _open_captures(wanted: CaptureSettings) -> list[Capture]:
    """One capture, or capture.workers joined to one fanout group and then opened together (capture.py)."""
    if wanted.workers == 1:
        return [_open_capture(wanted)]
    group, captures = fanout_group(os.getpid()), []
    try:
        for _ in range(wanted.workers):
            captures.append(_open_capture(wanted, group))
        for capture in captures:
            capture.set_filter(wanted.bpf)
    except CaptureError:
        for capture in captures:
            capture.close()
        raise
    return captures


def _start(service: Service) -> tuple[Notifier, Watchdog]:
    """Threads, health, signals and READY: the start every loop shares (after the privilege drop)."""
    notifier, watchdog = Notifier.from_env(), Watchdog.from_env()
    if service.outbound is not None:
        service.outbound.publisher.start()
    service.start_health()
    _install_signals(service.stop)
    notifier.ready(service.status())
    log.info("started", interface=service.settings.capture.interface, pid=os.getpid(),
             workers=service.pool.pids if service.pool is not None else [])
    return notifier, watchdog


def _loop(service: Service, capture: Capture) -> int:
    notifier, watchdog = _start(service)
    last_second = 0.0
    try:
        while not service.stop.is_set():
            packets, meta = capture.next_batch()
            if meta:
                service.table.ingest(packets, meta)
                service.frames_since += len(meta) // 16
            if service.outbound is not None:
                drain(service.outbound.remote, service.outbound.inbox)
                capture = service.capture or capture  # a pushed capture change swapped it (reopen_capture)
            now = time.time()
            if now - last_second >= 1.0:
                last_second = now
                service.every_second(now, capture.kernel_stats())
                notifier.status(service.status())
            watchdog.beat(True)
    finally:
        service.table.flush()
        (service.capture or capture).close()
        _finish(service, notifier)
    return 0


def _loop_workers(service: Service, pool: WorkerPool) -> int:
    """The loop with capture workers: their records into the service, wall-time seconds, the watchdog."""
    pool.on_flow, pool.on_hint, pool.counters = service._on_flow, service._on_hint, service.totals.counters
    notifier, watchdog = _start(service)
    last_second = 0.0
    try:
        while not service.stop.is_set() and not pool.failed:
            pool.poll(0.05)
            if service.outbound is not None:
                drain(service.outbound.remote, service.outbound.inbox)
            now = time.time()
            if now - last_second >= 1.0:
                last_second = now
                kernel, frames = pool.take_stats()
                service.frames_since += frames
                service.every_second(now, kernel)  # its idle table's clock gives detection its second
                notifier.status(service.status())
            watchdog.beat(pool.healthy())
    finally:
        pool.stop(timeout=15.0)
        _finish(service, notifier)
    if pool.failed:
        log.error("workers_failed", failed=pool.failed)
        return EX_SOFTWARE
    return 0


def _finish(service: Service, notifier: Notifier) -> None:
    """After the last flow: detection's end, the last device deltas, the spool drained, STOPPING."""
    if service.detection is not None:
        service.detection.finish()
    if service.outbound is not None:
        changed = service.inventory.delta(time.time()) if service.inventory is not None else []
        if changed:  # what is due, a round in progress included
            service.outbound.uplink.devices("delta", changed)
        service.outbound.close(drain_seconds=5.0)
    notifier.stopping(service.status())
    log.info("stopped", status=service.status())


def _install_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
