"""Live capture on a real interface: a veth pair between two network namespaces of our own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for network namespaces")

_CAPTURE = textwrap.dedent("""
    import json, struct, sys, time
    from agent.capture import LiveSettings, open_live
    cap = open_live(LiveSettings(interface="wtap0", snaplen=256, timeout_ms=50, bpf="udp port 9999"))
    print("ready", flush=True)
    frames, deadline = [], time.monotonic() + 5
    while len(frames) < 3 and time.monotonic() < deadline:
        packets, meta = cap.next_batch()
        for sec, usec, off, length in struct.iter_unpack("=IIII", meta):
            frames.append(packets[off:off + length].hex())
    stats = cap.kernel_stats()
    print(json.dumps({"frames": frames, "received": stats.received, "dropped": stats.dropped}))
""")


_SEND = textwrap.dedent("""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3):
            s.sendto(b"ward%d" % i, ("10.213.0.99", 9999))
""")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str]]:
    """Namespaces `<tap>` (capturing end wtap0, no address) and `<peer>` (10.213.0.1 on wpeer0)."""
    tap, peer = f"wardtap{os.getpid()}", f"wardpeer{os.getpid()}"
    _ip("netns", "add", tap)
    _ip("netns", "add", peer)
    try:
        _ip("link", "add", "wtap0", "netns", tap, "type", "veth", "peer", "name", "wpeer0", "netns", peer)
        _ip("-n", tap, "link", "set", "wtap0", "up")
        _ip("-n", peer, "addr", "add", "10.213.0.1/24", "dev", "wpeer0")
        _ip("-n", peer, "link", "set", "wpeer0", "up")
        _ip("-n", peer, "neigh", "add", "10.213.0.99", "lladdr", "02:00:00:00:02:13", "dev", "wpeer0")
        yield tap, peer
    finally:
        _ip("netns", "del", tap)
        _ip("netns", "del", peer)


def test_live_capture_sees_traffic_and_counts(veth_pair: tuple[str, str]) -> None:
    """open_live on a veth end captures the peer's datagrams through its BPF filter and counts them."""
    tap, peer = veth_pair
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(["ip", "netns", "exec", tap, sys.executable, "-c", _CAPTURE],
                          stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            subprocess.run(["ip", "netns", "exec", peer, sys.executable, "-c", _SEND], check=True, timeout=20)
            result = json.loads(proc.stdout.readline())
        finally:
            proc.kill()
    frames = [bytes.fromhex(f) for f in result["frames"]]
    assert len(frames) == 3
    assert all(f[12:14] == b"\x08\x00" and f[23] == 17 and f[36:38] == b"\x27\x0f" for f in frames)
    assert result["received"] >= 3 and result["dropped"] == 0


def test_silent_interface_read_returns_within_timeout(veth_pair: tuple[str, str]) -> None:
    """On a link with no traffic at all, a live read still returns an empty batch after timeout_ms."""
    tap, _ = veth_pair
    script = textwrap.dedent("""
        import time
        from agent.capture import LiveSettings, open_live
        cap = open_live(LiveSettings(interface="wtap0", timeout_ms=100, bpf="udp port 9"))
        started = time.monotonic()
        packets, meta = cap.next_batch()
        print(round(time.monotonic() - started, 3), len(meta))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(["ip", "netns", "exec", tap, sys.executable, "-c", script], env=env,
                         capture_output=True, text=True, timeout=20, check=True).stdout.split()
    assert float(out[0]) < 2.0 and out[1] == "0"
