"""Live capture, really (issue 7): a capture replayed onto a veth with tcpreplay gives the offline flows.

The tap end stays in this namespace (the agent reaches the broker on loopback) with no address, no
IPv6, no ARP; its peer in a namespace of its own (IPv6 off too, so it sends nothing by itself) carries
`tcpreplay --pps`. `ward-agent run` captures on the tap, drops to `nobody` and seals its flows to a
real mosquitto; the test plays the collector. The flows must equal those of `ward-agent replay` of the
same file with the same flow settings, and the tap must have transmitted nothing.

What legitimately differs, and is therefore not compared: packet times (live ones are the wall clock,
and tcpreplay compresses the file's 2-12 minutes into seconds), hence `first`/`last`, `end` (idle,
active and end of capture fall differently) and how many records one conversation is cut into (the
offline replay of the bench capture spans more than `flows.active_timeout`, so a long flow is reported
in several `active` records there and in one live). Records are therefore summed per oriented key
(proto, a, b, VLANs): same keys, same packets and bytes each way, same MACs, same TCP flags. Ethernet
padding would not matter (byte counts come from IP headers), and veth pads nothing anyway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, mosquitto_fixture  # noqa: F401
from test_service_live import _flows, _sensor_files

from agent.capture import open_offline
from agent.records import FlowRecord

ROOT = Path(__file__).resolve().parents[2]
TCPREPLAY = shutil.which("tcpreplay") or "/usr/bin/tcpreplay"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mosquitto") is None or not os.access(TCPREPLAY, os.X_OK),
    reason="needs root (namespaces, privilege drop), mosquitto and tcpreplay")
TAP = f"wsvc{os.getpid() % 10000}"  # the name test_service_live's configuration captures on
PEER_NS, PEER_IF = f"wlrpeer{os.getpid()}", "wlrpeer0"
FLOW_SETTINGS = "\n[flows]\nidle_timeout = 600\nactive_timeout = 600\n"
Key = tuple[Any, ...]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def tap() -> Iterator[str]:
    """A veth pair: TAP here (up, no address, no IPv6, no ARP), its peer up and silent in a namespace."""
    _ip("netns", "add", PEER_NS)
    try:
        _ip("link", "add", TAP, "mtu", "9000", "type", "veth", "peer", "name", PEER_IF, "netns", PEER_NS)
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1"], check=True)
        subprocess.run(["ip", "netns", "exec", PEER_NS, "sysctl", "-qw",
                        f"net.ipv6.conf.{PEER_IF}.disable_ipv6=1"], check=True)
        _ip("link", "set", TAP, "arp", "off", "up")
        _ip("-n", PEER_NS, "link", "set", PEER_IF, "mtu", "9000", "arp", "off", "up")
        yield TAP
    finally:
        subprocess.run(["ip", "link", "del", TAP], capture_output=True)
        _ip("netns", "del", PEER_NS)


@pytest.fixture(scope="module")
def bench_capture() -> Iterator[Path]:
    """The ward mix of scripts/wardgen.py at a small scale: ~6000 packets, ~260 flow records."""
    directory = Path(tempfile.mkdtemp(prefix="ward-lr-"))
    path = directory / "bench-flows.pcap"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "wardgen.py"), "--scale", "0.005", "bench-flows",
                    str(path)], check=True, capture_output=True)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


def _tx_packets(interface: str) -> int:
    return int(Path(f"/sys/class/net/{interface}/statistics/tx_packets").read_text())


def _offline(capture: Path, work: Path) -> list[dict[str, Any]]:
    """The flow records of `ward-agent replay` over `capture` with FLOW_SETTINGS."""
    config, emit = work / "offline.toml", work / "offline.jsonl"
    config.write_text(FLOW_SETTINGS)
    subprocess.run([sys.executable, "-m", "agent", "replay", str(capture), "--config", str(config),
                    "--emit", str(emit)], check=True, capture_output=True, env=_env())
    records = [json.loads(line) for line in emit.read_text().splitlines()]
    return [r for r in records if r["type"] == "flow"]


def _capture_frames(capture: Path) -> int:
    """How many frames `capture` holds (the project's own reader)."""
    with open_offline(str(capture)) as reader:
        count = 0
        while meta := reader.next_batch()[1]:
            count += len(meta) // 16
    return count


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _summed(records: Iterable[Mapping[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Records summed per oriented key: packets and bytes each way, MAC pairs seen, TCP flags seen."""
    summed: dict[Key, dict[str, Any]] = {}
    for r in records:
        key = (r["proto"], r["a_ip"], r["a_port"], r["b_ip"], r["b_port"], tuple(r["vlan"]))
        into = summed.setdefault(key, {"a_pkts": 0, "b_pkts": 0, "a_bytes": 0, "b_bytes": 0,
                                       "macs": set(), "a_flags": set(), "b_flags": set()})
        for name in ("a_pkts", "b_pkts", "a_bytes", "b_bytes"):
            into[name] += r[name]
        into["macs"].add((r["a_mac"], r["b_mac"]))
        into["a_flags"].update(r["a_flags"])
        into["b_flags"].update(r["b_flags"])
    return summed


def _stopped_flows(stderr: str) -> int:
    """The flow count of the agent's closing `stopped` log line ("N frames, M flows, ...")."""
    found = re.findall(r'"status": "(\d+) frames, (\d+) flows', stderr)
    assert found, stderr[-3000:]
    return int(found[-1][1])


def _live(broker: Broker, capture: Path, pps: int, root: Path) -> tuple[list[FlowRecord], str, int]:
    """Run the agent on TAP, replay `capture` onto the peer at `pps`, stop it; (flows, stderr, tx delta)."""
    config = _sensor_files(broker, root)
    config.write_text(config.read_text() + FLOW_SETTINGS)
    collector = broker.client("collector")
    collector.subscribe("ward/+/+/#")
    sent_before = _tx_packets(TAP)
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        collector.wait_messages("ward/ward3/ward3-a/status", 1, timeout=20)
        subprocess.run(["ip", "netns", "exec", PEER_NS, TCPREPLAY, "-q", "-i", PEER_IF, f"--pps={pps}",
                        str(capture)], check=True, capture_output=True, timeout=120)
        time.sleep(1.5)  # the last batch leaves the socket; one more `every_second` passes
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err[-3000:]
    expected = _stopped_flows(err)
    deadline, flows = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        flows = _flows(collector.messages("ward/ward3/ward3-a/up/flows"), root / "keys")
        if len(flows) >= expected:
            break
        time.sleep(0.2)
    assert len(flows) == expected, (len(flows), expected, err[-3000:])
    return flows, err, _tx_packets(TAP) - sent_before


def _kernel_totals(stderr: str) -> dict[str, int]:
    """Kernel statistics (received, dropped, if_dropped) summed over the agent's `health` log lines."""
    totals = {"received": 0, "dropped": 0, "if_dropped": 0}
    for line in stderr.splitlines():
        if line.startswith("{") and '"event": "health"' in line:
            kernel = json.loads(line).get("kernel") or {}
            for name in totals:
                totals[name] += int(kernel.get(name) or 0)
    return totals


def _frames(stderr: str) -> int:
    """The frame count of the agent's closing `stopped` log line."""
    return int(re.findall(r'"status": "(\d+) frames', stderr)[-1])


def _check_live_equals_offline(broker: Broker, capture: Path, pps: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ward-lr-"))
    root.chmod(0o755)
    try:
        offline_records = _offline(capture, root)
        offline = _summed(offline_records)
        flows, err, transmitted = _live(broker, capture, pps, root)
        live = _summed(r._asdict() for r in flows)
        kernel = _kernel_totals(err)
        frames = _capture_frames(capture)
        # if_dropped (libpcap 1.9: the interface's rx_dropped) also counts frames the host stack threw
        # away after the capture had them (QinQ with no 802.1ad device): not a capture loss.
        assert (kernel["received"], kernel["dropped"], _frames(err)) == (frames, 0, frames), err[-3000:]
        assert transmitted == 0
        assert sorted(live, key=repr) == sorted(offline, key=repr)
        differing = {key: (live[key], offline[key]) for key in offline if live[key] != offline[key]}
        assert not differing, differing
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("pps", [1000, 10000])
def test_sample_capture_live_equals_offline(mosquitto: Broker, tap: str, pps: int) -> None:
    """sample.pcap (VLAN, IP fragments, ARP, hinted flows) replayed live gives the offline flows, silently."""
    _check_live_equals_offline(mosquitto, ROOT / "tests" / "golden" / "captures" / "sample.pcap", pps)


@pytest.mark.parametrize("pps", [1000, 10000])
def test_ward_mix_live_equals_offline(mosquitto: Broker, tap: str, bench_capture: Path, pps: int) -> None:
    """The ward mix (~260 flow records) replayed live gives the offline flows, silently."""
    _check_live_equals_offline(mosquitto, bench_capture, pps)
