#!/usr/bin/env python3
"""Live capture benchmark: the highest tcpreplay rate at which `ward-agent run` loses nothing (issue 7).

What it measures
    A veth pair: the tap end in this namespace (up, no address, no IPv6, no ARP), its peer in a
    network namespace of its own. `ward-agent run` captures on the tap, pinned to one core
    (`taskset -c 0`, no uplink, dropped to `nobody`, [health] interval = 1); tcpreplay, pinned to the
    other core, sends the ward mix (scripts/wardgen.py bench-flows) onto the peer at a fixed rate
    (`--pps`, looping the file if the trial needs more packets than it holds) for about --seconds.
    Then the agent gets SIGTERM. Per trial: packets sent (tcpreplay), received and dropped by the
    kernel (libpcap's ps_recv and ps_drop, summed from the agent's `health` log lines), frames the
    agent decoded and flows it reported (its closing `stopped` line).

    A trial is clean when the kernel dropped nothing and the agent decoded every packet sent. The
    first trial is tcpreplay --topspeed (the generator's own ceiling); if it is clean, that is the
    answer, else the rate is bisected between the last clean and the first lossy one. On a shared
    machine one bisection can land 15% away from the next (83k and 98k packets/s an hour apart,
    same code): --repeat N bisects N times and reports the median.

    Each trial also reports the agent's CPU time per packet (user + system, workers included, from
    its start to the end of the drain, over the frames it decoded), and the summary gives the median
    over the clean trials at half the best rate or more. On a shared machine this moves far less
    from run to run than the bisected rate: compare two versions with it. It falls as the rate
    rises (the per-second costs spread over more packets: 12.1 us at 52k packets/s, 9.3 us at 96k
    in one run), so compare trials at similar rates, or the medians of bisections of the same range.

    if_dropped (libpcap 1.9 on Linux: the interface's rx_dropped) is shown but not counted as loss:
    it also counts frames the host stack discarded after the capture had them (QinQ frames on a tap
    with no 802.1ad device). The capture buffer (capture.buffer_mb, 16 MiB: ~25 k frames of this mix)
    absorbs a short excess, so a trial's clean rate can exceed the sustained one by about
    buffer / trial length; longer --seconds tightens that.

Several cores (--workers N, capture.workers)
    N capture processes share the tap through PACKET_FANOUT (hash) and the main process merges
    their records (agent/workers.py). The agent is then pinned to cores 0..N-1 (`taskset -c 0,1`
    for two) and tcpreplay still to core 1: on a two-core machine, --workers 2 shares core 1
    between tcpreplay and one worker (and the agent's main process floats over both), so the figure
    understates what two dedicated cores give; a trial is clean by the same test. Each worker has a
    buffer of its own (capture.buffer_mb), so N workers also buffer N times as much.

Reproduce (root: namespaces, taskset, tcpreplay)
    python scripts/bench_live.py                          # scale 0.2 (~200 k packets), 12 s trials
    python scripts/bench_live.py --seconds 20 --json build/bench/live.json
    python scripts/bench_live.py --workers 2                # two capture processes on cores 0 and 1
    python scripts/bench_live.py --repeat 3                 # three bisections and their median
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import psutil  # type: ignore[import-untyped]

ROOT: Final = Path(__file__).resolve().parents[1]
TAP: Final = f"wblt{os.getpid() % 100000}"
PEER_NS: Final = f"wbltpeer{os.getpid()}"
PEER_IF: Final = "wbltpeer0"


@dataclass(frozen=True, slots=True)
class Trial:
    rate: str  # the requested packets/s, or "top"
    sent: int
    sent_pps: float
    received: int
    dropped: int
    if_dropped: int
    frames: int
    flows: int
    cpu_seconds: float  # the agent's (and its workers') user + system time from its start to the drain's end

    @property
    def clean(self) -> bool:
        return self.dropped == 0 and self.frames >= self.sent > 0

    @property
    def us_per_frame(self) -> float:
        return self.cpu_seconds * 1e6 / self.frames if self.frames else 0.0


def _run(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def _make_link() -> None:
    _run("ip", "netns", "add", PEER_NS)
    _run("ip", "link", "add", TAP, "mtu", "9000", "type", "veth", "peer", "name", PEER_IF, "netns", PEER_NS)
    _run("sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1")
    _run("ip", "netns", "exec", PEER_NS, "sysctl", "-qw", f"net.ipv6.conf.{PEER_IF}.disable_ipv6=1")
    _run("ip", "link", "set", TAP, "arp", "off", "up")
    _run("ip", "-n", PEER_NS, "link", "set", PEER_IF, "mtu", "9000", "arp", "off", "up")


def _remove_link() -> None:
    subprocess.run(["ip", "link", "del", TAP], capture_output=True)
    subprocess.run(["ip", "netns", "del", PEER_NS], capture_output=True)


def _capture(workdir: Path, scale: float) -> tuple[Path, int]:
    """The cached ward mix at `scale` and its packet count."""
    path = workdir / f"bench-flows-s{scale}.pcap"
    if not path.exists():
        _run(sys.executable, str(ROOT / "scripts" / "wardgen.py"), "--scale", str(scale), "bench-flows",
             str(path))
    sys.path.insert(0, str(ROOT))
    from agent.capture import open_offline

    count = 0
    with open_offline(str(path)) as reader:
        while meta := reader.next_batch()[1]:
            count += len(meta) // 16
    return path, count


def _config(workdir: Path, buffer_mb: int, workers: int) -> Path:
    config = workdir / "bench-live.toml"
    config.write_text(f'[capture]\ninterface = "{TAP}"\ntimeout_ms = 50\nbuffer_mb = {buffer_mb}\n'
                      f'workers = {workers}\n\n[health]\ninterval = 1\ndrop_to_user = "nobody"\n')
    return config


def _start_agent(config: Path, cpus: str) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    agent = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-m", "agent", "run", "--config",
                              str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lines: list[str] = []
    started = threading.Event()

    def _read() -> None:
        assert agent.stderr is not None
        for line in agent.stderr:
            lines.append(line)
            if '"event": "started"' in line:
                started.set()

    threading.Thread(target=_read, daemon=True).start()
    if not started.wait(30):
        agent.kill()
        raise RuntimeError("the agent did not start:\n" + "".join(lines)[-3000:])
    return agent, lines, started


def _replay(capture: Path, packets: int, rate: int | None, limit: int, cpu: int) -> tuple[int, float]:
    """tcpreplay on the peer: (packets sent, packets/s it reports)."""
    loops = max(1, -(-limit // packets))
    speed = [f"--pps={rate}"] if rate else ["--topspeed"]
    tcpreplay = shutil.which("tcpreplay") or "tcpreplay"
    out = _run("ip", "netns", "exec", PEER_NS, "taskset", "-c", str(cpu), tcpreplay, "-i", PEER_IF, *speed,
               f"--loop={loops}", f"--limit={limit}", str(capture))
    sent = re.search(r"Actual: (\d+) packets", out)
    pps = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
    if sent is None or pps is None:
        raise RuntimeError(f"unexpected tcpreplay output:\n{out}")
    return int(sent.group(1)), float(pps.group(1))


def trial(capture: Path, packets: int, config: Path, rate: int | None, seconds: float, top_limit: int,
          cpus: tuple[str, int]) -> Trial:
    """One run of the agent with one replay at `rate` packets/s (None: tcpreplay --topspeed)."""
    agent, lines, _ = _start_agent(config, cpus[0])
    try:
        cpu_before = _cpu_seconds(agent.pid)
        sent, sent_pps = _replay(capture, packets, rate, int(rate * seconds) if rate else top_limit, cpus[1])
        time.sleep(2.5)  # the agent drains its buffer; one more health line
        cpu_seconds = _cpu_seconds(agent.pid) - cpu_before
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
    time.sleep(0.1)
    totals = {"received": 0, "dropped": 0, "if_dropped": 0}
    for line in lines:
        if '"event": "health"' in line:
            kernel = json.loads(line).get("kernel") or {}
            for name in totals:
                totals[name] += int(kernel.get(name) or 0)
    stopped = re.findall(r'"status": "(\d+) frames, (\d+) flows', "".join(lines))
    if not stopped:
        raise RuntimeError("the agent did not stop cleanly:\n" + "".join(lines)[-3000:])
    frames, flows = map(int, stopped[-1])
    return Trial("top" if rate is None else str(rate), sent, sent_pps, totals["received"], totals["dropped"],
                 totals["if_dropped"], frames, flows, cpu_seconds)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of its live descendants (capture workers)."""
    process = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


