"""The detector engine: de-duplication, rate limit, allow rules, failure isolation, construction."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.detectors import DETECTORS, ON_REQUEST, scan
from agent.detectors.base import Detector, Device
from agent.detectors.engine import AllowRule, DetectorEngine, build_detectors, parse_allow
from agent.records import Counters, Finding, FlowRecord, ProtoHint


class Ward:
    """A tiny inventory: address -> device record."""

    def __init__(self, devices: dict[str, dict[str, Any]] | None = None) -> None:
        self._devices = devices or {}

    def device(self, key: str) -> Device | None:
        return self._devices.get(key)

    def device_of_ip(self, ip: str) -> Device | None:
        return self._devices.get(ip)


def _finding(ts: float, key: str = "port_scan:a->b", kind: str = "port_scan", severity: str = "medium",
             src: str = "10.0.0.1", dst: str = "10.0.0.2") -> Finding:
    return Finding(kind, severity, ts, src, None, dst, None, "tcp", None, None, None, "s", {}, key)


def _flow(last: float) -> FlowRecord:
    return FlowRecord(last, last, "tcp", "10.0.0.1", 40000, "10.0.0.2", 80, None, None, (), 1, 1, 60, 60,
                      "S", "RA", "rst")


class Scripted:
    """A detector that returns one prepared finding per flow (the flow's time), or raises when told to."""

    def __init__(self, fail: bool = False, **finding: Any) -> None:
        self.fail = fail
        self.finding = finding
        self.flows = 0
        self.hints: list[str] = []

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        self.flows += 1
        if self.fail:
            raise RuntimeError("detector bug")
        return [_finding(flow.last, **self.finding)]

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        self.hints.append(hint.app)
        return []

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        return []


def _engine(*detectors: Detector, counters: Counters | None = None, **options: Any) -> DetectorEngine:
    return DetectorEngine({f"d{i}": d for i, d in enumerate(detectors)}, counters or Counters(), **options)


def test_a_finding_passes_and_is_counted() -> None:
    """A detector's finding comes out of the engine and counts as emitted, by kind."""
    counters = Counters()
    engine = _engine(Scripted(), counters=counters)
    assert [f.key for f in engine.on_flow(_flow(100.0))] == ["port_scan:a->b"]
    assert counters.get("findings.emitted") == 1 and counters.get("findings.port_scan") == 1


def test_same_key_within_window_is_suppressed() -> None:
    """The same key again inside the suppression window is dropped and counted."""
    counters = Counters()
    engine = _engine(Scripted(), counters=counters, suppress_seconds=3600)
    engine.on_flow(_flow(100.0))
    assert engine.on_flow(_flow(3699.0)) == []
    assert counters.get("findings.suppressed") == 1


def test_earlier_duplicate_within_window_is_suppressed() -> None:
    """A finding with the same key and an earlier time (an episode reported late) is a duplicate too."""
    counters = Counters()
    engine = _engine(Scripted(), counters=counters)
    engine.on_flow(_flow(100.0))
    assert engine.on_flow(_flow(90.0)) == []
    assert counters.get("findings.suppressed") == 1


def test_same_key_after_window_is_reported_again() -> None:
    """Once the window has passed in packet time, the key is reported again."""
    engine = _engine(Scripted(), suppress_seconds=3600)
    engine.on_flow(_flow(100.0))
    assert len(engine.on_flow(_flow(3700.0))) == 1


def test_rate_limit_counts_findings_over_the_minute_budget() -> None:
    """More than max_per_minute distinct findings within 60 s of packet time are dropped and counted."""
    counters = Counters()
    detector = Scripted()
    engine = _engine(detector, counters=counters, max_per_minute=3)
    passed = []
    for i in range(5):
        detector.finding = {"key": f"port_scan:{i}"}
        passed += engine.on_flow(_flow(100.0 + i))
    detector.finding = {"key": "port_scan:late"}
    passed += engine.on_flow(_flow(161.0))
    assert [f.key for f in passed] == ["port_scan:0", "port_scan:1", "port_scan:2", "port_scan:late"]
    assert counters.get("findings.rate_limited") == 2


def test_allow_rule_with_exact_key_drops_the_finding() -> None:
    """An approved key (the review loop) stops the finding and counts it as allowed."""
    counters = Counters()
    engine = _engine(Scripted(), counters=counters, allow=[AllowRule("port_scan", key="port_scan:a->b")])
    assert engine.on_flow(_flow(100.0)) == []
    assert counters.get("findings.allowed") == 1


def test_allow_rule_prefix_and_address_must_all_match() -> None:
    """A prefix rule limited to one source address lets the same key from another source through."""
    rule = AllowRule("port_scan", key_prefix="port_scan:", src_ip="10.0.0.9")
    assert _engine(Scripted(src="10.0.0.9"), allow=[rule]).on_flow(_flow(1.0)) == []
    assert len(_engine(Scripted(src="10.0.0.1"), allow=[rule]).on_flow(_flow(1.0))) == 1


def test_allow_rule_of_another_kind_does_not_match() -> None:
    """A rule for brute_force does not silence a port_scan with the same key text."""
    rule = AllowRule("brute_force", key="port_scan:a->b")
    assert len(_engine(Scripted(), allow=[rule]).on_flow(_flow(1.0))) == 1


def test_failing_detector_is_counted_and_the_others_still_run() -> None:
    """An exception in one detector is counted under its name; the next detector's finding still passes."""
    counters = Counters()
    broken, healthy = Scripted(fail=True), Scripted()
    engine = DetectorEngine({"broken": broken, "healthy": healthy}, counters)
    assert len(engine.on_flow(_flow(1.0))) == 1
    assert counters.get("detectors.errors.broken") == 1 and healthy.flows == 1


def test_failing_detector_is_logged_at_most_once_a_minute() -> None:
    """Three failures within a minute of wall time log once; one after the minute logs again."""
    now = [0.0]
    engine = DetectorEngine({"broken": Scripted(fail=True)}, Counters(), clock=lambda: now[0])
    with capture_logs() as logs:
        for at in (0.0, 10.0, 59.0, 61.0):
            now[0] = at
            engine.on_flow(_flow(at))
    assert [entry["event"] for entry in logs] == ["detector_failed", "detector_failed"]


class DnsOnly(Scripted):
    hint_apps = frozenset({"dns"})


def test_hints_reach_only_the_detectors_that_want_their_app() -> None:
    """A detector declaring hint_apps gets only those hints; one without gets every hint."""
    narrow, wide = DnsOnly(), Scripted()
    engine = DetectorEngine({"narrow": narrow, "wide": wide}, Counters())
    for app in ("arp", "dns", "arp"):
        engine.on_hint(ProtoHint(1.0, app, "udp", None, "10.0.0.1", 0, None, "10.0.0.2", 53, True, {}))
    assert (narrow.hints, wide.hints) == (["dns"], ["arp", "dns", "arp"])


class NoFlows(Scripted):
    takes_flows = False


def test_flows_skip_detectors_that_take_none() -> None:
    """A detector declaring takes_flows = False is never handed a flow."""
    skipped, taken = NoFlows(), Scripted()
    DetectorEngine({"skipped": skipped, "taken": taken}, Counters()).on_flow(_flow(1.0))
    assert (skipped.flows, taken.flows) == (0, 1)


def test_finding_outside_the_vocabulary_is_dropped() -> None:
    """A kind or severity outside the fixed vocabulary never leaves the engine."""
    counters = Counters()
    assert _engine(Scripted(kind="weird"), counters=counters).on_flow(_flow(1.0)) == []
    assert _engine(Scripted(severity="urgent"), counters=counters).on_flow(_flow(1.0)) == []
    assert counters.get("detectors.invalid") == 2


def test_detector_counters_are_published_on_tick() -> None:
    """A detector's own counters (its evictions) appear under detectors.<name>. after a tick."""
    counters = Counters()
    detector = scan.make(scan.Settings(max_sources=1), Ward())
    engine = DetectorEngine({"scan": detector}, counters)
    for dst in ("10.0.0.2", "10.0.0.3"):
        engine.on_flow(FlowRecord(1.0, 1.0, "tcp", "10.0.0.1", 40000, dst, 22, None, None, (), 1, 0, 44, 0,
                                  "S", "", "idle"))
    engine.tick(2.0)
    assert counters.get("detectors.scan.evicted.targets") == 1


def test_finish_reports_what_detectors_hold() -> None:
    """finish() ticks past every quiet period, so a held scan episode is reported at the end of a capture."""
    engine = DetectorEngine({"scan": scan.make(scan.Settings(), Ward())}, Counters())
    for port in range(1, 31):
        engine.on_flow(FlowRecord(1.0, 1.0, "tcp", "10.0.0.1", 40000, "10.0.0.2", port, None, None, (), 1, 0,
                                  44, 0, "S", "", "end"))
    assert engine.tick(2.0) == []
    assert [f.kind for f in engine.finish()] == ["port_scan"]


def test_finish_at_the_end_of_the_last_second_reports_records_after_the_last_tick() -> None:
    """Records leave the engine's clock alone; finish(now) is given the end, past even the longest quiet."""
    slowest = scan.Settings(quiet=3600.0, within=3600.0)
    engine = DetectorEngine({"scan": scan.make(slowest, Ward())}, Counters())
    engine.tick(1.0)
    for port in range(1, 31):
        engine.on_flow(FlowRecord(1.9, 1.9, "tcp", "10.0.0.1", 40000, "10.0.0.2", port, None, None, (), 1, 0,
                                  44, 0, "S", "", "end"))
    assert [f.kind for f in engine.finish(2.0)] == ["port_scan"]


def test_build_all_detectors_with_defaults() -> None:
    """With no settings and no enabled list, every registered detector is built and no problem is found."""
    built, problems = build_detectors({}, Ward())
    assert problems == [] and set(built) == set(DETECTORS) - ON_REQUEST


def test_build_only_the_enabled_detectors() -> None:
    """A detector left out of `enabled` is absent."""
    built, _ = build_detectors({}, Ward(), enabled=["scan"])
    assert list(built) == ["scan"]


def test_build_takes_a_table_of_overrides() -> None:
    """Settings may be given as a plain TOML table: an int for a float, a list for a tuple."""
    settings = {"scan": {"ports": 50, "window": 60}, "cleartext_credentials": {"ignore": ["snmp"]}}
    built, problems = build_detectors(settings, Ward(), enabled=["scan", "cleartext_credentials"])
    assert problems == [] and set(built) == {"scan", "cleartext_credentials"}


@pytest.mark.parametrize(("settings", "enabled", "problem"), [
    ({}, ["nope"], "detectors.nope: unknown detector"),
    ({"nope": {}}, None, "detectors.nope: settings for an unknown detector"),
    ({"scan": {"ports": 1}}, ["scan"], "detectors.scan.ports: out of range"),
    ({"scan": {"colour": 1}}, ["scan"], "detectors.scan.colour: unknown key"),
    ({"scan": {"ports": "many"}}, ["scan"], "detectors.scan.ports: must be int"),
    ({"scan": {"window": True}}, ["scan"], "detectors.scan.window: must be float"),
    ({"cleartext_credentials": {"ignore": [1]}}, ["cleartext_credentials"],
     "detectors.cleartext_credentials.ignore: must be tuple"),
])
def test_build_lists_problems_with_dotted_paths(settings: dict[str, Any], enabled: list[str] | None,
                                                problem: str) -> None:
    """Unknown detectors, unknown keys and out-of-range values are problems, and nothing bad is built."""
    built, problems = build_detectors(settings, Ward(), enabled=enabled)
    assert any(p.startswith(problem) for p in problems), problems
    assert "nope" not in built and (enabled != ["scan"] or "scan" not in built)


def test_parse_allow_accepts_a_rule_table() -> None:
    """A config table becomes an AllowRule."""
    table = {"kind": "host_sweep", "key_prefix": "host_sweep:10.0.0.5:", "src_ip": "10.0.0.5"}
    rules, problems = parse_allow([table])
    assert problems == []
    assert rules == [AllowRule("host_sweep", key_prefix="host_sweep:10.0.0.5:", src_ip="10.0.0.5")]


@pytest.mark.parametrize(("item", "problem"), [
    ({"kind": "port_scan"}, "needs key or key_prefix"),
    ({"kind": "bogus", "key": "x"}, "kind: must be one of"),
    ({"kind": "port_scan", "key": 5}, "key: must be a string"),
    ({"kind": "port_scan", "key": "x", "colour": "red"}, "colour: unknown key"),
    ("port_scan", "must be a table"),
])
def test_parse_allow_lists_problems(item: Any, problem: str) -> None:
    """A bad rule is refused with its dotted path; no rule is made from it."""
    rules, problems = parse_allow([item])
    assert rules == [] and len(problems) == 1
    assert problem in problems[0] and "detectors.allow[0]" in problems[0]
