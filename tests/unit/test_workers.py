"""Tests for agent/workers.py (and the worker side of service_config.apply) with real forked workers.

A worker reads a capture file here instead of a fanout member: everything but the fanout itself
(tests/integration/test_live_workers.py) runs for real, without root: forked processes, pipes, pickled
records, heartbeats, stop, SIGKILL and SIGTERM.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import Pipe
from pathlib import Path

import pytest

from agent.capture import CaptureError, check_filter, fanout_group, open_offline
from agent.config import AgentConfig, HealthSettings
from agent.flows import FlowSettings, FlowTable
from agent.records import Counters, FlowRecord, ProtoHint
from agent.service import Service
from agent.service_config import apply
from agent.workers import Worker, WorkerPool, spawn

CAPTURES = Path(__file__).resolve().parents[1] / "golden" / "captures"
SAMPLE, EDGE = CAPTURES / "sample.pcap", CAPTURES / "edge.pcap"
SETTINGS = AgentConfig(health=HealthSettings(drop_to_user="nobody"))
Item = FlowRecord | ProtoHint


def _table_items(path: Path) -> tuple[list[Item], Counters]:
    items: list[Item] = []
    counters = Counters()
    with open_offline(str(path)) as capture:
        table = FlowTable(SETTINGS.flows, items.append, counters, linktype=capture.linktype,
                          on_hint=items.append, hints=SETTINGS.hints)
        while True:
            packets, meta = capture.next_batch()
            if not meta:
                break
            table.ingest(packets, meta)
        table.flush()
    return items, counters


@pytest.fixture
def pools() -> Iterator[list[WorkerPool]]:
    """Pools the test spawned; whatever is still running at the end is stopped."""
    made: list[WorkerPool] = []
    yield made
    for pool in made:
        pool.stop(timeout=5)


def _spawn(pools: list[WorkerPool], *paths: Path) -> tuple[WorkerPool, list[Item]]:
    """Workers on `paths`, their flows and hints collected in arrival order."""
    pool = spawn([open_offline(str(p)) for p in paths], SETTINGS)
    pools.append(pool)
    items: list[Item] = []
    pool.on_flow, pool.on_hint = items.append, items.append
    return pool, items


def _until(pool: WorkerPool, done: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        pool.poll(0.05)


def test_worker_sends_its_tables_flows_and_hints_in_order(pools: list[WorkerPool]) -> None:
    """A stopped worker has sent exactly what one flow table makes of its capture, hints in place."""
    pool, items = _spawn(pools, SAMPLE)
    assert pool.stop(timeout=10)
    expected, _ = _table_items(SAMPLE)
    assert any(type(i) is ProtoHint for i in expected)
    assert items == expected


def test_worker_counters_reach_the_pool(pools: list[WorkerPool]) -> None:
    """The counters of a stopped worker's table arrive in the pool's counters, all of them."""
    pool, _ = _spawn(pools, SAMPLE)
    assert pool.stop(timeout=10)
    assert pool.counters.values == _table_items(SAMPLE)[1].values


def test_heartbeat_reports_frames_once(pools: list[WorkerPool]) -> None:
    """The first heartbeat carries the frames read so far; take_stats hands them over once."""
    pool, _ = _spawn(pools, SAMPLE)
    _until(pool, lambda: pool.counters.get("frames") > 0)
    kernel, frames = pool.take_stats()
    assert frames == 224 and kernel.received == 0  # a file has no kernel statistics
    assert pool.take_stats()[1] == 0
    assert pool.healthy()


def test_stop_says_bye_and_reaps_every_worker(pools: list[WorkerPool]) -> None:
    """stop() takes each worker's last batch and leaves no process behind."""
    pool, _ = _spawn(pools, SAMPLE, EDGE)
    assert pool.stop(timeout=10) and not pool.failed
    for pid in pool.pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_two_workers_each_report_their_own_capture(pools: list[WorkerPool]) -> None:
    """Two workers: the merged items are both tables' items, each in its own order."""
    pool, items = _spawn(pools, SAMPLE, EDGE)
    assert pool.stop(timeout=10)
    sample, edge = _table_items(SAMPLE)[0], _table_items(EDGE)[0]
    assert sorted(items, key=repr) == sorted(sample + edge, key=repr)
    assert [i for i in items if i in sample] == sample


def test_killed_worker_fails_the_pool(pools: list[WorkerPool]) -> None:
    """The first of two workers killed with SIGKILL is noticed (no later worker keeps its pipe open)."""
    pool, _ = _spawn(pools, SAMPLE, EDGE)
    os.kill(pool.pids[0], signal.SIGKILL)
    _until(pool, lambda: bool(pool.failed))
    assert "worker 0" in pool.failed[0] and str(-signal.SIGKILL) in pool.failed[0]
    assert not pool.healthy()


def test_worker_ignores_sigterm(pools: list[WorkerPool]) -> None:
    """SIGTERM does not end a worker; only the main process's stop does."""
    pool, _ = _spawn(pools, SAMPLE)
    os.kill(pool.pids[0], signal.SIGTERM)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        pool.poll(0.05)
    assert not pool.failed
    assert pool.stop(timeout=10)


def _frames(packets: bytes, meta: bytes) -> list[bytes]:
    return [packets[off:off + n] for _, _, off, n in struct.iter_unpack("=IIII", meta)]


