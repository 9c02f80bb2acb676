"""agent.baseline: what a learned baseline holds, its bounds, and its atomic, versioned file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.baseline import Baseline, BaselineError
from agent.baseline_stats import Robust, VolumeStats, address_class, service_label
from agent.config import AgentConfig
from agent.detectors.learned import Settings
from agent.learn_cli import learn
from agent.records import FlowRecord, ProtoHint

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
A_MAC, B_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def flow(a_ip: str = "10.0.0.1", b_ip: str = "10.0.0.2", port: int = 11112, last: float = 100.0,
         a_bytes: int = 1000, b_pkts: int = 3, b_flags: str = "SAF", proto: str = "tcp",
         a_mac: str | None = A_MAC, b_mac: str | None = B_MAC) -> FlowRecord:
    return FlowRecord(last - 1, last, proto, a_ip, 40000, b_ip, port, a_mac, b_mac, (), 3, b_pkts, a_bytes,
                      500, "SAF", b_flags, "fin")


def observed(baseline: Baseline, record: FlowRecord) -> None:
    a = baseline.profile(baseline.key_of(record.a_mac, record.a_ip) or "", record.first)
    b = baseline.profile(baseline.key_of(record.b_mac, record.b_ip) or "", record.first)
    baseline.observe_flow(record, a, b)


def test_answered_flow_teaches_peer_and_services() -> None:
    """The initiator learns the peer and the service used; the responder the service offered."""
    baseline = Baseline()
    observed(baseline, flow())
    a, b = baseline.devices[A_MAC], baseline.devices[B_MAC]
    assert a.peers["10.0.0.2"].services == {"tcp/11112"} and a.used == {"tcp/11112"}
    assert b.offered == {"tcp/11112"} and "10.0.0.1" in b.peers and a.ips == {"10.0.0.1"}


def test_unanswered_flow_teaches_nothing() -> None:
    """A SYN nobody answered is no peer and no service."""
    baseline = Baseline()
    observed(baseline, flow(b_pkts=0))
    assert not baseline.devices[A_MAC].peers and not baseline.devices[A_MAC].used


def test_reset_reply_is_no_service() -> None:
    """A closed port (a reset without SYN-ACK) is not a service offered."""
    baseline = Baseline()
    observed(baseline, flow(b_flags="R"))
    assert not baseline.devices[B_MAC].offered


def test_ephemeral_ports_share_one_label() -> None:
    """Server ports from 32768 up are one service, so passive FTP data does not pile up."""
    assert service_label("tcp", 40001) == service_label("tcp", 61000) == "tcp/32768+"
    assert service_label("udp", 53) == "udp/53"


def test_address_classes() -> None:
    """Documentation ranges are external (unlike Python's is_private); multicast is neither."""
    assert address_class("198.51.100.7") == "external"
    assert address_class("10.1.0.5") == "private" and address_class("fe80::1") == "private"
    assert address_class("224.0.0.251") == "other" and address_class("not-an-ip") == "other"
    assert address_class("198.51.100.7", ("198.51.100.0/24",)) == "private"


def test_volume_samples_one_total_per_interval() -> None:
    """Bytes in one interval add up; the next interval turns the total into a sample."""
    baseline = Baseline(interval=60)
    for last, nbytes in ((10, 100), (20, 50), (70, 7), (130, 1)):
        observed(baseline, flow(last=last, a_bytes=nbytes))
    assert baseline.devices[A_MAC].peers["10.0.0.2"].volume.samples == [150, 7]


def test_volume_ring_is_bounded() -> None:
    """Only the newest max_samples interval totals are kept."""
    stats = VolumeStats([])
    for slot in range(10):
        stats.add(slot, slot + 1, limit=4)
    stats.close(4)
    assert stats.samples == [7, 8, 9, 10]


def test_robust_statistics() -> None:
    """Median and MAD ignore one huge interval; the largest sample is kept apart."""
    stats = Robust.of([10, 12, 11, 13, 10_000])
    assert (stats.median, stats.mad, stats.largest, stats.n) == (12.0, 1.0, 10_000, 5)


def test_peer_bound_is_counted() -> None:
    """Peers beyond max_peers are dropped and counted, never replacing a known one."""
    baseline = Baseline(max_peers=2)
    for i in range(4):
        observed(baseline, flow(b_ip=f"10.0.0.{10 + i}", b_mac=None))
    assert sorted(baseline.devices[A_MAC].peers) == ["10.0.0.10", "10.0.0.11"]
    assert baseline.counters.get("baseline.peers_dropped") == 2


def test_device_bound_is_counted() -> None:
    """Devices beyond max_devices get no profile, counted."""
    baseline = Baseline(max_devices=1)
    observed(baseline, flow())
    assert list(baseline.devices) == [A_MAC] and baseline.counters.get("baseline.devices_dropped") == 1


def test_public_side_is_no_device() -> None:
    """An external address behind the gateway MAC gets no profile of its own."""
    assert Baseline().key_of("02:00:00:00:00:01", "198.51.100.7") is None
    assert Baseline().key_of(None, "10.0.0.9") == "ip:10.0.0.9"
    assert Baseline().key_of("01:00:5e:00:00:01", "10.0.0.9") is None


def test_learning_clock_ends_after_the_period() -> None:
    """The sensor learns for sensor_learning seconds from the first record, then the baseline is complete."""
    baseline = Baseline(sensor_learning=100)
    assert baseline.learning(1000.0) and baseline.learning(1099.0)
    assert not baseline.learning(1100.0) and baseline.complete


def test_hl7_hint_teaches_types_partners_and_port() -> None:
    """A non-ACK HL7 message: types sent and received, partners both ways, the receiver's port."""
    baseline = Baseline()
    src, dst = baseline.profile(A_MAC, 0.0), baseline.profile(B_MAC, 0.0)
    hint = ProtoHint(1.0, "hl7", "tcp", A_MAC, "10.0.0.1", 40000, B_MAC, "10.0.0.2", 2575, True,
                     {"message_type": "ORU^R01^ORU_R01"})
    baseline.observe_hint(hint, src, dst)
    assert src is not None and dst is not None
    assert src.hl7_sent == {"ORU^R01"} and dst.hl7_received == {"ORU^R01"}
    assert dst.hl7_partners == {"10.0.0.1"} and dst.hl7_ports == {"2575"}


def test_learning_real_dicom_capture() -> None:
    """From the pynetdicom capture: the PACS serves storage on 11112 to CT_SCANNER_01, the CT uses it."""
    detector, _, _ = learn([str(CAPTURES / "dicom-workflow.pcap")], AgentConfig(), Settings())
    pacs, ct = detector.baseline.devices["02:77:00:00:00:10"], detector.baseline.devices["02:77:00:00:00:11"]
    assert "storage:ct" in pacs.dicom_scp and pacs.dicom_ports == {"11112"}
    assert "CT_SCANNER_01" in pacs.dicom_callers and "storage:ct" in ct.dicom_scu
    assert pacs.role == "pacs" and detector.baseline.complete


def test_roles_merge_their_devices() -> None:
    """Per role, the union of its devices' clinical use."""
    detector, _, _ = learn([str(CAPTURES / "hl7-mllp.pcap")], AgentConfig(), Settings())
    roles = detector.baseline.roles()
    assert "ADT^A01" in roles["hl7_engine"]["hl7_received"]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    """What is saved loads back identical."""
    detector, _, _ = learn([str(CAPTURES / "dicom-workflow.pcap")], AgentConfig(), Settings())
    path = tmp_path / "b.json"
    detector.baseline.save(path)
    assert Baseline.load(path).to_json() == detector.baseline.to_json()


def test_save_replaces_atomically(tmp_path: Path) -> None:
    """Saving over an old file replaces it and leaves no temporary file behind."""
    path = tmp_path / "b.json"
    path.write_text("old")
    Baseline().save(path)
    assert json.loads(path.read_text())["format"] == "ward-baseline"
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_other_version_is_refused(tmp_path: Path) -> None:
    """A baseline of another format version is refused with its path."""
    document = Baseline().to_json() | {"version": 99}
    with pytest.raises(BaselineError, match=r"version: 99 is not supported"):
        Baseline.from_json(document)


def test_damaged_device_names_its_path() -> None:
    """A malformed device entry is refused naming the device."""
    document = Baseline().to_json()
    document["devices"] = {"02:00:00:00:00:01": {"first_seen": "soon"}}
    with pytest.raises(BaselineError, match=r"devices\.02:00:00:00:00:01"):
        Baseline.from_json(document)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    """A file that is not JSON is a BaselineError, not a crash."""
    path = tmp_path / "b.json"
    path.write_bytes(b"\xff\x00garbage")
    with pytest.raises(BaselineError):
        Baseline.load(path)
