"""agent/pcapng.py: the fallback reader for pcapng files that mix link types."""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import capture
from agent.pcapng import PcapngError, is_pcapng, packets

ROOT = Path(__file__).resolve().parents[2]


def _block(kind: int, body: bytes, order: str = "<") -> bytes:
    body += bytes(-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", kind, length) + body + struct.pack(order + "I", length)


def _section(order: str = "<") -> bytes:
    return _block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def _interface(linktype: int, tsresol: int | None = None, order: str = "<") -> bytes:
    options = b""
    if tsresol is not None:
        end = struct.pack(order + "HH", 0, 0)
        options = struct.pack(order + "HH", 9, 1) + bytes([tsresol, 0, 0, 0]) + end
    return _block(1, struct.pack(order + "HHI", linktype, 0, 65535) + options, order)


def _enhanced(index: int, units: int, frame: bytes, order: str = "<") -> bytes:
    return _block(6, struct.pack(order + "IIIII", index, units >> 32, units & 0xFFFFFFFF, len(frame),
                                 len(frame)) + frame, order)


def test_mixed_link_types_come_out_in_file_order() -> None:
    """Two interfaces of different link types: each packet carries its own interface's link type."""
    data = (_section() + _interface(1) + _interface(276) + _enhanced(0, 1_700_000_000_250_000, b"eth")
            + _enhanced(1, 1_700_000_001_000_001, b"sll2") + _enhanced(0, 1_700_000_002_000_000, b"e2"))
    assert list(packets(io.BytesIO(data))) == [(1, 1_700_000_000, 250_000, b"eth"),
                                               (276, 1_700_000_001, 1, b"sll2"),
                                               (1, 1_700_000_002, 0, b"e2")]


def test_nanosecond_resolution_is_converted_to_microseconds() -> None:
    """if_tsresol 9 (nanoseconds): the timestamp is read in nanoseconds and given in microseconds."""
    data = _section() + _interface(1, tsresol=9) + _enhanced(0, 1_700_000_000_123_456_789, b"x")
    assert list(packets(io.BytesIO(data))) == [(1, 1_700_000_000, 123_456, b"x")]


def test_big_endian_section_is_read() -> None:
    """A section written big-endian is read with its own byte order."""
    data = _section(">") + _interface(101, order=">") + _enhanced(0, 5_000_000, b"raw", order=">")
    assert list(packets(io.BytesIO(data))) == [(101, 5, 0, b"raw")]


def test_new_section_restarts_the_interface_list() -> None:
    """Interface 0 of a second section is that section's first interface."""
    data = (_section() + _interface(1) + _enhanced(0, 0, b"a")
            + _section() + _interface(113) + _enhanced(0, 0, b"b"))
    assert [(p[0], p[3]) for p in packets(io.BytesIO(data))] == [(1, b"a"), (113, b"b")]


def test_cut_file_yields_what_came_before_then_raises() -> None:
    """A file cut inside a block gives the packets before the cut, then PcapngError."""
    data = _section() + _interface(1) + _enhanced(0, 0, b"whole") + _enhanced(0, 0, b"cut off")
    read: list[bytes] = []
    with pytest.raises(PcapngError):
        for packet in packets(io.BytesIO(data[:-6])):
            read.append(packet[3])
    assert read == [b"whole"]


def test_packet_of_an_undescribed_interface_raises() -> None:
    """An enhanced packet naming an interface that was never described is damage."""
    with pytest.raises(PcapngError, match="undescribed interface 1"):
        list(packets(io.BytesIO(_section() + _interface(1) + _enhanced(1, 0, b"x"))))


def test_pcap_file_is_not_pcapng(tmp_path: Path) -> None:
    """is_pcapng tells a classic pcap file from a pcapng one."""
    assert not is_pcapng(str(ROOT / "tests" / "golden" / "captures" / "sample.pcap"))
    path = tmp_path / "one.pcapng"
    path.write_bytes(_section() + _interface(1))
    assert is_pcapng(str(path))


@pytest.mark.skipif(shutil.which("editcap") is None, reason="needs editcap (wireshark-common)")
def test_same_frames_and_times_as_libpcap(tmp_path: Path) -> None:
    """The project's sample converted to pcapng by editcap reads exactly as libpcap reads it."""
    converted = tmp_path / "sample.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(ROOT / "tests" / "golden" / "captures" / "sample.pcap"),
                    str(converted)], check=True, capture_output=True)
    expected = []
    with capture.open_offline(str(converted)) as reader:
        while True:
            frames, meta = reader.next_batch()
            if not meta:
                break
            for sec, usec, off, length in struct.iter_unpack("=IIII", meta):
                expected.append((reader.linktype, sec, usec, frames[off:off + length]))
    with converted.open("rb") as stream:
        assert list(packets(stream)) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=200))
def test_garbage_raises_only_pcapng_error(tail: bytes, cut: int) -> None:
    """Random bytes after a valid start, cut anywhere: nothing but PcapngError escapes."""
    data = (_section() + _interface(1) + _enhanced(0, 0, b"ok") + tail)[:len(tail) + cut + 28]
    with contextlib.suppress(PcapngError):
        list(packets(io.BytesIO(data)))


def _mixed_file(tmp_path: Path) -> Path:
    """Ethernet UDP, then a raw-IP interface appears: TCP, UDP (libpcap stops at the second interface)."""
    import wardgen

    udp = wardgen.ipv4("10.0.0.1", "10.0.0.2", 17, wardgen.udp(1000, 53, b"q"))
    tcp = wardgen.ipv4("10.0.0.1", "10.0.0.2", 6, wardgen.tcp(1000, 80, 1, 1, wardgen.SYN))
    eth = wardgen.ether("02:00:00:00:00:02", "02:00:00:00:00:01", wardgen.ETH_IP4, udp)
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(_section() + _interface(1) + _enhanced(0, 1_000_000, eth) + _interface(101)
                     + _enhanced(1, 2_000_000, tcp) + _enhanced(1, 3_000_000, udp))
    return path


def _read_all(reader: capture.Capture) -> list[tuple[int, int]]:
    found = []
    while True:
        meta = reader.next_batch()[1]
        if not meta:
            return found
        found += [(reader.linktype, sec) for sec, _, _, _ in struct.iter_unpack("=IIII", meta)]


def test_open_offline_reads_on_where_libpcap_gives_up(tmp_path: Path) -> None:
    """libpcap stops at an interface of another link type; the capture reads on, batch by link type."""
    with capture.open_offline(str(_mixed_file(tmp_path))) as reader:
        assert _read_all(reader) == [(1, 1), (101, 2), (101, 3)]
        assert reader.error is None


def test_filter_applies_on_both_link_types(tmp_path: Path) -> None:
    """A BPF filter is compiled for each link type of a mixed file."""
    with capture.open_offline(str(_mixed_file(tmp_path)), bpf="udp") as reader:
        assert _read_all(reader) == [(1, 1), (101, 3)]
