#!/usr/bin/env python3
"""Replay throughput and flow-table memory of ward-agent, side by side with softflowd.

What it measures
    For each synthetic capture (scripts/wardgen.py `bench-flows`: ~1 M packets / ~50 k flows, and
    `bench-churn`: ~500 k packets / ~200 k flows) it runs, interleaved (A B A B ...), N times each:

      A  ward-agent replay FILE --emit /dev/null       the whole replay pipeline, JSON included
      B  softflowd -r FILE -d -c none -v 9 -n 127.0.0.1:9 -m 262144 -p TMP/softflowd.pid

    and takes from each child process its wall time (fork to reap) and its peak RSS (ru_maxrss of
    os.wait4, KiB on Linux). Per capture and tool it reports the median packets/s, microseconds per
    packet and peak RSS, and the ratio of ward-agent's packets/s to softflowd's.

    Bytes per live flow (ward-agent) is (median peak RSS of the replay - median peak RSS of the same
    command on the tiny `sample` capture, i.e. interpreter + imports) / peak live flows, where peak
    live flows comes from the summary record (last JSON line) of one extra, untimed replay with
    --emit to a temporary file; that run also warms the page cache. The packet counts both tools
    report (ward-agent's summary, softflowd's exit statistics) are shown next to the file's own.

    Peak RSS caveat: Linux folds the pre-exec image's peak into the new program's ru_maxrss, so the
    children are forked (not vforked) and reset their peak before exec; what remains is the forked
    copy of this Python process, ~10-14 MiB, printed as the "resolution" (figures at it are marked *).

    Beside the default replay (A) it times, in the same interleaved rounds, the same replay with
    stages switched off (flows_only: no hints, inventory or detectors; no_detectors) and with the
    learned detector active (full_baseline: `replay --baseline B`, where B was learned, untimed,
    by `ward-agent learn` from the first half of the capture's packets, so the second half holds
    behaviour the baseline has not seen). Detector cost is each variant's median against
    no_detectors' median from the same run.

    Targets: ward-agent >= 0.5x softflowd's packets/s on both captures; <= 400 bytes per live flow;
    hints and inventory, and the default detectors, each within +10% of the stage below them.
    Wall time includes process start-up (about 0.1-0.2 s of interpreter and imports for ward-agent);
    the "pipeline only" line is ward-agent's own in-process time, from its `replay_done` log line.

Live mode (--live)
    `python scripts/bench.py --live [options]` runs scripts/bench_live.py with the options that
    follow (see its --help): it replays the ward mix with tcpreplay onto a veth pair at rising rates
    and finds the highest rate with zero kernel drops, the agent pinned to one core, or N workers
    with --workers N (issue 7).

Reproduce
    bash scripts/setup.sh                        # or: apt-get install softflowd; pip install -e .
    python scripts/bench.py                      # full scale, 5 runs each, a few minutes
    python scripts/bench.py --scale 0.05 --runs 3 --json build/bench/quick.json   # a quick look

    Captures are cached in --workdir (build/bench/) under names that carry the seed, scale and
    snaplen, next to a .json sidecar that validates them; --regenerate rebuilds them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
WARDGEN: Final = ROOT / "scripts" / "wardgen.py"
SCENARIOS: Final = ("bench-flows", "bench-churn")
BASELINE_SCENARIO: Final = "sample"
TARGET_RATIO: Final = 0.5
TARGET_BYTES_PER_FLOW: Final = 400.0
TARGET_HINT_COST: Final = 0.10  # issue 3: hints and inventory within 10% of the flows-only pipeline
SOFTFLOWD_MAX_FLOWS: Final = 262_144
PCAP_HEADER: Final = struct.Struct("<IHHiIII")
PCAP_RECORD: Final = struct.Struct("<IIII")
PCAP_MAGIC: Final = 0xA1B2C3D4
SIDECAR_VERSION: Final = 1
SOFTFLOWD_STATS: Final = {
    "active_flows": r"Number of active flows:\s*(\d+)",
    "processed": r"Packets processed:\s*(\d+)",
    "fragments": r"Fragments:\s*(\d+)",
    "ignored": r"Ignored packets:\s*(\d+)",
    "ignored_non_ip": r"Ignored packets:\s*\d+\s*\((\d+) non-IP",
    "ignored_too_short": r"non-IP,\s*(\d+) too short",
    "flows_expired": r"Flows expired:\s*(\d+)",
    "flows_forced": r"Flows expired:\s*\d+\s*\((\d+) forced",
}


class BenchError(Exception):
    """A setup or run problem the user can act on; printed without a traceback."""


# ---- data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Capture:
    """A generated capture file and what its sidecar vouches for."""

    scenario: str
    path: Path
    packets: int
    size: int


@dataclass(frozen=True)
class Measurement:
    """One child process: wall time, peak RSS and what it printed."""

    wall: float
    maxrss_kib: int
    returncode: int
    stdout: str
    stderr: str


@dataclass
class ToolFigures:
    """Medians over the timed runs of one tool on one capture."""

    walls: list[float]
    rss_kib: list[int]
    packets: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def pps(self) -> float:
        return self.packets / self.median_wall

    @property
    def us_per_packet(self) -> float:
        return self.median_wall * 1e6 / self.packets

    @property
    def median_rss_kib(self) -> float:
        return float(statistics.median(self.rss_kib))

    def as_dict(self) -> dict[str, Any]:
        return {"walls_s": [round(w, 4) for w in self.walls], "rss_kib": self.rss_kib,
                "median_wall_s": round(self.median_wall, 4), "packets_per_s": round(self.pps),
                "us_per_packet": round(self.us_per_packet, 3), "median_peak_rss_kib": self.median_rss_kib,
                **self.extra}


@dataclass
class CaptureResult:
    """Everything measured on one capture."""

    capture: Capture
    ward: ToolFigures
    softflowd: ToolFigures
    summary: dict[str, Any]
    softflowd_stats: dict[str, int]
    baseline_rss_kib: float

    @property
    def ratio(self) -> float:
        return self.ward.pps / self.softflowd.pps

    @property
    def peak_live_flows(self) -> int:
        return int(self.summary.get("peak_live_flows", 0))

    @property
    def bytes_per_live_flow(self) -> float | None:
        return self._per_live_flow(self.ward.median_rss_kib)

    def stage_bytes_per_live_flow(self) -> dict[str, float | None]:
        """The same figure for the variants that switch stages off: what each stage holds per flow."""
        extra = self.ward.extra
        return {"flows_only": self._per_live_flow(extra.get("median_flows_only_rss_kib")),
                "no_detectors": self._per_live_flow(extra.get("median_no_detectors_rss_kib")),
                "default": self.bytes_per_live_flow}

    def _per_live_flow(self, rss_kib: float | None) -> float | None:
        if self.peak_live_flows <= 0 or rss_kib is None:
            return None
        return (rss_kib - self.baseline_rss_kib) * 1024 / self.peak_live_flows


# ---- command line -------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark `ward-agent replay` against softflowd on deterministic wardgen captures.",
        epilog=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per tool and capture (default 5)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply wardgen's packet/flow counts, e.g. 0.05 for a quick run (default 1)")
    ap.add_argument("--seed", type=int, default=1, help="wardgen seed (default 1)")
    ap.add_argument("--snaplen", type=int, default=256,
                    help="snaplen of the generated captures (default 256): frames are cut to this many "
                         "bytes, the way a sensor capturing bulk traffic with a short snaplen would see "
                         "them. Both tools read the same file, so both see the same truncated frames; "
                         "flow byte counts come from the IP headers and are not affected")
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench",
                    help="where captures are cached (default build/bench/)")
    ap.add_argument("--regenerate", action="store_true", help="rebuild the captures even when cached")
    ap.add_argument("--captures", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), metavar="NAME",
                    help=f"which captures to run (default: {' '.join(SCENARIOS)})")
    ap.add_argument("--ward-agent", default=None, metavar="PATH",
                    help="ward-agent executable (default: next to this Python, else on PATH)")
    ap.add_argument("--softflowd", default="softflowd", metavar="PATH", help="softflowd executable")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if not 0 < args.scale <= 10:
        ap.error("--scale must be in (0, 10]")
    if not 64 <= args.snaplen <= 262_144:
        ap.error("--snaplen must be in [64, 262144]")
    return args


def find_ward_agent(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [str(Path(sys.executable).parent / "ward-agent"), "ward-agent"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise BenchError(f"ward-agent not found (tried {', '.join(candidates)}); "
                     "install the project with `pip install -e .` or `bash scripts/setup.sh`")


def find_softflowd(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if not found:
        raise BenchError(f"softflowd not found ({name}); install it with `apt-get install softflowd` "
                         "or `bash scripts/setup.sh`")
    return found


# ---- machine ------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def softflowd_version(softflowd: str) -> str:
    result = subprocess.run([softflowd, "-h"], capture_output=True, text=True, check=False, timeout=10)
    match = re.search(r"softflowd version (\d[\w.+~-]*\w)", result.stdout + result.stderr)
    version = match.group(1) if match else "unknown"
    if shutil.which("dpkg-query"):
        deb = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "softflowd"], capture_output=True,
                             text=True, check=False, timeout=10)
        if deb.returncode == 0 and deb.stdout.strip():
            version += f" (Debian {deb.stdout.strip()})"
    return version


def machine_info(softflowd: str, ward_agent: str) -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "softflowd": softflowd_version(softflowd),
            "ward_agent": ward_agent, "load_avg": [round(x, 2) for x in os.getloadavg()]}


# ---- captures -----------------------------------------------------------------------------------

def count_pcap(path: Path) -> int:
    """Records in a classic little-endian microsecond pcap; raises BenchError when it is cut short.

    Reads record headers and seeks over the frames, so this process's RSS stays small (see `measure`).
    """
    size, count = path.stat().st_size, 0
    with path.open("rb", buffering=1 << 16) as f:
        head = f.read(PCAP_HEADER.size)
        if len(head) < PCAP_HEADER.size or PCAP_HEADER.unpack(head)[0] != PCAP_MAGIC:
            raise BenchError(f"{path}: not a little-endian microsecond pcap")
        off, unpack, read, seek = PCAP_HEADER.size, PCAP_RECORD.unpack, f.read, f.seek
        while off + PCAP_RECORD.size <= size:
            caplen = unpack(read(PCAP_RECORD.size))[2]
            off += PCAP_RECORD.size + caplen
            seek(caplen, os.SEEK_CUR)
            count += 1
    if off != size:
        raise BenchError(f"{path}: truncated last record")
    return count


def capture_params(scenario: str, seed: int, scale: float, snaplen: int) -> dict[str, Any]:
    return {"version": SIDECAR_VERSION, "scenario": scenario, "seed": seed, "scale": scale,
            "snaplen": snaplen}


def capture_path(workdir: Path, params: dict[str, Any]) -> Path:
    scale = f"{params['scale']:g}".replace(".", "p")
    return workdir / f"{params['scenario']}-seed{params['seed']}-scale{scale}-snap{params['snaplen']}.pcap"


def cached_capture(path: Path, params: dict[str, Any]) -> Capture | None:
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        size = path.stat().st_size
    except (OSError, ValueError):
        return None
    if meta.get("params") != params or meta.get("size") != size:
        return None
    return Capture(params["scenario"], path, int(meta["packets"]), size)


def generate_capture(path: Path, params: dict[str, Any]) -> Capture:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    cmd = [sys.executable, str(WARDGEN), params["scenario"], str(partial), "--seed", str(params["seed"]),
           "--snaplen", str(params["snaplen"])]
    if params["scenario"] != BASELINE_SCENARIO:
        cmd += ["--scale", repr(params["scale"])]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BenchError(f"wardgen failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    packets = count_pcap(partial)
    os.replace(partial, path)
    size = path.stat().st_size
    path.with_suffix(".json").write_text(json.dumps({"params": params, "packets": packets, "size": size}),
                                         encoding="utf-8")
    log(f"  generated {path.name}: {packets} packets, {size / 1e6:.1f} MB "
        f"in {time.perf_counter() - started:.1f} s")
    return Capture(params["scenario"], path, packets, size)


def ensure_capture(args: argparse.Namespace, scenario: str) -> Capture:
    params = capture_params(scenario, args.seed, 1.0 if scenario == BASELINE_SCENARIO else args.scale,
                            args.snaplen)
    path = capture_path(args.workdir, params)
    cached = None if args.regenerate else cached_capture(path, params)
    if cached is not None:
        log(f"  reusing {path.name}: {cached.packets} packets, {cached.size / 1e6:.1f} MB")
        return cached
    return generate_capture(path, params)


# ---- running ------------------------------------------------------------------------------------

def _reset_peak_rss() -> None:
    """In the forked child, before exec: reset the peak RSS (VmHWM) to the current RSS.

    Linux carries the pre-exec image's peak into the new program's ru_maxrss. Spawned with vfork,
    as subprocess does by default, that image is this process, whose peak may be far above what the
    child ever uses; forking and resetting leaves only the forked copy's current RSS (~10 MiB of
    Python, reported as the floor in the header) as a lower bound on every peak RSS figure.
    """
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def measure(cmd: Sequence[str], timeout: float) -> Measurement:
    """Run cmd to completion; wall time from spawn to reap, peak RSS from the child's rusage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=_reset_peak_rss)  # no other thread runs yet
        status, usage = _wait(proc, timeout, cmd)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measurement(wall, usage.ru_maxrss, proc.returncode,
                           out.read().decode(errors="replace"), err.read().decode(errors="replace"))


