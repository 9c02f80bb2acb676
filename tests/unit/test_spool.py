"""agent.spool: FIFO order, ids, removal, the byte cap, damage at open, threads, and a full disk."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.spool import Spool

RECORD = 19  # header bytes per record: magic, lengths, id, CRC32


def _data(n: int, size: int = 200) -> bytes:
    return f"entry-{n}:".encode().ljust(size, b".")


def _filled(path: Path, count: int, max_bytes: int = 1 << 30, **kw: float) -> Spool:
    spool = Spool(path, max_bytes, **kw)
    for n in range(count):
        spool.append("flows", _data(n))
    return spool


def _reopen(spool: Spool, path: Path) -> Spool:
    spool.close()
    return Spool(path, 1 << 30, fsync_interval=0)


def _segment(path: Path) -> Path:
    return sorted(path.glob("*.seg"))[0]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def test_entries_come_back_oldest_first(spool_dir: Path) -> None:
    """peek returns (id, kind, payload) in append order."""
    spool = Spool(spool_dir, 1 << 20)
    spool.append("flows", b"a")
    spool.append("findings", b"b")
    spool.append("health", b"")
    assert spool.peek(10) == [(1, "flows", b"a"), (2, "findings", b"b"), (3, "health", b"")]
    spool.close()


def test_peek_honours_limit_and_after(spool_dir: Path) -> None:
    """peek(limit, after) gives at most `limit` entries with ids above `after`."""
    spool = _filled(spool_dir, 10)
    assert [e[0] for e in spool.peek(3, after=4)] == [5, 6, 7]
    assert spool.peek(5, after=10) == []
    spool.close()


def test_remove_forgets_entries_and_ignores_unknown_ids(spool_dir: Path) -> None:
    """Removed ids are gone, unknown or repeated ids change nothing."""
    spool = _filled(spool_dir, 5)
    spool.remove([2, 4, 99, 2])
    assert [e[0] for e in spool.peek(10)] == [1, 3, 5]
    assert (spool.stats.depth, spool.stats.removed) == (3, 2)
    spool.close()


def test_entries_and_removals_survive_reopen(spool_dir: Path) -> None:
    """After close and reopen the same entries remain, removed ones stay removed."""
    spool = _filled(spool_dir, 6)
    spool.remove([1, 5])
    spool = _reopen(spool, spool_dir)
    assert [(e[0], e[2]) for e in spool.peek(10)] == [(i, _data(i - 1)) for i in (2, 3, 4, 6)]
    spool.close()


def test_ids_keep_increasing_across_reopen_even_when_emptied(spool_dir: Path) -> None:
    """Ids are never reused, also after every entry was removed and the spool reopened."""
    spool = _filled(spool_dir, 3)
    spool.remove([1, 2, 3])
    spool = _reopen(spool, spool_dir)
    assert spool.append("flows", b"x") == 4
    spool.close()


def test_fully_removed_segments_are_deleted(spool_dir: Path) -> None:
    """Once every entry of an older segment is removed, its file goes; only the newest stays."""
    spool = _filled(spool_dir, 400, max_bytes=64 << 10)
    assert spool.stats.segments > 2
    spool.remove(e[0] for e in spool.peek(1000))
    assert len(list(spool_dir.glob("*.seg"))) == 1 and spool.stats.depth == 0
    spool.close()


def test_cap_drops_the_oldest_and_counts_them(spool_dir: Path) -> None:
    """Past max_bytes the oldest entries go; what is left is the newest run; drops add up."""
    cap = 64 << 10
    spool = _filled(spool_dir, 1000, max_bytes=cap)
    stats = spool.stats
    ids = [e[0] for e in spool.peek(2000)]
    assert stats.bytes <= cap and ids == list(range(1001 - len(ids), 1001))
    assert stats.evicted == stats.dropped_entries == 1000 - stats.depth > 0
    assert stats.dropped_bytes == stats.evicted * (RECORD + len("flows") + 200)
    assert sum(p.stat().st_size for p in spool_dir.glob("*.seg")) <= cap
    spool.close()


def test_entry_bigger_than_the_cap_is_refused_and_counted(spool_dir: Path) -> None:
    """An entry that cannot fit returns 0, is counted, and leaves the spool untouched."""
    spool = _filled(spool_dir, 2, max_bytes=4096)
    assert spool.append("flows", bytes(5000)) == 0
    stats = spool.stats
    assert (stats.refused, stats.dropped_entries, stats.depth) == (1, 1, 2)
    spool.close()


def test_a_torn_tail_is_cut_without_quarantine(spool_dir: Path) -> None:
    """A record cut short at the end of the file (a crash mid-write) is dropped; the rest stays."""
    spool = _filled(spool_dir, 5)
    spool.close()
    segment = _segment(spool_dir)
    os.truncate(segment, segment.stat().st_size - 50)
    spool = Spool(spool_dir, 1 << 30)
    assert [e[0] for e in spool.peek(10)] == [1, 2, 3, 4]
    assert (spool.stats.torn_tails, spool.stats.quarantined) == (1, 0)
    assert spool.append("flows", b"next") == 5 and spool.peek(1, after=4)[0][2] == b"next"  # 5 never survived
    spool.close()


def test_bit_flips_in_the_middle_quarantine_the_segment_and_keep_intact_entries(spool_dir: Path) -> None:
    """A damaged record is set aside with its file; every other entry is still delivered."""
    spool = _filled(spool_dir, 5)
    spool.close()
    segment = _segment(spool_dir)
    data = bytearray(segment.read_bytes())
    data[2 * (RECORD + 205) + 100] ^= 0x10  # inside the third payload
    segment.write_bytes(bytes(data))
    spool = Spool(spool_dir, 1 << 30)
    assert [e[0] for e in spool.peek(10)] == [1, 2, 4, 5]
    assert spool.stats.quarantined == 1
    assert [p.read_bytes() for p in spool_dir.glob("*.seg.corrupt-*")] == [bytes(data)]
    spool.close()


def test_random_garbage_segment_is_quarantined_and_spool_starts(spool_dir: Path) -> None:
    """A segment of random bytes is set aside; the spool opens empty and takes new entries."""
    spool = _filled(spool_dir, 5)
    spool.close()
    _segment(spool_dir).write_bytes(random.Random(1).randbytes(1500))
    spool = Spool(spool_dir, 1 << 30)
    assert spool.peek(10) == [] and spool.stats.quarantined == 1
    assert spool.append("flows", b"x") > 0
    spool.close()


def test_garbage_after_the_last_record_is_quarantined_not_silently_cut(spool_dir: Path) -> None:
    """Non-zero junk that is not a partial record counts as damage; all records are kept."""
    spool = _filled(spool_dir, 5)
    spool.close()
    with _segment(spool_dir).open("ab") as f:
        f.write(b"\xff" * 300)
    spool = Spool(spool_dir, 1 << 30)
    assert len(spool.peek(10)) == 5 and spool.stats.quarantined == 1
    spool.close()


def test_zeros_after_the_last_record_are_a_torn_tail(spool_dir: Path) -> None:
    """Zero-filled blocks after a power cut are cut off without quarantine."""
    spool = _filled(spool_dir, 3)
    spool.close()
    with _segment(spool_dir).open("ab") as f:
        f.write(bytes(4096))
    spool = Spool(spool_dir, 1 << 30)
    assert len(spool.peek(10)) == 3 and (spool.stats.torn_tails, spool.stats.quarantined) == (1, 0)
    spool.close()


def test_zero_length_segment_opens_as_empty(spool_dir: Path) -> None:
    """An empty segment (a crash right after it was created) is valid and keeps its id."""
    spool_dir.mkdir()
    (spool_dir / f"{7:020d}.seg").touch()
    spool = Spool(spool_dir, 1 << 30)
    assert spool.stats.quarantined == 0 and spool.append("flows", b"x") == 7
    spool.close()


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00" + bytes(100), b"\x00\xff" * 999])
def test_spool_path_that_is_a_file_is_quarantined(spool_dir: Path, content: bytes) -> None:
    """A regular file (empty, foreign, garbage) where the spool directory belongs is renamed aside."""
    spool_dir.write_bytes(content)
    spool = Spool(spool_dir, 1 << 30)
    assert spool.stats.quarantined == 1 and spool.append("flows", b"x") == 1
    assert [p.read_bytes() for p in spool_dir.parent.glob("spool.corrupt-*")] == [content]
    spool.close()


def test_only_the_newest_three_quarantined_files_are_kept(spool_dir: Path) -> None:
    """Repeated damage cannot fill the disk with quarantined copies."""
    for n in range(5):
        spool = _filled(spool_dir, 2)
        spool.close()
        _segment(spool_dir).write_bytes(random.Random(n).randbytes(600))
        Spool(spool_dir, 1 << 30).close()
    assert len(list(spool_dir.glob("*.corrupt-*"))) == 3


def test_interrupted_quarantine_is_finished_at_open(spool_dir: Path) -> None:
    """A salvage copy left by a kill between the two renames takes the segment's place."""
    spool = _filled(spool_dir, 3)
    spool.close()
    segment = _segment(spool_dir)
    segment.rename(segment.with_name(segment.name + ".salvage"))
    spool = Spool(spool_dir, 1 << 30)
    assert len(spool.peek(10)) == 3
    spool.close()


