#!/usr/bin/env python3
"""Bytes per flow record on the wire, and what encoding and sealing cost, for ward-agent's uplink.

What it measures
    The flow records of a capture (agent.pipeline.replay with the default configuration) are cut
    into batches the way the publisher would cut them: a batch closes at --batch records or when
    --window seconds have passed. The clock is packet time, the running maximum of the records'
    `last` (a record is emitted up to an idle timeout after its last packet, so this clock lags
    but runs at the right rate). Each batch becomes one `flows` message: messages.encode_payload
    (columnar CBOR + LZMA2), crypto.seal (HPKE X25519/ChaCha20-Poly1305 + Ed25519), then one MQTT v5
    QoS 1 PUBLISH to ward/<site>/<sensor>/up/flows, counted as fixed header + remaining length +
    topic + packet id + property length (no properties) + payload. Every message is then opened and
    decoded again and must give back exactly the records that went in.

    Timings are wall time per record of the fastest of --repeat passes, on whatever else the machine
    is doing: encode (header + payload), seal, and open + decode on the collector's side.

    Bytes per record = all PUBLISH bytes / records. TLS 1.3 adds 22 bytes per record layer record
    (5 header, 1 type, 16 tag) of at most 16 KiB; that is shown in its own column, not in the target.
    Target (issue 5): <= 20 bytes per flow record with the default batching, on the bench capture.
    NetFlow v5 spends 48 bytes per record (plus 24 per 30-record packet).

    --compare also prints the payload size (before the seal) of alternative encodings of the same
    batches: JSON lines + zlib, row-wise CBOR + zlib, the columnar CBOR uncompressed / zlib / LZMA2,
    and columnar MessagePack + zlib when msgpack is installed.

Reproduce
    python scripts/bench_wire.py                          # bench-flows capture (generated once) + emotet
    python scripts/bench_wire.py --window 1 10 --compare
    python scripts/bench_wire.py --capture some.pcap --no-bench
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402  (scripts/bench.py: generates and caches the bench captures)
import cbor2  # noqa: E402

from agent import config, crypto, messages  # noqa: E402
from agent.pipeline import replay  # noqa: E402
from agent.records import FlowRecord  # noqa: E402

TARGET: Final = 20.0
TLS_RECORD: Final = 16_384
TLS_OVERHEAD: Final = 22
SHARED_DEFAULT: Final = ROOT.parent / "shared" / "pcaps" / "malware-emotet-infection.pcap"


@dataclass
class Figures:
    records: int = 0
    batches: int = 0
    payload: int = 0
    sealed: int = 0
    publish: int = 0
    tls: int = 0
    encode_s: float = 0.0
    seal_s: float = 0.0
    open_s: float = 0.0


def batches(records: Sequence[FlowRecord], size: int, window: float) -> Iterator[list[FlowRecord]]:
    batch: list[FlowRecord] = []
    start = clock = 0.0
    for record in records:
        clock = max(clock, record.last)
        if batch and (len(batch) >= size or clock - start >= window):
            yield batch
            batch = []
        if not batch:
            start = clock
        batch.append(record)
    if batch:
        yield batch


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_size(topic: str, payload: int) -> int:
    """MQTT v5 PUBLISH, QoS 1, no properties: fixed header byte + remaining length + the rest."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload
    return 1 + _varint_len(remaining) + remaining


