"""agent.detectors.learned: findings against a learned baseline, their keys, bounds and quiet periods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.baseline import Baseline
from agent.config import AgentConfig
from agent.detectors.learned import LearnedDetector, Settings, detectors_from_baseline, make
from agent.learn_cli import learn
from agent.pipeline import replay
from agent.records import Finding, FlowRecord, ProtoHint

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
PUMP, PACS, CT, WS = "58:46:e1:00:00:31", "02:00:00:00:00:10", "02:00:00:00:00:11", "02:00:00:00:00:12"
IPS = {PUMP: "10.1.0.31", PACS: "10.1.0.10", CT: "10.1.0.11", WS: "10.1.0.12"}
ROLES = {PUMP: "infusion_pump", PACS: "pacs", CT: "imaging_modality", WS: "dicom_workstation"}
HOUR = 3600.0


class Devices:
    def __init__(self, records: dict[str, dict[str, Any]] | None = None) -> None:
        self.records = records or {}

    def device(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def device_of_ip(self, ip: str) -> dict[str, Any] | None:
        return None


def flow(a: str, b: str, port: int, last: float, a_bytes: int = 1000, b_ip: str | None = None,
         b_pkts: int = 4) -> FlowRecord:
    return FlowRecord(last - 1, last, "tcp", IPS.get(a, "10.1.0.99"), 40000, b_ip or IPS[b], port, a, b, (),
                      4, b_pkts, a_bytes, 400, "SAPF", "SAPF", "fin")


def associate(src: str, dst: str, ts: float, services: list[str], calling: str,
              port: int = 11112) -> ProtoHint:
    return ProtoHint(ts, "dicom", "tcp", src, IPS[src], 40000, dst, IPS[dst], port, True,
                     {"dicom": "associate_rq", "calling_ae": calling, "called_ae": "PACS_MAIN",
                      "services": services})


def accept(src: str, dst: str, ts: float, services: list[str]) -> ProtoHint:
    return ProtoHint(ts, "dicom", "tcp", src, IPS[src], 11112, dst, IPS[dst], 40000, False,
                     {"dicom": "associate_ac", "accepted_services": services})


def hl7(src: str, dst: str, ts: float, port: int = 2575) -> ProtoHint:
    return ProtoHint(ts, "hl7", "tcp", src, IPS[src], 40000, dst, IPS[dst], port, True,
                     {"message_type": "ORU^R01^ORU_R01"})


def ward(**overrides: Any) -> LearnedDetector:
    """A detector that learned four hours of a small ward: CT stores to the PACS, the pump sends HL7."""
    settings = Settings(sensor_learning=4 * HOUR, **overrides)
    detector = make(settings, Devices())
    for hour in range(4):
        t = 1000.0 + hour * HOUR
        detector.on_hint(associate(CT, PACS, t, ["storage:ct"], "CT_SCANNER_01"))
        detector.on_hint(accept(PACS, CT, t + 0.1, ["storage:ct"]))
        detector.on_flow(flow(CT, PACS, 11112, t + 1, a_bytes=2_000_000 + hour * 100_000))
        detector.on_hint(hl7(PUMP, WS, t + 2))
        detector.on_flow(flow(PUMP, WS, 2575, t + 3))
    for mac, role in ROLES.items():
        vendor = "Baxter International Inc" if mac == PUMP else None
        detector.on_device({"mac": mac, "role": role, "vendor": vendor, "ips": [{"ip": IPS[mac]}]})
    return detector


AFTER = 1000.0 + 5 * HOUR


def kinds(found: list[Finding]) -> list[str]:
    return sorted(f.kind for f in found)


def test_nothing_is_raised_while_learning() -> None:
    """During the sensor's learning period even odd traffic raises nothing."""
    detector = make(Settings(sensor_learning=HOUR), Devices())
    assert detector.on_hint(associate(PUMP, PACS, 10.0, ["qr_find"], "PUMP")) == []
    assert detector.on_flow(flow(PUMP, PACS, 11112, 11.0, a_bytes=10**9)) == []


