#!/usr/bin/env python3
"""The hinters' own parsing next to the flows-only replay (issue 3's "within 10%" target).

What it measures
    Issue 3 asks that the replay with hints and inventory keep within 10% of the flows-only
    pipeline's speed. This script replays a capture once with hints on (inventory and detectors
    off) and records what each flow's hinter was fed: its module and its head payloads. Then it
    times, alternating in one process:
      - the flows-only replay of the capture (hints, inventory and detectors off);
      - the hinters alone on the recorded payloads: one hinter per flow, fed its payloads, closed
        (a ValueError ends a flow's feeding, as in agent/flowhead.py). No flow table, no head
        bookkeeping, no hint records, no inventory: strictly less than hints and inventory cost.
    If the hinters alone take more than a tenth of the flows-only time, no pipeline that parses
    with these hinters can keep within 10%. The TLS hinter's JA4 cache is warm after the first
    round, as on a running sensor. It also prints each hinter's share.

Reproduce (the captures come from `python scripts/bench.py`, cached in build/bench/)
    python scripts/bench_hint_floor.py                # bench-flows and bench-churn, 5 rounds
    python scripts/bench_hint_floor.py --runs 9 CAPTURE ...
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import agent.flows  # noqa: E402
from agent import config, pipeline  # noqa: E402
from agent.hints import HINTERS, FlowHinter, HinterModule  # noqa: E402
from agent.hints.base import Fields, HintOptions  # noqa: E402

CAPTURES = [ROOT / "build" / "bench" / f"{name}-seed1-scale1-snap256.pcap"
            for name in ("bench-flows", "bench-churn")]
FlowInput = tuple[HinterModule, list[tuple[bytes, bool]]]  # a flow's hinter module and its payloads


class _Recording:
    """A hinter that notes each payload it is fed, then feeds the real one."""

    def __init__(self, real: FlowHinter, fed: list[tuple[bytes, bool]]) -> None:
        self.real, self.fed = real, fed

    @property
    def done(self) -> bool:
        return self.real.done

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        self.fed.append((payload, from_a))
        return self.real.feed(payload, from_a)

    def close(self) -> list[Fields]:
        return self.real.close()


class _RecordingModule:
    """A hinter module whose flows record what they are fed into `inputs`."""

    def __init__(self, module: HinterModule, inputs: list[FlowInput]) -> None:
        self.module, self.inputs, self.NAME, self.PROTO = module, inputs, module.NAME, module.PROTO
        self.HEAD_PACKETS = getattr(module, "HEAD_PACKETS", 0)

    def accepts(self, proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
        return self.module.accepts(proto, a_port, b_port, payload, from_a)

    def start(self, options: HintOptions) -> FlowHinter:
        fed: list[tuple[bytes, bool]] = []
        self.inputs.append((self.module, fed))
        return _Recording(self.module.start(options), fed)


def record_inputs(path: str) -> list[FlowInput]:
    """Every hinted flow's module and head payloads, as the replay's flow heads fed them."""
    inputs: list[FlowInput] = []
    agent.flows.HINTERS = tuple(_RecordingModule(module, inputs) for module in HINTERS)
    try:
        settings = config.parse({"inventory": {"enabled": False}, "detectors": {"enabled": False}})
        pipeline.replay([path], settings, lambda record: None, on_hint=lambda hint: None)
    finally:
        agent.flows.HINTERS = HINTERS
    return inputs


def parse_all(inputs: Sequence[FlowInput], seconds: dict[str, float] | None = None) -> None:
    """Feed every flow's payloads to a fresh hinter and close it; per hinter wall time into `seconds`."""
    options, clock = HintOptions(), time.perf_counter
    for module, fed in inputs:
        started = clock() if seconds is not None else 0.0
        hinter = module.start(options)
        try:
            for payload, from_a in fed:
                hinter.feed(payload, from_a)
            hinter.close()
        except ValueError:
            pass
        if seconds is not None:
            seconds[module.NAME] += clock() - started


def _ignore(record: object) -> None:
    pass


def _timed(job: Callable[[], object]) -> float:
    enabled = gc.isenabled()
    gc.disable()  # as in the flow table's batches
    started = time.perf_counter()
    try:
        job()
    finally:
        if enabled:
            gc.enable()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("captures", nargs="*", type=Path, default=CAPTURES)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    flows_only = config.parse({"hints": {"enabled": False}, "inventory": {"enabled": False},
                               "detectors": {"enabled": False}})
    for capture in args.captures:
        if not capture.exists():
            print(f"{capture}: missing (python scripts/bench.py generates it)", file=sys.stderr)
            return 1
        inputs = record_inputs(str(capture))
        replays: list[float] = []
        parses: list[float] = []
        for _ in range(args.runs):
            replays.append(_timed(functools.partial(pipeline.replay, [str(capture)], flows_only, _ignore)))
            parses.append(_timed(functools.partial(parse_all, inputs)))
        replay, parse = statistics.median(replays), statistics.median(parses)
        payloads = sum(len(fed) for _, fed in inputs)
        print(f"{capture.name}: flows-only replay {replay:.3f} s, hinters alone {parse:.3f} s "
              f"({len(inputs)} flows, {payloads} payloads; medians of {args.runs}): "
              f"{parse / replay:.1%} of the flows-only time")
        seconds: defaultdict[str, float] = defaultdict(float)
        _timed(functools.partial(parse_all, inputs, seconds))
        fed_by: Counter[str] = Counter()
        for module, fed in inputs:
            fed_by[module.NAME] += len(fed)
        for name, spent in sorted(seconds.items(), key=lambda item: -item[1]):
            each = spent / fed_by[name] * 1e6
            print(f"  {name:8} {spent:.3f} s for {fed_by[name]} payloads ({each:.1f} us each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
