"""agent.capture: offline reading in batches, link types, filters, kernel stat deltas."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
from pathlib import Path

import pytest
import wardgen

from agent import capture

GOLDEN = Path(__file__).parents[1] / "golden" / "captures"


def _frames(cap: capture.Capture) -> int:
    total = 0
    while True:
        _, meta = cap.next_batch()
        if not meta:
            return total
        total += len(meta) // 16


def test_batches_cover_the_file() -> None:
    """Small batches deliver every packet of the file, then an empty batch."""
    with capture.open_offline(str(GOLDEN / "sample.pcap"), batch_size=7) as cap:
        assert _frames(cap) == 224


def test_meta_slices_the_packets() -> None:
    """Each 16-byte meta record gives time, offset and length of one frame in the packet bytes."""
    with capture.open_offline(str(GOLDEN / "edge.pcap")) as cap:
        packets, meta = cap.next_batch()
    first = list(struct.iter_unpack("=IIII", meta))
    sec, usec, offset, length = first[0]
    assert sec == int(wardgen.EPOCH) and usec == 0 and offset == 0
    frame = packets[offset:offset + length]
    assert frame == next(iter(wardgen.edge()))[1]


def test_bpf_filter_applies_offline() -> None:
    """A BPF filter selects packets from a file too."""
    with capture.open_offline(str(GOLDEN / "sample.pcap"), bpf="arp") as cap:
        assert _frames(cap) == 2


def test_bad_filter_is_a_capture_error() -> None:
    """An invalid BPF expression is refused with a clear error."""
    with pytest.raises(capture.CaptureError, match=r"sample\.pcap"):
        capture.open_offline(str(GOLDEN / "sample.pcap"), bpf="port port")


@pytest.mark.parametrize("linktype", [1, 113, 101, 0])
def test_link_type_is_reported(tmp_path: Path, linktype: int) -> None:
    """The file's link type is passed on for decoding."""
    path = tmp_path / "one.pcap"
    with wardgen.PcapWriter(path, linktype=linktype) as out:
        frame = wardgen.relink(linktype, next(iter(wardgen.edge()))[1])
        assert frame is not None
        out.write(wardgen.EPOCH, frame)
    with capture.open_offline(str(path)) as cap:
        assert cap.linktype == {1: 1, 113: 113, 101: 12, 0: 0}[linktype]


def test_file_of_unsupported_link_type_is_read(tmp_path: Path) -> None:
    """A file of a link type the decoder does not know (147, a private USER0 type) opens, so its frames
    are counted (as skipped.unsupported_link downstream) rather than the file refused."""
    path = tmp_path / "user0.pcap"
    with wardgen.PcapWriter(path, linktype=147) as out:
        out.write(wardgen.EPOCH, b"\0" * 40)
    with capture.open_offline(str(path)) as cap:
        assert cap.linktype == 147
        assert len(cap.next_batch()[1]) == 16


def test_kernel_stats_deltas_survive_wraparound() -> None:
    """libpcap's 32-bit counters wrapping past 2**32 still give the right delta."""
    deltas = capture._StatsDelta()
    deltas.update((2**32 - 10, 5, 0))
    assert deltas.update((20, 7, 1)) == capture.KernelStats(30, 2, 1)


def _sample(path: Path) -> Path:
    with wardgen.PcapWriter(path) as out:
        for ts, frame in wardgen.sample():
            out.write(ts, frame)
    return path


def _read(path: Path) -> tuple[list[tuple[int, int, bytes]], str | None]:
    """Every (seconds, microseconds, frame) of a capture, and its error."""
    records = []
    with capture.open_offline(str(path)) as cap:
        while meta := (batch := cap.next_batch())[1]:
            records += [(s, u, batch[0][off:off + n]) for s, u, off, n in struct.iter_unpack("=IIII", meta)]
        return records, cap.error


def test_gzip_file_reads_as_the_plain_one(tmp_path: Path) -> None:
    """A gzip-compressed capture (as tshark reads them) gives the plain file's frames and times."""
    plain = _sample(tmp_path / "sample.pcap")
    packed = tmp_path / "sample.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert _read(packed) == _read(plain)


def test_cut_gzip_file_keeps_the_frames_before_the_cut(tmp_path: Path) -> None:
    """A gzip stream cut short gives the frames decompressed before the cut, and an error."""
    plain = _sample(tmp_path / "sample.pcap")
    packed = gzip.compress(plain.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[:len(packed) // 2])
    frames, error = _read(cut)
    everything, _ = _read(plain)
    assert 0 < len(frames) < len(everything)
    assert frames == everything[:len(frames)]
    assert error is not None


def test_decompressed_copy_is_removed_at_close(tmp_path: Path) -> None:
    """The temporary decompressed copy of a gzip capture is gone once the capture is closed."""
    packed = tmp_path / "sample.pcap.gz"
    packed.write_bytes(gzip.compress(_sample(tmp_path / "sample.pcap").read_bytes()))
    with capture.open_offline(str(packed)) as cap:
        copy = Path(cap._file)
        assert copy.exists() and copy != packed
    assert not copy.exists()


def test_damaged_record_with_a_late_timestamp_does_not_raise(tmp_path: Path) -> None:
    """A damaged file whose last readable record has a timestamp past 2**31 is salvaged, not raised."""
    path = tmp_path / "late.pcap"
    with wardgen.PcapWriter(path) as out:
        out.write(4_294_967_000.0, bytes(60))
    path.write_bytes(path.read_bytes() + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30))
    frames, error = _read(path)
    assert len(frames) == 1 and error is not None


def test_capture_read_from_a_fifo_loses_nothing(tmp_path: Path) -> None:
    """A capture piped in (tcpdump -w - | ward-agent replay /dev/stdin) is read whole: nothing peeks at it."""
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    # another process: libpcap holds the GIL while its open() waits for a writer
    writer = subprocess.Popen(["dd", f"if={GOLDEN / 'sample.pcap'}", f"of={fifo}"], stderr=subprocess.DEVNULL)
    try:
        with capture.open_offline(str(fifo)) as cap:
            assert _frames(cap) == 224
    finally:
        writer.wait(timeout=10)