def test_pump_dicom_is_clinical_protocol_misuse() -> None:
    """A pump asking the PACS for a C-FIND: high, with the clinical sentence and a stable key."""
    found = ward().on_hint(associate(PUMP, PACS, AFTER, ["qr_find"], "PUMP31"))
    assert kinds(found) == ["clinical_protocol_misuse"]
    misuse = found[0]
    assert misuse.severity == "high" and misuse.key == f"clinical_protocol_misuse:{PUMP}:dicom:10.1.0.10"
    assert misuse.summary.startswith("Infusion pump (Baxter) 10.1.0.31 requested a DICOM qr_find association")
    assert "infusion pumps never use DICOM" in misuse.summary
    assert set(misuse.evidence["reasons"]) == {"role", "unknown_sender"}


def test_learned_dicom_raises_nothing() -> None:
    """The modality storing to the PACS as it did while learning is normal."""
    assert ward().on_hint(associate(CT, PACS, AFTER, ["storage:ct"], "CT_SCANNER_01")) == []


def test_dicom_on_an_unexpected_port() -> None:
    """The right AE on a port the PACS never served DICOM on: medium, reason port."""
    found = ward().on_hint(associate(CT, PACS, AFTER, ["storage:ct"], "CT_SCANNER_01", port=104))
    assert [f.evidence["reasons"] for f in found] == [["port"]] and found[0].severity == "medium"


def test_hl7_from_an_unknown_partner() -> None:
    """HL7 reaching the receiver from a device it never exchanged HL7 with."""
    found = ward().on_hint(hl7(CT, WS, AFTER))
    assert kinds(found) == ["clinical_protocol_misuse"] and "unknown_sender" in found[0].evidence["reasons"]


def test_new_peer_and_new_service() -> None:
    """A known device reaching a new host on a new service raises both, keyed per device."""
    found = ward().on_flow(flow(PUMP, PACS, 11112, AFTER))
    assert {f.key for f in found} == {f"new_peer:{PUMP}:10.1.0.10", f"new_service:{PUMP}:used:tcp/11112"}


def test_new_offered_service() -> None:
    """A device answering on a port it never answered on raises new_service (offered)."""
    found = ward().on_flow(flow(CT, PACS, 21, AFTER))
    assert f"new_service:{PACS}:offered:tcp/21" in {f.key for f in found}


def test_new_device_then_its_own_learning() -> None:
    """An unknown MAC raises new_device once and then learns for device_learning without new_peer."""
    detector = ward()
    new = "02:66:00:00:00:66"
    first = detector.on_flow(flow(new, PACS, 22, AFTER))
    later = detector.on_flow(flow(new, CT, 23, AFTER + 60))
    assert kinds(first) == ["new_device", "new_service"] and first[0].key == f"new_device:{new}"
    assert kinds(later) == ["new_service"]  # CT answering on 23; the newcomer itself is quiet


def test_new_device_learns_then_detects() -> None:
    """After its own window, a device that was new is judged against what it learned."""
    detector = ward(device_learning=HOUR)
    new = "02:66:00:00:00:66"
    detector.on_flow(flow(new, PACS, 11112, AFTER))
    assert detector.on_flow(flow(new, PACS, 11112, AFTER + 2 * HOUR)) == []
    assert "new_peer" in kinds(detector.on_flow(flow(new, CT, 11112, AFTER + 2 * HOUR + 1)))


def test_new_findings_are_capped_per_interval() -> None:
    """Beyond new_per_interval, new_peer findings of one device are only counted."""
    detector = ward(new_per_interval=2)
    found = []
    for i in range(5):
        found += detector.on_flow(flow(CT, PACS, 11112, AFTER + i, b_ip=f"10.1.0.{100 + i}"))
    assert len(found) == 2 and detector.counters.get("learned.new_peer_capped") == 3


def test_volume_anomaly_far_above_the_baseline() -> None:
    """Sending 50 MB where 2 MB an hour is usual raises volume_anomaly with the numbers."""
    found = ward().on_flow(flow(CT, PACS, 11112, AFTER, a_bytes=50_000_000))
    anomaly = [f for f in found if f.kind == "volume_anomaly" and f.evidence["peer"] == "10.1.0.10"]
    assert anomaly and anomaly[0].evidence["bytes"] == 50_000_000 and anomaly[0].evidence["median"] > 0
    assert anomaly[0].key == f"volume_anomaly:{CT}:10.1.0.10"


def test_volume_below_the_floor_is_quiet() -> None:
    """Far above the median but under the absolute floor is no anomaly."""
    found = ward().on_flow(flow(CT, PACS, 11112, AFTER, a_bytes=9_000_000))
    assert "volume_anomaly" not in kinds(found)


