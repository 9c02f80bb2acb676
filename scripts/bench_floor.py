#!/usr/bin/env python3
"""The floor of a per-packet flow table in CPython, side by side with softflowd (issue 2's orientation).

What it measures
    The least a Python loop over `next_batch` can do per packet and still keep flows: key a dict by
    one 12-byte slice of the frame (the untagged IPv4 addresses and ports), store a new flow under
    both directions' keys, count its packets, with the garbage collector off. No validation, no
    VLAN or IPv6 keys (those frames land in wrong flows), no expiry, no output: strictly less than
    the replay pipeline must do. It runs that loop and softflowd (as scripts/bench.py runs it) on
    the bench captures, alternating, and prints the median wall times and their ratio. A ratio near
    0.5x says a per-packet CPython loop cannot meet the >= 0.5x target with the whole pipeline.

Reproduce (the captures come from `python scripts/bench.py`, cached in build/bench/)
    python scripts/bench_floor.py                 # 5 alternating runs per capture
    python scripts/bench_floor.py --runs 9 CAPTURE ...
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pcapy

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = [ROOT / "build" / "bench" / f"{name}-seed1-scale1-snap256.pcap"
            for name in ("bench-flows", "bench-churn")]
META = struct.Struct("=IIII").iter_unpack


def floor_loop(path: str) -> tuple[int, int]:
    """(packets, flows) of the bare loop over one capture."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _loop(pcapy.open_offline(path))
    finally:
        if enabled:
            gc.enable()


def _loop(reader: Any) -> tuple[int, int]:
    flows: dict[bytes, int] = {}
    counts: list[int] = []
    packets = 0
    while True:
        data, meta = reader.next_batch(4096)
        if not meta:
            break
        get = flows.get
        for _sec, _usec, off, _caplen in META(meta):
            key = data[off + 26:off + 38]
            j = get(key)
            if j is None:
                j = len(counts)
                counts.append(0)
                flows[key] = j
                flows[key[4:8] + key[:4] + key[10:12] + key[8:10]] = j
            counts[j] += 1
            packets += 1
    return packets, len(counts)


def _wall(cmd: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("captures", nargs="*", type=Path, default=CAPTURES)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--loop", type=Path, help=argparse.SUPPRESS)  # the child: run the loop on one file
    args = parser.parse_args(argv)
    if args.loop is not None:
        print(*floor_loop(str(args.loop)))
        return 0
    for capture in args.captures:
        if not capture.exists():
            print(f"{capture}: missing (python scripts/bench.py generates it)", file=sys.stderr)
            return 1
        tools = {"softflowd": ["softflowd", "-r", str(capture), "-d", "-c", "none", "-v", "9", "-n",
                               "127.0.0.1:9", "-m", "262144", "-p", "/tmp/bench-floor-softflowd.pid"],
                 "floor loop": [sys.executable, __file__, "--loop", str(capture)]}
        walls: dict[str, list[float]] = {name: [] for name in tools}
        for i in range(args.runs):
            for name, cmd in list(tools.items())[:: 1 if i % 2 == 0 else -1]:
                walls[name].append(_wall(cmd))
        soft, floor = (statistics.median(walls[name]) for name in tools)
        print(f"{capture.name}: softflowd {soft:.3f} s, floor loop {floor:.3f} s (medians of {args.runs}, "
              f"process start included): floor/softflowd packets/s {soft / floor:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
