"""`ward-agent replay` against tshark: per-direction packets of each conversation, every frame accounted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import wardgen
from conftest import SHARED_PCAPS, shared_captures
from tshark_conv import flow_counts, tshark_counts


def _replay(*captures: Path) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "agent", "replay", *map(str, captures)],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def _assert_agrees(capture: Path) -> None:
    records = _replay(capture)
    summary = records[-1]
    assert summary["type"] == "summary"
    assert summary["unaccounted"] == 0, summary
    assert summary["frames"] > 0
    ours, theirs = flow_counts(records), tshark_counts(str(capture))
    differences = {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys()
                   if ours.get(k) != theirs.get(k)}
    assert not differences, f"(ours, tshark) per conversation: {differences}"


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_PCAPS.is_dir(), reason=f"{SHARED_PCAPS} is absent")
@pytest.mark.parametrize("capture", shared_captures(), ids=lambda p: p.name)
def test_shared_capture_agrees_with_tshark(capture: Path) -> None:
    """A public capture: conversations equal tshark's and no frame is unaccounted."""
    _assert_agrees(capture)


@pytest.mark.parametrize("linktype", [1, 113, 101, 0, 9, 51, 104, 105, 127, 192])
def test_generated_sample_agrees_with_tshark(tmp_path: Path, linktype: int) -> None:
    """The project's own ward sample, in each supported link type, agrees with tshark."""
    capture = tmp_path / "sample.pcap"
    with wardgen.PcapWriter(capture, linktype=linktype) as out:
        for ts, frame in wardgen.sample():
            relinked = wardgen.relink(linktype, frame)
            if relinked is not None:
                out.write(ts, relinked)
    _assert_agrees(capture)


def test_edge_cases_agree_with_tshark(tmp_path: Path) -> None:
    """ICMP errors, fragments, tunnels, TSO, QinQ and IPv6 are counted as tshark counts them."""
    capture = tmp_path / "edge.pcap"
    with wardgen.PcapWriter(capture) as out:
        for ts, frame in wardgen.edge():
            out.write(ts, frame)
    _assert_agrees(capture)


def test_pcapng_agrees_with_tshark(tmp_path: Path) -> None:
    """A pcapng file is read like a pcap."""
    capture = tmp_path / "sample.pcapng"
    wardgen.write_pcapng(capture, 1, wardgen.sample())
    _assert_agrees(capture)


def _handshake_with_options() -> list[bytes]:
    """TCP conversations whose headers carry options (40-byte SYNs, 32-byte data segments), as Linux
    sends them: IPv4 untagged, IPv4 in a VLAN and IPv6; plus a segment with a bogus data offset."""
    syn_options, ts_options = bytes([2, 4, 5, 180, 4, 2, 8, 10]) + bytes(12), bytes([1, 1, 8, 10]) + bytes(8)
    a, b = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    frames = []
    for src, dst, vlans in (("10.1.0.1", "10.1.0.2", ()), ("10.1.0.1", "10.1.0.2", (30,)),
                            ("fd00::1", "fd00::2", ())):
        ip = wardgen.ipv6 if ":" in src else wardgen.ipv4
        etype = wardgen.ETH_IP6 if ":" in src else wardgen.ETH_IP4
        segments = [(src, dst, 40000, 8080, wardgen.SYN, syn_options, b""),
                    (dst, src, 8080, 40000, wardgen.SYN | wardgen.ACK, syn_options, b""),
                    (src, dst, 40000, 8080, wardgen.ACK, ts_options, b""),
                    (src, dst, 40000, 8080, wardgen.PSH | wardgen.ACK, ts_options, b"GET / HTTP/1.0\r\n\r\n"),
                    (dst, src, 8080, 40000, wardgen.ACK, b"", b"HTTP/1.0 200 OK\r\n\r\n"),
                    (src, dst, 40000, 8080, wardgen.FIN | wardgen.ACK, ts_options, b"")]
        for s, d, sport, dport, flags, options, payload in segments:
            packet = ip(s, d, 6, wardgen.tcp(sport, dport, 1, 1, flags, payload, options=options))
            frames.append(wardgen.ether(b if s == src else a, a if s == src else b, etype, packet, vlans))
    bogus = bytearray(wardgen.ipv4("10.1.0.3", "10.1.0.4", 6, wardgen.tcp(1234, 80, 1, 1, wardgen.ACK)))
    bogus[20 + 12] = 4 << 4  # data offset 4: a 16-byte header
    frames.append(wardgen.ether(b, a, wardgen.ETH_IP4, bytes(bogus)))
    return frames


