"""agent/sdnotify.py against real AF_UNIX datagram listeners, as systemd's NOTIFY_SOCKET would be."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, Watchdog, watchdog_interval


class _Listener:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env = {"NOTIFY_SOCKET": env_value}

    def messages(self) -> list[list[str]]:
        """Every datagram received so far, each split into its KEY=value lines."""
        got = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return got
            got.append(data.decode().split("\n"))


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[_Listener]:
    """A listener bound to a file system path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    with sock:
        yield _Listener(sock, str(tmp_path / "notify"))


@pytest.fixture
def abstract_listener() -> Iterator[_Listener]:
    """A listener bound to an abstract socket name ('@' in NOTIFY_SOCKET)."""
    name = f"ward-test-notify-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    with sock:
        yield _Listener(sock, "@" + name)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_with_status_is_one_datagram_on_a_path_socket(path_listener: _Listener) -> None:
    """READY=1 and its STATUS travel together in one datagram to a path socket."""
    assert Notifier.from_env(path_listener.env).ready("capturing on eth1")
    assert path_listener.messages() == [["READY=1", "STATUS=capturing on eth1"]]


def test_abstract_socket_receives_notifications(abstract_listener: _Listener) -> None:
    """An '@name' NOTIFY_SOCKET reaches the abstract socket of that name."""
    notifier = Notifier.from_env(abstract_listener.env)
    assert notifier.ready() and notifier.watchdog() and notifier.stopping("bye")
    assert abstract_listener.messages() == [["READY=1"], ["WATCHDOG=1"], ["STOPPING=1", "STATUS=bye"]]


def test_status_newlines_cannot_inject_fields(path_listener: _Listener) -> None:
    """A multi-line status stays one STATUS field, so it cannot smuggle in READY=1 or similar."""
    Notifier.from_env(path_listener.env).status("spool full\nREADY=1")
    assert path_listener.messages() == [["STATUS=spool full READY=1"]]


def test_unset_notify_socket_is_a_no_op() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping()


def test_relative_or_empty_socket_names_are_ignored() -> None:
    """Only absolute paths and '@' names are addresses; anything else disables notification."""
    assert not Notifier.from_env({"NOTIFY_SOCKET": "run/notify"}).enabled
    assert not Notifier.from_env({"NOTIFY_SOCKET": "@"}).enabled


def test_missing_socket_reports_failure_without_raising(tmp_path: Path) -> None:
    """A socket path with nobody listening makes notify() return False instead of raising."""
    assert not Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready()


def test_watchdog_interval_reads_usec() -> None:
    """WATCHDOG_USEC=30000000 means a 30 s interval."""
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0


def test_watchdog_interval_for_another_pid_is_none() -> None:
    """A watchdog meant for another process (WATCHDOG_PID) does not apply to this one."""
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(env) is None
    assert watchdog_interval({**env, "WATCHDOG_PID": str(os.getpid())}) == 30.0


@pytest.mark.parametrize("value", ["", "0", "-5", "abc", "1.5", str(2**64)])
def test_watchdog_interval_rejects_bad_values(value: str) -> None:
    """Missing, zero, negative, non-integer and infinite WATCHDOG_USEC disable the watchdog."""
    assert watchdog_interval({"WATCHDOG_USEC": value}) is None


def test_watchdog_pings_at_most_every_half_interval(path_listener: _Listener) -> None:
    """With progress every second and WatchdogSec=10, pings go out at t=0, 5 and 10 only."""
    clock = _Clock()
    dog = Watchdog(Notifier.from_env(path_listener.env), 10.0, clock=clock)
    sent = []
    for second in range(11):
        clock.now = 1000.0 + second
        if dog.beat(True):
            sent.append(second)
    assert sent == [0, 5, 10]
    assert path_listener.messages() == [["WATCHDOG=1"]] * 3


def test_watchdog_stops_pinging_when_progress_stalls(path_listener: _Listener) -> None:
    """Once the caller reports no progress, no more pings are sent however long it waits."""
    clock = _Clock()
    dog = Watchdog(Notifier.from_env(path_listener.env), 4.0, clock=clock)
    assert dog.beat(True)
    for step in range(1, 20):
        clock.now += step
        assert not dog.beat(False)
    assert path_listener.messages() == [["WATCHDOG=1"]]


def test_watchdog_resumes_at_once_when_progress_returns(path_listener: _Listener) -> None:
    """After a stall longer than half the interval, the first progress pings immediately."""
    clock = _Clock()
    dog = Watchdog(Notifier.from_env(path_listener.env), 4.0, clock=clock)
    dog.beat(True)
    clock.now += 3
    assert not dog.beat(False)
    assert dog.beat(True)
    assert dog.pings == 2


def test_watchdog_from_env_uses_systemd_variables(abstract_listener: _Listener) -> None:
    """Watchdog.from_env takes the socket and WATCHDOG_USEC (here 2 s: a ping every 1 s at most)."""
    dog = Watchdog.from_env({**abstract_listener.env, "WATCHDOG_USEC": "2000000"})
    assert dog.period == 1.0
    assert dog.beat(True)
    assert abstract_listener.messages() == [["WATCHDOG=1"]]


def test_watchdog_without_interval_never_pings(path_listener: _Listener) -> None:
    """With no WatchdogSec configured, beat() sends nothing."""
    dog = Watchdog.from_env(path_listener.env)
    assert dog.period is None
    assert not dog.beat(True)
    assert path_listener.messages() == []