def cost_per_packet(trials: list[Trial], best: int) -> tuple[float, int]:
    """The median agent CPU µs per packet of the clean trials at `best / 2` packets/s or more, and how many
    there were. At low rates the agent's fixed costs (a health line a second, idle wake-ups) dominate."""
    costs = [t.us_per_frame for t in trials
             if t.clean and t.rate != "top" and int(t.rate) * 2 >= best and t.frames]
    return (statistics.median(costs), len(costs)) if costs else (0.0, 0)


def _row(t: Trial) -> str:
    return (f"{t.rate:>8} {t.sent:>9} {t.sent_pps:>10.0f} {t.received:>9} {t.dropped:>8} {t.if_dropped:>8} "
            f"{t.frames:>9} {t.flows:>7} {t.us_per_frame:>7.2f}  {'clean' if t.clean else 'LOSS'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.2,
                        help="wardgen bench-flows scale (0.2: ~200 k packets)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of a trial at its rate")
    parser.add_argument("--low", type=int, default=1000, help="a rate assumed clean to start bisecting from")
    parser.add_argument("--precision", type=float, default=0.05, help="stop when high/low - 1 is below this")
    parser.add_argument("--buffer-mb", type=int, default=16, help="capture.buffer_mb")
    parser.add_argument("--workers", type=int, default=1,
                        help="capture.workers; the agent gets cores 0..N-1 (module docstring)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--repeat", type=int, default=1,
                        help="bisect this many times and report each result and their median")
    parser.add_argument("--json", type=Path, help="also write the trials here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_live.py needs root (network namespaces, the capture)", file=sys.stderr)
        return 77
    args.workdir.mkdir(parents=True, exist_ok=True)
    capture, packets = _capture(args.workdir, args.scale)
    count = os.cpu_count() or 1
    cpus = (",".join(str(c) for c in range(min(args.workers, count))), min(1, count - 1))
    trials: list[Trial] = []
    print(f"capture {capture.name}: {packets} packets; agent ({args.workers} worker(s)) on cpu {cpus[0]}, "
          f"tcpreplay on cpu {cpus[1]}")
    print(f"{'rate':>8} {'sent':>9} {'sent pps':>10} {'received':>9} {'dropped':>8} {'ifdrop':>8} "
          f"{'frames':>9} {'flows':>7} {'us/pkt':>7}")
    with tempfile.TemporaryDirectory(prefix="ward-bench-live-") as tmp:
        config = _config(Path(tmp), args.buffer_mb, args.workers)
        _make_link()
        try:
            bests = [_bisect(args, capture, packets, config, cpus, trials) for _ in range(args.repeat)]
        finally:
            _remove_link()
    best = int(statistics.median(bests))
    each = f"; median of {len(bests)} bisections: {', '.join(map(str, bests))}" if len(bests) > 1 else ""
    print(f"highest zero-drop rate: {best} packets/s ({args.workers} worker(s) on cpu {cpus[0]}, "
          f"{args.seconds:.0f} s trials, buffer {args.buffer_mb} MiB each{each})")
    cost, counted = cost_per_packet(trials, best)
    print(f"agent CPU per packet: median {cost:.2f} us over the {counted} clean trials at "
          f"{best // 2} packets/s or more (steadier than the rate: compare versions with it)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = [asdict(t) | {"clean": t.clean, "us_per_frame": round(t.us_per_frame, 3)} for t in trials]
        args.json.write_text(json.dumps({"best_pps": best, "bisections": bests, "seconds": args.seconds,
                                         "us_per_packet": round(cost, 3), "scale": args.scale,
                                         "workers": args.workers, "trials": rows},
                                        indent=1))
    return 0


def _bisect(args: argparse.Namespace, capture: Path, packets: int, config: Path, cpus: tuple[str, int],
            trials: list[Trial]) -> int:
    def run(rate: int | None) -> Trial:
        result = trial(capture, packets, config, rate, args.seconds, packets, cpus)
        trials.append(result)
        print(_row(result), flush=True)
        return result

    top = run(None)
    if top.clean:
        return int(top.sent_pps)
    low, high = 0, max(int(top.sent_pps), args.low + 1)
    if run(args.low).clean:
        low = args.low
    else:
        high = args.low
    while low and high / low - 1 > args.precision:
        middle = (low + high) // 2
        if run(middle).clean:
            low = middle
        else:
            high = middle
    return low


if __name__ == "__main__":
    sys.exit(main())