@dataclass(frozen=True)
class Floor:
    """What `measure` reports for a program doing nothing (/bin/true): its resolution."""

    rss_kib: int
    wall: float


def measurement_floor() -> Floor:
    true = shutil.which("true") or "/bin/true"
    runs = [checked(measure([true], 30), true) for _ in range(3)]
    return Floor(min(m.maxrss_kib for m in runs), min(m.wall for m in runs))


def _wait(proc: subprocess.Popen[bytes], timeout: float,
          cmd: Sequence[str]) -> tuple[int, resource.struct_rusage]:
    """Reap proc with os.wait4 (so its rusage is ours to read), killing it after timeout seconds."""
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    if expired.is_set():
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
    return status, usage


def checked(m: Measurement, what: str) -> Measurement:
    if m.returncode != 0:
        tail = (m.stderr.strip() or m.stdout.strip())[-1500:]
        raise BenchError(f"{what} exited with status {m.returncode}:\n{tail}")
    return m


def ward_cmd(ward_agent: str, capture: Path, emit: str, config: Path | None = None,
             extra: Sequence[str] = ()) -> list[str]:
    more = ["--config", str(config)] if config else []
    return [ward_agent, "replay", str(capture), "--emit", emit, *more, *extra]


# Variants timed beside the default replay: a configuration that switches stages off, or "" for none.
VARIANTS: Final = {
    "flows_only": "[hints]\nenabled = false\n[inventory]\nenabled = false\n[detectors]\nenabled = false\n",
    "no_detectors": "[detectors]\nenabled = false\n",
    "full_baseline": "",  # default configuration, plus --baseline (see learn_baseline)
}
BASELINE_VARIANT: Final = "full_baseline"
LEARN_FRACTION: Final = 0.5  # of the capture's packets: the baseline's learning period