def test_damage_while_running_drops_only_the_bad_entry(spool_dir: Path) -> None:
    """A record damaged after open fails its CRC at peek: skipped and counted, never handed out."""
    spool = _filled(spool_dir, 3)
    with _segment(spool_dir).open("r+b") as f:
        f.seek(RECORD + 205 + 50)
        f.write(b"!")
    assert [e[0] for e in spool.peek(10)] == [1, 3]
    assert (spool.stats.corrupt_entries, spool.stats.dropped_entries, spool.stats.depth) == (1, 1, 2)
    spool.close()


def test_a_torn_ack_record_keeps_later_acks_aligned(spool_dir: Path) -> None:
    """A partial ack record is cut at open, so acks written after it are still read."""
    spool = _filled(spool_dir, 4)
    spool.remove([1])
    spool.close()
    ack = next(spool_dir.glob("*.ack"))
    with ack.open("ab") as f:
        f.write(b"\x02\x00\x00")
    spool = Spool(spool_dir, 1 << 30, fsync_interval=0)
    spool.remove([3])
    spool = _reopen(spool, spool_dir)
    assert [e[0] for e in spool.peek(10)] == [2, 4]
    spool.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 5 * (RECORD + 205)), flips=st.lists(st.integers(0, 5 * (RECORD + 205) - 1),
                                                               max_size=4))
