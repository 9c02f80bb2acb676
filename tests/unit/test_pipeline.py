"""Tests for agent/pipeline.py: replay() over wardgen captures and RunTotals.summary()."""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.flows import FlowSettings, FlowTable
from agent.pipeline import RunTotals, replay
from agent.records import Counters, FlowRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import wardgen
from batches import pack
from wardgen import ACK, SYN, Host

Pkt = tuple[float, bytes]
A = Host("10.0.0.1", "02:00:00:00:00:0a")
B = Host("10.0.0.2", "02:00:00:00:00:0b")
C = Host("10.0.0.3", "02:00:00:00:00:0c")
D = Host("10.0.0.4", "02:00:00:00:00:0d")
SPLIT = wardgen.EPOCH + 60.0  # the sample's HL7 connection (25 s between messages) spans this


def write(path: Path, packets: Iterable[Pkt], linktype: int = 1) -> int:
    """Write packets to a classic pcap file; returns how many."""
    with wardgen.PcapWriter(path, linktype=linktype) as writer:
        return writer.write_all(packets)


def replayed(paths: Sequence[Path | str], fast_path: bool = True,
             config: AgentConfig | None = None) -> tuple[list[FlowRecord], RunTotals]:
    records: list[FlowRecord] = []
    totals = replay([str(p) for p in paths], config or AgentConfig(), records.append, fast_path=fast_path)
    return records, totals


def udp(src: Host, dst: Host, sport: int, dport: int, payload: bytes = b"") -> bytes:
    return wardgen.ether(dst.mac, src.mac, wardgen.ETH_IP4,
                         wardgen.ipv4(src.ip, dst.ip, 17, wardgen.udp(sport, dport, payload)))


def vxlan_tcp(t: float, flags: int) -> Pkt:
    """A TCP segment A->B carried in VXLAN from C to D."""
    inner = wardgen.ether(B.mac, A.mac, wardgen.ETH_IP4,
                          wardgen.ipv4(A.ip, B.ip, 6, wardgen.tcp(40000, 80, 0, 0, flags)))
    return t, udp(C, D, 33333, 4789, struct.pack("!BBHI", 0x08, 0, 0, 77 << 8) + inner)


@pytest.fixture(scope="module")
def sample() -> list[Pkt]:
    return list(wardgen.sample())


@pytest.fixture
def halves(tmp_path: Path, sample: list[Pkt]) -> tuple[Path, Path, Path]:
    """The sample as one capture, and split in two captures at SPLIT."""
    whole, first, second = tmp_path / "whole.pcap", tmp_path / "first.pcap", tmp_path / "second.pcap"
    write(whole, sample)
    write(first, (p for p in sample if p[0] < SPLIT))
    write(second, (p for p in sample if p[0] >= SPLIT))
    return whole, first, second


# --- replay ---------------------------------------------------------------------------------------

def test_replay_summary_accounts_for_every_frame(tmp_path: Path, sample: list[Pkt]) -> None:
    """Every frame written is counted once: unaccounted is 0 and the flows add up by end reason."""
    path = tmp_path / "sample.pcap"
    written = write(path, sample)
    records, totals = replayed([path])
    summary = totals.summary()
    assert summary["frames"] == written == len(sample)
    assert summary["unaccounted"] == 0
    assert summary["flows"] == len(records) > 10
    assert sum(summary["flows_by_end"].values()) == summary["flows"]
    assert summary["in_flows"] + summary["reassembled"] == sum(r.a_pkts + r.b_pkts for r in records)
    assert (summary["captures"], summary["capture_errors"]) == ([str(path)], [])
    assert summary["non_ip"] == {"arp": 2} and summary["ip_fragments"] > 0


def test_replay_gives_the_records_of_the_flow_table(tmp_path: Path, sample: list[Pkt]) -> None:
    """Replaying a capture gives the same records as feeding its packets to a FlowTable directly."""
    path = tmp_path / "sample.pcap"
    write(path, sample)
    direct: list[FlowRecord] = []
    table = FlowTable(FlowSettings(), direct.append, Counters())
    table.ingest(*pack(sample))
    table.flush()
    assert replayed([path])[0] == direct


def test_replay_general_path_gives_same_records(halves: tuple[Path, Path, Path]) -> None:
    """replay(fast_path=False) gives the same records and summary counts as the fast path."""
    fast_records, fast_totals = replayed([halves[0]])
    general_records, general_totals = replayed([halves[0]], fast_path=False)
    assert general_records == fast_records
    assert general_totals.counters == fast_totals.counters


def test_two_captures_continue_flows_across_files(halves: tuple[Path, Path, Path]) -> None:
    """Two captures replayed in one call are one stream: a flow spanning both is one record."""
    whole, first, second = halves
    records, totals = replayed([first, second])
    assert records == replayed([whole])[0]
    assert any(r.first < SPLIT < r.last for r in records)
    assert totals.summary()["unaccounted"] == 0
    assert totals.captures == [str(first), str(second)]


