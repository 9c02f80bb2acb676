"""`ward-agent run` for real: live on a veth end, privileges dropped, records through a TLS mosquitto.

The tap end stays in this namespace (so the agent reaches the broker on loopback) with no address,
no IPv6 and no ARP; the peer namespace sends the traffic. The test plays the collector: it
subscribes with the collector's certificate and opens the sealed messages with the collector's key.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, mosquitto_fixture  # noqa: F401

from agent import crypto, messages
from agent.records import FlowRecord

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mosquitto") is None,
                                reason="needs root (namespaces, privilege drop) and mosquitto")
TAP = f"wsvc{os.getpid() % 10000}"
PEER_NS = f"wsvcpeer{os.getpid()}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(name="tap")
def tap_fixture() -> Iterator[str]:
    """A veth pair: TAP here (up, silent), its peer 10.213.1.1/24 in a namespace of its own."""
    _ip("netns", "add", PEER_NS)
    try:
        _ip("link", "add", TAP, "type", "veth", "peer", "name", "wsvcpeer0", "netns", PEER_NS)
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1"], check=True)
        _ip("link", "set", TAP, "arp", "off", "up")
        _ip("-n", PEER_NS, "addr", "add", "10.213.1.1/24", "dev", "wsvcpeer0")
        _ip("-n", PEER_NS, "link", "set", "wsvcpeer0", "up")
        _ip("-n", PEER_NS, "neigh", "add", "10.213.1.99", "lladdr", "02:00:00:00:02:13", "dev", "wsvcpeer0")
        yield TAP
    finally:
        subprocess.run(["ip", "link", "del", TAP], capture_output=True)
        _ip("netns", "del", PEER_NS)


def _tx_packets(interface: str) -> int:
    return int(Path(f"/sys/class/net/{interface}/statistics/tx_packets").read_text())


def _sensor_files(broker: Broker, root: Path) -> Path:
    """Keys, TLS files and state for the sensor, readable by `nobody` after the drop; the config path."""
    nobody = pwd.getpwnam("nobody")
    for role in ("sensor", "collector"):
        crypto.write_keypair(root / "keys", role)
    cert, key = broker.cert("ward3-a")
    tls = root / "tls"
    tls.mkdir()
    for source, name in ((broker.ca, "ca.pem"), (cert, "sensor.pem"), (key, "sensor.key")):
        shutil.copy(source, tls / name)
    (root / "state").mkdir()
    for path in [root / "keys", root / "state", tls, *tls.iterdir(), *(root / "keys").iterdir()]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    config = root / "agent.toml"
    config.write_text(f"""
[capture]
interface = "{TAP}"
timeout_ms = 50

[uplink]
enabled = true
site = "ward3"
sensor_id = "ward3-a"
state_dir = "{root / 'state'}"
keys_dir = "{root / 'keys'}"
broker_port = {broker.port}
ca_file = "{tls / 'ca.pem'}"
cert_file = "{tls / 'sensor.pem'}"
key_file = "{tls / 'sensor.key'}"
batch_seconds = 1.0

[health]
interval = 1
drop_to_user = "nobody"
""")
    return config


def _bodies(payloads: list[tuple[str, bytes, bool]], keys: Path) -> list[Any]:
    private, _ = crypto.key_paths(keys, "collector")
    _, verify = crypto.key_paths(keys, "sensor")
    recipient, sender = crypto.load_decryption_key(private), crypto.load_verify_key(verify)
    bodies = []
    for _, sealed, _ in payloads:
        opened = crypto.open_sealed(sealed, recipient, sender)
        bodies.append(messages.decode_payload(messages.decode_header(opened.header), opened.plaintext).body)
    return bodies


def _flows(payloads: list[tuple[str, bytes, bool]], keys: Path) -> list[FlowRecord]:
    return [flow for body in _bodies(payloads, keys) for flow in body]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_run_delivers_live_flows_drops_privileges_and_stays_silent(mosquitto: Broker, tap: str) -> None:
    """Traffic on the tap reaches the collector as sealed flow records; the agent ends as nobody with
    no capabilities, and the tap interface transmitted nothing."""
    root = Path(tempfile.mkdtemp(prefix="ward-svc-"))
    root.chmod(0o755)
    try:
        config = _sensor_files(mosquitto, root)
        collector = mosquitto.client("collector")
        collector.subscribe("ward/+/+/#")
        sent_before = _tx_packets(tap)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            collector.wait_messages("ward/ward3/ward3-a/status", 1, timeout=20)
            status = _status(agent.pid)
            assert status["CapEff"].strip("0") == "" and status["CapPrm"].strip("0") == ""
            assert status["Uid"].split()[0] == str(pwd.getpwnam("nobody").pw_uid)
            subprocess.run(["ip", "netns", "exec", PEER_NS, sys.executable, "-c",
                            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                            "[s.sendto(b'ward%d' % i, ('10.213.1.99', 9999)) for i in range(5)]"],
                           check=True, timeout=20)
            collector.wait_messages("ward/ward3/ward3-a/up/health", 1, timeout=20)
            time.sleep(1.5)
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err
        deadline = time.monotonic() + 20
        udp: list[FlowRecord] = []
        while not udp and time.monotonic() < deadline:
            flows = _flows(collector.messages("ward/ward3/ward3-a/up/flows"), root / "keys")
            udp = [f for f in flows if f.proto == "udp" and f.b_port == 9999]
            time.sleep(0.2)
        assert [(f.a_ip, f.b_ip, f.a_pkts, f.b_pkts) for f in udp] == [("10.213.1.1", "10.213.1.99", 5, 0)], (
            flows, err[-3000:])
        devices = _bodies(collector.messages("ward/ward3/ward3-a/up/devices"), root / "keys")
        sender = [d for body in devices for d in body["devices"] if d["mac"] == udp[0].a_mac]
        assert sender and "10.213.1.1" in [ip["ip"] for ip in sender[-1]["ips"]], (devices, err[-3000:])
        assert _tx_packets(tap) == sent_before
    finally:
        shutil.rmtree(root, ignore_errors=True)