def test_any_cut_or_flip_opens_and_yields_only_original_entries(tmp_path: Path, cut: int,
                                                                 flips: list[int]) -> None:
    """Whatever is cut or flipped, open succeeds and every entry handed out is an original, in order."""
    directory = tmp_path / f"s{cut}-{'-'.join(map(str, flips))}"
    spool = _filled(directory, 5, fsync_interval=0)
    spool.close()
    segment = _segment(directory)
    data = bytearray(segment.read_bytes()[:cut])
    for off in flips:
        if off < len(data):
            data[off] ^= 0x04
    segment.write_bytes(bytes(data))
    spool = Spool(directory, 1 << 30, fsync_interval=0)
    entries = spool.peek(10)
    assert all(payload == _data(entry_id - 1) for entry_id, _, payload in entries)
    assert [e[0] for e in entries] == sorted({e[0] for e in entries})
    assert spool.append("flows", b"new") > max([0, *(e[0] for e in entries)])
    spool.close()
    shutil.rmtree(directory)


def test_concurrent_append_and_consume_lose_nothing(spool_dir: Path) -> None:
    """A producer thread and a peek/remove consumer thread: every entry seen once, in order."""
    spool = Spool(spool_dir, 1 << 30, fsync_interval=0.01)
    total, seen = 5000, []

    def consume() -> None:
        after = 0
        while len(seen) < total:
            batch = spool.peek(50, after)
            if batch:
                after = batch[-1][0]
                seen.extend(e[0] for e in batch)
                spool.remove(e[0] for e in batch)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for n in range(total):
        spool.append("flows", _data(n, 64))
    consumer.join(timeout=30)
    assert seen == list(range(1, total + 1)) and spool.stats.depth == 0
    spool.close()


