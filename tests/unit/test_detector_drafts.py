"""Draft findings: the engine filters them on key, kind, time and addresses and builds only those it emits."""

from __future__ import annotations

from typing import Any

from agent.detectors import scan
from agent.detectors.base import Device
from agent.detectors.common import Draft
from agent.detectors.engine import AllowRule, DetectorEngine
from agent.records import Counters, Finding, FlowRecord, ProtoHint


class Ward:
    """A tiny inventory that remembers which addresses were asked about."""

    def __init__(self, devices: dict[str, dict[str, Any]] | None = None) -> None:
        self._devices = devices or {}
        self.asked: list[str] = []

    def device(self, key: str) -> Device | None:
        return self._devices.get(key)

    def device_of_ip(self, ip: str) -> Device | None:
        self.asked.append(ip)
        return self._devices.get(ip)


class Drafting:
    """A detector whose tick offers prepared drafts, counting how many it was asked to build."""

    def __init__(self, keys: list[str], ts: float = 100.0, fail: set[str] | None = None) -> None:
        self.keys = keys
        self.ts = ts
        self.fail = fail or set()
        self.built: list[str] = []

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        return []

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        return []

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        return [d.build() for d in self.tick_drafts(now)]

    def tick_drafts(self, now: float) -> list[Draft]:
        drafts, self.keys = [self._draft(key) for key in self.keys], []
        return drafts

    def _draft(self, key: str) -> Draft:
        def build() -> Finding:
            if key in self.fail:
                raise RuntimeError("summary bug")
            self.built.append(key)
            return Finding("port_scan", "medium", self.ts, "10.0.0.1", None, "10.0.0.2", None, "tcp", None,
                           None, None, f"scan {key}", {}, key)

        return Draft("drafting", "port_scan", "medium", self.ts, "10.0.0.1", "10.0.0.2", key, build)


def _scan_flows(targets: int, ports: int = 30) -> list[FlowRecord]:
    return [FlowRecord(100.0, 100.0, "tcp", "10.0.0.9", 40000, f"10.0.1.{t}", port, "02:00:00:00:00:09", None,
                       (), 1, 0, 44, 0, "S", "", "idle")
            for t in range(1, targets + 1) for port in range(1, ports + 1)]


def test_rate_limited_drafts_are_never_built() -> None:
    """With room for 2 findings a minute, 5 drafts cost 2 builds and 3 rate-limit counts."""
    counters = Counters()
    detector = Drafting([f"k{i}" for i in range(5)])
    engine = DetectorEngine({"drafting": detector}, counters, max_per_minute=2)
    found = engine.tick(100.0)
    assert [f.key for f in found] == ["k0", "k1"] and detector.built == ["k0", "k1"]
    assert counters.get("findings.rate_limited") == 3 and counters.get("findings.emitted") == 2


def test_suppressed_draft_is_never_built() -> None:
    """A draft whose key was reported within the suppression window is counted, not built."""
    counters = Counters()
    detector = Drafting(["same", "same"])
    engine = DetectorEngine({"drafting": detector}, counters)
    assert [f.summary for f in engine.tick(100.0)] == ["scan same"]
    assert detector.built == ["same"] and counters.get("findings.suppressed") == 1


def test_allow_rule_drops_a_draft_before_it_is_built() -> None:
    """An allow rule matches a draft on its kind, key and addresses: nothing is built."""
    counters = Counters()
    detector = Drafting(["port_scan:ok"])
    engine = DetectorEngine({"drafting": detector}, counters,
                            allow=[AllowRule("port_scan", key="port_scan:ok", src_ip="10.0.0.1")])
    assert engine.tick(100.0) == [] and detector.built == []
    assert counters.get("findings.allowed") == 1


def test_draft_that_fails_to_build_counts_as_its_detectors_error() -> None:
    """A build that raises is counted under the draft's origin; the drafts after it still pass."""
    counters = Counters()
    detector = Drafting(["bad", "good"], fail={"bad"})
    engine = DetectorEngine({"drafting": detector}, counters)
    assert [f.key for f in engine.tick(100.0)] == ["good"]
    assert counters.get("detectors.errors.drafting") == 1 and counters.get("findings.emitted") == 1


def test_scan_findings_through_the_engine_equal_its_own_tick() -> None:
    """The engine's built drafts are the very Findings the scan detector's tick returns when called alone."""
    ward = {"10.0.1.1": {"role": "pacs", "vendor": "Agfa HealthCare"}}
    alone, engined = scan.make(scan.Settings(), Ward(ward)), scan.make(scan.Settings(), Ward(ward))
    engine = DetectorEngine({"scan": engined}, Counters())
    for record in _scan_flows(3):
        alone.on_flow(record)
        engine.on_flow(record)
    direct = alone.tick(200.0)
    assert len(direct) == 3 and all(isinstance(f, Finding) for f in direct)
    assert engine.tick(200.0) == direct
    assert direct[0].severity == "high" and direct[0].summary.endswith("ports of PACS 10.0.1.1 (Agfa) in 0 s")


def test_scan_storm_asks_the_inventory_only_for_emitted_findings() -> None:
    """20 port scans with room for 5 findings: only the 5 emitted ones look up their devices."""
    ward = Ward()
    engine = DetectorEngine({"scan": scan.make(scan.Settings(), ward)}, Counters(), max_per_minute=5)
    for record in _scan_flows(20):
        engine.on_flow(record)
    found = engine.tick(200.0)
    assert len(found) == 5
    assert set(ward.asked) == {"10.0.0.9"} | {f.dst_ip for f in found if f.dst_ip}
