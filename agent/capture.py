"""Packet sources: live interfaces and capture files, read in batches (the only pcapy-ng import).

`next_batch` returns `(packets, meta)` exactly as pcapy-ng gives them: the frames concatenated and
one 16-byte native-endian record `(sec, usec, offset, caplen)` per frame. An empty `meta` means the
end of a file, or a read timeout on a live interface. Wire lengths are not available this way, so
byte counts downstream come from the IP headers.

Several cores (capture.workers > 1): `open_live(..., fanout_group=g)` joins the socket to the
PACKET_FANOUT group `g` in hash mode, so the kernel hands every frame to exactly one member and all
frames of a flow, both directions (the hash is symmetric), to the same one. Such a member starts
closed, with a filter that takes nothing: a socket receives every frame until it joins, so frames
from before all members had joined would otherwise be seen twice. `set_filter` (even with "")
opens it once every member has joined.
"""

from __future__ import annotations

import select
import struct
from dataclasses import dataclass
from typing import Any, Final

import pcapy

from agent.decode import SUPPORTED_LINKTYPES

U32: Final = 1 << 32
_CLOSED: Final = "less 1"  # no frame is that short: a fanout member's filter until set_filter opens it


class CaptureError(Exception):
    """The capture could not be opened or read: a missing file, a bad filter, no such interface."""


@dataclass(frozen=True, slots=True)
class LiveSettings:
    interface: str
    snaplen: int = 1600
    promiscuous: bool = True
    buffer_bytes: int = 16 * 1024 * 1024
    timeout_ms: int = 100
    bpf: str = ""


@dataclass(frozen=True, slots=True)
class KernelStats:
    received: int = 0
    dropped: int = 0
    if_dropped: int = 0


class _StatsDelta:
    """Turns libpcap's 32-bit running counters into deltas that survive wrap-around."""

    def __init__(self) -> None:
        self._previous = (0, 0, 0)

    def update(self, current: tuple[int, int, int]) -> KernelStats:
        deltas = [(now - before) % U32 for now, before in zip(current, self._previous, strict=True)]
        self._previous = current
        return KernelStats(*deltas)


class Capture:
    """One open capture; use `open_offline` or `open_live` to make one."""

    def __init__(self, reader: Any, name: str, live: bool, batch_size: int, bpf: str = "") -> None:
        self._reader = reader
        self.name = name
        self.live = live
        self.batch_size = batch_size
        self._bpf = bpf
        self._delivered = 0
        self.error: str | None = None  # why an offline read stopped before the end of the file
        self._poll: select.poll | None = None
        self._timeout_ms = 0
        self.linktype: int = reader.datalink()
        self._stats = _StatsDelta()
        if self.linktype not in SUPPORTED_LINKTYPES:
            reader.close()
            raise CaptureError(f"{name}: link type {self.linktype} is not supported")

    def next_batch(self) -> tuple[bytes, bytes]:
        if self.error is not None:
            return b"", b""
        if self._poll is not None:
            self._poll.poll(self._timeout_ms)
        try:
            packets, meta = self._reader.next_batch(self.batch_size)
        except pcapy.PcapError as exc:
            if self.live:
                raise CaptureError(f"{self.name}: {exc}") from exc
            return self._salvage(exc)
        self._delivered += len(meta) // 16
        return packets, bytes(meta)

    def set_filter(self, bpf: str) -> None:
        """A new BPF filter on the open handle (needs no privilege); CaptureError if it does not compile."""
        try:
            self._reader.setfilter(bpf)
        except pcapy.PcapError as exc:
            raise CaptureError(f"{self.name}: {exc}") from exc
        self._bpf = bpf

    def _salvage(self, failure: pcapy.PcapError) -> tuple[bytes, bytes]:
        """A damaged file: keep every packet before the damage, which the failed batch swallowed.

        The file is reopened, the packets already delivered are skipped, and the rest are read one
        by one up to the damage. `error` then says why the file ended early.
        """
        self.error = f"{self.name}: {failure}"
        chunks: list[bytes] = []
        meta = bytearray()
        offset = 0
        try:
            reader = pcapy.open_offline(self.name)
            if self._bpf:
                reader.setfilter(self._bpf)
            for index in range(self._delivered + self.batch_size):
                header, data = reader.next()
                if header is None:
                    break
                if index >= self._delivered:
                    seconds, micros = header.getts()
                    meta += struct.pack("=IIII", seconds, micros, offset, len(data))
                    chunks.append(data)
                    offset += len(data)
        except pcapy.PcapError:
            pass
        self._delivered += len(meta) // 16
        return b"".join(chunks), bytes(meta)

    def _wait_at_most(self, timeout_ms: int) -> None:
        """Live reads return after `timeout_ms` even on a silent link.

        libpcap's own timeout only starts with the first packet on Linux (TPACKET_V3), so a quiet
        mirror port would block a read forever; the handle is non-blocking and we poll its fd.
        """
        self._reader.setnonblock(1)
        self._poll = select.poll()
        self._poll.register(self._reader.getfd(), select.POLLIN)
        self._timeout_ms = timeout_ms

    def kernel_stats(self) -> KernelStats:
        """Packets received and dropped since the previous call (live only; zeros for files)."""
        if not self.live:
            return KernelStats()
        received, dropped, if_dropped = self._reader.stats()
        return self._stats.update((received, dropped, if_dropped))

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_offline(path: str, bpf: str = "", batch_size: int = 4096) -> Capture:
    """Open a pcap or pcapng file."""
    try:
        reader = pcapy.open_offline(path)
        if bpf:
            reader.setfilter(bpf)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{path}: {exc}") from exc
    return Capture(reader, path, live=False, batch_size=batch_size, bpf=bpf)


def open_live(settings: LiveSettings, batch_size: int = 1024, fanout_group: int | None = None) -> Capture:
    """Open an interface for passive capture; nothing is ever sent on it.

    With `fanout_group` the capture joins that PACKET_FANOUT group in hash mode and starts closed
    (module docstring): `set_filter(settings.bpf)` opens it. CaptureError if the group cannot be
    joined (no such kernel support, or the id is taken with another mode or interface)."""
    try:
        reader = pcapy.create(settings.interface)
        reader.set_snaplen(settings.snaplen)
        reader.set_promisc(settings.promiscuous)
        reader.set_timeout(settings.timeout_ms)
        reader.set_buffer_size(settings.buffer_bytes)
        reader.activate()
        if fanout_group is not None:
            reader.setfilter(_CLOSED)
        elif settings.bpf:
            reader.setfilter(settings.bpf)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{settings.interface}: {exc}") from exc
    if fanout_group is not None:
        try:
            reader.set_fanout(fanout_group, pcapy.PACKET_FANOUT_HASH)
        except (pcapy.PcapError, OSError, ValueError) as exc:
            reader.close()
            raise CaptureError(f"{settings.interface}: fanout group {fanout_group}: {exc}") from exc
    live = Capture(reader, settings.interface, live=True, batch_size=batch_size)
    live._wait_at_most(settings.timeout_ms)
    return live


def fanout_group(pid: int) -> int:
    """The PACKET_FANOUT group id of the agent running as `pid` (ids are 16 bits, per network namespace)."""
    return pid & 0xFFFF


def check_filter(bpf: str, linktype: int, snaplen: int) -> None:
    """CaptureError if `bpf` does not compile for `linktype`; needs no capture and no privilege."""
    try:
        pcapy.compile(linktype, snaplen, bpf, 1, 0)
    except pcapy.PcapError as exc:
        raise CaptureError(f"bad filter {bpf!r}: {exc}") from exc
