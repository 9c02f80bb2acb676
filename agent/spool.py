"""The durable, bounded, crash-safe FIFO between the capture pipeline and the publisher (DESIGN.md s5).

Entries are already-sealed messages (opaque bytes) with a kind (the topic suffix). The spool is a
directory of append-only segment files `<first id>.seg`; each record is [magic, lengths, id, CRC32]
+ kind + payload, written with one write(). Removed ids are appended to `<first id>.ack`; a segment
whose entries are all removed (or that the byte cap evicts) is deleted, so freeing space never needs
space. Ids increase and never repeat among stored entries: the newest segment is always kept (its
name and records carry the id); only the id of a record lost in a torn tail can be given again.
Why not SQLite: each 200-byte commit wrote ~8 KiB of WAL (SD wear), and on a full disk neither a
checkpoint nor a delete can run, so a full spool could never drain.

Durability contract. An entry is *committed* when append() has returned its id (> 0): its record
was handed to the kernel with write(), without fsync.
- SIGKILL at any later instruction loses nothing committed: the kernel keeps what was written. A
  record torn by a kill during its write() was never committed and is cut off at the next open.
- Power loss or a kernel crash loses at most what was written since the last sync: a flusher
  thread fsyncs the written files (and the directory after a segment is created) every
  `fsync_interval` seconds when anything changed, so an entry reaches stable storage at most
  fsync_interval plus one fsync after append() returned; flush() syncs at once and returns when
  done. A torn tail is cut at open. This assumes the card honours fsync.
- fsync_interval=0 fsyncs inside every append and remove: power-safe on return, slow on an SD card.
- remove() follows the same rule: a removed entry can come back after power loss (it is re-sent
  and the collector drops the duplicate), never after SIGKILL.
Committed entries leave only by remove(), drop-oldest (byte cap or disk full: the oldest segment
goes whole), a failed CRC, or quarantine; all but remove() are counted in dropped_entries/bytes.

The byte cap counts segment files (ack files add 12 bytes per removed entry until their segment
goes). Nothing raises into the pipeline: an entry bigger than the cap is refused (counted, append()
returns 0). On a full disk the oldest segment is dropped (counted as evicted), later segments are
made smaller, and the write is retried once; if it fails again, or on an IO error, the new entry is
dropped (counted as a write error, append() returns 0).

Damage found at open (bytes that are not a torn tail: bit flips, garbage, a spool path that is not
a directory) renames the file to `<name>.corrupt-<UTC time>` (the newest three are kept) and
rewrites the segment from its intact records; the agent starts anyway.

Threads, and the worst case for append(): one lock guards the state. Under it happen only write()
of one record, pread() for peek, write() of ack records, open/unlink of segment files; fsync runs
in the flusher outside the lock (on duplicated descriptors). No network IO. So append() waits at
most for one in-progress peek/remove/append, for its own write() (which the kernel may throttle when
a slow card holds much dirty page cache) and, when a segment is full or the cap bites, for creating
or unlinking a segment file. Opening reads and checks every segment (CRC32 of the whole spool).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.spool_records import HEAD as _HEAD
from agent.spool_records import decode as _decode
from agent.spool_records import encode as _encode
from agent.spool_records import scan as _scan

_ACK: Final = struct.Struct("<QI")  # removed id, CRC32 of its 8 bytes
_APPEND: Final = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_KEEP_QUARANTINED: Final = 3
_COUNTERS: Final = ("dropped_entries", "dropped_bytes", "quarantined", "appended", "removed", "evicted",
                    "refused", "write_errors", "remove_errors", "corrupt_entries", "torn_tails", "syncs",
                    "sync_errors")


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counters since this Spool was opened; depth, bytes (segment files) and segments as they are now.

    dropped_* = evicted (oldest, for the cap or a full disk) + refused (bigger than the cap) +
    write_errors (append failed) + corrupt_entries (CRC mismatch, damaged records at open).
    torn_tails: segments cut back at open. at_risk_seconds: age of the oldest change not yet fsynced.
    """

    depth: int
    bytes: int
    segments: int
    dropped_entries: int
    dropped_bytes: int
    quarantined: int
    appended: int
    removed: int
    evicted: int
    refused: int
    write_errors: int
    remove_errors: int
    corrupt_entries: int
    torn_tails: int
    syncs: int
    sync_errors: int
    sync_max_seconds: float
    at_risk_seconds: float