def write_prefix(source: Path, target: Path, packets: int) -> int:
    """Copy the pcap header and the first `packets` records of `source` to `target`; returns the count."""
    count = 0
    with source.open("rb") as f, target.open("wb") as out:
        head = f.read(PCAP_HEADER.size)
        if len(head) < PCAP_HEADER.size or PCAP_HEADER.unpack(head)[0] != PCAP_MAGIC:
            raise BenchError(f"{source}: not a little-endian microsecond pcap")
        out.write(head)
        while count < packets:
            record = f.read(PCAP_RECORD.size)
            if len(record) < PCAP_RECORD.size:
                break
            frame = f.read(PCAP_RECORD.unpack(record)[2])
            out.write(record + frame)
            count += 1
    return count


def learn_baseline(ward_agent: str, capture: Capture, tmp: Path) -> Path:
    """`ward-agent learn` on the first LEARN_FRACTION of the capture (untimed); the baseline file."""
    prefix, baseline = tmp / f"{capture.scenario}-learn.pcap", tmp / f"{capture.scenario}-baseline.json"
    write_prefix(capture.path, prefix, int(capture.packets * LEARN_FRACTION))
    learn = [str(Path(ward_agent)), "learn", str(prefix), "--baseline", str(baseline)]
    m = checked(measure(learn, timeout_for(capture)), f"ward-agent learn {prefix.name}")
    prefix.unlink()
    log(f"  learned {baseline.name} from the first {LEARN_FRACTION:.0%} of the packets in {m.wall:.1f} s: "
        f"{m.stderr.strip().splitlines()[-1] if m.stderr.strip() else ''}")
    return baseline


