#!/usr/bin/env python3
"""Score the detectors on the labelled ward scenario (scripts/ward_scenarios.py writes it).

    .venv/bin/python scripts/detect_eval.py [--dir tests/captures] [--json FILE]

1. Learn a baseline from scenario-benign.pcap (agent.learn_cli.learn, the `ward-agent learn` code).
2. Replay scenario-benign-test.pcap (held-out benign rounds) and scenario-attack.pcap, each through the
   sensor pipeline with an Inventory and every registered detector (agent.detectors.DETECTORS when the
   registry exists; the learned detector on the baseline and the policy detector on scenario-policy.toml
   always), behind the detector engine's filters when agent.detectors.engine is there.
3. Per labelled attack event and kind: found when a finding of that kind involves the event's hosts
   (source or destination address, or the device MAC) between its start and 120 s after its end.
   The benign-but-unusual event must raise nothing at all involving both its hosts. A finding that
   belongs to no attack event is false; false findings per benign hour count the benign-test capture
   and the attack capture, each round standing for one hour of ward time.
Prints a table; exits 1 when an attack kind is missed, the benign-unusual event is flagged, or there
is more than one false finding per benign hour.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import AgentConfig
from agent.detectors import learned, policycheck
from agent.inventory import Inventory
from agent.learn_cli import learn
from agent.pipeline import replay
from agent.records import Counters, Finding, FlowRecord, ProtoHint

GRACE = 120.0
Device = dict[str, Any]


class InventoryContext:
    """Detector context over an Inventory: device records cached, rebuilt on a miss or every 30 s."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.now = 0.0
        self._built = float("-inf")
        self._by_key: dict[str, Device] = {}
        self._by_ip: dict[str, Device] = {}

    def _refresh(self, force: bool) -> None:
        if (force and self.now - self._built < 1.0) or (not force and self.now - self._built < 30.0):
            return
        self._built = self.now
        records = self.inventory.devices()
        self._by_key = {str(d["mac"]): d for d in records}
        self._by_ip = {str(e["ip"]): d for d in records for e in d["ips"]}

    def device(self, key: str) -> Device | None:
        self._refresh(False)
        if key not in self._by_key:
            self._refresh(True)
        return self._by_key.get(key)

    def device_of_ip(self, ip: str) -> Device | None:
        self._refresh(False)
        if ip not in self._by_ip:
            self._refresh(True)
        return self._by_ip.get(ip)


def _detectors(baseline: Path, policy: Path, context: InventoryContext) -> tuple[Any, list[str]]:
    """The engine (or a plain fan-out) over every detector available; and their names."""
    built: dict[str, Any] = {}
    try:
        from agent.detectors import DETECTORS
        from agent.detectors.engine import build_detectors
        others = [n for n in DETECTORS if n not in (learned.NAME, policycheck.NAME)]
        built, problems = build_detectors({}, context, others)
        if problems:
            print("detector settings problems:", problems, file=sys.stderr)
    except ImportError as exc:
        print(f"(no detector registry yet: {exc}; running the learned and policy detectors only)",
              file=sys.stderr)
    built.update(learned.detectors_from_baseline(str(baseline), context,
                                                 learned.Settings(policy=str(policy))))
    built[policycheck.NAME] = policycheck.make(policycheck.Settings(policy=str(policy)), context)
    try:
        from agent.detectors.engine import DetectorEngine
        return DetectorEngine(built, Counters()), sorted(built)
    except ImportError:
        return _FanOut(built), sorted(built)


class _FanOut:
    def __init__(self, detectors: dict[str, Any]) -> None:
        self.detectors = detectors

    def _all(self, method: str, arg: Any) -> list[Finding]:
        return [f for d in self.detectors.values() for f in getattr(d, method)(arg)]

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        return self._all("on_flow", flow)

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        return self._all("on_hint", hint)

    def on_device(self, device: Device) -> list[Finding]:
        return self._all("on_device", device)

    def tick(self, now: float) -> list[Finding]:
        return self._all("tick", now)

    def finish(self) -> list[Finding]:
        return []