@pytest.mark.parametrize("snaplen", [54, 58, 62, 66, 68, 74, 78, 86, 96, 65535])
def test_short_snaplen_agrees_with_tshark(tmp_path: Path, snaplen: int) -> None:
    """Cut TCP options (an old default snaplen of 68 or 96) leave a segment uncounted, as in tshark."""
    capture = tmp_path / f"snap{snaplen}.pcap"
    with wardgen.PcapWriter(capture, snaplen=snaplen) as out:
        for n, frame in enumerate(_handshake_with_options()):
            out.write(1_700_000_000 + n / 100, frame)
    _assert_agrees(capture)


def test_fragmented_vxlan_datagram_agrees_with_tshark(tmp_path: Path) -> None:
    """A VXLAN datagram fragmented on the underlay (a full-size inner frame over a 1500 MTU): once
    reassembled, its inner TCP segment joins the inner conversation, as tshark counts it."""
    a, b = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    inner_tcp = [("192.168.7.1", "192.168.7.2", 40000, 80, wardgen.SYN, b""),
                 ("192.168.7.2", "192.168.7.1", 80, 40000, wardgen.SYN | wardgen.ACK, b""),
                 ("192.168.7.2", "192.168.7.1", 80, 40000, wardgen.ACK, bytes(1400))]
    frames = []
    for ident, (s, d, sport, dport, flags, payload) in enumerate(inner_tcp, start=1):
        segment = wardgen.ipv4(s, d, 6, wardgen.tcp(sport, dport, 1, 1, flags, payload))
        inner = wardgen.ether(b, a, wardgen.ETH_IP4, segment, pad=False)
        datagram = wardgen.udp(40000, 4789, b"\x08\0\0\0\0\0\x64\0" + inner)
        cuts = [(0, datagram)] if len(datagram) < 1400 else [(0, datagram[:1400]), (1400, datagram[1400:])]
        for offset, part in cuts:
            more = offset == 0 and len(cuts) > 1
            packet = wardgen.ipv4("10.7.0.1", "10.7.0.2", 17, part, ident=ident, df=False, frag_offset=offset,
                                  more_fragments=more)
            frames.append(wardgen.ether(b, a, wardgen.ETH_IP4, packet))
    capture = tmp_path / "vxlan-fragments.pcap"
    with wardgen.PcapWriter(capture) as out:
        for n, frame in enumerate(frames):
            out.write(1_700_000_000 + n / 100, frame)
    _assert_agrees(capture)


@pytest.mark.skipif(shutil.which("mergecap") is None, reason="needs mergecap (wireshark-common)")
def test_pcapng_mixing_link_types_agrees_with_tshark(tmp_path: Path) -> None:
    """A pcapng file whose interfaces differ in link type (Ethernet and Linux cooked), which libpcap
    refuses part-way, is read to the end and agrees with tshark."""
    parts = []
    for linktype, start in ((1, 0.0), (113, 0.005)):
        part = tmp_path / f"sample-{linktype}.pcap"
        with wardgen.PcapWriter(part, linktype=linktype) as out:
            for ts, frame in wardgen.sample():
                relinked = wardgen.relink(linktype, frame)
                if relinked is not None:
                    out.write(ts + start, relinked)
        parts.append(str(part))
    mixed = tmp_path / "mixed.pcapng"
    subprocess.run(["mergecap", "-F", "pcapng", "-w", str(mixed), *parts], check=True, capture_output=True)
    _assert_agrees(mixed)
