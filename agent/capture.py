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

import contextlib
import os
import select
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pcapy

from agent import pcapng
from agent.decode import DLT_RAW, LINKTYPE_RAW, SUPPORTED_LINKTYPES

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

    def __init__(self, reader: Any, name: str, live: bool, batch_size: int, bpf: str = "",
                 unpacked: str | None = None) -> None:
        self._reader = reader
        self.name = name
        self._unpacked = unpacked  # a decompressed copy of a .gz file, read instead and removed at close
        self._file = unpacked or name
        self.live = live
        self.batch_size = batch_size
        self._bpf = bpf
        self._delivered = 0
        self.error: str | None = None  # why an offline read stopped before the end of the file
        self._rest: _PcapngFile | None = None  # agent.pcapng reading on where libpcap gave up
        self._poll: select.poll | None = None
        self._timeout_ms = 0
        self.linktype: int = reader.datalink()
        self._stats = _StatsDelta()
        if live and self.linktype not in SUPPORTED_LINKTYPES:  # a file's frames are counted, not refused
            reader.close()
            raise CaptureError(f"{name}: link type {self.linktype} is not supported")

    def next_batch(self) -> tuple[bytes, bytes]:
        if self._rest is not None:
            packets, meta = self._rest.next_batch()
            self.linktype, self.error = self._rest.linktype, self._rest.error
            return packets, meta
        if self.error is not None:
            return b"", b""
        if self._poll is not None:
            self._poll.poll(self._timeout_ms)
        try:
            packets, meta = self._reader.next_batch(self.batch_size)
        except pcapy.PcapError as exc:
            if self.live:
                raise CaptureError(f"{self.name}: {exc}") from exc
            if self._continue_with_pcapng():
                return self.next_batch()
            return self._salvage(exc)
        self._delivered += len(meta) // 16
        return packets, bytes(meta)

    def _continue_with_pcapng(self) -> bool:
        """libpcap gave up on a pcapng file part-way (an interface of another link type appeared):
        agent.pcapng reads on from the same packet. False if it cannot get there either."""
        try:
            if not pcapng.is_pcapng(self._file):
                return False
            rest = _PcapngFile(self._file, self._bpf, self.batch_size)
        except (OSError, pcapng.PcapngError):
            return False
        skip = self._delivered
        while skip:
            rest.batch_size = min(skip, self.batch_size)
            meta = rest.next_batch()[1]
            if not meta or rest.error is not None:
                rest.close()
                return False
            skip -= len(meta) // 16
        rest.batch_size = self.batch_size
        self._reader.close()
        self._rest = rest
        return True

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
            reader = pcapy.open_offline(self._file)
            if self._bpf:
                reader.setfilter(self._bpf)
            for index in range(self._delivered + self.batch_size):
                header, data = reader.next()
                if header is None:
                    break
                if index >= self._delivered:
                    seconds, micros = header.getts()
                    meta += struct.pack("=IIII", seconds & 0xFFFFFFFF, micros & 0xFFFFFFFF, offset, len(data))
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
        (self._rest or self._reader).close()
        if self._unpacked is not None:
            Path(self._unpacked).unlink(missing_ok=True)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_offline(path: str, bpf: str = "", batch_size: int = 4096) -> Capture:
    """Open a pcap or pcapng file, gzip-compressed or not (as tshark reads them). Where libpcap gives
    up on a pcapng file part-way (an interface of another link type), agent.pcapng reads on, and
    `linktype` may then change from batch to batch."""
    unpacked = _gunzipped(path)
    try:
        reader = pcapy.open_offline(unpacked or path)
        if bpf:
            reader.setfilter(bpf)
    except pcapy.PcapError as exc:
        if unpacked is not None:
            Path(unpacked).unlink(missing_ok=True)
        raise CaptureError(f"{path}: {exc}") from exc
    return Capture(reader, path, live=False, batch_size=batch_size, bpf=bpf, unpacked=unpacked)


def _gunzipped(path: str) -> str | None:
    """A temporary decompressed copy of a gzip file (None if `path` is not gzip). A damaged or cut
    stream keeps what came before the damage: libpcap then reports the file as cut short. Only a
    regular file is looked at: reading a FIFO's first bytes would take them from libpcap."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as stream:
            if stream.read(2) != b"\x1f\x8b":
                return None
    except OSError:
        return None  # libpcap says why
    with tempfile.NamedTemporaryFile(prefix="ward-replay-", suffix=".pcap", delete=False) as copy, \
            open(path, "rb") as source, contextlib.suppress(zlib.error):
        member = zlib.decompressobj(wbits=31)  # gzip framing; a new object per concatenated member
        while chunk := source.read(1 << 16):
            while chunk:
                copy.write(member.decompress(chunk))
                chunk = member.unused_data if member.eof else b""
                if member.eof:
                    member = zlib.decompressobj(wbits=31)
    return copy.name


class _PcapngFile(Capture):
    """A pcapng file read by agent.pcapng: each batch holds frames of one link type, `linktype` is
    that batch's (callers set it on the flow table per batch). A BPF filter is compiled per link type."""

    def __init__(self, path: str, bpf: str, batch_size: int) -> None:  # Capture's own wants a pcapy reader
        self.name, self.live, self.batch_size, self._bpf = path, False, batch_size, bpf
        self.error: str | None = None
        self._stream = open(path, "rb")  # noqa: SIM115  (closed by close())
        self._packets = pcapng.packets(self._stream)
        self._held: tuple[int, int, int, bytes] | None = None
        self._programs: dict[int, Any] = {}
        try:
            first = self._peek()
        except pcapng.PcapngError:
            self._stream.close()
            raise
        self.linktype = first[0] if first is not None else 1

    def _peek(self) -> tuple[int, int, int, bytes] | None:
        if self._held is None:
            self._held = next(self._packets, None)
        return self._held

    def next_batch(self) -> tuple[bytes, bytes]:
        chunks: list[bytes] = []
        meta = bytearray()
        offset = 0
        try:
            while len(chunks) < self.batch_size:
                packet = self._peek()
                if packet is None or (chunks and packet[0] != self.linktype):
                    break
                self._held = None
                linktype, seconds, micros, frame = packet
                self.linktype = linktype
                if self._bpf and not self._passes(linktype, frame):
                    continue
                meta += struct.pack("=IIII", max(seconds, 0) & 0xFFFFFFFF, micros, offset, len(frame))
                chunks.append(frame)
                offset += len(frame)
        except (pcapng.PcapngError, CaptureError) as exc:
            self.error = f"{self.name}: {exc}"
            self._packets = iter(())
        return b"".join(chunks), bytes(meta)

    def _passes(self, linktype: int, frame: bytes) -> bool:
        program = self._programs.get(linktype)
        if program is None:
            program = self._programs[linktype] = _compiled(self._bpf, linktype, 262144)
        return bool(program.filter(frame))

    def set_filter(self, bpf: str) -> None:
        self._bpf, self._programs = bpf, {}

    def close(self) -> None:
        self._stream.close()


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
    _compiled(bpf, linktype, snaplen)


def _compiled(bpf: str, linktype: int, snaplen: int) -> Any:
    """The BPF program of `bpf` for `linktype` (a file's LINKTYPE_RAW is libpcap's DLT_RAW); CaptureError."""
    try:
        return pcapy.compile(DLT_RAW if linktype == LINKTYPE_RAW else linktype, snaplen, bpf, 1, 0)
    except pcapy.PcapError as exc:
        raise CaptureError(f"bad filter {bpf!r} for link type {linktype}: {exc}") from exc