def test_control_sets_filter() -> None:
    """("filter", bpf) puts a filter on the worker's capture."""
    conn, _ = Pipe()
    with open_offline(str(SAMPLE)) as capture:
        assert Worker(conn, capture, SETTINGS).control(("filter", "arp"))
        frames = _frames(*capture.next_batch())
    assert frames and all(f[12:14] == b"\x08\x06" for f in frames)


def test_control_sets_batch_size() -> None:
    """("batch", n) changes how many frames the worker's capture reads at a time."""
    conn, _ = Pipe()
    with open_offline(str(SAMPLE)) as capture:
        assert Worker(conn, capture, SETTINGS).control(("batch", 7))
        assert len(_frames(*capture.next_batch())) == 7


def test_bad_control_is_logged_not_raised() -> None:
    """A filter that does not compile leaves the worker running (the main process checks first)."""
    conn, _ = Pipe()
    with open_offline(str(SAMPLE)) as capture:
        assert Worker(conn, capture, SETTINGS).control(("filter", "no such filter ("))


def test_check_filter_refuses_what_does_not_compile() -> None:
    """check_filter passes a good filter and raises CaptureError for a bad one."""
    check_filter("udp port 53", 1, 1600)
    with pytest.raises(CaptureError):
        check_filter("udp port", 1, 1600)


def test_fanout_group_fits_sixteen_bits() -> None:
    """The group id derived from a pid is a 16-bit number."""
    assert fanout_group(0x12345) == 0x2345 and fanout_group(7) == 7


def _service(pools: list[WorkerPool]) -> Service:
    service = Service(SETTINGS, threading.Event())
    service.pool, _ = _spawn(pools, SAMPLE)
    return service


@pytest.mark.parametrize("change", [{"interface": "eth9"}, {"snaplen": 200}, {"promiscuous": False},
                                    {"buffer_mb": 4}, {"timeout_ms": 5}])
def test_apply_refuses_reopen_with_workers(pools: list[WorkerPool], change: dict[str, object]) -> None:
    """With workers, a pushed change that needs the captures reopened is refused with 'restart'."""
    service = _service(pools)
    new = dataclasses.replace(SETTINGS, capture=dataclasses.replace(SETTINGS.capture, **change))
    with pytest.raises(ValueError, match="restart the service"):
        apply(service, SETTINGS, new)


def test_apply_refuses_workers_change() -> None:
    """capture.workers changes only with a restart, with one worker too."""
    service = Service(SETTINGS, threading.Event())
    new = dataclasses.replace(SETTINGS, capture=dataclasses.replace(SETTINGS.capture, workers=2))
    with pytest.raises(ValueError, match="restart of the service"):
        apply(service, SETTINGS, new)


def test_apply_refuses_bad_filter_with_workers(pools: list[WorkerPool]) -> None:
    """With workers, a pushed filter is compiled first and refused if it does not compile."""
    service = _service(pools)
    new = dataclasses.replace(SETTINGS, capture=dataclasses.replace(SETTINGS.capture, bpf="tcp port"))
    with pytest.raises(ValueError, match="bad filter"):
        apply(service, SETTINGS, new)


def _evictions(path: Path, flows: FlowSettings) -> int:
    """Flows evicted when `flows` applies after the first frame of `path`."""
    counters = Counters()
    with open_offline(str(path), batch_size=1) as capture:
        table = FlowTable(SETTINGS.flows, lambda _: None, counters, linktype=capture.linktype,
                          on_hint=lambda _: None, hints=SETTINGS.hints)
        table.ingest(*capture.next_batch())
        table.reconfigure(flows, SETTINGS.hints)
        while True:
            packets, meta = capture.next_batch()
            if not meta:
                break
            table.ingest(packets, meta)
    return counters.get("flows.evicted")


# Writes a capture file's header into a FIFO, waits for a line on stdin, then writes the frames.
_WRITER = """import sys
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as fifo:
    fifo.write(data[:24])
    fifo.flush()
    sys.stdin.readline()
    fifo.write(data[24:])
"""


def test_apply_forwards_flow_settings_to_workers(tmp_path: Path, pools: list[WorkerPool]) -> None:
    """With workers, a pushed flows.max_flows reaches the worker's table: it evicts from then on.

    The worker reads a FIFO one frame at a time, and the frames are written (by another process)
    only after the push: it gets the new settings after its first frame, deterministically."""
    flows = dataclasses.replace(SETTINGS.flows, max_flows=1)
    expected = _evictions(SAMPLE, flows)
    assert expected > 0 and _evictions(SAMPLE, SETTINGS.flows) == 0
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(SAMPLE), str(fifo)], stdin=subprocess.PIPE)
    try:
        capture = open_offline(str(fifo), batch_size=1)  # reads the header the writer sent
        service = Service(SETTINGS, threading.Event())
        service.pool = spawn([capture], SETTINGS)
        pools.append(service.pool)
        apply(service, SETTINGS, dataclasses.replace(SETTINGS, flows=flows))
    finally:
        writer.communicate(b"go\n", timeout=10)  # now the frames
    assert service.pool.stop(timeout=10)
    assert service.pool.counters.get("flows.evicted") == expected