def test_flusher_syncs_within_the_interval(spool_dir: Path) -> None:
    """With a short interval the background flusher makes appends durable without flush()."""
    spool = Spool(spool_dir, 1 << 20, fsync_interval=0.02)
    spool.append("flows", b"x")
    for _ in range(200):
        if spool.stats.syncs:
            break
        threading.Event().wait(0.01)
    assert spool.stats.syncs >= 1 and spool.stats.at_risk_seconds == 0
    spool.close()


def test_at_risk_seconds_follows_the_clock_until_flush(spool_dir: Path) -> None:
    """at_risk_seconds is the age of the oldest unsynced change; flush() brings it to zero."""
    now = [100.0]
    spool = Spool(spool_dir, 1 << 20, fsync_interval=3600, clock=lambda: now[0])
    spool.append("flows", b"x")
    now[0] += 5
    spool.append("flows", b"y")
    assert spool.stats.at_risk_seconds == 5
    spool.flush()
    assert spool.stats.at_risk_seconds == 0 and spool.stats.syncs == 1
    spool.close()


def test_fsync_every_append_mode_works(spool_dir: Path) -> None:
    """fsync_interval=0 keeps nothing at risk and still behaves as a FIFO."""
    spool = _filled(spool_dir, 3, fsync_interval=0)
    assert spool.stats.at_risk_seconds == 0 and [e[0] for e in spool.peek(5)] == [1, 2, 3]
    spool.close()


def test_use_after_close_is_an_error_and_close_is_idempotent(spool_dir: Path) -> None:
    """Appending to a closed spool is a programming error; closing twice is fine."""
    spool = Spool(spool_dir, 1 << 20)
    spool.close()
    spool.close()
    with pytest.raises(RuntimeError):
        spool.append("flows", b"x")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (root only)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # a failed test left a file open


def test_full_disk_drops_oldest_and_never_raises(small_tmpfs: Path) -> None:
    """On a full disk appends go on: the oldest entries are dropped and counted, no exception."""
    spool = Spool(small_tmpfs / "spool", 64 << 20, fsync_interval=0.05)
    ids = [spool.append("flows", _data(n)) for n in range(20_000)]
    stats = spool.stats
    assert stats.dropped_entries > 0 and stats.dropped_entries == stats.evicted + stats.write_errors
    assert stats.appended == sum(1 for i in ids if i) == 20_000 - stats.write_errors
    kept = [e[0] for e in spool.peek(30_000)]  # a failed append takes no id
    assert kept == list(range(stats.appended + 1 - len(kept), stats.appended + 1))
    spool.close()


def test_full_disk_drains_and_recovers(small_tmpfs: Path) -> None:
    """After a full disk, removing everything frees the space and appends succeed again."""
    spool = Spool(small_tmpfs / "spool", 64 << 20, fsync_interval=0.05)
    for n in range(20_000):
        spool.append("flows", _data(n))
    while batch := spool.peek(500):
        spool.remove(e[0] for e in batch)
    errors = spool.stats.write_errors
    assert all(spool.append("flows", _data(n)) for n in range(2000))
    assert spool.stats.write_errors == errors
    spool.close()


def test_entry_that_cannot_fit_on_the_disk_is_dropped_and_counted(small_tmpfs: Path) -> None:
    """A record bigger than the whole file system fails its write: counted, 0 returned, no leftovers."""
    spool = Spool(small_tmpfs / "spool", 64 << 20, fsync_interval=0.05)
    assert spool.append("flows", bytes(2 << 20)) == 0
    assert spool.stats.write_errors == 1 and spool.stats.dropped_entries == 1
    assert spool.append("flows", b"small") > 0 and [e[2] for e in spool.peek(5)] == [b"small"]
    spool.close()