def softflowd_cmd(softflowd: str, capture: Path, pidfile: Path) -> list[str]:
    return [softflowd, "-r", str(capture), "-d", "-c", "none", "-v", "9", "-n", "127.0.0.1:9",
            "-m", str(SOFTFLOWD_MAX_FLOWS), "-p", str(pidfile)]


def timeout_for(capture: Capture) -> float:
    return 120.0 + capture.packets / 20_000  # generous: 20 k packets/s is far below either tool


def read_summary(path: Path) -> dict[str, Any]:
    """The last JSON line of a replay's output, which must be the summary record."""
    last = ""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                last = line
    try:
        summary: dict[str, Any] = json.loads(last)
    except ValueError as exc:
        raise BenchError(f"{path}: last line is not JSON: {last[:200]!r}") from exc
    if summary.get("type") != "summary":
        raise BenchError(f"{path}: last record is not a summary: {last[:200]!r}")
    return summary


def pipeline_seconds(stderr: str) -> float | None:
    """ward-agent's own timing from its `replay_done` log line (JSON when not on a terminal)."""
    for line in reversed(stderr.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "replay_done" and "seconds" in record:
            return float(record["seconds"])
    return None


def parse_softflowd_stats(stdout: str) -> dict[str, int]:
    stats: dict[str, int] = {}
    for key, pattern in SOFTFLOWD_STATS.items():
        match = re.search(pattern, stdout)
        if match:
            stats[key] = int(match.group(1))
    return stats


def summary_run(ward_agent: str, capture: Capture, tmp: Path) -> dict[str, Any]:
    """The untimed replay that yields the summary (peak live flows, frames); also warms the cache."""
    emit = tmp / f"{capture.scenario}.jsonl"
    checked(measure(ward_cmd(ward_agent, capture.path, str(emit)), timeout_for(capture)),
            f"ward-agent replay {capture.path.name}")
    summary = read_summary(emit)
    emit.unlink()
    return summary


def baseline_rss(ward_agent: str, capture: Capture, runs: int) -> float:
    """Median peak RSS of the replay command on the tiny capture: interpreter, imports, buffers."""
    rss = [checked(measure(ward_cmd(ward_agent, capture.path, os.devnull), timeout_for(capture)),
                   "ward-agent baseline replay").maxrss_kib for _ in range(runs)]
    return float(statistics.median(rss))


def timed_runs(ward_agent: str, softflowd: str, capture: Capture, runs: int,
               tmp: Path) -> tuple[ToolFigures, ToolFigures, dict[str, int]]:
    """A V1 V2 B A V1 V2 B ...: ward-agent, its VARIANTS (stages switched off), softflowd."""
    ward = ToolFigures([], [], capture.packets)
    variants = {name: ToolFigures([], [], capture.packets) for name in VARIANTS}
    soft = ToolFigures([], [], capture.packets)
    configs = {name: tmp / f"{name}.toml" for name in VARIANTS if VARIANTS[name]}
    for name, path in configs.items():
        path.write_text(VARIANTS[name])
    extras: dict[str, list[str]] = {name: [] for name in VARIANTS}
    extras[BASELINE_VARIANT] = ["--baseline", str(learn_baseline(ward_agent, capture, tmp))]
    pipeline: list[float] = []
    stats: dict[str, int] = {}
    limit = timeout_for(capture)
    for i in range(runs):
        a = checked(measure(ward_cmd(ward_agent, capture.path, os.devnull), limit), "ward-agent replay")
        for name, figures in variants.items():
            v = checked(measure(ward_cmd(ward_agent, capture.path, os.devnull, configs.get(name),
                                         extras[name]), limit), f"ward-agent replay, {name}")
            figures.walls.append(v.wall)
            figures.rss_kib.append(v.maxrss_kib)
        b = checked(measure(softflowd_cmd(softflowd, capture.path, tmp / "softflowd.pid"), limit),
                    "softflowd")
        for figures, m in ((ward, a), (soft, b)):
            figures.walls.append(m.wall)
            figures.rss_kib.append(m.maxrss_kib)
        seconds = pipeline_seconds(a.stderr)
        if seconds is not None:
            pipeline.append(seconds)
        stats = parse_softflowd_stats(b.stdout)
        log(f"  run {i + 1}/{runs}: ward-agent {a.wall:6.2f} s {a.maxrss_kib / 1024:7.1f} MiB   "
            + "".join(f"{name} {fig.walls[-1]:6.2f} s   " for name, fig in variants.items())
            + f"softflowd {b.wall:6.2f} s {b.maxrss_kib / 1024:7.1f} MiB")
    for name, figures in variants.items():
        ward.extra[f"{name}_walls"] = figures.walls
        ward.extra[f"median_{name}_s"] = figures.median_wall
        ward.extra[f"median_{name}_rss_kib"] = figures.median_rss_kib
    if pipeline:
        ward.extra["pipeline_s"] = pipeline
        ward.extra["median_pipeline_s"] = statistics.median(pipeline)
    return ward, soft, stats


def bench_capture(args: argparse.Namespace, tools: tuple[str, str], capture: Capture, baseline: float,
                  tmp: Path) -> CaptureResult:
    ward_agent, softflowd = tools
    log(f"{capture.scenario}: summary run (untimed)")
    summary = summary_run(ward_agent, capture, tmp)
    log(f"{capture.scenario}: {args.runs} timed runs each, interleaved")
    ward, soft, stats = timed_runs(ward_agent, softflowd, capture, args.runs, tmp)
    return CaptureResult(capture, ward, soft, summary, stats, baseline)


# ---- checks and output --------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def consistency_notes(r: CaptureResult) -> list[str]:
    """Where the packet counts of the file, ward-agent's summary and softflowd disagree."""
    notes, s, st, n = [], r.summary, r.softflowd_stats, r.capture.packets
    if s.get("frames") != n:
        notes.append(f"ward-agent summary frames {s.get('frames')} != {n} packets in the file")
    if s.get("unaccounted"):
        notes.append(f"ward-agent summary: {s['unaccounted']} frames unaccounted")
    if "processed" in st and "ignored" in st:
        seen = st["processed"] + st["ignored"]
        if seen != n:
            notes.append(f"softflowd processed + ignored = {seen} != {n} packets in the file")
        non_ip_ward = sum(s.get("non_ip", {}).values())
        if st.get("ignored_non_ip", 0) != non_ip_ward:
            notes.append(f"softflowd ignored {st.get('ignored_non_ip', 0)} frames as non-IP, ward-agent "
                         f"counted {non_ip_ward}: softflowd 1.1.0 does not decode 802.1ad (QinQ) frames, "
                         "which ward-agent accounts into flows, so it does less work")
        if st.get("flows_forced"):
            notes.append(f"softflowd force-expired {st['flows_forced']} flows (more than -m "
                         f"{SOFTFLOWD_MAX_FLOWS} live): the tools no longer track the same flows")
    else:
        notes.append("softflowd printed no packet statistics")
    return notes


def counts_line(r: CaptureResult) -> str:
    s, st = r.summary, r.softflowd_stats
    return (f"  packets: file {r.capture.packets} | ward-agent frames {s.get('frames')}, in_flows "
            f"{s.get('in_flows')}, non_ip {sum(s.get('non_ip', {}).values())}, ip_fragments "
            f"{s.get('ip_fragments')}, flows {s.get('flows')}, peak live {s.get('peak_live_flows')} | "
            f"softflowd processed {st.get('processed')}, ignored {st.get('ignored')} "
            f"({st.get('ignored_non_ip')} non-IP), fragments {st.get('fragments')}, "
            f"flows {st.get('flows_expired')}")


def capture_table(r: CaptureResult, floor: Floor) -> list[str]:
    head = f"  {'tool':<11} {'median s':>9} {'packets/s':>11} {'us/packet':>10} {'peak RSS MiB':>13}"
    rows = [f"== {r.capture.scenario}  ({r.capture.packets} packets, {r.capture.size / 1e6:.1f} MB, "
            f"{r.capture.path.name})", head]
    for name, fig in (("ward-agent", r.ward), ("softflowd", r.softflowd)):
        mark = "*" if fig.median_rss_kib <= floor.rss_kib + 1024 else " "
        rows.append(f"  {name:<11} {fig.median_wall:9.3f} {fig.pps:11,.0f} {fig.us_per_packet:10.2f} "
                    f"{fig.median_rss_kib / 1024:12.1f}{mark}")
    pipe = r.ward.extra.get("median_pipeline_s")
    if pipe:
        rows.append(f"  (ward-agent pipeline only, from its log: {pipe:.3f} s, "
                    f"{r.capture.packets / pipe:,.0f} packets/s)")
    flows_only = r.ward.extra.get("median_flows_only_s")
    no_detectors = r.ward.extra.get("median_no_detectors_s")
    if flows_only and no_detectors:
        hints = no_detectors / flows_only - 1
        detect = r.ward.median_wall / no_detectors - 1
        rows.append(f"  flows only {flows_only:.3f} s | + hints, inventory {no_detectors:.3f} s "
                    f"({hints:+.1%}, "
                    f"target <= +{TARGET_HINT_COST:.0%} {verdict(hints <= TARGET_HINT_COST)}) | + detectors "
                    f"{r.ward.median_wall:.3f} s ({detect:+.1%}, target <= +{TARGET_HINT_COST:.0%} "
                    f"{verdict(detect <= TARGET_HINT_COST)})")
    with_baseline = r.ward.extra.get(f"median_{BASELINE_VARIANT}_s")
    if with_baseline and no_detectors:
        rows.append(f"  + detectors with a learned baseline (learned detector active) {with_baseline:.3f} s "
                    f"({with_baseline / no_detectors - 1:+.1%} against no detectors; reported, no target)")
    rows.append(f"  ratio ward-agent/softflowd packets/s: {r.ratio:.2f}x   target >= {TARGET_RATIO}x  "
                f"{verdict(r.ratio >= TARGET_RATIO)}")
    bpf = r.bytes_per_live_flow
    shown = "n/a" if bpf is None else f"{bpf:,.0f}"
    rows.append(f"  ward-agent bytes per live flow: {shown} = ({r.ward.median_rss_kib / 1024:.1f} - "
                f"{r.baseline_rss_kib / 1024:.1f} MiB) / {r.peak_live_flows} peak live flows   target <= "
                f"{TARGET_BYTES_PER_FLOW:.0f}  {verdict(bpf is not None and bpf <= TARGET_BYTES_PER_FLOW)}")
    by_stage = r.stage_bytes_per_live_flow()
    if by_stage["flows_only"] is not None and by_stage["no_detectors"] is not None:
        rows.append(f"  bytes per live flow by stage: flows only {by_stage['flows_only']:,.0f} | + hints, "
                    f"inventory {by_stage['no_detectors']:,.0f} | + detectors {shown}")
    rows.append(counts_line(r))
    rows += [f"  NOTE: {note}" for note in consistency_notes(r)]
    return rows


def stage_costs(r: CaptureResult) -> dict[str, float | None]:
    """Median wall time of each stage over the one below it, same run: hints, detectors, learned."""
    extra = r.ward.extra

    def over(top: float | None, bottom: float | None) -> float | None:
        return round(top / bottom - 1, 4) if top and bottom else None

    flows_only, no_detectors = extra.get("median_flows_only_s"), extra.get("median_no_detectors_s")
    return {"hints_inventory": over(no_detectors, flows_only),
            "detectors": over(r.ward.median_wall, no_detectors),
            "detectors_with_baseline": over(extra.get(f"median_{BASELINE_VARIANT}_s"), no_detectors)}


def header(machine: dict[str, Any], args: argparse.Namespace, baseline: float, base_cap: Capture,
           floor: Floor) -> list[str]:
    return [
        "ward-agent replay vs softflowd",
        f"machine: {machine['nproc']} CPUs, {machine['cpu']}, Python {machine['python']}, "
        f"softflowd {machine['softflowd']}, load avg {' '.join(map(str, machine['load_avg']))}",
        f"captures: wardgen seed {args.seed}, scale {args.scale:g}, snaplen {args.snaplen}; "
        f"{args.runs} runs per tool, interleaved; medians shown; ward-agent loads cached bytecode "
        f"({os.environ.get('PYTHONPYCACHEPREFIX')}), as installed",
        f"baseline: ward-agent replay of {base_cap.path.name} ({base_cap.packets} packets): "
        f"peak RSS {baseline / 1024:.1f} MiB",
        f"resolution: /bin/true measures {floor.rss_kib / 1024:.1f} MiB peak RSS (lower figures cannot be "
        f"seen; '*' marks them) and {floor.wall * 1e3:.1f} ms wall",
    ]


def targets_met(results: Sequence[CaptureResult]) -> bool:
    return all(r.ratio >= TARGET_RATIO and r.bytes_per_live_flow is not None
               and r.bytes_per_live_flow <= TARGET_BYTES_PER_FLOW for r in results)


def to_json(machine: dict[str, Any], args: argparse.Namespace, baseline: float, floor: Floor,
            results: Sequence[CaptureResult]) -> dict[str, Any]:
    captures = {}
    for r in results:
        captures[r.capture.scenario] = {
            "capture": {"path": str(r.capture.path), "packets": r.capture.packets, "bytes": r.capture.size},
            "ward_agent": r.ward.as_dict(),
            "softflowd": r.softflowd.as_dict(),
            "ratio_pps": round(r.ratio, 4),
            "ratio_pass": r.ratio >= TARGET_RATIO,
            "peak_live_flows": r.peak_live_flows,
            "bytes_per_live_flow": None if r.bytes_per_live_flow is None else round(r.bytes_per_live_flow, 1),
            "bytes_per_live_flow_pass": r.bytes_per_live_flow is not None
            and r.bytes_per_live_flow <= TARGET_BYTES_PER_FLOW,
            "bytes_per_live_flow_by_stage": {name: None if v is None else round(v, 1)
                                             for name, v in r.stage_bytes_per_live_flow().items()},
            "stage_costs": stage_costs(r),
            "ward_summary": r.summary,
            "softflowd_stats": r.softflowd_stats,
            "notes": consistency_notes(r),
        }
    return {"machine": machine, "params": {"runs": args.runs, "scale": args.scale, "seed": args.seed,
                                           "snaplen": args.snaplen},
            "targets": {"min_ratio_pps": TARGET_RATIO, "max_bytes_per_live_flow": TARGET_BYTES_PER_FLOW},
            "baseline_rss_kib": baseline, "floor": {"rss_kib": floor.rss_kib, "wall_s": round(floor.wall, 5)},
            "captures": captures, "all_targets_met": targets_met(results)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- main ---------------------------------------------------------------------------------------

def deployed_bytecode(workdir: Path) -> None:
    """Let the timed ward-agent runs load compiled bytecode, as an installed agent does.

    pip compiles a package's modules when it installs them; a shell with PYTHONDONTWRITEBYTECODE set
    would instead make every timed run compile the whole agent again (about half a second). The
    cache goes under the work directory, so the source tree stays clean; the untimed runs fill it.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str((workdir / "pycache").resolve())


def run(args: argparse.Namespace) -> int:
    tools = (find_ward_agent(args.ward_agent), find_softflowd(args.softflowd))
    deployed_bytecode(args.workdir)
    machine = machine_info(tools[1], tools[0])
    log(f"captures in {args.workdir}")
    base_cap = ensure_capture(args, BASELINE_SCENARIO)
    captures = [ensure_capture(args, scenario) for scenario in args.captures]
    floor = measurement_floor()
    with tempfile.TemporaryDirectory(prefix="ward-bench-") as tmp:
        baseline = baseline_rss(tools[0], base_cap, args.runs)
        results = [bench_capture(args, tools, c, baseline, Path(tmp)) for c in captures]
    lines = header(machine, args, baseline, base_cap, floor)
    for r in results:
        lines += ["", *capture_table(r, floor)]
    lines += ["", f"overall: {verdict(targets_met(results))}"]
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(machine, args, baseline, floor, results), indent=2) + "\n",
                             encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--live"]:
        import bench_live  # scripts/ is this script's directory, first on sys.path

        sys.argv = [str(ROOT / "scripts" / "bench_live.py"), *argv[1:]]
        return bench_live.main()
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