def detect(capture: Path, baseline: Path, policy: Path) -> tuple[list[Finding], list[str], float]:
    """Findings of one capture replayed against the baseline; detector names; hours of ward time."""
    inventory = Inventory()
    context = InventoryContext(inventory)
    engine, names = _detectors(baseline, policy, context)
    found: list[Finding] = []
    clock = {"second": 0, "delta": 0.0, "first": float("inf"), "last": 0.0}

    def advance(ts: float) -> None:
        context.now = ts
        clock["first"], clock["last"] = min(clock["first"], ts), max(clock["last"], ts)
        if int(ts) > clock["second"]:
            clock["second"] = int(ts)
            found.extend(engine.tick(ts))
        if ts - clock["delta"] >= 10.0:
            clock["delta"] = ts
            for device in inventory.delta(ts):
                found.extend(engine.on_device(device))

    def on_flow(flow: FlowRecord) -> None:
        inventory.on_flow(flow)
        advance(flow.last)
        found.extend(engine.on_flow(flow))

    def on_hint(hint: ProtoHint) -> None:
        inventory.on_hint(hint)
        advance(hint.ts)
        found.extend(engine.on_hint(hint))

    replay([str(capture)], AgentConfig(), on_flow, on_hint=on_hint)
    found.extend(engine.finish())
    hours = (clock["last"] - clock["first"]) / 3600 + 1 if found or clock["last"] else 0.0
    return found, names, round(hours)


def _involves(finding: Finding, event: dict[str, Any]) -> bool:
    hosts = {event["src"], event["dst"]} - {None}
    in_time = event["start"] <= finding.ts <= event["end"] + GRACE
    return in_time and (finding.src_ip in hosts or finding.dst_ip in hosts
                        or finding.device == event["src_mac"])


def score(labels: dict[str, Any], attack: list[Finding], benign: list[Finding],
          hours: float) -> dict[str, Any]:
    rows, missed, flagged = [], 0, []
    attacks = [e for e in labels["events"] if not e["benign"]]
    for event in labels["events"]:
        related = [f for f in attack if _involves(f, event)]
        if event["benign"]:
            hits = [f for f in related if {f.src_ip, f.dst_ip} == {event["src"], event["dst"]}]
            flagged += hits
            rows.append((event["note"], "(nothing)", "ok" if not hits else f"FLAGGED x{len(hits)}"))
            continue
        for kind in event["kinds"]:
            n = sum(1 for f in related if f.kind == kind)
            missed += n == 0
            rows.append((event["note"], kind, f"found ({n})" if n else "MISSED"))
    false = [f for f in attack if not any(_involves(f, e) for e in attacks)] + benign
    return {"rows": rows, "missed": missed, "flagged": flagged, "false": false, "hours": hours,
            "false_per_hour": len(false) / hours if hours else 0.0}


def _print(result: dict[str, Any], names: list[str], out: Callable[[str], None]) -> None:
    out(f"detectors: {', '.join(names)}")
    widths = [max(len(r[i]) for r in result["rows"]) for i in range(3)]
    for row in [("event", "kind", "result"), tuple("-" * w for w in widths), *result["rows"]]:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    out(f"\nfalse findings: {len(result['false'])} in {result['hours']:g} benign hours "
        f"= {result['false_per_hour']:.2f} per hour")
    for f in result["false"]:
        out(f"  [{f.kind}/{f.severity}] {f.summary}")
    for f in result["flagged"]:
        out(f"  FLAGGED benign-unusual: [{f.kind}] {f.summary}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("tests/captures"))
    parser.add_argument("--json", type=Path, help="also write the findings and the score here")
    args = parser.parse_args(argv)
    labels = json.loads((args.dir / "scenario-labels.json").read_text())
    captures = {k: args.dir / v for k, v in labels["captures"].items()}
    policy = args.dir / "scenario-policy.toml"
    with tempfile.TemporaryDirectory() as scratch:
        baseline = Path(scratch) / "baseline.json"
        detector, _, _ = learn([str(captures["learn"])], AgentConfig(), learned.Settings())
        detector.baseline.save(baseline)
        benign, names, benign_hours = detect(captures["benign"], baseline, policy)
        attack, _, attack_hours = detect(captures["attack"], baseline, policy)
    result = score(labels, attack, benign, benign_hours + attack_hours)
    _print(result, names, print)
    if args.json:
        args.json.write_text(json.dumps({"attack": [f.to_dict() for f in attack],
                                         "benign": [f.to_dict() for f in benign],
                                         "rows": result["rows"], "false_per_hour": result["false_per_hour"]},
                                        indent=1))
    for f in attack:
        print(f"  attack finding: [{f.kind}/{f.severity}] {f.summary}", file=sys.stderr)
    bad = result["missed"] or result["flagged"] or result["false_per_hour"] > 1.0
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
