"""capture.workers = 2 for real (issue 7): two capture processes on one veth tap, joined by PACKET_FANOUT.

The set-up and the comparison are test_live_replay's: the tap here (silent), its peer in a namespace
of its own carrying `tcpreplay --pps`, `ward-agent run` dropping to `nobody` and sealing its flows to
a real mosquitto. With the flows of a conversation split by the kernel's hash over two workers and
merged in the main process, the collector must still get exactly the offline replay's flows, and the
tap must still transmit nothing. The other tests run the agent without an uplink and look at its
processes: the workers run as nobody with no capability, SIGTERM ends them all with status 0, and a
worker killed with SIGKILL ends the agent with a non-zero status (so systemd restarts it).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker, mosquitto_fixture  # noqa: F401
from test_live_replay import (
    FLOW_SETTINGS,
    PEER_IF,
    PEER_NS,
    ROOT,
    TAP,
    TCPREPLAY,
    _capture_frames,
    _env,
    _frames,
    _kernel_totals,
    _offline,
    _stopped_flows,
    _summed,
    _tx_packets,
    bench_capture,  # noqa: F401
    tap,  # noqa: F401
)
from test_service_live import _flows, _sensor_files

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mosquitto") is None or not os.access(TCPREPLAY, os.X_OK),
    reason="needs root (namespaces, privilege drop), mosquitto and tcpreplay")
WORKERS = "timeout_ms = 50\nworkers = 2\n"


class Agent:
    """`ward-agent run` with `config`, its stderr collected; `workers` are the pids it logged at start."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[str] = []
        self.workers: list[int] = []
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._started.wait(30):
            self.process.kill()
            raise AssertionError("the agent did not start:\n" + self.stderr[-3000:])

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if '"event": "started"' in line:
                self.workers = json.loads(line)["workers"]
                self._started.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status once it and its stderr are done."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        self._reader.join(10)
        return status


def _plain_config(root: Path, interface: str) -> Path:
    config = root / "agent.toml"
    config.write_text(f'[capture]\ninterface = "{interface}"\n{WORKERS}\n'
                      '[health]\ninterval = 1\ndrop_to_user = "nobody"\n')
    return config


@pytest.fixture
def work() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ward-wk-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _gone(pid: int) -> bool:
    try:
        return _status(pid)["State"].startswith("Z")
    except FileNotFoundError:
        return True


def _check_two_workers_equal_offline(broker: Broker, capture: Path, root: Path, pps: int) -> None:
    offline = _summed(_offline(capture, root))
    config = _sensor_files(broker, root)
    config.write_text(config.read_text().replace("timeout_ms = 50\n", WORKERS) + FLOW_SETTINGS)
    collector = broker.client("collector")
    collector.subscribe("ward/+/+/#")
    sent_before = _tx_packets(TAP)
    agent = Agent(config)
    try:
        assert len(agent.workers) == 2
        collector.wait_messages("ward/ward3/ward3-a/status", 1, timeout=20)
        subprocess.run(["ip", "netns", "exec", PEER_NS, TCPREPLAY, "-q", "-i", PEER_IF, f"--pps={pps}",
                        str(capture)], check=True, capture_output=True, timeout=120)
        time.sleep(1.5)  # the last batches leave the sockets and the workers; one more second passes
    finally:
        status = agent.stop()
    err = agent.stderr
    assert status == 0, err[-3000:]
    expected = _stopped_flows(err)
    deadline, flows = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        flows = _flows(collector.messages("ward/ward3/ward3-a/up/flows"), root / "keys")
        if len(flows) >= expected:
            break
        time.sleep(0.2)
    assert len(flows) == expected, (len(flows), expected, err[-3000:])
    live = _summed(r._asdict() for r in flows)
    kernel, frames = _kernel_totals(err), _capture_frames(capture)
    assert (kernel["received"], kernel["dropped"], _frames(err)) == (frames, 0, frames), err[-3000:]
    assert _tx_packets(TAP) == sent_before
    assert sorted(live, key=repr) == sorted(offline, key=repr)
    differing = {key: (live[key], offline[key]) for key in offline if live[key] != offline[key]}
    assert not differing, differing
    shares = [json.loads(line)["frames"] for line in err.splitlines() if '"event": "worker_stopped"' in line]
    assert len(shares) == 2 and all(shares) and sum(shares) == frames, shares  # both took part, once each


@pytest.mark.usefixtures("tap")
def test_sample_capture_on_two_workers_equals_offline(mosquitto: Broker, work: Path) -> None:
    """sample.pcap (VLAN, IP fragments, ARP, hints) over two workers gives the offline flows, silently."""
    _check_two_workers_equal_offline(mosquitto, ROOT / "tests" / "golden" / "captures" / "sample.pcap", work,
                                     10000)


@pytest.mark.usefixtures("tap")
def test_ward_mix_on_two_workers_equals_offline(mosquitto: Broker, bench_capture: Path,  # noqa: F811
                                                work: Path) -> None:
    """The ward mix (~260 flow records) over two workers gives the offline flows, silently."""
    _check_two_workers_equal_offline(mosquitto, bench_capture, work, 10000)


@pytest.mark.usefixtures("tap")
def test_workers_run_as_nobody_without_capabilities(work: Path) -> None:
    """Each worker process runs as nobody with no capability permitted or effective."""
    agent = Agent(_plain_config(work, TAP))
    try:
        nobody = str(pwd.getpwnam("nobody").pw_uid)
        for pid in agent.workers:
            status = _status(pid)
            assert status["PPid"] == str(agent.process.pid)
            assert status["Uid"].split() == [nobody] * 4
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    finally:
        assert agent.stop() == 0, agent.stderr[-3000:]


@pytest.mark.usefixtures("tap")
def test_sigterm_ends_agent_and_workers_with_status_0(work: Path) -> None:
    """SIGTERM to the agent: every worker says bye and exits, and the agent exits 0."""
    agent = Agent(_plain_config(work, TAP))
    time.sleep(1.5)  # a heartbeat or two
    assert agent.stop() == 0, agent.stderr[-3000:]
    assert len(agent.workers) == 2 and all(_gone(pid) for pid in agent.workers)
    assert '"event": "stopped"' in agent.stderr and "worker_died" not in agent.stderr


@pytest.mark.usefixtures("tap")
def test_killed_worker_ends_agent_with_failure(work: Path) -> None:
    """A worker killed with SIGKILL is reported and the agent exits non-zero, leaving no worker behind."""
    agent = Agent(_plain_config(work, TAP))
    os.kill(agent.workers[0], signal.SIGKILL)
    try:
        agent.process.wait(20)
    finally:
        status = agent.stop()
    assert status not in (0, 78), agent.stderr[-3000:]
    assert "worker_died" in agent.stderr
    assert all(_gone(pid) for pid in agent.workers)
