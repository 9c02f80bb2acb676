"""A tiny sd_notify client: readiness, status and watchdog pings to systemd, with no dependency.

systemd passes the address of its notification socket in NOTIFY_SOCKET: a file system path, or an
abstract socket name written with a leading '@'. Each notification is one AF_UNIX datagram of
newline-separated `KEY=value` lines (sd_notify(3)). When NOTIFY_SOCKET is unset (a replay, a test, a
shell) every call is a no-op, so callers never check whether they run under systemd.

`Watchdog` turns WatchdogSec= into a liveness check of the pipeline, not of the process: the main loop
calls `beat(progress_ok)` each time round, and a ping goes out only when the caller says work got done,
at most every half interval. A capture or pipeline that stalls stops the pings, and systemd kills and
restarts the service after WatchdogSec. With `NotifyAccess=main` only the main process may notify, so
capture worker processes must not hold a Notifier of their own.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

_WATCHDOG_MAX_USEC = 2**64 - 2  # systemd's USEC_INFINITY is 2**64 - 1


def _address(value: str) -> str | bytes | None:
    """The socket address for a NOTIFY_SOCKET value, or None when it names no usable socket."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # systemd also allows vsock:CID:PORT (for VMs); the sensor never runs that way


def _clean(text: str) -> str:
    """A notification value on one line: the protocol separates fields by newlines."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends notifications to the socket systemd named; does nothing when it named none."""

    def __init__(self, address: str | bytes | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier for NOTIFY_SOCKET in `environ` (default os.environ)."""
        env = os.environ if environ is None else environ
        return cls(_address(env.get("NOTIFY_SOCKET", "")))

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one datagram; True if it was sent.

        A failure to send is reported by the result, never raised: a notification that cannot be
        delivered must not stop the sensor (systemd will notice the missing watchdog pings).
        """
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up finished (capture open, privileges dropped), with an optional STATUS."""
        return self.notify("READY=1", *(() if status is None else (f"STATUS={_clean(status)}",)))

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by `systemctl status`."""
        return self.notify(f"STATUS={_clean(text)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: one keep-alive ping."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1", *(() if status is None else (f"STATUS={_clean(status)}",)))

    def close(self) -> None:
        """Close the sending socket (a later notification opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds within which systemd expects a WATCHDOG=1 ping, or None when no watchdog applies.

    From WATCHDOG_USEC; when WATCHDOG_PID is set it must name this process (`pid`, default
    os.getpid()), since the watchdog then belongs to that process alone.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if not 0 < usec <= _WATCHDOG_MAX_USEC:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Watchdog:
    """Pings systemd's watchdog only while the caller reports progress, at most every half interval.

    `interval` is WatchdogSec in seconds (watchdog_interval()); None disables the pings. `clock` is a
    monotonic clock in seconds, replaceable in tests.
    """

    def __init__(self, notifier: Notifier, interval: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self._period = interval / 2 if interval is not None and interval > 0 else None
        self._clock = clock
        self._last: float | None = None
        self.pings = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Watchdog:
        """The watchdog systemd configured for this process through its environment."""
        return cls(Notifier.from_env(environ), watchdog_interval(environ))

    @property
    def period(self) -> float | None:
        """Least seconds between two pings (half the watchdog interval), or None when disabled."""
        return self._period

    def beat(self, progress_ok: bool) -> bool:
        """Ping if progress was made and half an interval passed since the last ping; True if sent.

        Call it every time round the main loop. `progress_ok` means the loop did its work: capture
        returned from its read (a silent tap with zero packets still counts) and the pipeline
        accepted the batch. Pass False when a stage is stuck, and the pings stop.
        """
        if not progress_ok or self._period is None or not self._notifier.enabled:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self._period:
            return False
        if not self._notifier.watchdog():
            return False
        self._last = now
        self.pings += 1
        return True
