"""agent/privileges.py for real: child processes open a packet socket, drop privileges, and report.

Each scenario runs in a child Python process (the drop is irreversible), which prints one JSON line.
Root-only scenarios skip when the tests do not run as root; the ambient-capability scenario starts the
child as `nobody` with CAP_NET_RAW through setpriv(1), the way systemd's AmbientCapabilities= does.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from agent.privileges import current_capabilities

CAP_NET_RAW = 1 << 13
NOBODY = pwd.getpwnam("nobody")

_needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                 reason="needs root to open packet sockets and switch user")

_SCENARIO = textwrap.dedent("""
    import json, os, socket, sys, threading
    from agent.privileges import current_capabilities, drop_privileges, raised_net_raw

    def packet_socket():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind(("lo", 0))
        return sock

    out = {"before": current_capabilities()}
    capture = packet_socket()
    if "--thread" in sys.argv:
        threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()
    try:
        drop_privileges(sys.argv[1], keep_net_raw="--keep" in sys.argv)
    except (PermissionError, KeyError) as exc:
        out["drop_error"] = type(exc).__name__ + ": " + str(exc)
        print(json.dumps(out)); sys.exit(0)
    out["after"] = current_capabilities()
    out["uid"], out["gid"], out["groups"] = os.getresuid(), os.getresgid(), os.getgroups()
    try:
        packet_socket()
        out["new_packet_socket"] = "opened"
    except PermissionError:
        out["new_packet_socket"] = "denied"
    marker = b"ward-privileges-%d" % os.getpid()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(marker, ("127.0.0.1", 9))
    capture.settimeout(2)
    out["captured_after_drop"] = False
    try:
        for _ in range(50):
            if marker in capture.recv(65535):
                out["captured_after_drop"] = True
                break
    except TimeoutError:
        pass
    try:
        os.setuid(0)
        out["regained_root"] = True
    except PermissionError:
        out["regained_root"] = False
    try:
        with raised_net_raw():
            out["raised"] = current_capabilities()
            packet_socket()
        out["raised_packet_socket"] = "opened"
    except PermissionError as exc:
        out["raised_packet_socket"] = "refused: " + str(exc)
    out["after_raise"] = current_capabilities()
    try:
        packet_socket()
        out["packet_socket_after_raise"] = "opened"
    except PermissionError:
        out["packet_socket_after_raise"] = "denied"
    print(json.dumps(out))
""")


def _run(prefix: list[str], *args: str) -> dict[str, Any]:
    proc = subprocess.run([*prefix, sys.executable, "-c", _SCENARIO, *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _as_nobody_with_net_raw() -> list[str]:
    """The setpriv prefix that starts a child as nobody holding CAP_NET_RAW as an ambient capability."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to start a child as nobody with CAP_NET_RAW")
    prefix = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
              "--inh-caps=+net_raw", "--ambient-caps=+net_raw"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import agent.privileges"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot import the agent from this checkout: {probe.stderr.strip()[-200:]}")
    return prefix


@_needs_root
def test_root_drop_keeps_open_capture_and_loses_everything_else() -> None:
    """Root opens a packet socket, drops to nobody: the socket still captures, nothing else is left."""
    out = _run([], "nobody")
    assert out["before"]["CapEff"] & CAP_NET_RAW
    assert out["captured_after_drop"] is True
    assert out["new_packet_socket"] == "denied"
    assert out["after"] == {"CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapAmb": 0, "CapBnd": 0}
    assert out["uid"] == [NOBODY.pw_uid] * 3 and out["gid"] == [NOBODY.pw_gid] * 3
    assert out["groups"] == []
    assert out["regained_root"] is False


@_needs_root
def test_root_asked_to_become_root_is_refused() -> None:
    """Dropping 'to root' is no drop: it raises PermissionError."""
    out = _run([], "root")
    assert out["drop_error"].startswith("PermissionError: still root")


@_needs_root
def test_root_asked_for_an_unknown_user_raises_key_error() -> None:
    """An unknown service user raises KeyError before anything changes."""
    out = _run([], "ward-no-such-user")
    assert out["drop_error"].startswith("KeyError")


def test_ambient_net_raw_user_ends_with_no_capabilities() -> None:
    """Started as nobody with ambient CAP_NET_RAW: after the drop every set but the bounding one is 0."""
    out = _run(_as_nobody_with_net_raw(), "ward-agent")
    for name in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert out["before"][name] & CAP_NET_RAW, name
        assert out["after"][name] == 0, name
    assert out["uid"] == [NOBODY.pw_uid] * 3
    assert out["captured_after_drop"] is True
    assert out["new_packet_socket"] == "denied"


def test_ambient_drop_keeping_net_raw_leaves_it_permitted_only() -> None:
    """keep_net_raw: CAP_NET_RAW stays permitted, nothing is effective, no new packet socket opens."""
    out = _run(_as_nobody_with_net_raw(), "ward-agent", "--keep")
    assert out["after"]["CapPrm"] == CAP_NET_RAW
    assert (out["after"]["CapEff"], out["after"]["CapInh"], out["after"]["CapAmb"]) == (0, 0, 0)
    assert out["new_packet_socket"] == "denied"
    assert out["regained_root"] is False


def test_raised_net_raw_opens_a_capture_then_clears_it_again() -> None:
    """raised_net_raw() makes CAP_NET_RAW effective for its block only: one socket opens, later ones not."""
    out = _run(_as_nobody_with_net_raw(), "ward-agent", "--keep")
    assert out["raised"]["CapEff"] == CAP_NET_RAW
    assert out["raised_packet_socket"] == "opened"
    assert out["after_raise"]["CapEff"] == 0 and out["after_raise"]["CapPrm"] == CAP_NET_RAW
    assert out["packet_socket_after_raise"] == "denied"


def test_without_keep_net_raw_cannot_be_raised() -> None:
    """Dropped without keep_net_raw, raised_net_raw() refuses with PermissionError."""
    out = _run(_as_nobody_with_net_raw(), "ward-agent")
    assert out["raised_packet_socket"].startswith("refused: CAP_NET_RAW is not permitted")


@_needs_root
def test_root_keeps_nothing_even_when_asked_to_keep_net_raw() -> None:
    """Started as root, keep_net_raw is ignored: every set is empty and nothing can be raised."""
    out = _run([], "nobody", "--keep")
    assert out["after"] == {"CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapAmb": 0, "CapBnd": 0}
    assert out["raised_packet_socket"].startswith("refused")


def test_ambient_drop_with_a_thread_already_running_is_refused() -> None:
    """A thread started before the drop keeps its capabilities, so the drop raises PermissionError."""
    out = _run(_as_nobody_with_net_raw(), "ward-agent", "--thread")
    assert "drop privileges before starting threads" in out["drop_error"]


def test_current_capabilities_reads_all_five_sets() -> None:
    """current_capabilities() returns the five sets of /proc/self/status as integers."""
    caps = current_capabilities()
    assert set(caps) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert caps["CapEff"] & ~caps["CapPrm"] == 0  # effective is always within permitted
