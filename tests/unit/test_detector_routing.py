"""The cheap paths of detection: flow routing by port, device deltas only when wanted, cached device records,
LRU-bounded state; each must leave the findings exactly as the plain paths would."""

from __future__ import annotations

import random
from typing import Any

from agent.config import DetectorSettings
from agent.detect import Detection, InventoryContext
from agent.detectors import DETECTORS, ON_REQUEST
from agent.detectors.base import Device
from agent.detectors.common import Bounded, Episode
from agent.detectors.engine import DetectorEngine, build_detectors
from agent.inventory import Inventory
from agent.records import Counters, Finding, FlowRecord, ProtoHint

BUILT_IN = [name for name in DETECTORS if name not in ON_REQUEST]
MAC = "02:00:00:00:00:05"


def _flow(b_port: int, *, last: float = 10.0, a_ip: str = "10.1.0.5", b_ip: str = "10.1.0.9",
          proto: str = "tcp", b_pkts: int = 1, a_flags: str = "SP", b_flags: str = "SP") -> FlowRecord:
    return FlowRecord(last - 1, last, proto, a_ip, 40000, b_ip, b_port, MAC, None, (), 4, b_pkts, 400, 300,
                      a_flags, b_flags, "fin")


class Probe:
    """A detector that records what it is handed; optional routing attributes are set per instance."""

    def __init__(self, log: list[str], name: str, **attributes: Any) -> None:
        self.log, self.name = log, name
        for key, value in attributes.items():
            setattr(self, key, value)

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        self.log.append(f"{self.name}:{flow.b_port}")
        return []

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        return []

    def on_device(self, device: Device) -> list[Finding]:
        self.log.append(f"{self.name}:device")
        return []

    def tick(self, now: float) -> list[Finding]:
        return []


def test_flows_reach_port_detectors_only_on_their_ports() -> None:
    """A detector with flow_ports sees only flows to those ports; others see all, in registry order."""
    log: list[str] = []
    engine = DetectorEngine({"all": Probe(log, "all"), "dns": Probe(log, "dns", flow_ports=frozenset({53})),
                             "last": Probe(log, "last")}, Counters())
    for port in (53, 80):
        engine.on_flow(_flow(port))
    assert log == ["all:53", "dns:53", "last:53", "all:80", "last:80"]


def test_hints_reach_port_detectors_only_when_sent_to_their_ports() -> None:
    """A detector with hint_ports sees its app's hints to those ports only (a DNS query, not its answer)."""
    log: list[str] = []

    class HintProbe(Probe):
        def on_hint(self, hint: ProtoHint) -> list[Finding]:
            self.log.append(f"{self.name}:{hint.dst_port}")
            return []

    engine = DetectorEngine({"any": HintProbe(log, "any", hint_apps=frozenset({"dns"})),
                             "queries": HintProbe(log, "queries", hint_apps=frozenset({"dns"}),
                                                  hint_ports=frozenset({53}))}, Counters())
    for src_port, dst_port in ((40000, 53), (53, 40000)):
        engine.on_hint(ProtoHint(1.0, "dns", "udp", MAC, "10.1.0.5", src_port, None, "10.1.0.9", dst_port,
                                 dst_port == 53, {}))
    assert log == ["any:53", "queries:53", "any:40000"]


def test_devices_reach_only_detectors_that_take_them() -> None:
    """takes_devices = False keeps device deltas away; wants_devices says whether anyone takes them."""
    log: list[str] = []
    quiet = DetectorEngine({"a": Probe(log, "a", takes_devices=False)}, Counters())
    assert not quiet.wants_devices and quiet.on_device({"mac": MAC}) == [] and log == []
    mixed = DetectorEngine({"a": Probe(log, "a", takes_devices=False), "b": Probe(log, "b")}, Counters())
    mixed.on_device({"mac": MAC})
    assert mixed.wants_devices and log == ["b:device"]


def test_builtin_detectors_want_no_device_deltas() -> None:
    """The default detectors ignore device deltas, so a replay builds none; the learned one takes them."""
    built, problems = build_detectors({}, InventoryContext(None))
    assert not problems and not DetectorEngine(built, Counters()).wants_devices
    learned, _ = build_detectors({}, InventoryContext(None), ["learned"])
    assert DetectorEngine(learned, Counters()).wants_devices


def test_detection_leaves_device_deltas_alone_when_unwanted() -> None:
    """Without a device-taking detector, Detection never asks the inventory for deltas (they stay pending)."""
    inventory = Inventory(16)
    detection = Detection(DetectorSettings(), inventory, Counters(), lambda finding: None)
    inventory.on_flow(_flow(80))
    detection.flow(_flow(80))
    detection.second(10)
    detection.finish()
    assert MAC in {d["mac"] for d in inventory.delta(11.0)}