def test_missing_capture_is_listed_and_others_still_replayed(halves: tuple[Path, Path, Path],
                                                              tmp_path: Path) -> None:
    """A capture that cannot be opened is listed in capture_errors; the others are replayed as one stream."""
    whole, first, second = halves
    missing = tmp_path / "missing.pcap"
    records, totals = replayed([first, missing, second])
    assert records == replayed([whole])[0]
    summary = totals.summary()
    assert len(summary["capture_errors"]) == 1 and str(missing) in summary["capture_errors"][0]
    assert summary["captures"] == [str(first), str(missing), str(second)]
    assert summary["unaccounted"] == 0


def test_link_type_taken_from_each_capture(tmp_path: Path, sample: list[Pkt]) -> None:
    """An Ethernet capture then a raw-IP one: each is decoded with its own link type."""
    first, second = tmp_path / "eth.pcap", tmp_path / "raw.pcap"
    late = [(ts, f) for ts, frame in sample if ts >= SPLIT and (f := wardgen.relink(101, frame)) is not None]
    write(first, (p for p in sample if p[0] < SPLIT))
    write(second, late, linktype=101)
    records, totals = replayed([first, second])
    summary = totals.summary()
    assert summary["unaccounted"] == 0 and summary["skipped"] == {}
    assert summary["frames"] == sum(p[0] < SPLIT for p in sample) + len(late)
    started_late = [r for r in records if r.first >= SPLIT]
    assert started_late and all(r.a_mac is None and r.b_mac is None for r in started_late)


def test_summary_counts_tunnels_fragments_non_ip_and_skips(tmp_path: Path) -> None:
    """A decapsulated packet counts once as a frame in flows; skipped and non-IP frames are accounted."""
    t = wardgen.EPOCH
    frags = wardgen.fragment(A.ip, B.ip, 17, wardgen.udp(1, 2, bytes(3000)), ident=5)
    assert len(frags) == 3
    packets = [vxlan_tcp(t, SYN), vxlan_tcp(t + 0.5, ACK),
               *((t + 1 + 0.01 * i, wardgen.ether(B.mac, A.mac, wardgen.ETH_IP4, f))
                 for i, f in enumerate(frags)),
               *wardgen.arp_exchange(t + 2, A, B),
               (t + 3, wardgen.ether(B.mac, A.mac, wardgen.ETH_IP4, b"\x45" + bytes(9), pad=False))]
    path = tmp_path / "mix.pcap"
    write(path, packets)
    records, totals = replayed([path])
    summary = totals.summary()
    assert (summary["frames"], summary["in_flows"], summary["decapsulated"]) == (8, 2, 2)
    assert summary["reassembled"] == 1
    assert (summary["ip_fragments"], summary["non_ip"], summary["skipped"]) == (3, {"arp": 2},
                                                                                {"truncated_ipv4": 1})
    assert summary["unaccounted"] == 0
    assert summary["flows"] == len(records) == 3
    assert summary["flows_by_end"] == {"end": 3}


# --- RunTotals.summary --------------------------------------------------------------------------------

def test_summary_arithmetic_and_groups() -> None:
    """summary() groups counters by prefix and balances frames against what was accounted."""
    totals = RunTotals()
    for name, n in {"frames": 20, "non_ip.arp": 3, "non_ip.lldp": 1, "skipped.truncated_l4": 2,
                    "ip_fragments": 4, "decapsulated": 2, "flows.idle": 1, "flows.end": 2,
                    "flows.evicted": 1, "clock.backwards": 5}.items():
        totals.counters.add(name, n)
    for pkts in (5, 4, 3):
        totals.count_flow(FlowRecord(0.0, 0.0, "udp", "10.0.0.1", 1, "10.0.0.2", 2, None, None, (),
                                     pkts - 1, 1, 0, 0, "", "", "end"))
    totals.peak_live_flows = 7
    summary = totals.summary()
    assert summary["in_flows"] == 12 - 2
    assert summary["non_ip"] == {"arp": 3, "lldp": 1}
    assert summary["skipped"] == {"truncated_l4": 2}
    assert summary["unaccounted"] == 20 - (10 + 4 + 2 + 4) == 0
    assert summary["flows_by_end"] == {"end": 2, "evicted": 1, "idle": 1}
    assert (summary["flows"], summary["evicted"], summary["clock_backwards"]) == (3, 1, 5)
    assert (summary["peak_live_flows"], summary["type"]) == (7, "summary")


def test_summary_reports_unaccounted_frames() -> None:
    """Frames that reached no flow and no counter show up as unaccounted."""
    totals = RunTotals()
    totals.counters.add("frames", 5)
    totals.counters.add("non_ip.arp", 1)
    assert totals.summary()["unaccounted"] == 4


