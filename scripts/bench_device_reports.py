#!/usr/bin/env python3
"""How long device reports hold the capture loop: one snapshot at once against rounds (issue 7).

What it measures
    It replays a capture into an inventory (default config, detectors off) and assesses every
    device, as the live service does ahead of its reports. Then, through a real Uplink (sealed
    into a spool in a temporary directory), it times:
      - "at once": every device's record in one snapshot message, as before agent/device_reports.py;
      - "rounds": a snapshot round of DeviceReports, one step per simulated second, each step's
        records in one message, as `ward-agent run` sends them now. Its figure is the longest step.
    The live loop reads no packets while either runs, so the figure is how long the kernel buffer
    must hold the tap's traffic. Rounds of --rounds repetitions, alternating; medians.

Reproduce
    python scripts/bench_device_reports.py                                  # bench-flows, 5 rounds
    python scripts/bench_device_reports.py build/bench/bench-churn-seed1-scale1-snap256.pcap
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import config, crypto  # noqa: E402
from agent.device_reports import DeviceReports  # noqa: E402
from agent.inventory import Inventory  # noqa: E402
from agent.pipeline import RunTotals, build_inventory, replay  # noqa: E402
from agent.records import Counters  # noqa: E402
from agent.spool import Spool  # noqa: E402
from agent.uplink import SensorKeys, Uplink, UplinkSettings  # noqa: E402

CAPTURE = ROOT / "build" / "bench" / "bench-flows-seed1-scale1-snap256.pcap"


def inventory_of(capture: Path) -> Inventory:
    settings = config.parse({"detectors": {"enabled": False}})
    totals = RunTotals()
    inventory = build_inventory(settings, totals)
    replay([str(capture)], settings, lambda record: None, totals=totals, inventory=inventory)
    inventory.devices()  # every assessment cached, as Inventory.assess_pending leaves them
    return inventory


def at_once(inventory: Inventory, uplink: Uplink) -> float:
    started = time.perf_counter()
    uplink.devices("snapshot", inventory.devices())
    return time.perf_counter() - started


def longest_step(inventory: Inventory, uplink: Uplink) -> tuple[float, int]:
    """The longest step of one snapshot round and the number of steps."""
    reports = DeviceReports(inventory)
    longest, steps, second = 0.0, 0, 0.0
    while True:
        started = time.perf_counter()
        report = reports.step(second, lambda now: "snapshot")
        if report is not None:
            uplink.devices(report.mode, report.records)
        longest = max(longest, time.perf_counter() - started)
        steps += 1
        second += 1.0
        if not reports.in_round:
            return longest, steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("capture", nargs="?", type=Path, default=CAPTURE)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.capture.exists():
        print(f"{args.capture}: missing (python scripts/bench.py generates it)", file=sys.stderr)
        return 1
    inventory = inventory_of(args.capture)
    with tempfile.TemporaryDirectory(prefix="ward-bench-devices-") as tmp:
        keys = Path(tmp) / "keys"
        crypto.write_keypair(keys, "sensor")
        crypto.write_keypair(keys, "collector")
        spool = Spool(Path(tmp) / "spool", 1 << 30, fsync_interval=0)
        uplink = Uplink(UplinkSettings(), SensorKeys.load(keys), spool, 1, Counters())
        whole: list[float] = []
        steps: list[float] = []
        count = 0
        for _ in range(args.rounds):
            whole.append(at_once(inventory, uplink))
            longest, count = longest_step(inventory, uplink)
            steps.append(longest)
    print(f"{args.capture.name}: {len(inventory)} devices (medians of {args.rounds}): one snapshot at once "
          f"holds the loop {statistics.median(whole) * 1000:.0f} ms; in rounds the longest step is "
          f"{statistics.median(steps) * 1000:.0f} ms ({count} steps, one a second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
