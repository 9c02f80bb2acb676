"""Give up privileges once the capture is open: no root, no effective capability, no way back.

Opening an AF_PACKET socket needs CAP_NET_RAW; reading from one that is already open needs nothing.
So the agent opens its capture first and then calls `drop_privileges`:

- started as root (by hand, or an init without User=): the bounding set is emptied while that is still
  allowed, supplementary groups are cleared, the real/effective/saved gid and uid become the service
  user's, and then every capability set is cleared;
- started as the service user with CAP_NET_RAW as an ambient capability (ward-agent.service): the
  ambient set is cleared and the effective, permitted and inheritable sets are zeroed with capset(2).
  The bounding set stays as systemd left it (CAP_NET_RAW only): emptying it needs CAP_SETPCAP, and with
  nothing permitted and no_new_privs set it can never be used again.
  With `keep_net_raw` (capture.reopen_on_push, the default) CAP_NET_RAW stays *permitted* but not
  effective, so a pushed capture change can reopen the capture: `raised_net_raw()` makes it effective
  in the calling thread for the open and clears it again. The trade-off is small: the open capture
  socket could already send on the tap, and a packet socket is all CAP_NET_RAW grants.

In both cases PR_SET_NO_NEW_PRIVS is set, so no later execve (of a set-uid or file-capability binary)
can gain anything. The drop is then checked against /proc/self/status and a failure raises
PermissionError: the agent must not go on capturing with privileges it claims to have dropped.

Libc is called through ctypes because the standard library has no capset(2) or PR_CAP_AMBIENT; ctypes
only calls functions here (no callbacks), which is fine under MemoryDenyWriteExecute=yes.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_NET_RAW = 1 << 13
_CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
_DROPPED = ("CapInh", "CapPrm", "CapEff", "CapAmb")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    libc.prctl.restype = ctypes.c_int
    libc.capset.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
    libc.capset.restype = ctypes.c_int
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise PermissionError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(libc: ctypes.CDLL, option: int, arg2: int = 0, what: str = "prctl") -> None:
    _check(libc.prctl(option, arg2, 0, 0, 0), what)


def _capset(libc: ctypes.CDLL, effective: int, permitted: int) -> None:
    """Set this thread's effective and permitted sets (capabilities below 32); inheritable empty."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # version 3: two 32-bit words per set; the upper words stay zero
    data[0].effective, data[0].permitted = effective, permitted
    _check(libc.capset(ctypes.byref(header), data), "capset")


def _clear_capabilities(libc: ctypes.CDLL, keep: int = 0) -> None:
    """Empty the ambient, effective and inheritable sets of this thread; permitted keeps only `keep`."""
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")
    _capset(libc, 0, keep)


def _empty_bounding_set(libc: ctypes.CDLL) -> None:
    """Drop every capability from the bounding set (needs CAP_SETPCAP, i.e. root here)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _prctl(libc, _PR_CAPBSET_DROP, cap, f"PR_CAPBSET_DROP {cap}")


def current_capabilities(status: Path = Path("/proc/self/status")) -> dict[str, int]:
    """This process's capability sets from /proc/self/status: CapInh/CapPrm/CapEff/CapBnd/CapAmb.

    `status` may name a thread's status file instead (/proc/self/task/TID/status).
    """
    caps: dict[str, int] = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in _CAP_FIELDS:
            caps[key] = int(value.strip(), 16)
    return caps


def drop_privileges(user: str, keep_net_raw: bool = False) -> None:
    """Become `user` if running as root, then hold no capability and set no_new_privs.

    Call it after the capture sockets are open, before reading any traffic and before starting any
    thread: capabilities belong to each thread, and capset(2) changes only the caller's (a thread
    started earlier would keep CAP_NET_RAW; that is detected and raised). When not running as
    root the process keeps its user (systemd already chose it) and `user` is not looked up; then
    `keep_net_raw` keeps CAP_NET_RAW permitted (never effective) if it was. Root always ends with
    nothing. Raises KeyError if root is asked to become a user that does not exist, PermissionError if
    any step fails or the result still holds more than that or can regain root.
    """
    libc = _libc()
    keep = 0
    if os.geteuid() == 0 or os.getuid() == 0:
        entry = pwd.getpwnam(user)
        _empty_bounding_set(libc)
        os.setgroups([])
        os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
        os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    elif keep_net_raw:
        keep = current_capabilities()["CapPrm"] & _CAP_NET_RAW
    _clear_capabilities(libc, keep)
    _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _verify_dropped(keep)


def can_raise_net_raw() -> bool:
    """True if this thread holds CAP_NET_RAW permitted, so `raised_net_raw()` can open a capture."""
    status = Path(f"/proc/self/task/{threading.get_native_id()}/status")
    return bool(current_capabilities(status)["CapPrm"] & _CAP_NET_RAW)


@contextmanager
def raised_net_raw() -> Iterator[None]:
    """CAP_NET_RAW effective in the calling thread for the block, permitted-only again after it.

    PermissionError if it is not permitted (started as root, or capture.reopen_on_push off)."""
    if not can_raise_net_raw():
        raise PermissionError("CAP_NET_RAW is not permitted: the agent gave it up after start-up")
    libc = _libc()
    _capset(libc, _CAP_NET_RAW, _CAP_NET_RAW)
    try:
        yield
    finally:
        _capset(libc, 0, _CAP_NET_RAW)


def _verify_dropped(kept: int) -> None:
    for status in sorted(Path("/proc/self/task").glob("*/status")):
        try:
            caps = current_capabilities(status)
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        left = {name: f"{value:#x}" for name, value in caps.items()
                if name in _DROPPED and value & ~(kept if name == "CapPrm" else 0)}
        if left:
            raise PermissionError(f"thread {status.parent.name} still holds capabilities after the drop: "
                                  f"{left}; drop privileges before starting threads")
    if 0 in os.getresuid() or 0 in os.getresgid():
        # Only reached when root was asked to become root (user "root"): refuse, it is no drop at all.
        raise PermissionError("still root after the drop")
