"""A pushed capture change on the live service reopens only the capture stage (issues 6 and 7).

`ward-agent run` is started the way ward-agent.service starts it: as an unprivileged user (`nobody`)
holding CAP_NET_RAW as an ambient capability (setpriv(1) does what AmbientCapabilities= does). The
test plays the centre: it seals configuration documents to the sensor's box key, signs them with the
central key and publishes them retained on the sensor's config topic, then reads the config acks and
the flow records. Started as root instead, the agent keeps no capability and such a push is nacked.
"""

from __future__ import annotations

import json
import os
import pwd
import re
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
from test_service_live import PEER_NS, _flows, _ip, _sensor_files, tap_fixture  # noqa: F401

from agent import crypto, messages
from agent.config_envelope import seal_document

TAP2 = f"wcro{os.getpid() % 10000}"
PEER2 = "wcropeer0"
PREFIX = "ward/ward3/ward3-a"
_AS_SERVICE_USER = ["setpriv", f"--reuid={pwd.getpwnam('nobody').pw_uid}",
                    f"--regid={pwd.getpwnam('nobody').pw_gid}", "--clear-groups", "--inh-caps=+net_raw",
                    "--ambient-caps=+net_raw"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mosquitto") is None
                                or shutil.which("setpriv") is None,
                                reason="needs root (namespaces), mosquitto and setpriv")


@pytest.fixture
def tap2(tap: str) -> Iterator[str]:
    """A second silent tap whose peer (10.214.1.1/24) lives in the first tap's peer namespace."""
    try:
        _ip("link", "add", TAP2, "type", "veth", "peer", "name", PEER2, "netns", PEER_NS)
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{TAP2}.disable_ipv6=1"], check=True)
        _ip("link", "set", TAP2, "arp", "off", "up")
        _ip("-n", PEER_NS, "addr", "add", "10.214.1.1/24", "dev", PEER2)
        _ip("-n", PEER_NS, "link", "set", PEER2, "up")
        _ip("-n", PEER_NS, "neigh", "add", "10.214.1.99", "lladdr", "02:00:00:00:02:14", "dev", PEER2)
        yield TAP2
    finally:
        subprocess.run(["ip", "link", "del", TAP2], capture_output=True)


