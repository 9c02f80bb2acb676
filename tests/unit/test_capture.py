"""agent.capture: offline reading in batches, link types, filters, kernel stat deltas."""

from __future__ import annotations

import struct
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