def measure(records: list[FlowRecord], args: argparse.Namespace, window: float, keys: Keys) -> Figures:
    topic = messages.topic(args.site, args.sensor, "flows")
    fig = Figures(records=len(records))
    for seq, batch in enumerate(batches(records, args.batch, window)):
        header = messages.Header(args.sensor, 1, seq, "flows")
        t0 = time.perf_counter()
        head = messages.encode_header(header)
        payload = messages.encode_payload(messages.Message(header, time.time(), batch), unit_us=args.unit_us)
        t1 = time.perf_counter()
        sealed = crypto.seal(payload, head, keys.signing, keys.encrypt_to)
        t2 = time.perf_counter()
        opened = crypto.open_sealed(sealed, keys.decrypt, keys.verify)
        back = messages.decode_payload(messages.decode_header(opened.header), opened.plaintext)
        t3 = time.perf_counter()
        if args.unit_us == 1 and back.body != batch:
            raise SystemExit(f"bench_wire: batch {seq} did not round-trip")
        size = publish_size(topic, len(sealed))
        fig.batches += 1
        fig.payload += len(payload)
        fig.sealed += len(sealed)
        fig.publish += size
        fig.tls += size + TLS_OVERHEAD * -(-size // TLS_RECORD)
        fig.encode_s += t1 - t0
        fig.seal_s += t2 - t1
        fig.open_s += t3 - t2
    return fig


@dataclass(frozen=True)
class Keys:
    signing: Any
    verify: Any
    encrypt_to: Any
    decrypt: Any

    @classmethod
    def fresh(cls) -> Keys:
        """Throw-away sensor and collector key pairs, made and loaded through agent.crypto."""
        with tempfile.TemporaryDirectory(prefix="ward-bench-wire-") as tmp:
            sensor = crypto.write_keypair(tmp, "sensor")
            collector = crypto.write_keypair(tmp, "collector")
            return cls(crypto.load_signing_key(sensor.private_path),
                       crypto.load_verify_key(sensor.public_path),
                       crypto.load_encryption_key(collector.public_path),
                       crypto.load_decryption_key(collector.private_path))


# ---- alternatives -------------------------------------------------------------------------------

def _rows(batch: Sequence[FlowRecord]) -> list[list[Any]]:
    return [[*r[:9], list(r.vlan), *r[10:]] for r in batch]


def _message(batch: list[FlowRecord]) -> messages.Message:
    return messages.Message(messages.Header("s1", 1, 1, "flows"), time.time(), batch)


def alternatives() -> dict[str, Callable[[list[FlowRecord]], bytes]]:
    found: dict[str, Callable[[list[FlowRecord]], bytes]] = {
        "JSON lines + zlib 9": lambda b: zlib.compress(
            "\n".join(json.dumps(r.to_dict()) for r in b).encode(), 9),
        "CBOR rows + zlib 9": lambda b: zlib.compress(cbor2.dumps(_rows(b)), 9),
        "CBOR columnar, uncompressed": lambda b: cbor2.dumps(messages.encode_flows(b)),
        "CBOR columnar + zlib 9": lambda b: zlib.compress(cbor2.dumps(messages.encode_flows(b)), 9),
        "CBOR columnar + LZMA2 (chosen)": lambda b: messages.encode_payload(_message(b)),
        "CBOR columnar, ms times + LZMA2": lambda b: messages.encode_payload(_message(b), unit_us=1000),
    }
    try:
        import msgpack  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return found
    found["MessagePack columnar + zlib 9"] = lambda b: zlib.compress(
        msgpack.packb(messages.encode_flows(b)), 9)
    return found


def compare(records: list[FlowRecord], args: argparse.Namespace, window: float) -> list[str]:
    cut = list(batches(records, args.batch, window))
    lines = [f"  payload only (before the seal), window {window:g} s:"]
    for name, encode in alternatives().items():
        started = time.perf_counter()
        size = sum(len(encode(b)) for b in cut)
        took = time.perf_counter() - started
        lines.append(f"    {name:<34} {size / len(records):7.2f} B/record  "
                     f"{took * 1e6 / len(records):7.1f} us/record")
    return lines


# ---- main ---------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_wire.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Bytes per flow record on the uplink.", epilog=__doc__)
    ap.add_argument("--capture", action="append", type=Path, default=[], metavar="PCAP",
                    help="also measure this capture (repeatable)")
    ap.add_argument("--no-bench", action="store_true", help="skip the generated bench-flows capture")
    ap.add_argument("--shared", type=Path, default=SHARED_DEFAULT, metavar="PCAP",
                    help="a real capture measured for honesty, skipped when absent (default: the emotet one)")
    ap.add_argument("--batch", type=int, default=1000, help="records per message at most (default 1000)")
    ap.add_argument("--window", type=float, nargs="+", default=[1.0, 10.0], metavar="S",
                    help="seconds a batch stays open; the first is the default (default: 1 10)")
    ap.add_argument("--unit-us", type=int, default=1, choices=(1, 1000), help="flow time unit (1: exact)")
    ap.add_argument("--site", default="st-elsewhere", help="site id in the topic")
    ap.add_argument("--sensor", default="ward7-sensor01", help="sensor id in the topic and header")
    ap.add_argument("--repeat", type=int, default=3, help="passes per window; the fastest one's timings "
                    "are shown (sizes do not change between passes) (default 3)")
    ap.add_argument("--compare", action="store_true", help="also size alternative encodings")
    ap.add_argument("--seed", type=int, default=1, help="bench capture seed (default 1)")
    ap.add_argument("--scale", type=float, default=1.0, help="bench capture scale (default 1)")
    ap.add_argument("--snaplen", type=int, default=256, help="bench capture snaplen (default 256)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench", help="bench capture cache")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeat < 1 or min(args.window) <= 0:
        ap.error("--batch, --repeat and --window must be positive")
    return args


def captures(args: argparse.Namespace) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if not args.no_bench:
        cache = argparse.Namespace(seed=args.seed, scale=args.scale, snaplen=args.snaplen,
                                   workdir=args.workdir, regenerate=False)
        found.append(("bench-flows", bench.ensure_capture(cache, "bench-flows").path))
    found += [(path.name, path) for path in args.capture]
    if args.shared.exists():
        found.append((args.shared.name, args.shared))
    else:
        print(f"bench_wire: {args.shared} absent, not measured", file=sys.stderr)
    return found


def report(fig: Figures, window: float) -> str:
    n = fig.records
    per = fig.publish / n
    verdict = "PASS" if per <= TARGET else "FAIL"
    return (f"  window {window:>4g} s: {fig.batches:6d} messages, {n / fig.batches:7.1f} records each | "
            f"payload {fig.payload / n:6.2f} + seal {(fig.sealed - fig.payload) / n:5.2f} + MQTT "
            f"{(fig.publish - fig.sealed) / n:5.2f} = {per:6.2f} B/record (target <= {TARGET:g}: {verdict}; "
            f"+TLS {fig.tls / n:6.2f}) | encode {fig.encode_s * 1e6 / n:5.1f} seal "
            f"{fig.seal_s * 1e6 / n:5.1f} open+decode {fig.open_s * 1e6 / n:5.1f} us/record")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keys = Keys.fresh()
    topic = messages.topic(args.site, args.sensor, "flows")
    print(f"uplink wire size: batches of <= {args.batch} records or <= window s of packet time, time unit "
          f"{args.unit_us} us, topic {topic} ({len(topic)} bytes), MQTT v5 QoS 1 PUBLISH")
    for name, path in captures(args):
        records: list[FlowRecord] = []
        replay([str(path)], config.AgentConfig(), records.append)
        if not records:
            print(f"== {name}: no flow records")
            continue
        span = max(r.last for r in records) - min(r.first for r in records)
        print(f"== {name}: {len(records)} flow records over {span:.0f} s of packet time")
        for window in args.window:
            runs = [measure(records, args, window, keys) for _ in range(args.repeat)]
            fastest = min(runs, key=lambda f: f.encode_s + f.seal_s + f.open_s)
            print(report(fastest, window))
        if args.compare:
            print("\n".join(compare(records, args, args.window[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
