#!/usr/bin/env python3
"""The long delivery proofs of issue 5 against a real mosquitto: figures for the closing note.

Both runs use the real pieces: scripts/broker_pki.py + broker_conf.py (TLS, client certificates, ACL,
persistence on), agent/spool.py (on disk, fsync every second), agent/uplink.py sealing real messages
with keys from agent.crypto.write_keypair, and agent/publisher.py with collector acknowledgements. The
collector is tests/integration/broker.AckingCollector: a persistent MQTT session that "commits" each
message by (sensor, boot, seq), counts the copies it drops as duplicates, and acks what it committed
(agent/acks.py) - the protocol agent/central speaks, without its database. At the end every stored
message is opened (signature, decryption) and its body checked against its sequence number.

    crash    --messages (100,000) health messages at --rate per second; mosquitto SIGKILLed --kills (20)
             times at seeded random moments of the stream (a moment that finds the publisher still
             reconnecting waits for its session, then 0..0.5 s more: every kill hits a live session),
             each restarted after a random 0..--max-down seconds. Reports lost (never stored), wrong
             (stored but not the message sent), duplicate copies the collector dropped, publisher
             counters, time to drain.
    outage   the same stream at --outage-rate; the broker is SIGKILLed after 5 s and stays down
             --minutes (10); the spool must grow under its cap without dropping, then drain, nothing lost.
    --no-collector-ack   the counter-check: entries leave the spool on the broker's PUBACK (the old way).

The publisher runs with its production settings (ack_timeout 30 s, window 32 capped by the broker's
Receive Maximum 20) except the reconnect back-off cap, 5 s instead of 60: the back-off only resets after
10 s of stable session, so with a kill every few seconds the production cap makes the run mostly
waiting, which proves nothing more about loss. Progress goes to stderr, the report (JSON) to stdout.

Reproduce (needs /usr/sbin/mosquitto)
    .venv/bin/python scripts/reliability.py crash --seed 1
    .venv/bin/python scripts/reliability.py outage --minutes 1
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests" / "integration")]

from broker import SITE, AckingCollector, Broker  # noqa: E402

from agent import crypto, messages  # noqa: E402
from agent.publisher import Publisher, PublisherSettings  # noqa: E402
from agent.records import Counters  # noqa: E402
from agent.spool import Spool  # noqa: E402
from agent.uplink import SensorKeys, Uplink, UplinkSettings, next_boot  # noqa: E402

SENSOR = "ward3-a"


@dataclass
class Rig:
    """A broker, the sensor side (spool, uplink, publisher) and the collector, in one directory."""

    broker: Broker
    spool: Spool
    uplink: Uplink
    publisher: Publisher
    collector: AckingCollector
    keys: Path
    boot: int
    spool_cap: int
    collector_ack: bool
    peak: dict[str, int] = field(default_factory=lambda: {"depth": 0, "bytes": 0})

    def close(self) -> None:
        self.publisher.stop(2)
        self.collector.close()
        self.broker.close_clients()
        self.broker.kill()
        self.spool.close()


def _rig(directory: Path, args: argparse.Namespace) -> Rig:
    broker = Broker.create(directory / "broker", persistence=True)
    broker.start()
    collector = AckingCollector(broker, persistent=True)
    broker.save()  # the collector's session and subscription survive a SIGKILL from now on
    keys = directory / "keys"
    crypto.write_keypair(keys, "sensor")
    crypto.write_keypair(keys, "collector")
    cap = args.spool_mb << 20
    spool = Spool(directory / "state" / "spool", cap, fsync_interval=1.0)
    cert, key = broker.cert(SENSOR)
    publisher = Publisher(PublisherSettings(
        host="127.0.0.1", port=broker.port, site=SITE, sensor=SENSOR, ca_file=broker.ca, cert_file=cert,
        key_file=key, backoff_max=args.backoff_max, ack_timeout=args.ack_timeout,
        collector_ack=not args.no_collector_ack), spool)
    boot = next_boot(directory / "state")
    uplink = Uplink(UplinkSettings(site=SITE, sensor_id=SENSOR), SensorKeys.load(keys), spool, boot,
                    Counters(), notify=publisher.notify)
    publisher.start()
    return Rig(broker, spool, uplink, publisher, collector, keys, boot, cap, not args.no_collector_ack)


def _stream(rig: Rig, count: int, rate: float) -> threading.Thread:
    """Append `count` sealed health messages ({"i": seq}) at `rate` per second, in a thread."""
    def produce() -> None:
        began = time.monotonic()
        for i in range(count):
            ahead = began + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            rig.uplink.health({"i": i})

    def sample() -> None:
        while thread.is_alive() or rig.spool.stats.depth:
            stats = rig.spool.stats
            rig.peak["depth"] = max(rig.peak["depth"], stats.depth)
            rig.peak["bytes"] = max(rig.peak["bytes"], stats.bytes)
            time.sleep(0.1)

    thread = threading.Thread(target=produce, name="stream")
    thread.start()
    threading.Thread(target=sample, name="sampler", daemon=True).start()
    return thread


def _drain(rig: Rig, count: int, timeout: float) -> float:
    """Seconds until the collector holds `count` messages and the spool is empty (or the timeout)."""
    began = shown = time.monotonic()
    while time.monotonic() - began < timeout:
        if rig.spool.stats.depth == 0 and len(rig.collector.keys()) >= count:
            break
        if not rig.collector_ack and rig.spool.stats.depth == 0 and not rig.publisher.stats()["in_flight"]:
            time.sleep(5)  # the counter-check: what the collector has now is all it will get
            break
        if time.monotonic() - shown >= 10:
            shown = time.monotonic()
            _progress(f"draining: spool {rig.spool.stats.depth}, collector {len(rig.collector.keys())}")
        time.sleep(0.1)
    return round(time.monotonic() - began, 1)


def _progress(text: str) -> None:
    print(time.strftime("%H:%M:%S"), text, file=sys.stderr, flush=True)


def _verify(rig: Rig, count: int) -> dict[str, Any]:
    """Open every stored message: lost, wrong, and the counters of all parts."""
    recipient = crypto.load_decryption_key(crypto.key_paths(rig.keys, "collector")[0])
    sender = crypto.load_verify_key(crypto.key_paths(rig.keys, "sensor")[1])
    stored = dict(rig.collector.stored)
    lost = wrong = 0
    for seq in range(count):
        payload = stored.get((SENSOR, rig.boot, seq))
        if payload is None:
            lost += 1
            continue
        try:
            opened = crypto.open_sealed(payload, recipient, sender)
            header = messages.decode_header(opened.header)
            body = messages.decode_payload(header, opened.plaintext).body
            wrong += (header.seq, body) != (seq, {"i": seq})
        except ValueError:
            wrong += 1
    spool = rig.spool.stats
    publisher = rig.publisher.stats()
    return {"collector_ack": rig.collector_ack, "messages": count, "stored": len(stored), "lost": lost,
            "wrong": wrong,
            "stored_not_sent": len(stored) - (count - lost),
            "duplicate_copies_at_collector": rig.collector.duplicates,
            "collector_received": rig.collector.received, "ack_payloads_sent": rig.collector.ack_payloads,
            "spool": {"depth_end": spool.depth, "peak_depth": rig.peak["depth"],
                      "peak_bytes": rig.peak["bytes"], "cap_bytes": rig.spool_cap,
                      "dropped_entries": spool.dropped_entries, "appended": spool.appended,
                      "removed": spool.removed},
            "publisher": {k: v for k, v in publisher.items() if k not in ("connected",)}}


def crash(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    rig = _rig(directory, args)
    rng = random.Random(args.seed)
    duration = args.messages / args.rate
    moments = sorted(rng.uniform(0.02, 0.98) * duration for _ in range(args.kills))
    kills: list[dict[str, float]] = []
    try:
        began = time.monotonic()
        stream = _stream(rig, args.messages, args.rate)
        for n, moment in enumerate(moments, 1):
            time.sleep(max(0.0, began + moment - time.monotonic()))
            while not rig.publisher.stats()["connected"]:  # every kill hits a live session
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.5))
            down = rng.uniform(0, args.max_down)
            rig.broker.kill()
            kills.append({"at": round(time.monotonic() - began, 2), "down": round(down, 2),
                          "spool_depth": rig.spool.stats.depth,
                          "awaiting_collector": rig.publisher.stats()["awaiting_ack"]})
            _progress(f"kill {n}: {kills[-1]}")
            time.sleep(down)
            rig.broker.start()
        stream.join()
        streamed = time.monotonic() - began
        drain = _drain(rig, args.messages, args.drain_timeout)
        report = _verify(rig, args.messages)
        report.update(test="crash", seed=args.seed, kills=len(kills), stream_seconds=round(streamed, 1),
                      drain_seconds_after_stream=drain, kill_log=kills)
        return report
    finally:
        rig.close()


def outage(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    rig = _rig(directory, args)
    down = args.minutes * 60
    count = int((down + 10) * args.outage_rate)
    try:
        began = time.monotonic()
        stream = _stream(rig, count, args.outage_rate)
        time.sleep(5)
        rig.broker.kill()
        before = rig.spool.stats.depth
        _progress(f"broker killed, down for {down:.0f} s")
        time.sleep(down)
        during = rig.spool.stats
        rig.broker.start()
        _progress(f"broker back; spool {during.depth} entries, {during.bytes} bytes")
        back = time.monotonic()
        stream.join()
        drain = _drain(rig, count, args.drain_timeout)
        report = _verify(rig, count)
        report.update(test="outage", minutes=args.minutes, rate=args.outage_rate,
                      spool_depth_at_kill=before, spool_depth_at_restart=during.depth,
                      spool_bytes_at_restart=during.bytes, drained_seconds_after_restart=round(
                          time.monotonic() - back, 1), drain_seconds_after_stream=drain,
                      total_seconds=round(time.monotonic() - began, 1))
        return report
    finally:
        rig.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test", choices=["crash", "outage", "all"], nargs="?", default="all")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="crash: messages per second")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--max-down", type=float, default=2.0, help="crash: seconds the broker stays down")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0, help="outage: minutes the broker is down")
    parser.add_argument("--outage-rate", type=float, default=100.0, help="outage: messages per second")
    parser.add_argument("--spool-mb", type=int, default=256)
    parser.add_argument("--ack-timeout", type=float, default=30.0)
    parser.add_argument("--backoff-max", type=float, default=5.0,
                        help="publisher reconnect back-off cap (production: 60; see the docstring)")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--no-collector-ack", action="store_true",
                        help="the counter-check: remove spool entries on the broker's PUBACK")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the broker and the directory
    ok = True
    for test in ("crash", "outage") if args.test == "all" else (args.test,):
        with tempfile.TemporaryDirectory(prefix=f"ward-reliability-{test}-") as tmp:
            report = (crash if test == "crash" else outage)(args, Path(tmp))
        ok = ok and report["lost"] == 0 and report["wrong"] == 0 and report["spool"]["depth_end"] == 0 \
            and report["spool"]["dropped_entries"] == 0 and report["stored_not_sent"] == 0
        print(json.dumps(report, indent=1), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
