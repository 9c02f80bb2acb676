#!/usr/bin/env python3
"""Torture agent/spool.py the way the field will: SIGKILL, a full disk, damage; and time it.

What it does
    kill      A child process appends numbered 200-byte entries as fast as it can (printing
              "A <id> <run> <n>" after each append() returned) while a second thread peeks and
              removes three of every four (printing "R <ids>" after remove() returned). The parent
              SIGKILLs it after a seeded random delay (process start included, so some kills land
              in the open), reopens the spool and checks: every reported id not reported removed is
              present with its exact payload, ids strictly increase, no payload twice, no removed id
              back, nothing quarantined. Repeated --kills times on the same directory.
    fsyncs    The child under strace for 3 s: fsync calls vs appends (append must not fsync).
    tmpfs     The spool on a 2 MiB tmpfs with a 64 MiB cap, appends outpacing removes: no exception,
              drops counted, the disk never over-full for good, full drain afterwards (needs root).
    damage    Bit flips, a truncated tail, garbage: the spool opens, quarantines and keeps the rest.
    speed     Appends of 200-byte payloads per second on the disk under --dir, per-append latency,
              drain rate (peek 100 + remove), and the same with fsync_interval=0.

Reproduce
    .venv/bin/python scripts/spool_torture.py                 # all, 50 kills, seed 1
    .venv/bin/python scripts/spool_torture.py kill --kills 10 --seed 7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.spool import Spool

BIG = 1 << 34


def payload(run: int, n: int, size: int = 200) -> bytes:
    """The deterministic payload of the n-th append of run `run`."""
    head = f"{run}:{n}:".encode()
    body = hashlib.sha256(head).hexdigest().encode() * (size // 64 + 1)
    return head + body[:size - len(head)]


def child(directory: Path, run: int) -> None:
    """Append and remove until killed, reporting each append and remove after it returned."""
    spool = Spool(directory, BIG, fsync_interval=0.05)
    out = sys.stdout.fileno()

    def remover() -> None:
        after = 0
        while True:
            entries = spool.peek(64, after)
            if entries:
                after = entries[-1][0]
                ids = " ".join(str(i) for i, _, _ in entries if i % 4)
                os.write(out, f"P {ids}\n".encode())  # about to remove: a kill now may or may not lose them
                spool.remove(int(i) for i in ids.split())
                os.write(out, f"R {ids}\n".encode())
            else:
                time.sleep(0.001)

    threading.Thread(target=remover, daemon=True).start()
    n = 0
    while True:
        entry_id = spool.append("flows", payload(run, n))
        os.write(out, f"A {entry_id} {run} {n}\n".encode())
        n += 1


def run_child(directory: Path, run: int, delay: float) -> list[str]:
    proc = subprocess.Popen([sys.executable, __file__, "child", str(directory), str(run)],
                            stdout=subprocess.PIPE)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout.read().decode().splitlines()))  # type: ignore[union-attr]
    reader.start()
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    return lines


def parse(lines: list[str], committed: dict[int, tuple[int, int]], removed: set[int], maybe: set[int]) -> int:
    """Fold one child's report into committed/removed/maybe-removed; the number of appends reported."""
    pending: set[int] = set()
    appended = 0
    for line in lines:
        parts = line.split()
        if parts[:1] == ["A"] and len(parts) == 4:
            committed[int(parts[1])] = (int(parts[2]), int(parts[3]))
            appended += 1
        elif parts[:1] == ["P"]:
            pending = {int(p) for p in parts[1:]}
        elif parts[:1] == ["R"]:
            removed.update(int(p) for p in parts[1:])
            pending = set()
    maybe |= pending
    return appended


def verify(directory: Path, committed: dict[int, tuple[int, int]], removed: set[int],
           maybe: frozenset[int] = frozenset()) -> tuple[list[str], int]:
    """Open the spool as the agent would; what is wrong with it, and how many torn tails were cut."""
    spool = Spool(directory, BIG, fsync_interval=0)
    entries = spool.peek(1 << 30)
    stats = spool.stats
    spool.close()
    ids = [e[0] for e in entries]
    present = {entry_id: data for entry_id, _, data in entries}
    found = [re.match(rb"(\d+):(\d+):", data) for data in present.values()]
    keys = [(int(m.group(1)), int(m.group(2))) for m in found if m]
    checks: dict[str, list[Any]] = {
        "lost": [i for i, key in committed.items() if i not in removed and present.get(i) != payload(*key)
                 and not (i in maybe and i not in present)],
        "back": [i for i in removed if i in present],
        "order": [] if ids == sorted(set(ids)) else ids[:5],
        "dup": [] if len(keys) == len(set(keys)) == len(present) else ["duplicate or foreign payload"],
        "quarantined": [stats.quarantined] if stats.quarantined else [],
    }
    return [f"{name}: {bad[:5]}" for name, bad in checks.items() if bad], stats.torn_tails


def kill_rounds(directory: Path, kills: int, seed: int) -> dict[str, Any]:
    """SIGKILL a spooling child `kills` times; check after each kill; return figures and problems."""
    rng = random.Random(seed)
    committed: dict[int, tuple[int, int]] = {}
    removed: set[int] = set()
    maybe: set[int] = set()  # remove() was called, the kill came before it was reported done
    problems: list[str] = []
    appended = torn = 0
    for run in range(kills):
        appended += parse(run_child(directory, run, rng.uniform(0.02, 0.8)), committed, removed, maybe)
        found, cut = verify(directory, committed, removed, frozenset(maybe))
        problems += [f"run {run}: {problem}" for problem in found]
        torn += cut
    return {"kills": kills, "appends_reported": appended, "removes_reported": len(removed),
            "removes_unconfirmed": len(maybe),
            "kept_at_end_all_checked": len([i for i in committed if i not in removed]), "torn_tails": torn,
            "problems": problems}


