"""The sensor's own health: one `health` record per interval, and the findings that say it is blind.

Installers walk away from these boxes (issue 7), so the sensor reports what nobody will look at on
site: CPU, memory, temperature, disk, the spool, packets per second, kernel drops, decode and
detector errors, the flow table. Counters are cumulative (agent.records.Counters); each sample
reports their change over the interval since the previous sample. Kernel drops arrive already as
wrap-safe deltas (agent.capture.KernelStats) and are summed per interval in `observe`.

Three findings come from here. `capture_loss`: the capture socket dropped more than `loss_percent`
of what it received in the interval (every interval it does; interface drops are only reported,
as the stack counts frames there that the capture did get). `no_traffic`: nothing for
`no_traffic_minutes` of wall time, once per silence (a mirror port that stopped feeding the sensor
leaves it blind). `clock_unsynced`: the kernel says the clock is not synchronised, once per
transition. Wall time drives all of this (DESIGN.md principle 5), never packet time.

Everything is cheap (one psutil call per field, once an interval) and nothing raises: a failing
source leaves its field None and counts `health.errors`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import psutil  # type: ignore[import-untyped]

from agent.capture import KernelStats
from agent.config import HealthSettings
from agent.records import Counters, Finding

_SPOOL_KEYS: Final = ("depth", "bytes", "dropped_entries", "dropped_bytes", "quarantined")
# The Pi's SoC sensor first, then the usual x86 ones; otherwise the hottest reading of any sensor.
_PREFERRED_SENSORS: Final = ("cpu_thermal", "cpu-thermal", "soc_thermal", "coretemp", "k10temp", "zenpower")
_HIGH_LOSS_PERCENT: Final = 10.0
TIME_ERROR: Final = 5  # adjtimex(2) clock state: the clock is not synchronised
STA_UNSYNC: Final = 0x0040  # timex.status bit: clock unsynchronised
# systemd-timesyncd touches this on every synchronisation: the fallback when the unit's seccomp
# filter (ProtectClock=, @clock not allowed) denies even the read-only adjtimex(2).
TIMESYNC_FLAG: Final = "/run/systemd/timesync/synchronized"


class Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> for the `adjtimex` symbol (native long; 208 bytes on LP64 Linux)."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                ("reserved", ctypes.c_int * 11)]


def _adjtimex() -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    return function


_ADJTIMEX: Final = _adjtimex()


def clock_synced() -> bool | None:
    """Whether the kernel considers the clock synchronised (adjtimex(2), modes=0: read only).

    None when the call is unavailable; denied (EPERM under a seccomp filter), the timesyncd flag
    file can still say True.
    """
    if _ADJTIMEX is None:
        return None
    # A spare 64 bytes after the struct: an unexpected libc layout must not let the kernel write
    # past the buffer.
    buffer = (ctypes.c_char * (ctypes.sizeof(Timex) + 64))()
    timex = Timex.from_buffer(buffer)
    state = _ADJTIMEX(ctypes.byref(timex))
    if state < 0:
        if ctypes.get_errno() in (errno.EPERM, errno.ENOSYS) and os.path.exists(TIMESYNC_FLAG):
            return True
        return None
    return not (state == TIME_ERROR or timex.status & STA_UNSYNC)


class HealthMonitor:
    """Accumulates capture statistics between samples and builds one health record per interval."""

    def __init__(self, settings: HealthSettings, counters: Counters,
                 spool_stats: Callable[[], Mapping[str, int]] | None,
                 table_stats: Callable[[], Mapping[str, int]], disk_path: str,
                 clock: Callable[[], float] = time.time,
                 synced: Callable[[], bool | None] = clock_synced) -> None:
        self._settings = settings
        self._counters = counters
        self._spool_stats = spool_stats
        self._table_stats = table_stats
        self._disk_path = disk_path
        self._clock = clock
        self._synced = synced
        start = clock()
        self._last_sample = start
        self._last_traffic = start
        self._silence_reported = False
        self._clock_reported = False
        self._packets = 0
        self._kernel = [0, 0, 0]
        self._previous = self._snapshot()
        self._process: psutil.Process | None = None
        try:
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first call only primes the measurement
            psutil.cpu_percent(None)
        except (psutil.Error, OSError):
            self._counters.add("health.errors")

    def observe(self, kernel: KernelStats, frames: int) -> None:
        """Account one capture batch: `frames` delivered, `kernel` the drop statistics' deltas."""
        self._packets += frames
        totals = self._kernel
        totals[0] += kernel.received
        totals[1] += kernel.dropped
        totals[2] += kernel.if_dropped
        if frames or kernel.received:
            self._last_traffic = self._clock()
            self._silence_reported = False

    def reconfigure(self, settings: HealthSettings) -> None:
        self._settings = settings

    def due(self, now: float) -> bool:
        return now - self._last_sample >= self._settings.interval

    def sample(self, now: float) -> tuple[dict[str, Any], list[Finding]]:
        """The health record of the interval that ends at `now`, and the findings it raises."""
        interval = max(now - self._last_sample, 1e-9)
        received, dropped, if_dropped = self._kernel
        current = self._snapshot()
        delta = {name: max(0, value - self._previous[name]) for name, value in current.items()}
        synced = self._call(self._synced)
        record: dict[str, Any] = {
            "type": "health", "ts": now, "interval_s": round(interval, 3),
            "cpu_percent": {"process": self._call(self._process_cpu),
                            "system": self._call(lambda: psutil.cpu_percent(None))},
            "memory": {"rss": self._call(self._rss),
                       "system_percent": self._call(lambda: psutil.virtual_memory().percent)},
            "temperature_c": self._call(_temperature),
            "disk_free_bytes": self._call(lambda: shutil.disk_usage(self._disk_path).free),
            "spool": self._spool(),
            "packets": self._packets,
            "packets_per_s": round(self._packets / interval, 1),
            "kernel": {"received": received, "dropped": dropped, "if_dropped": if_dropped},
            "decode_errors": delta["skipped"],
            "flows": {**self._flows(), "evicted": delta["evicted"]},
            "detector_errors": delta["detectors"],
            "clock_synced": synced,
        }
        findings = [f for f in (self._loss(now, interval, received, dropped, if_dropped),
                                self._silence(now), self._clock_finding(now, synced)) if f is not None]
        self._previous = current
        self._last_sample = now
        self._packets = 0
        self._kernel = [0, 0, 0]
        return record, findings

    # ---- findings ----------------------------------------------------------------------------------

    def _loss(self, now: float, interval: float, received: int, dropped: int,
              if_dropped: int) -> Finding | None:
        # Linux's ps_recv already includes the socket's drops. Interface drops (rx_dropped in libpcap
        # 1.9) also count frames the host stack discards after the capture had them (QinQ on a tap
        # with no 802.1ad device: 4.7% of the ward mix), so they are reported, not judged.
        lost, offered = dropped, received
        percent = 100.0 * lost / max(offered, lost, 1)
        if not lost or percent <= self._settings.loss_percent:
            return None
        severity = "high" if percent > _HIGH_LOSS_PERCENT else "medium"
        return _finding("capture_loss", severity, now, "capture",
                        f"The sensor lost {percent:.1f}% of the tap's packets in the last {interval:.0f} s "
                        f"({lost} of {offered}): it is not seeing all the ward's traffic",
                        {"lost_percent": round(percent, 2), "received": received, "dropped": dropped,
                         "if_dropped": if_dropped, "interval_s": round(interval, 3),
                         "threshold_percent": self._settings.loss_percent})

    def _silence(self, now: float) -> Finding | None:
        silent = now - self._last_traffic
        if self._silence_reported or silent < self._settings.no_traffic_minutes * 60:
            return None
        self._silence_reported = True
        minutes = int(silent // 60)
        return _finding("no_traffic", "high", now, "tap",
                        f"The tap has carried no traffic for {minutes} minutes: check the mirror port",
                        {"silent_s": round(silent, 1), "last_traffic": self._last_traffic,
                         "threshold_minutes": self._settings.no_traffic_minutes})

    def _clock_finding(self, now: float, synced: bool | None) -> Finding | None:
        if synced is None:
            return None
        if synced:
            self._clock_reported = False
            return None
        if self._clock_reported:
            return None
        self._clock_reported = True
        return _finding("clock_unsynced", "low", now, "clock",
                        "The kernel says the sensor's clock is not synchronised: record times may drift, "
                        "check NTP", {"clock_synced": False})

    # ---- sources -----------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, int]:
        skipped = detectors = 0
        for name, value in self._counters.values.items():
            if name.startswith("skipped."):
                skipped += value
            elif name.startswith("detectors.errors."):
                detectors += value
        return {"skipped": skipped, "detectors": detectors, "evicted": self._counters.get("flows.evicted")}

    def _call(self, source: Callable[[], Any]) -> Any:
        try:
            return source()
        except Exception:  # health must never take the sensor down; counted instead
            self._counters.add("health.errors")
            return None

    def _process_cpu(self) -> float | None:
        return None if self._process is None else self._process.cpu_percent(None)

    def _rss(self) -> int | None:
        return None if self._process is None else self._process.memory_info().rss

    def _spool(self) -> dict[str, int | None] | None:
        if self._spool_stats is None:
            return None
        stats = self._call(self._spool_stats)
        if stats is None:
            return {key: None for key in _SPOOL_KEYS}
        return {key: stats.get(key) for key in _SPOOL_KEYS}

    def _flows(self) -> dict[str, int | None]:
        stats = self._call(self._table_stats)
        return {"live": None, "peak": None} if stats is None else {"live": stats.get("live"),
                                                                    "peak": stats.get("peak")}


def _temperature() -> float | None:
    """The SoC temperature in °C (the Pi's cpu_thermal), else the hottest sensor; None without sensors."""
    try:
        readings = psutil.sensors_temperatures()
    except AttributeError:  # psutil offers no sensors on this platform
        return None
    for name in _PREFERRED_SENSORS:
        if readings.get(name):
            return round(float(readings[name][0].current), 1)
    currents = [entry.current for entries in readings.values() for entry in entries]
    return round(float(max(currents)), 1) if currents else None


def _finding(kind: str, severity: str, now: float, subject: str, summary: str,
             evidence: dict[str, Any]) -> Finding:
    return Finding(kind=kind, severity=severity, ts=now, src_ip=None, src_port=None, dst_ip=None,
                   dst_port=None, proto=None, device=None, role=None, peer_role=None, summary=summary,
                   evidence=evidence, key=f"health:{kind}:{subject}")