def test_context_caches_records_until_the_inventory_changes() -> None:
    """The context hands back the records it built until the inventory changes, then fresh ones."""
    inventory = Inventory(16)
    inventory.on_flow(_flow(80, last=10.0))
    context = InventoryContext(inventory)
    first = context.device_of_ip("10.1.0.5")
    assert context.device_of_ip("10.1.0.5") is first and context.device(MAC) is context.device(MAC)
    inventory.on_flow(_flow(80, last=20.0))
    again = context.device_of_ip("10.1.0.5")
    assert first is not None and again is not None and again["last_seen"] == 20.0


def test_detection_forgets_cached_records_at_each_record() -> None:
    """Lookups made while handling a record see the inventory as it is after that record."""
    inventory = Inventory(16)
    seen: list[float] = []

    class LastSeen(Probe):
        def on_flow(self, flow: FlowRecord) -> list[Finding]:
            record = detection.context.device_of_ip(flow.a_ip)
            seen.append(record["last_seen"] if record else -1.0)
            return []

    detection = Detection(DetectorSettings(disabled=tuple(DETECTORS)), inventory, Counters(),
                          lambda finding: None, extra={"probe": LastSeen([], "probe")})
    for last in (10.0, 20.0, 30.0):
        inventory.on_flow(_flow(80, last=last))
        detection.flow(_flow(80, last=last))
    assert seen == [10.0, 20.0, 30.0]


class Unrouted:
    """A built-in detector with its routing attributes hidden: it is handed every flow."""

    def __init__(self, inner: Any) -> None:
        self.on_flow, self.on_hint = inner.on_flow, inner.on_hint
        self.on_device, self.tick = inner.on_device, inner.tick
        self.hint_apps = getattr(inner, "hint_apps", None)
        self.takes_flows = getattr(inner, "takes_flows", True)


def _random_flows(seed: int, count: int) -> list[FlowRecord]:
    """Scans, sweeps, short and bulk sessions and DNS among a few hosts: each flow detector fires."""
    rng = random.Random(seed)
    ports = [21, 22, 23, 53, 80, 135, 139, 445, 3389, 5985, 104, 11112, 443]
    flows = []
    for i in range(count):
        shape = rng.choice(["scan", "sweep", "short", "bulk"])
        proto = "udp" if rng.random() < 0.25 else "tcp"
        client, server = f"10.1.0.{rng.randrange(1, 4)}", f"10.1.0.{rng.randrange(4, 12)}"
        port = rng.choice(ports)
        if shape == "scan":
            port = rng.randrange(1, 1025)
        elif shape == "sweep":
            port, server = 445, f"10.1.0.{rng.randrange(12, 80)}"
        elif shape == "short" and rng.random() < 0.5:
            port, server = 22, "10.1.0.4"
        a_flags, b_flags = {"scan": ("S", rng.choice(["", "RA", "SA"])), "sweep": ("S", ""),
                            "short": ("SPF", "SPF"), "bulk": ("SP", "SP")}[shape]
        probe = shape in ("scan", "sweep")
        a_pkts = rng.randrange(1, 4) if probe else rng.randrange(4, 12) if shape == "short" else 300
        b_pkts = 0 if probe and (proto == "udp" or not b_flags) else rng.randrange(3, 12)
        a_bytes = a_pkts * (1400 if shape == "bulk" else 80)
        flows.append(FlowRecord(
            i * 0.05, i * 0.05 + rng.random() * 10, proto, client, rng.randrange(1024, 65536), server, port,
            MAC, None, (), a_pkts, b_pkts, a_bytes, b_pkts * 80, a_flags if proto == "tcp" else "",
            b_flags if proto == "tcp" else "", "fin"))
    return flows


def test_routing_changes_no_finding() -> None:
    """The built-in detectors raise the same findings and counters whether routed by port or handed all."""
    results = []
    for wrap in (False, True):
        counters = Counters()
        built, _ = build_detectors({}, InventoryContext(None), BUILT_IN)
        engine = DetectorEngine({n: Unrouted(d) if wrap else d for n, d in built.items()}, counters)
        found: list[Finding] = []
        for record in _random_flows(7, 3000):
            found += engine.tick(record.first) + engine.on_flow(record)
        found += engine.finish()
        results.append(([f.to_dict() for f in found], counters.values))
    assert results[0] == results[1]
    assert {f["kind"] for f in results[0][0]} >= {"port_scan", "host_sweep", "brute_force", "dns_tunneling",
                                                   "lateral_movement"}


def test_bounded_evicts_least_recently_touched() -> None:
    """Touching an entry makes it the newest; a full table drops its oldest and counts the eviction."""
    counters = Counters()
    table: Bounded[str, Episode] = Bounded(2, counters, "evicted")
    a = table.touch("a", Episode)
    table.touch("b", Episode)
    assert table.touch("a", Episode) is a
    table.touch("c", Episode)
    assert list(table) == ["a", "c"] and table.get("b") is None and counters.get("evicted") == 1
