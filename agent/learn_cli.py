"""`ward-agent learn CAPTURE... --baseline FILE`: replay captures as the learning period, save the baseline.

The captures run through the sensor pipeline (agent.pipeline.replay) with protocol hints; an Inventory
is fed the same flows and hints so that the saved baseline carries each device's role, vendor and
hostname. The whole replay is the learning period: the baseline is marked complete, so a later
`replay --baseline FILE` detects from its first packet. Progress (packets, flows, rate) goes to stderr
once a second when stderr is a terminal. Exit status as for replay: 0, 65 (a capture broke off part-way;
the baseline is still written), 66 (nothing read; no baseline written), 78 (configuration).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from agent import config
from agent.baseline import Baseline
from agent.detectors.learned import LearnedDetector, Settings
from agent.inventory import Inventory
from agent.pipeline import RunTotals, replay
from agent.records import FlowRecord, ProtoHint

EX_OK, EX_DATAERR, EX_NOINPUT = 0, 65, 66
_DEFAULTS = Settings()


class NoDevices:
    """A detector context that knows no devices (learning asks for none; roles arrive at the end)."""

    def device(self, key: str) -> dict[str, Any] | None:
        return None

    def device_of_ip(self, ip: str) -> dict[str, Any] | None:
        return None


class Progress:
    """Counts flows and packets; rewrites one stderr line per second of wall time when it is a terminal."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream, self.label = stream, label
        self.enabled = stream.isatty()
        self.flows = self.packets = 0
        self.started = self.shown = time.monotonic()

    def flow(self, record: FlowRecord) -> None:
        self.flows += 1
        self.packets += record.a_pkts + record.b_pkts
        if self.enabled and self.flows % 256 == 0 and (now := time.monotonic()) - self.shown >= 1.0:
            self.shown = now
            rate = self.packets / max(now - self.started, 1e-9)
            self.stream.write(f"\r{self.label}: {self.packets} packets, {self.flows} flows, "
                              f"{rate:,.0f} packets/s")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def run(captures: Sequence[str], settings: config.AgentConfig, on_flow: Callable[[FlowRecord], None],
        on_hint: Callable[[ProtoHint], None], label: str) -> RunTotals:
    """Replay with flows and hints to the given sinks, showing progress."""
    progress = Progress(sys.stderr, label)

    def each(record: FlowRecord) -> None:
        progress.flow(record)
        on_flow(record)

    totals = replay(captures, settings, each, on_hint=on_hint)
    progress.done()
    return totals


def exit_status(totals: RunTotals) -> int:
    if totals.capture_errors:
        return EX_NOINPUT if totals.counters.get("frames") == 0 else EX_DATAERR
    return EX_OK


def learn(captures: Sequence[str], settings: config.AgentConfig,
          learned: Settings) -> tuple[LearnedDetector, Inventory, RunTotals]:
    """Learn a complete baseline from captures (the detector raises nothing while it learns)."""
    inventory = Inventory(local_networks=learned.local_networks or None)
    detector = LearnedDetector(learned, NoDevices(), _fresh_baseline(learned))

    def on_flow(record: FlowRecord) -> None:
        inventory.on_flow(record)
        detector.on_flow(record)

    def on_hint(hint: ProtoHint) -> None:
        inventory.on_hint(hint)
        detector.on_hint(hint)

    totals = run(captures, settings, on_flow, on_hint, "learn")
    for device in inventory.devices():
        detector.on_device(device)
    detector.baseline.finish()
    return detector, inventory, totals


def _fresh_baseline(learned: Settings) -> Baseline:
    return Baseline(learned.interval, float("inf"), learned.device_learning,
                    max_devices=learned.max_devices, max_peers=learned.max_peers,
                    local_networks=learned.local_networks)


def _handle(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        print(f"ward-agent: {exc}", file=sys.stderr)
        return config.EX_CONFIG
    learned = Settings(interval=args.interval, device_learning=args.device_learning,
                       local_networks=tuple(args.local_network))
    if problems := learned.problems():
        print("ward-agent: invalid learning options:\n" + "\n".join(f"  - {p}" for p in problems),
              file=sys.stderr)
        return config.EX_CONFIG
    detector, _, totals = learn(args.captures, settings, learned)
    status = exit_status(totals)
    if status == EX_NOINPUT:
        print("ward-agent: nothing could be read; no baseline written", file=sys.stderr)
        return status
    baseline = detector.baseline
    baseline.save(args.baseline)
    peers = sum(len(p.peers) for p in baseline.devices.values())
    dropped = {k: v for k, v in baseline.counters.values.items() if k.endswith("_dropped")}
    print(f"ward-agent learn: {len(baseline.devices)} devices, {peers} peers, "
          f"{totals.flows} flows -> {args.baseline}" + (f"; bounds hit: {dropped}" if dropped else ""),
          file=sys.stderr)
    return status


def add_commands(subparsers: Any) -> None:
    """Add `learn` to the ward-agent command line; sets args.handler."""
    parser = subparsers.add_parser("learn", help="learn a device baseline from capture files")
    parser.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files, read in order")
    parser.add_argument("--baseline", metavar="FILE", required=True,
                        help="where to write the baseline (JSON)")
    parser.add_argument("--config", metavar="FILE", help="agent TOML configuration (defaults otherwise)")
    parser.add_argument("--interval", metavar="SECONDS", type=float, default=_DEFAULTS.interval,
                        help="volume statistics interval (default %(default)g s)")
    parser.add_argument("--device-learning", metavar="SECONDS", type=float,
                        default=_DEFAULTS.device_learning,
                        help="how long a device first seen later learns on its own (default %(default)g s)")
    parser.add_argument("--local-network", metavar="CIDR", action="append", default=[],
                        help="a ward network with public addresses (repeatable)")
    parser.set_defaults(handler=_handle)