class Sensor:
    """The agent under test, its files and the centre's view of it (a collector-certificate client)."""

    def __init__(self, broker: Broker, root: Path, prefix: list[str]) -> None:
        self.root = root
        self.config = _sensor_files(broker, root)
        flows = "\n[flows]\nidle_timeout = 600\nactive_timeout = 600\n"
        self.config.write_text(self.config.read_text() + flows)
        central = root / "central"
        crypto.write_keypair(central, "central")
        crypto.write_keypair(root / "keys", "sensor-box")
        shutil.copy(central / "central.pub", root / "keys" / "central.pub")
        nobody = pwd.getpwnam("nobody")
        for path in (root / "keys").iterdir():
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        self.central = crypto.load_signing_key(central / "central.key")
        self.box = crypto.load_decryption_key(root / "keys" / "sensor-box.key").public_key()
        self.centre = broker.client("collector")
        self.centre.subscribe(f"{PREFIX}/#")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.process = subprocess.Popen([*prefix, sys.executable, "-m", "agent", "run", "--config",
                                         str(self.config)], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.centre.wait_messages(f"{PREFIX}/status", 1, timeout=20)

    def push(self, version: int, **capture: object) -> dict[str, Any]:
        """Push the sensor's own config with `capture` settings in [capture]; the ack it sends back."""
        text = self.config.read_text()
        for key, value in capture.items():
            line = f"{key} = {json.dumps(value)}"
            text, found = re.subn(rf"^{key} = .*$", line, text, flags=re.M)
            text = text if found else text.replace("[capture]\n", f"[capture]\n{line}\n", 1)
        before = len(self.centre.messages(f"{PREFIX}/config/ack"))
        self.centre.publish(f"{PREFIX}/config", seal_document(text.encode(), "ward3-a", version, self.central,
                                                              self.box), retain=True)
        self.centre.wait_messages(f"{PREFIX}/config/ack", before + 1, timeout=10)
        _, payload, _ = self.centre.messages(f"{PREFIX}/config/ack")[before]
        recipient = crypto.load_decryption_key(self.root / "keys" / "collector.key")
        sender = crypto.load_verify_key(self.root / "keys" / "sensor.pub")
        opened = crypto.open_sealed(payload, recipient, sender)
        header = messages.decode_header(opened.header)
        body: dict[str, Any] = messages.decode_payload(header, opened.plaintext).body
        return body

    def stop(self) -> tuple[list[Any], str]:
        """SIGTERM the agent; its flow records as the centre received them, and its log."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err[-3000:]
        expected = int(re.findall(r'"status": "\d+ frames, (\d+) flows', err)[-1])
        deadline, flows = time.monotonic() + 10, []
        while len(flows) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            flows = _flows(self.centre.messages(f"{PREFIX}/up/flows"), self.root / "keys")
        return flows, err


def _send(count: int, source: str, target: str) -> None:
    """`count` UDP datagrams of one flow (source port 40000) from the peer namespace."""
    subprocess.run(["ip", "netns", "exec", PEER_NS, sys.executable, "-c",
                    "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    f"s.bind(('{source}', 40000))\n"
                    f"for i in range({count}):\n"
                    f"    s.sendto(b'ward%d' % i, ('{target}', 9999)); time.sleep(0.01)"],
                   check=True, timeout=20)
    time.sleep(0.5)  # the agent's next batch (timeout_ms = 50) takes them


@pytest.fixture
def root() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ward-reopen-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_snaplen_push_reopens_capture_and_keeps_the_flow(mosquitto: Broker, tap: str, root: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A pushed snaplen is acked and applied live; a flow spanning the reopen is one record, no packet
    lost or counted twice."""
    sensor = Sensor(mosquitto, root, _AS_SERVICE_USER)
    try:
        _send(5, "10.213.1.1", "10.213.1.99")
        began = time.monotonic()
        ack = sensor.push(1, snaplen=256)
        with capsys.disabled():
            print(f"\ncapture reopened by a push, ack received: {time.monotonic() - began:.3f} s")
        _send(5, "10.213.1.1", "10.213.1.99")
    finally:
        flows, err = sensor.stop()
    assert ack["ok"] is True, ack
    assert '"capture_reopened"' in err
    udp = [f for f in flows if f.proto == "udp" and f.a_port == 40000]
    assert [(f.a_ip, f.b_ip, f.a_pkts) for f in udp] == [("10.213.1.1", "10.213.1.99", 10)]


def test_interface_push_moves_the_capture_to_the_new_tap(mosquitto: Broker, tap: str, tap2: str,
                                                         root: Path) -> None:
    """After a pushed interface change the agent captures on the new tap, and only there."""
    sensor = Sensor(mosquitto, root, _AS_SERVICE_USER)
    try:
        ack = sensor.push(1, interface=tap2)
        _send(3, "10.213.1.1", "10.213.1.99")
        _send(4, "10.214.1.1", "10.214.1.99")
    finally:
        flows, _ = sensor.stop()
    assert ack["ok"] is True, ack
    udp = sorted((f.a_ip, f.a_pkts) for f in flows if f.proto == "udp" and f.a_port == 40000)
    assert udp == [("10.214.1.1", 4)]


def test_push_naming_a_missing_interface_is_nacked_and_capture_kept(mosquitto: Broker, tap: str,
                                                                    root: Path) -> None:
    """An interface that cannot be opened is nacked; the running capture goes on counting the flow."""
    sensor = Sensor(mosquitto, root, _AS_SERVICE_USER)
    try:
        _send(2, "10.213.1.1", "10.213.1.99")
        ack = sensor.push(1, interface="wardnosuch0")
        _send(3, "10.213.1.1", "10.213.1.99")
    finally:
        flows, _ = sensor.stop()
    assert ack["ok"] is False
    assert any("capture not reopened" in error for error in ack["errors"]), ack
    udp = [(f.a_ip, f.a_pkts) for f in flows if f.proto == "udp" and f.a_port == 40000]
    assert udp == [("10.213.1.1", 5)]


def test_started_as_root_the_push_is_nacked_for_a_restart(mosquitto: Broker, tap: str, root: Path) -> None:
    """Started as root (no capability kept after the drop), a capture push is nacked and nothing changes."""
    sensor = Sensor(mosquitto, root, [])
    try:
        ack = sensor.push(1, snaplen=256)
        _send(3, "10.213.1.1", "10.213.1.99")
    finally:
        flows, err = sensor.stop()
    assert ack["ok"] is False
    assert any("restart the service" in error for error in ack["errors"]), ack
    assert '"capture_reopened"' not in err
    assert [f.a_pkts for f in flows if f.proto == "udp" and f.a_port == 40000] == [3]


def test_push_of_reopen_on_push_itself_is_nacked(mosquitto: Broker, tap: str, root: Path) -> None:
    """What the agent may keep is decided at start: a pushed capture.reopen_on_push is nacked."""
    sensor = Sensor(mosquitto, root, _AS_SERVICE_USER)
    try:
        ack = sensor.push(1, reopen_on_push=False)
    finally:
        sensor.stop()
    assert ack["ok"] is False
    assert any("capture.reopen_on_push" in error for error in ack["errors"]), ack
