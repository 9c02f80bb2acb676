"""The sensor pipeline run offline over capture files: capture -> flow table -> records."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from agent.capture import CaptureError, KernelStats, open_offline
from agent.config import AgentConfig
from agent.decode import SUPPORTED_LINKTYPES
from agent.detect import Detection
from agent.flows import FlowTable
from agent.inventory import Inventory
from agent.records import Counters, FlowRecord, ProtoHint
from agent.roles import load_rules

log = structlog.get_logger("agent.pipeline")
T = TypeVar("T")


@dataclass(slots=True)
class RunTotals:
    """What a run saw; `summary()` gives the record that closes the replay stream."""

    counters: Counters = field(default_factory=Counters)
    captures: list[str] = field(default_factory=list)
    capture_errors: list[str] = field(default_factory=list)
    kernel: KernelStats = field(default_factory=KernelStats)
    flows: int = 0
    packets_in_flows: int = 0
    peak_live_flows: int = 0
    seconds: float = 0.0

    def count_flow(self, record: FlowRecord) -> None:
        self.flows += 1
        self.packets_in_flows += record.a_pkts + record.b_pkts

    def summary(self) -> dict[str, Any]:
        values = self.counters.values

        def group(prefix: str) -> dict[str, int]:
            return {k[len(prefix):]: v for k, v in sorted(values.items()) if k.startswith(prefix)}

        non_ip, skipped = group("non_ip."), group("skipped.")
        frames = values.get("frames", 0)
        fragments = values.get("ip_fragments", 0)
        decapsulated = values.get("decapsulated", 0)
        reassembled = values.get("reassembled", 0)
        outer = self.packets_in_flows - decapsulated - reassembled
        accounted = outer + sum(non_ip.values()) + sum(skipped.values()) + fragments
        return {
            "type": "summary",
            "captures": self.captures,
            "capture_errors": self.capture_errors,
            "frames": frames,
            "decoded": frames - sum(skipped.values()),
            "in_flows": outer,
            "decapsulated": decapsulated,
            "non_ip": non_ip,
            "ip_fragments": fragments,
            "reassembled": reassembled,
            "skipped": skipped,
            "unaccounted": frames - accounted,
            "flows": self.flows,
            "flows_by_end": group("flows."),
            "evicted": values.get("flows.evicted", 0),
            "peak_live_flows": self.peak_live_flows,
            "clock_backwards": values.get("clock.backwards", 0),
            "hints": group("hints."),
            "inventory": group("inventory."),
            "findings": group("findings."),
            "detectors": group("detectors."),
            "kernel": {"received": self.kernel.received, "dropped": self.kernel.dropped,
                       "if_dropped": self.kernel.if_dropped},
            "seconds": round(self.seconds, 3),
        }


def build_inventory(settings: AgentConfig, totals: RunTotals) -> Inventory:
    """The device inventory the configuration asks for; ConfigError if its role rules are bad."""
    wanted = settings.inventory
    rules = load_rules(wanted.roles_file or None)
    rules = rules.with_overrides(wanted.role_overrides, "inventory.role_overrides")
    return Inventory(wanted.max_devices, rules, local_networks=wanted.local_networks, refresh=wanted.refresh,
                     counters=totals.counters)


def replay(paths: Sequence[str], config: AgentConfig, on_flow: Callable[[FlowRecord], object],
           fast_path: bool = True, on_hint: Callable[[ProtoHint], object] | None = None,
           inventory: Inventory | None = None, totals: RunTotals | None = None,
           detection: Detection | None = None) -> RunTotals:
    """Run the pipeline over capture files in order, as one stream of packets; never raises on traffic.

    With an inventory, every flow and hint also goes to it, and then to the detection (hints are
    read for them even when `on_hint` is None); the detection also gets packet-time ticks and is
    finished after the last flow. Pass `totals` to share its counters with stages built beforehand.
    """
    totals = totals or RunTotals()
    started = time.perf_counter()
    # The inventory first, so the detectors' context already knows the devices; one flat fan-out.
    flow_sinks = [*([inventory.on_flow] if inventory is not None else []), on_flow,
                  *([detection.flow] if detection is not None else [])]
    hint_sinks = [*([inventory.on_hint] if inventory is not None else []), *([on_hint] if on_hint else []),
                  *([detection.hint] if detection is not None else [])]

    def emit(record: FlowRecord) -> None:
        totals.count_flow(record)
        for sink in flow_sinks:
            sink(record)

    table = FlowTable(config.flows, emit, totals.counters, fast_path=fast_path,
                      on_hint=fan_out(hint_sinks) if hint_sinks else None, hints=config.hints)
    if detection is not None:
        table.on_second = detection.second
    for path in paths:
        totals.captures.append(path)
        try:
            with open_offline(path, config.capture.bpf) as capture:
                if capture.linktype not in SUPPORTED_LINKTYPES:
                    log.warning("capture_link_unsupported", capture=path, linktype=capture.linktype,
                                hint="its frames are counted as skipped.unsupported_link")
                while True:
                    packets, meta = capture.next_batch()
                    if not meta:
                        break
                    table.linktype = capture.linktype  # per batch: a pcapng file may mix link types
                    table.ingest(packets, meta)
                if capture.error is not None:
                    totals.capture_errors.append(capture.error)
                    log.error("capture_damaged", capture=path, error=capture.error)
        except CaptureError as exc:
            totals.capture_errors.append(str(exc))
            log.error("capture_failed", capture=path, error=str(exc))
    table.flush()
    if detection is not None:
        detection.finish()
    totals.peak_live_flows = table.peak_live
    totals.seconds = time.perf_counter() - started
    return totals


def fan_out(sinks: Sequence[Callable[[T], object]]) -> Callable[[T], object]:
    """One callable handing each record to every sink in order."""
    if len(sinks) == 1:
        return sinks[0]

    def each(record: T) -> None:
        for sink in sinks:
            sink(record)
    return each