def test_volume_within_learned_largest_is_quiet() -> None:
    """Within headroom x the largest learned interval is no anomaly, however far from the median."""
    detector = ward(volume_floor=0, volume_headroom=20.0)
    found = detector.on_flow(flow(CT, PACS, 11112, AFTER, a_bytes=40_000_000))
    assert "volume_anomaly" not in kinds(found)


def test_bulk_policy_rule_silences_volume(tmp_path: Path) -> None:
    """A flow allowed by a `bulk = true` policy rule is not a volume anomaly."""
    policy = tmp_path / "p.toml"
    policy.write_text('[[allow]]\nfrom = "*"\nto = "*"\nproto = "tcp"\nports = [11112]\nbulk = true\n')
    detector = ward(policy=str(policy))
    found = detector.on_flow(flow(CT, PACS, 11112, AFTER, a_bytes=50_000_000))
    assert "volume_anomaly" not in kinds(found) and detector.counters.get("learned.volume_bulk_allowed")


def test_external_communication_of_a_medical_device() -> None:
    """A pump talking to a public address it never used raises external_communication."""
    found = ward().on_flow(flow(PUMP, WS, 443, AFTER, b_ip="198.51.100.7"))
    assert f"external_communication:{PUMP}:198.51.100.7" in {f.key for f in found}


def test_external_allow_list() -> None:
    """An address inside external_allowed is fine for medical devices."""
    detector = ward(external_allowed=("198.51.100.0/24",))
    found = detector.on_flow(flow(PUMP, WS, 443, AFTER, b_ip="198.51.100.7"))
    assert "external_communication" not in kinds(found)


def test_a_key_is_raised_once_per_interval() -> None:
    """The same misuse twice in one interval is one finding."""
    detector = ward()
    detector.on_hint(associate(PUMP, PACS, AFTER, ["qr_find"], "PUMP31"))
    assert detector.on_hint(associate(PUMP, PACS, AFTER + 5, ["qr_find"], "PUMP31")) == []


def test_role_of_a_learned_device_is_not_retrained() -> None:
    """After learning, a new inventory role for a learned pump does not change its profile."""
    detector = ward()
    detector.tick(AFTER)
    detector.on_device({"mac": PUMP, "role": "dicom_workstation", "last_seen": AFTER})
    assert detector.baseline.devices[PUMP].role == "infusion_pump"


def test_settings_problems_are_listed() -> None:
    """Bad settings are each reported."""
    problems = Settings(kinds=("bogus",), interval=0, external_allowed=("nope",)).problems()
    assert len(problems) == 3 and problems[0] == "kinds: unknown bogus"


def test_detectors_from_baseline_detect_from_the_first_record(tmp_path: Path) -> None:
    """A baseline learned from the DICOM capture makes the HL7 capture's sender a new device at once."""
    detector, _, _ = learn([str(CAPTURES / "dicom-workflow.pcap")], AgentConfig(), Settings())
    path = tmp_path / "b.json"
    detector.baseline.save(path)
    detectors = detectors_from_baseline(str(path), Devices())
    assert list(detectors) == ["learned"]
    found: list[Finding] = []
    learned = detectors["learned"]
    replay([str(CAPTURES / "hl7-mllp.pcap")], AgentConfig(), lambda f: found.extend(learned.on_flow(f)),
           on_hint=lambda h: found.extend(learned.on_hint(h)))
    assert {f.key for f in found if f.kind == "new_device"} == {"new_device:02:77:00:00:00:21",
                                                                 "new_device:02:77:00:00:00:20"}


def test_missing_baseline_file_is_an_error(tmp_path: Path) -> None:
    """detectors_from_baseline refuses a file that is not there."""
    with pytest.raises(ValueError, match="cannot read baseline"):
        detectors_from_baseline(str(tmp_path / "none.json"), Devices())


def test_loaded_incomplete_baseline_keeps_learning() -> None:
    """A baseline saved mid-learning resumes learning until its own end."""
    baseline = Baseline(sensor_learning=HOUR)
    baseline.learning(0.0)
    reloaded = Baseline.from_json(baseline.to_json())
    assert reloaded.learning(10.0) and not reloaded.learning(HOUR + 1)


def test_saturated_sets_prove_nothing() -> None:
    """When a receiver's HL7 partners hit their bound while learning, an unlisted sender is not suspicious."""
    detector = ward()
    detector.baseline.devices[WS].saturated.add("hl7_partners")
    assert detector.on_hint(hl7(CT, WS, AFTER)) == []
