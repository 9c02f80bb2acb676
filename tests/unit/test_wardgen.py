"""Tests for scripts/wardgen.py, the synthetic ward capture generator."""

from __future__ import annotations

import io
import itertools
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import wardgen

Record = tuple[float, int, bytes]  # timestamp, original length, stored bytes


def _pcap(name: str, seed: int = 1, scale: float = 0.01, snaplen: int = 65535) -> bytes:
    buf = io.BytesIO()
    with wardgen.PcapWriter(buf, snaplen=snaplen) as writer:
        writer.write_all(wardgen.scenario(name, seed, scale))
    return buf.getvalue()


def _records(data: bytes) -> Iterator[Record]:
    off = 24
    while off < len(data):
        sec, usec, cap, orig = struct.unpack_from("<IIII", data, off)
        yield sec + usec / 1e6, orig, data[off + 16:off + 16 + cap]
        off += 16 + cap


def _l3(frame: bytes) -> tuple[int, int, bytes]:
    """(number of VLAN tags, ethertype, network-layer bytes) of an Ethernet frame."""
    off = 12
    while frame[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    return (off - 12) // 4, int.from_bytes(frame[off:off + 2], "big"), frame[off + 2:]


def _ocsum(data: bytes) -> int:
    """Independent one's-complement sum with end-around carry (0xffff means valid)."""
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _flow_key(frame: bytes) -> tuple[object, ...] | None:
    """Direction-independent 5-tuple of an unfragmented IPv4/IPv6 TCP/UDP/ICMP frame."""
    _, ethertype, ip = _l3(frame)
    if ethertype == wardgen.ETH_IP4:
        if struct.unpack("!H", ip[6:8])[0] & 0x3FFF:
            return None
        proto, src, dst, l4 = ip[9], ip[12:16], ip[16:20], ip[(ip[0] & 15) * 4:]
    elif ethertype == wardgen.ETH_IP6:
        proto, src, dst, l4 = ip[6], ip[8:24], ip[24:40], ip[40:]
        while proto in (0, 43, 60):
            proto, l4 = l4[0], l4[(l4[1] + 1) * 8:]
        if proto == 44:
            return None
    else:
        return None
    ports = struct.unpack("!HH", l4[:4]) if proto in (6, 17) else (0, 0)
    return (proto, *sorted([(src, ports[0]), (dst, ports[1])]))


@pytest.fixture(scope="module")
def bench_flows() -> list[Record]:
    return list(_records(_pcap("bench-flows")))


@pytest.fixture(scope="module")
def bench_churn() -> list[Record]:
    return list(_records(_pcap("bench-churn")))


def test_same_seed_gives_same_bytes() -> None:
    """Two runs with the same seed write byte-identical captures."""
    assert _pcap("bench-churn", seed=7) == _pcap("bench-churn", seed=7)
    assert _pcap("sample", seed=7) == _pcap("sample", seed=7)


def test_other_seed_gives_other_bytes() -> None:
    """A different seed changes the capture."""
    assert _pcap("bench-flows", seed=1) != _pcap("bench-flows", seed=2)


def test_pcap_global_header() -> None:
    """The global header is little-endian libpcap 2.4, microseconds, with snaplen and linktype."""
    buf = io.BytesIO()
    with wardgen.PcapWriter(buf, linktype=113, snaplen=1234):
        pass
    assert struct.unpack("<IHHiIII", buf.getvalue()) == (0xA1B2C3D4, 2, 4, 0, 0, 1234, 113)


def test_snaplen_truncates_but_keeps_orig_len() -> None:
    """Stored length is min(len, snaplen); the record keeps the original length."""
    records = list(_records(_pcap("sample", snaplen=96)))
    assert max(len(stored) for _, _, stored in records) == 96
    assert max(orig for _, orig, _ in records) > 96
    assert all(len(stored) == min(orig, 96) for _, orig, stored in records)


def test_timestamps_start_at_epoch_and_never_decrease(bench_churn: list[Record]) -> None:
    """Packet time starts at EPOCH and is non-decreasing."""
    stamps = [ts for ts, _, _ in bench_churn]
    assert stamps[0] == pytest.approx(wardgen.EPOCH)
    assert all(a <= b for a, b in itertools.pairwise(stamps))


def test_ipv4_header_checksums_valid(bench_flows: list[Record]) -> None:
    """Every IPv4 header, fragments included, carries a correct checksum."""
    headers = [ip[:(ip[0] & 15) * 4] for _, _, f in bench_flows
               for _, et, ip in [_l3(f)] if et == wardgen.ETH_IP4]
    assert len(headers) > 1000
    assert all(_ocsum(h) == 0xFFFF for h in headers)


def test_transport_checksums_valid() -> None:
    """TCP and UDP checksums over the IPv4/IPv6 pseudo-header are correct in the sample."""
    checked = 0
    for _, _, frame in _records(_pcap("sample")):
        _, et, ip = _l3(frame)
        if et == wardgen.ETH_IP4 and ip[9] in (6, 17):
            total, ihl = struct.unpack("!H", ip[2:4])[0], (ip[0] & 15) * 4
            l4, pseudo = ip[ihl:total], ip[12:20] + struct.pack("!HH", ip[9], total - ihl)
        elif et == wardgen.ETH_IP6 and ip[6] in (6, 17):
            l4 = ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
            pseudo = ip[8:40] + struct.pack("!IxxxB", len(l4), ip[6])
        else:
            continue
        assert _ocsum(pseudo + l4) == 0xFFFF
        checked += 1
    assert checked > 150


def test_vlan_share_about_a_third(bench_flows: list[Record]) -> None:
    """About a third of bench-flows frames are VLAN-tagged, a few of them QinQ."""
    tags = [_l3(f)[0] for _, _, f in bench_flows]
    assert 0.25 <= sum(1 for n in tags if n) / len(tags) <= 0.42
    assert 0 < sum(1 for n in tags if n == 2) / len(tags) < 0.1


def test_qinq_outer_tag_is_8021ad() -> None:
    """Two VLAN ids give an outer 0x88a8 tag and an inner 0x8100 tag."""
    frame = wardgen.ether("02:00:00:00:00:02", "02:00:00:00:00:01", wardgen.ETH_IP4, b"x", (100, 30))
    assert frame[12:22] == bytes.fromhex("88a8 0064 8100 001e 0800".replace(" ", ""))
    assert len(frame) == 60


def test_ipv6_share_and_extension_headers(bench_flows: list[Record]) -> None:
    """Some 3-12 % of frames are IPv6, a few of them with extension headers."""
    v6 = [ip for _, _, f in bench_flows for _, et, ip in [_l3(f)] if et == wardgen.ETH_IP6]
    assert 0.03 <= len(v6) / len(bench_flows) <= 0.12
    assert any(ip[6] in (0, 44) for ip in v6)


def test_bench_flows_flow_count(bench_flows: list[Record]) -> None:
    """bench-flows at scale 0.01 has about 500 flows and about 10 k packets."""
    flows = {k for _, _, f in bench_flows if (k := _flow_key(f)) is not None}
    assert 400 <= len(flows) <= 650
    assert 5_000 <= len(bench_flows) <= 16_000


def test_bench_churn_flow_count(bench_churn: list[Record]) -> None:
    """bench-churn at scale 0.01 has about 2000 mostly short flows within about two minutes."""
    flows = {k for _, _, f in bench_churn if (k := _flow_key(f)) is not None}
    assert 1_700 <= len(flows) <= 2_400
    assert len(bench_churn) / len(flows) < 3.5
    assert bench_churn[-1][0] - bench_churn[0][0] < 150


def test_sample_is_small_and_spans_two_minutes() -> None:
    """The sample has a few hundred packets over roughly two minutes."""
    records = list(_records(_pcap("sample")))
    assert 150 <= len(records) <= 500
    assert 90 <= records[-1][0] - records[0][0] <= 150


def test_pcapng_blocks() -> None:
    """write_pcapng emits an SHB, one IDB with the linktype, then one EPB per packet."""
    buf = io.BytesIO()
    packets = [(wardgen.EPOCH + 1.5, b"\x45" + bytes(19)), (wardgen.EPOCH + 2.0, bytes(41))]
    assert wardgen.write_pcapng(buf, 101, packets) == 2
    data, off, blocks = buf.getvalue(), 0, []
    while off < len(data):
        kind, length = struct.unpack_from("<II", data, off)
        assert struct.unpack_from("<I", data, off + length - 4)[0] == length
        blocks.append((kind, data[off + 8:off + length - 4]))
        off += length
    assert [kind for kind, _ in blocks] == [0x0A0D0D0A, 1, 6, 6]
    assert struct.unpack_from("<H", blocks[1][1])[0] == 101
    _, high, low, cap, orig = struct.unpack_from("<IIIII", blocks[2][1])
    assert ((high << 32) | low, cap, orig) == (round((wardgen.EPOCH + 1.5) * 1e6), 20, 20)


def test_linktype_wrappers() -> None:
    """SLL adds a 16-byte header, loopback a 4-byte family, raw IP nothing."""
    v4 = wardgen.ipv4("10.0.0.1", "10.0.0.2", 17, wardgen.udp(1, 2, b"hi"))
    v6 = wardgen.ipv6("fd00::1", "fd00::2", 17, wardgen.udp(1, 2, b"hi"))
    assert wardgen.wrap_ip(113, v4)[14:16] == b"\x08\x00" and len(wardgen.sll(v4)) == len(v4) + 16
    assert wardgen.wrap_ip(0, v4)[:4] == struct.pack("<I", 2)
    assert wardgen.wrap_ip(0, v6)[:4] == struct.pack("<I", 24)
    assert wardgen.wrap_ip(101, v6) == v6


def test_dns_message_wire_format() -> None:
    """A DNS response has one question, the answers and the encoded name."""
    msg = wardgen.dns_message(0x1234, "pacs01.hospital.example", 1, ["10.1.0.10"], response=True)
    assert struct.unpack("!HHHHHH", msg[:12]) == (0x1234, 0x8180, 1, 1, 0, 0)
    assert msg[12:37] == b"\x06pacs01\x08hospital\x07example\x00"
    assert msg.endswith(bytes([10, 1, 0, 10]))


def test_dhcp_request_options() -> None:
    """A DHCP DORA carries the message type, hostname, vendor class, parameters and ids."""
    frames = [f for _, f in wardgen.dhcp_dora(wardgen.EPOCH, "02:00:00:00:00:09",
                                               wardgen.Host("10.1.0.67", "02:00:00:00:00:43"),
                                               "10.20.0.9", hostname="WS-1", vendor_class="MSFT 5.0",
                                               xid=42)]
    assert len(frames) == 4
    request = frames[2][14 + 20 + 8:]
    assert request[236:240] == b"\x63\x82\x53\x63"
    opts, off = {}, 240
    while request[off] != 255:
        opts[request[off]] = request[off + 2:off + 2 + request[off + 1]]
        off += 2 + request[off + 1]
    assert opts[53] == b"\x03" and opts[12] == b"WS-1" and opts[60] == b"MSFT 5.0"
    assert {55, 61, 50, 54} <= opts.keys()