@dataclass(slots=True, eq=False)
class _Segment:
    first: int
    path: Path
    ids: array[int] = field(default_factory=lambda: array("q"))
    offs: array[int] = field(default_factory=lambda: array("q"))
    gone: bytearray = field(default_factory=bytearray)
    live: int = 0
    size: int = 0
    head: int = 0  # no entry before this position is live
    reader: int | None = None
    acks: int | None = None


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable FIFO of (id, kind, payload); see the module docstring for the guarantees."""

    def __init__(self, path: Path, max_bytes: int, fsync_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0 or fsync_interval < 0:
            raise ValueError("max_bytes must be > 0 and fsync_interval >= 0")
        self._path, self._max_bytes, self._interval = Path(path), max_bytes, fsync_interval
        self._segment_bytes = min(8 << 20, max(max_bytes // 16, min(4096, max(1, max_bytes // 2))))
        self._clock = clock
        self._lock, self._sync_lock, self._stop = threading.Lock(), threading.Lock(), threading.Event()
        self._n = dict.fromkeys(_COUNTERS, 0)
        self._segments: list[_Segment] = []
        self._depth = self._bytes = 0
        self._writer = -1
        self._dirty: set[int] = set()  # descriptors written since the last sync
        self._finished: set[Path] = set()  # segments written since the last sync and no longer open
        self._dir_dirty, self._closed = False, False
        self._dirty_since: float | None = None
        self._sync_max = 0.0
        self._next_id = 1
        self._open()  # raises OSError only when the directory cannot be used at all: a configuration error
        if not os.access(self._path, os.W_OK | os.X_OK):
            raise PermissionError(f"spool directory not writable: {self._path}")
        self._flusher: threading.Thread | None = None
        if fsync_interval > 0:
            self._flusher = threading.Thread(target=self._flush_loop, name="spool-flusher", daemon=True)
            self._flusher.start()

    def append(self, kind: str, payload: bytes) -> int:
        """Store one entry; its id (> 0, increasing), or 0 when it was dropped (counted)."""
        kind_b = kind.encode()
        if not isinstance(payload, bytes) or len(kind_b) > 255:
            raise TypeError("payload must be bytes and kind at most 255 bytes")
        with self._lock:
            self._check_open()
            entry_id = self._next_id
            record = _encode(entry_id, kind_b, payload)
            if len(record) > self._max_bytes:
                self._count(refused=1, dropped_entries=1, dropped_bytes=len(record))
                return 0
            for attempt in (1, 2):
                try:
                    self._make_room(len(record))
                    self._write(entry_id, record)
                    self._next_id += 1
                    self._count(appended=1)
                    return entry_id
                except OSError as exc:
                    if attempt == 2 or exc.errno not in _NO_SPACE or not self._free_oldest():
                        break
            self._count(write_errors=1, dropped_entries=1, dropped_bytes=len(record))
            return 0

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes]]:
        """Up to `limit` entries with id > after, oldest first; a record failing its CRC is dropped."""
        found: list[tuple[int, str, bytes]] = []
        with self._lock:
            self._check_open()
            start = max(0, bisect_right([s.first for s in self._segments], after) - 1)
            for seg in self._segments[start:]:
                while seg.head < len(seg.ids) and seg.gone[seg.head]:
                    seg.head += 1
                for pos in range(max(seg.head, bisect_right(seg.ids, after)), len(seg.ids)):
                    if len(found) >= limit:
                        return found
                    if not seg.gone[pos]:
                        entry = self._read(seg, pos)
                        if entry is not None:
                            found.append(entry)
        return found

    def remove(self, ids: Iterable[int]) -> None:
        """Forget acknowledged entries; unknown ids are ignored, a failed ack write is counted."""
        with self._lock:
            self._check_open()
            firsts = [s.first for s in self._segments]
            acks: dict[int, list[int]] = {}
            for entry_id in ids:
                index = bisect_right(firsts, entry_id) - 1
                seg = self._segments[index] if index >= 0 else None
                pos = bisect_left(seg.ids, entry_id) if seg else 0
                if seg and pos < len(seg.ids) and seg.ids[pos] == entry_id and not seg.gone[pos]:
                    self._forget(seg, pos)
                    acks.setdefault(index, []).append(entry_id)
            self._count(removed=sum(map(len, acks.values())))
            for index in sorted(acks, reverse=True):
                seg = self._segments[index]
                if seg.live == 0 and seg is not self._segments[-1]:
                    self._delete(seg, evicted=False)
                    continue
                try:
                    if seg.acks is None:
                        seg.acks = os.open(seg.path.with_suffix(".ack"), _APPEND | os.O_CREAT, 0o600)
                        self._dir_changed()
                    os.write(seg.acks, b"".join(_ACK.pack(i, zlib.crc32(i.to_bytes(8, "little")))
                                                for i in acks[index]))
                    if self._interval == 0:
                        os.fsync(seg.acks)
                    self._written(seg.acks)
                except OSError:
                    self._count(remove_errors=1)

    def flush(self) -> None:
        """Make everything appended and removed so far durable (fsync), and return when done."""
        self._sync()

    def close(self) -> None:
        """Stop the flusher, sync, close every descriptor. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self._sync()
        with self._lock:
            self._closed = True
            for fd in [self._writer, *(f for s in self._segments for f in (s.reader, s.acks))]:
                if fd is not None and fd >= 0:
                    os.close(fd)

    @property
    def stats(self) -> SpoolStats:
        with self._lock:
            risk = 0.0 if self._dirty_since is None else self._clock() - self._dirty_since
            return SpoolStats(depth=self._depth, bytes=self._bytes, segments=len(self._segments),
                              sync_max_seconds=self._sync_max, at_risk_seconds=risk, **self._n)

    # ---- under the lock ----------------------------------------------------------------------------

    def _make_room(self, size: int) -> None:
        active = self._segments[-1] if self._segments else None
        if active is None or (active.size and active.size + size > self._segment_bytes):
            self._roll()
        while self._bytes + size > self._max_bytes and len(self._segments) > 1:
            self._delete(self._segments[0], evicted=True)

    def _free_oldest(self) -> bool:
        """Disk full: drop the oldest segment (the only one too, after a roll); later segments are smaller."""
        before = self._bytes
        self._segment_bytes = max(4096, min(self._segment_bytes, self._bytes // 8))
        if len(self._segments) == 1 and self._segments[0].size:
            with contextlib.suppress(OSError):
                self._roll()
        if len(self._segments) > 1:
            self._delete(self._segments[0], evicted=True)
        return self._bytes < before

    def _roll(self) -> None:
        path = self._path / f"{self._next_id:020d}.seg"
        fd = os.open(path, _APPEND | os.O_CREAT, 0o600)
        old = self._segments[-1] if self._segments else None
        if self._writer >= 0 and old is not None:  # closed at once: an open descriptor would pin its space
            if self._writer in self._dirty:
                self._dirty.discard(self._writer)
                self._finished.add(old.path)
            if self._interval == 0:
                os.fsync(self._writer)
            os.close(self._writer)
        self._writer = fd
        self._segments.append(_Segment(self._next_id, path))
        self._dir_changed()
        if old is not None and old.live == 0:
            self._delete(old, evicted=False)

    def _write(self, entry_id: int, record: bytes) -> None:
        seg = self._segments[-1]
        try:
            if os.write(self._writer, record) != len(record):
                raise OSError(errno.ENOSPC, "short write")
            if self._interval == 0:
                os.fsync(self._writer)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._writer, seg.size)  # never leave a partial record behind a later one
            raise
        seg.ids.append(entry_id)
        seg.offs.append(seg.size)
        seg.gone.append(0)
        seg.live, seg.size = seg.live + 1, seg.size + len(record)
        self._depth, self._bytes = self._depth + 1, self._bytes + len(record)
        self._written(self._writer)

    def _read(self, seg: _Segment, pos: int) -> tuple[int, str, bytes] | None:
        entry_id, off = seg.ids[pos], seg.offs[pos]
        end = seg.offs[pos + 1] if pos + 1 < len(seg.offs) else seg.size
        try:
            if seg.reader is None:
                seg.reader = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(seg.reader, end - off, off)
        except OSError:
            data = b""
        if _decode(data, 0, entry_id, entry_id + 1):
            return entry_id, data[_HEAD:_HEAD + data[2]].decode(), data[_HEAD + data[2]:]
        self._count(corrupt_entries=1, dropped_entries=1, dropped_bytes=end - off)
        self._forget(seg, pos)
        return None

    def _forget(self, seg: _Segment, pos: int) -> None:
        seg.gone[pos] = 1
        seg.live -= 1
        self._depth -= 1

    def _delete(self, seg: _Segment, evicted: bool) -> None:
        if evicted and seg.live:
            live_bytes = sum((seg.offs[i + 1] if i + 1 < len(seg.offs) else seg.size) - seg.offs[i]
                             for i in range(len(seg.ids)) if not seg.gone[i])
            self._count(evicted=seg.live, dropped_entries=seg.live, dropped_bytes=live_bytes)
        for fd in (seg.reader, seg.acks):
            if fd is not None:
                self._dirty.discard(fd)
                os.close(fd)
        self._segments.remove(seg)
        self._depth, self._bytes = self._depth - seg.live, self._bytes - seg.size
        for path in (seg.path, seg.path.with_suffix(".ack")):  # segment first: a lone .ack is harmless
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._dir_changed()

    def _written(self, fd: int) -> None:
        if self._interval > 0:
            self._dirty.add(fd)
            if self._dirty_since is None:
                self._dirty_since = self._clock()

    def _dir_changed(self) -> None:
        if self._interval == 0:
            _fsync(os.open(self._path, os.O_RDONLY | os.O_DIRECTORY))
            return
        self._dir_dirty = True
        if self._dirty_since is None:
            self._dirty_since = self._clock()

    def _count(self, **deltas: int) -> None:
        for name, delta in deltas.items():
            self._n[name] += delta

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("spool is closed")

    # ---- syncing: the flusher thread, or flush() --------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sync()

    def _sync(self) -> None:
        with self._sync_lock:
            with self._lock:
                if self._closed or self._dirty_since is None:
                    return
                dirty, finished, dir_dirty = self._dirty, self._finished, self._dir_dirty
                since = self._dirty_since
                self._dirty, self._finished, self._dir_dirty, self._dirty_since = set(), set(), False, None
                fds, ok = [], True
                try:
                    fds = [os.dup(fd) for fd in dirty]  # the lock may close the originals meanwhile
                except OSError:
                    ok = False
            started = self._clock()
            targets: list[int | Path] = [*fds, *finished, *([self._path] if dir_dirty else [])]
            for target in targets:
                try:  # fsync through any descriptor flushes the file's pages written through another
                    _fsync(target if isinstance(target, int) else os.open(target, os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    pass  # deleted since: nothing to keep
                except OSError:
                    ok = False
            with self._lock:
                if ok:
                    self._n["syncs"] += 1
                    self._sync_max = max(self._sync_max, self._clock() - started)
                else:
                    self._n["sync_errors"] += 1
                    self._dirty_since = since if self._dirty_since is None else min(since, self._dirty_since)

    # ---- opening and quarantine ---------------------------------------------------------------------

    def _open(self) -> None:
        if self._path.exists() and not self._path.is_dir():
            self._quarantine(self._path, None)
        self._path.mkdir(parents=True, exist_ok=True)
        for salvage in self._path.glob("*.seg.salvage"):  # finish or undo an interrupted quarantine
            target = salvage.with_suffix("")
            if target.exists():
                salvage.unlink()
            else:
                os.replace(salvage, target)
        found = sorted((int(p.stem), p) for p in self._path.glob("*.seg")
                       if p.stem.isdigit() and len(p.stem) == 20)
        for i, (first, path) in enumerate(found):
            seg = self._load(path, first, found[i + 1][0] if i + 1 < len(found) else 1 << 63)
            if seg is not None:
                self._segments.append(seg)
        known = {seg.path.with_suffix(".ack") for seg in self._segments}
        for ack in self._path.glob("*.ack"):
            if ack not in known:
                ack.unlink()
        for seg in self._segments[:-1]:
            if seg.live == 0:
                self._delete(seg, evicted=False)
        last = self._segments[-1] if self._segments else None
        self._next_id = 1 if last is None else max(last.first, last.ids[-1] + 1 if last.ids else 0)
        if last is not None:
            self._writer = os.open(last.path, _APPEND)

    def _load(self, path: Path, first: int, high: int) -> _Segment | None:
        data = path.read_bytes()
        records, end, damaged = _scan(data, first, high)
        if damaged:
            intact = b"".join(data[off:off + size] for _, off, size in records)
            try:
                self._quarantine(path, intact)
            except OSError:  # no room for the intact copy: set the whole file aside
                path.with_name(path.name + ".salvage").unlink(missing_ok=True)
                self._quarantine(path, None)
                self._count(dropped_entries=len(records), dropped_bytes=len(intact))
                return None
            offsets = [0]
            for _, _, size in records:
                offsets.append(offsets[-1] + size)
            records = [(entry_id, offsets[i], size) for i, (entry_id, _, size) in enumerate(records)]
            end = offsets[-1]
        elif end < len(data):
            os.truncate(path, end)
            self._count(torn_tails=1)
        seg = _Segment(first, path, array("q", (r[0] for r in records)), array("q", (r[1] for r in records)),
                       bytearray(len(records)), len(records), end)
        self._depth, self._bytes = self._depth + seg.live, self._bytes + seg.size
        ack_path = path.with_suffix(".ack")
        acks = ack_path.read_bytes() if ack_path.exists() else b""
        whole = len(acks) - len(acks) % _ACK.size
        if whole < len(acks):
            os.truncate(ack_path, whole)  # a torn ack record: later ones must stay aligned
        for entry_id, crc in _ACK.iter_unpack(acks[:whole]):
            pos = bisect_left(seg.ids, entry_id)
            if crc == zlib.crc32(entry_id.to_bytes(8, "little")) and pos < len(seg.ids) \
                    and seg.ids[pos] == entry_id and not seg.gone[pos]:
                self._forget(seg, pos)
        return seg

    def _quarantine(self, path: Path, intact: bytes | None) -> None:
        """Rename `path` to `<name>.corrupt-<UTC time>`, put `intact` in its place; keep the newest 3."""
        stamp, n = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        while target.exists():
            target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
        salvage = path.with_name(path.name + ".salvage")
        if intact is not None:
            fd = os.open(salvage, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                if os.write(fd, intact) != len(intact):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(path, target)
        if intact is not None:
            os.replace(salvage, path)
        _fsync(os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY))
        self._count(quarantined=1)
        pattern = "*.seg.corrupt-*" if path.suffix == ".seg" else f"{path.name}.corrupt-*"
        for old in sorted(path.parent.glob(pattern), key=lambda p: p.stat().st_mtime)[:-_KEEP_QUARANTINED]:
            old.unlink(missing_ok=True)
