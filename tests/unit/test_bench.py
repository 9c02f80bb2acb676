"""Tests for the pure helpers of scripts/bench.py (the benchmark itself is run by hand)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench
import wardgen

SOFTFLOWD_EXIT = """Number of active flows: 0
Packets processed: 20973
Fragments: 60
Ignored packets: 2264 (2264 non-IP, 0 too short)
Flows expired: 1027 (3 forced)
"""


def test_parse_softflowd_stats() -> None:
    assert bench.parse_softflowd_stats(SOFTFLOWD_EXIT) == {
        "active_flows": 0, "processed": 20973, "fragments": 60, "ignored": 2264, "ignored_non_ip": 2264,
        "ignored_too_short": 0, "flows_expired": 1027, "flows_forced": 3}
    assert bench.parse_softflowd_stats("") == {}


def test_count_pcap_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    with wardgen.PcapWriter(path, snaplen=128) as writer:
        n = writer.write_all(wardgen.scenario("sample"))
    assert bench.count_pcap(path) == n
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(bench.BenchError, match="truncated"):
        bench.count_pcap(path)


def test_read_summary_takes_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"type":"flow"}\n{"type":"summary","frames":7,"peak_live_flows":3}\n\n')
    assert bench.read_summary(path)["peak_live_flows"] == 3
    path.write_text('{"type":"flow"}\n')
    with pytest.raises(bench.BenchError, match="not a summary"):
        bench.read_summary(path)


def test_pipeline_seconds_from_log() -> None:
    line = json.dumps({"frames": 1, "seconds": 1.25, "event": "replay_done"})
    assert bench.pipeline_seconds(f"noise\n{line}\n") == 1.25
    assert bench.pipeline_seconds("replay_done seconds=1.25") is None


def test_capture_path_names_the_parameters(tmp_path: Path) -> None:
    params = bench.capture_params("bench-churn", 3, 0.05, 256)
    assert bench.capture_path(tmp_path, params).name == "bench-churn-seed3-scale0p05-snap256.pcap"


def test_write_prefix_keeps_the_first_packets(tmp_path: Path) -> None:
    """The learning prefix is a valid pcap holding exactly the first n records, byte for byte."""
    source, prefix = tmp_path / "s.pcap", tmp_path / "p.pcap"
    with wardgen.PcapWriter(source, snaplen=128) as writer:
        n = writer.write_all(wardgen.scenario("sample"))
    assert bench.write_prefix(source, prefix, n // 2) == n // 2
    assert bench.count_pcap(prefix) == n // 2
    assert source.read_bytes().startswith(prefix.read_bytes())
    assert bench.write_prefix(source, prefix, n + 5) == n and prefix.read_bytes() == source.read_bytes()


def test_bytes_per_live_flow_by_stage_nets_out_the_baseline() -> None:
    """Each stage's figure is its variant's median peak RSS over the baseline, per peak live flow."""
    ward = bench.ToolFigures([1.0], [3000], 10, extra={"median_flows_only_rss_kib": 2000.0,
                                                        "median_no_detectors_rss_kib": 2500.0})
    capture = bench.Capture("bench-flows", Path("x.pcap"), 10, 100)
    result = bench.CaptureResult(capture, ward, bench.ToolFigures([1.0], [1], 10),
                                 {"peak_live_flows": 1024}, {}, 1000.0)
    assert result.stage_bytes_per_live_flow() == {"flows_only": 1000.0, "no_detectors": 1500.0,
                                                  "default": 2000.0}


def test_floor_loop_keeps_both_directions_of_a_conversation_in_one_flow(tmp_path: Path) -> None:
    """The floor loop reads every packet; a request and its answer are one flow, another port another."""
    import bench_floor

    cli, srv = wardgen.Host("10.0.0.2", "02:00:00:00:00:02"), wardgen.Host("10.0.0.9", "02:00:00:00:00:09")
    capture = tmp_path / "two.pcap"
    with wardgen.PcapWriter(capture) as writer:
        writer.write_all(wardgen.udp_exchange(1.0, cli, srv, 40000, 53, b"query", b"answer"))
        writer.write_all(wardgen.udp_exchange(2.0, cli, srv, 40001, 53, b"query", b"answer"))
    assert bench_floor.floor_loop(str(capture)) == (4, 2)


def test_hint_floor_records_each_hinted_flows_payloads_and_parses_them_again(tmp_path: Path) -> None:
    """A DNS query and its answer are one hinted flow of two payloads; parsing them again raises nothing."""
    import bench_hint_floor

    cli, srv = wardgen.Host("10.0.0.2", "02:00:00:00:00:02"), wardgen.Host("10.0.0.9", "02:00:00:00:00:09")
    query = wardgen.dns_message(7, "pacs.ward.example")
    answer = wardgen.dns_message(7, "pacs.ward.example", answers=["10.0.0.50"], response=True)
    capture = tmp_path / "dns.pcap"
    with wardgen.PcapWriter(capture) as writer:
        writer.write_all(wardgen.udp_exchange(1.0, cli, srv, 40000, 53, query, answer))
    inputs = bench_hint_floor.record_inputs(str(capture))
    assert [(module.NAME, fed) for module, fed in inputs] == [("dns", [(query, True), (answer, False)])]
    seconds: dict[str, float] = {"dns": 0.0}
    bench_hint_floor.parse_all(inputs, seconds)
    assert seconds["dns"] > 0


def test_live_cost_per_packet_takes_the_clean_trials_near_the_best_rate() -> None:
    import bench_live

    def trial(rate: str, sent: int, dropped: int, cpu_seconds: float) -> bench_live.Trial:
        return bench_live.Trial(rate, sent, 0.0, sent, dropped, 0, sent - dropped, 10, cpu_seconds)

    trials = [trial("top", 1000, 400, 9.0),       # lossy, and the generator's own rate
              trial("1000", 1000, 0, 0.04),       # clean, but a low rate: fixed costs dominate
              trial("80000", 1000, 0, 0.010),     # 10 us a packet
              trial("90000", 1000, 0, 0.012),     # 12 us
              trial("95000", 1000, 5, 0.001)]     # lossy
    assert bench_live.cost_per_packet(trials, 90000) == (pytest.approx(11.0), 2)
    assert bench_live.cost_per_packet([], 90000) == (0.0, 0)
