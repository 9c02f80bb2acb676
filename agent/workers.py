"""Capture workers: N processes share the tap through PACKET_FANOUT; the main process merges (issue 7).

One Python process decodes about one core's worth of packets. With `capture.workers = N > 1` the
service opens N captures joined to one fanout group in hash mode (agent/capture.py), drops its
privileges, and forks one worker per capture before any thread exists. The kernel's hash is
symmetric over addresses and ports, so both directions of a flow land on the same worker, and each
worker runs a whole FlowTable (heads and hints included) on its share. What leaves a worker is
plain records on a pipe, in the order its table produced them (a flow's hints before its record):

- `("r", [FlowRecord | ProtoHint, ...])` at most every 100 ms or 1000 records;
- `("beat", counters, kernel, live, peak)` once a second: its counters' changes since the last beat,
  the kernel statistics' deltas (received, dropped, if_dropped), its live and peak flow counts.
  Received and dropped are each socket's own and are summed; if_dropped is the interface's and is
  taken from worker 0 only;
- `("bye",)` after a stop: its table flushed, the rest sent.

The main process sends `("flows", FlowSettings, HintSettings)`, `("filter", bpf)`, `("batch", n)`
and `("stop",)`. A worker ignores SIGINT and SIGTERM (the main process decides when it stops), dies
with its parent (PR_SET_PDEATHSIG) and also ends on the pipe's EOF. It gives up the CAP_NET_RAW the
main process may keep permitted: it never opens anything.

Known limit of the kernel's hash: an IP fragment hashes by addresses only, so a flow whose packets
are partly fragmented may be split over two workers (two records for one conversation).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any, Final

import structlog

from agent import privileges
from agent.capture import Capture, CaptureError, KernelStats
from agent.config import AgentConfig
from agent.flowhead import HintSettings
from agent.flows import FlowSettings, FlowTable
from agent.records import Counters, FlowRecord, ProtoHint

log = structlog.get_logger("agent.workers")
SEND_SECONDS: Final = 0.1
SEND_RECORDS: Final = 1000
STALE_SECONDS: Final = 5.0  # a worker silent this long is stuck: the watchdog pings stop
EX_UNAVAILABLE, EX_SOFTWARE = 69, 70
_PR_SET_PDEATHSIG: Final = 1
Item = FlowRecord | ProtoHint


class Worker:
    """The child's side: one capture, one flow table, one pipe to the main process."""

    def __init__(self, conn: Connection, capture: Capture, settings: AgentConfig, index: int = 0) -> None:
        self._log = log.bind(worker=index)
        self._conn = conn
        self._capture = capture
        self.counters = Counters()
        self._reported: dict[str, int] = {}
        self._out: list[Item] = []
        self.table = FlowTable(settings.flows, self._out.append, self.counters, linktype=capture.linktype,
                               on_hint=self._out.append, hints=settings.hints)
        self._last_send = self._last_beat = time.monotonic()

    def run(self) -> int:
        """Capture until told to stop; the exit status (0 after a stop, 69 if capture failed)."""
        capture, table, out = self._capture, self.table, self._out
        try:
            while True:
                packets, meta = capture.next_batch()
                if meta:
                    table.ingest(packets, meta)
                now = time.monotonic()
                if now - self._last_beat >= 1.0:
                    self._last_beat = now
                    table.advance(time.time())
                    self.beat()
                if len(out) >= SEND_RECORDS or (out and now - self._last_send >= SEND_SECONDS):
                    self.send_records()
                while self._conn.poll():
                    if not self.control(self._conn.recv()):
                        return 0
        except CaptureError as exc:
            self._log.error("worker_capture_failed", error=str(exc))
            return EX_UNAVAILABLE
        except (EOFError, OSError):  # the main process is gone: nobody to report to
            return EX_SOFTWARE

    def control(self, message: tuple[Any, ...]) -> bool:
        """Apply one message from the main process; False once a stop was handled (all sent)."""
        kind = message[0]
        if kind == "stop":
            self.table.flush()
            self.send_records()
            self.beat()
            self._conn.send(("bye",))
            self._log.info("worker_stopped", frames=self.counters.get("frames"),
                           flows=sum(v for k, v in self.counters.values.items() if k.startswith("flows.")))
            return False
        try:
            if kind == "flows":
                self.table.reconfigure(message[1], message[2])
            elif kind == "filter":
                self._capture.set_filter(message[1])
            elif kind == "batch":
                self._capture.batch_size = message[1]
        except (ValueError, CaptureError) as exc:  # the main process checked these before sending
            self._log.error("worker_reconfigure_failed", change=kind, error=str(exc))
        return True

    def send_records(self) -> None:
        self._last_send = time.monotonic()
        if self._out:
            self._conn.send(("r", self._out[:]))
            self._out.clear()

    def beat(self) -> None:
        """Counter changes, kernel statistics, live and peak flows since the last beat."""
        self.send_records()  # what the counters count has been sent first
        values = self.counters.values
        delta = {name: value - self._reported.get(name, 0) for name, value in values.items()
                 if value != self._reported.get(name, 0)}
        self._reported = dict(values)
        kernel = self._capture.kernel_stats()
        self._conn.send(("beat", delta, (kernel.received, kernel.dropped, kernel.if_dropped),
                         self.table.live, self.table.peak_live))


@dataclass(slots=True)
class _Handle:
    index: int
    pid: int
    conn: Connection
    last_beat: float
    live: int = 0
    peak: int = 0
    said_bye: bool = False
    status: int | None = None  # exit status once reaped