def fsync_count(directory: Path, seconds: float = 3.0) -> dict[str, Any]:
    """Run the child under strace: how many fsync calls for how many appends."""
    if not shutil.which("strace"):
        return {"skipped": "no strace"}
    trace = directory.parent / "strace.txt"
    proc = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace),
                             sys.executable, __file__, "child", str(directory), "0"], stdout=subprocess.PIPE,
                            start_new_session=True)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout.read().splitlines()))  # type: ignore[union-attr]
    reader.start()
    time.sleep(seconds)
    os.killpg(proc.pid, signal.SIGKILL)  # strace and the traced child together
    proc.wait()
    reader.join()
    fsyncs = sum(1 for line in trace.read_text().splitlines() if "fsync(" in line)
    appends = sum(1 for line in lines if line.startswith(b"A "))
    return {"seconds": seconds, "appends": appends, "fsyncs": fsyncs, "flusher_interval": 0.05}


def tmpfs_fill(base: Path, entries: int = 100_000) -> dict[str, Any]:
    """Fill a 2 MiB tmpfs: appends outpace removes; then drain."""
    mount = base / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        return {"skipped": "needs root to mount a tmpfs"}
    try:
        spool, exceptions, stored = Spool(mount / "spool", 64 << 20, fsync_interval=0.05), 0, 0
        for n in range(entries):
            try:
                stored += spool.append("flows", payload(0, n)) > 0
            except Exception:
                exceptions += 1
            if n % 10 == 0:  # a slow publisher: one entry acknowledged per ten appended
                spool.remove([e[0] for e in spool.peek(1)])
        full = spool.stats
        while batch := spool.peek(500):
            spool.remove(e[0] for e in batch)
        drained = spool.stats
        after = sum(spool.append("flows", payload(1, n)) > 0 for n in range(1000))
        spool.close()
        return {"appends": entries, "stored": stored, "exceptions": exceptions, "evicted": full.evicted,
                "write_errors": full.write_errors, "dropped_entries": full.dropped_entries,
                "dropped_bytes": full.dropped_bytes, "depth_when_full": full.depth,
                "bytes_when_full": full.bytes, "drained_depth": drained.depth, "drained_bytes": drained.bytes,
                "stored_after_drain_of_1000": after}
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def damage(base: Path) -> dict[str, Any]:
    """Damage segments three ways; each time the spool must open and keep every intact entry."""
    results: dict[str, Any] = {}
    for kind in ("bit_flips", "truncated", "garbage_tail", "garbage_file"):
        directory = base / f"damage-{kind}"
        spool = Spool(directory, BIG, fsync_interval=0)
        for n in range(100):
            spool.append("flows", payload(0, n))
        spool.close()
        segment = next(directory.glob("*.seg"))
        data = bytearray(segment.read_bytes())
        if kind == "bit_flips":
            for off in random.Random(3).sample(range(len(data) // 3, 2 * len(data) // 3), 8):
                data[off] ^= 1 << (off % 8)
        elif kind == "truncated":
            data = data[:len(data) - 100]
        elif kind == "garbage_tail":
            data += random.Random(4).randbytes(3000)
        else:
            data = bytearray(random.Random(5).randbytes(len(data)))
        segment.write_bytes(bytes(data))
        spool = Spool(directory, BIG, fsync_interval=0)
        intact = sum(data == payload(0, i - 1) for i, _, data in spool.peek(1000))
        stats = spool.stats
        spool.close()
        results[kind] = {"intact_of_100": intact, "quarantined": stats.quarantined,
                         "torn_tails": stats.torn_tails,
                         "corrupt_files": len(list(directory.glob("*.corrupt-*")))}
    return results


def speed(base: Path, count: int = 50_000) -> dict[str, Any]:
    """Append and drain rates for 200-byte payloads on the disk under `base`."""
    figures: dict[str, Any] = {}
    for interval, n in ((1.0, count), (0.0, 500)):
        spool = Spool(base / f"speed-{interval}", 1 << 30, fsync_interval=interval)
        data, latencies = payload(0, 0), []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            spool.append("flows", data)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        latencies.sort()
        drain_start = time.perf_counter()
        while batch := spool.peek(100):
            spool.remove(e[0] for e in batch)
        drain = time.perf_counter() - drain_start
        spool.close()
        figures[f"fsync_interval={interval}"] = {
            "appends_per_s": round(n / elapsed), "p50_us": round(latencies[n // 2] * 1e6, 1),
            "p99_us": round(latencies[n * 99 // 100] * 1e6, 1), "max_ms": round(latencies[-1] * 1e3, 2),
            "drain_entries_per_s": round(n / drain)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=("all", "kill", "fsyncs", "tmpfs", "damage", "speed", "child"))
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to put spools (default: a temp dir)")
    opts = parser.parse_args(argv)
    if opts.what == "child":
        child(Path(opts.args[0]), int(opts.args[1]))
        return 0
    base = Path(tempfile.mkdtemp(prefix="spool-torture-", dir=opts.dir))
    report: dict[str, Any] = {}
    try:
        if opts.what in ("all", "kill"):
            report["kill"] = kill_rounds(base / "kill", opts.kills, opts.seed)
        if opts.what in ("all", "fsyncs"):
            report["fsyncs"] = fsync_count(base / "fsyncs")
        if opts.what in ("all", "tmpfs"):
            report["tmpfs"] = tmpfs_fill(base)
        if opts.what in ("all", "damage"):
            report["damage"] = damage(base)
        if opts.what in ("all", "speed"):
            report["speed"] = speed(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 1 if report.get("kill", {}).get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