class WorkerPool:
    """The main process's side: the workers' pipes, what they report, and their ends."""

    def __init__(self, handles: list[_Handle]) -> None:
        self._handles = handles
        self._by_conn = {id(h.conn): h for h in handles}
        self._kernel = [0, 0, 0]
        self._frames = 0
        self.failed: list[str] = []  # workers that ended without being told to
        self.on_flow: Callable[[FlowRecord], None] = lambda _: None
        self.on_hint: Callable[[ProtoHint], None] = lambda _: None
        self.counters = Counters()

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self._handles]

    @property
    def live(self) -> int:
        return sum(h.live for h in self._handles)

    @property
    def peak(self) -> int:
        return sum(h.peak for h in self._handles)

    def _running(self) -> list[_Handle]:
        return [h for h in self._handles if h.status is None]

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for messages and hand each on; a pipe's EOF reaps its worker."""
        for conn in wait([h.conn for h in self._running()], timeout):
            assert isinstance(conn, Connection)
            handle = self._by_conn[id(conn)]
            try:
                for _ in range(64):  # a bounded burst, so one busy worker cannot starve the loop
                    self._dispatch(handle, conn.recv())
                    if not conn.poll():
                        break
            except (EOFError, OSError):
                self._reap(handle)

    def _dispatch(self, handle: _Handle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "r":
            on_flow, on_hint = self.on_flow, self.on_hint
            for item in message[1]:
                if type(item) is FlowRecord:
                    on_flow(item)
                else:
                    on_hint(item)
        elif kind == "beat":
            _, delta, kernel, handle.live, handle.peak = message
            add = self.counters.add
            for name, value in delta.items():
                add(name, value)
            self._frames += delta.get("frames", 0)
            self._kernel[0] += kernel[0]  # each socket counts its own share of the frames
            self._kernel[1] += kernel[1]
            if handle.index == 0:  # the interface's rx_dropped, the same for every socket: once
                self._kernel[2] += kernel[2]
            handle.last_beat = time.monotonic()
        elif kind == "bye":
            handle.said_bye = True

    def _reap(self, handle: _Handle, grace: float = 2.0) -> None:
        handle.conn.close()
        deadline = time.monotonic() + grace
        while True:
            pid, status = os.waitpid(handle.pid, os.WNOHANG)
            if pid or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not pid:
            os.kill(handle.pid, signal.SIGKILL)
            _, status = os.waitpid(handle.pid, 0)
        handle.status = os.waitstatus_to_exitcode(status)
        if not handle.said_bye:
            self.failed.append(f"worker {handle.index} (pid {handle.pid}) ended with status {handle.status}")
            log.error("worker_died", worker=handle.index, pid=handle.pid, status=handle.status)

    def take_stats(self) -> tuple[KernelStats, int]:
        """Kernel statistics and frames the workers reported since the previous call."""
        kernel, frames = KernelStats(*self._kernel), self._frames
        self._kernel, self._frames = [0, 0, 0], 0
        return kernel, frames

    def healthy(self) -> bool:
        """Every worker is running and has reported within STALE_SECONDS."""
        now = time.monotonic()
        return not self.failed and all(h.status is None and now - h.last_beat < STALE_SECONDS
                                       for h in self._handles)

    def send(self, message: tuple[Any, ...]) -> None:
        """A control message to every running worker."""
        for handle in self._running():
            try:
                handle.conn.send(message)
            except OSError:
                self._reap(handle)

    def stop(self, timeout: float) -> bool:
        """Tell every worker to stop, take what each sends until it exits; True if all said bye in time."""
        self.send(("stop",))
        deadline = time.monotonic() + timeout
        while self._running() and time.monotonic() < deadline:
            self.poll(0.1)
        for handle in self._running():
            log.error("worker_stop_timeout", worker=handle.index, pid=handle.pid)
            os.kill(handle.pid, signal.SIGKILL)
            self._reap(handle)
        return all(h.said_bye for h in self._handles)


def spawn(captures: list[Capture], settings: AgentConfig) -> WorkerPool:
    """Fork one worker per open capture (no thread may exist yet); the parent's copies are closed."""
    handles: list[_Handle] = []
    parent = os.getpid()
    # Ignored from before the fork: a SIGTERM for the whole unit (systemd's KillMode=control-group)
    # must not end a worker before it has sent its last batch; the main process tells it when.
    main = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    previous = {n: signal.signal(n, signal.SIG_IGN) for n in (signal.SIGINT, signal.SIGTERM) if main}
    for index, capture in enumerate(captures):
        parent_end, child_end = Pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover  (runs in the child; tests/integration/test_live_workers.py)
            status = EX_SOFTWARE
            try:
                parent_end.close()
                for handle in handles:
                    handle.conn.close()
                for other in captures:
                    if other is not capture:
                        other.close()
                status = _child(index, parent, child_end, capture, settings)
            except BaseException:
                log.exception("worker_failed", worker=index)
            finally:
                os._exit(status)
        child_end.close()
        handles.append(_Handle(index, pid, parent_end, time.monotonic()))
    for number, handler in previous.items():
        signal.signal(number, handler)
    for capture in captures:
        capture.close()
    log.info("workers_started", pids=[h.pid for h in handles])
    return WorkerPool(handles)


def _child(index: int, parent: int, conn: Connection, capture: Capture, settings: AgentConfig) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        return EX_SOFTWARE  # no parent-death signal, or the parent is already gone
    privileges.drop_privileges(settings.health.drop_to_user)  # not root any more: clears what is left
    return Worker(conn, capture, settings, index).run()


def forward(pool: WorkerPool, flows: FlowSettings, hints: HintSettings, bpf: str | None,
            batch_size: int) -> None:
    """A pushed configuration's capture and flow changes to every worker (already checked)."""
    if bpf is not None:
        pool.send(("filter", bpf))
    pool.send(("batch", batch_size))
    pool.send(("flows", flows, hints))
