"""Uplink messages: the envelope, its compact CBOR encoding, and the columnar flow batch (issue 5).

A message is a `Header` (schema version, sensor id, boot counter, sequence number, kind; CBOR array
in that order) that stays readable outside the seal, for routing and de-duplication, plus a creation
time and a body that travel inside it (crypto.py authenticates the header and encrypts the rest).
Everything is CBOR (RFC 8949): the IETF's compact format for constrained devices, and cbor2 has wheels
for aarch64 (and a pure-Python twin, cbor2pure).

Payload (the sealed plaintext): one codec byte (0 none, 1 zlib, 2 raw LZMA2 with a 256 KiB
dictionary), then CBOR `[created, body]`, uncompressed when compressing would not make it smaller.
Flow batches use LZMA2: on the bench capture it takes 17.7 bytes per record against zlib's 20.3 in
1-second batches, at a few more microseconds per record (scripts/bench_wire.py --compare). Other
kinds use zlib.

Flow batch body, columnar: `[1, unit_us, base, v4, v6, text, macs, cats, t, dur, a, b, a_port, b_port,
cat, a_pkts, b_pkts, a_bytes, b_bytes]`. Endpoints (address, MAC) are listed once per batch, sorted:
`v4` holds IPv4 addresses as 32-bit deltas, `v6` concatenated 16-byte addresses, `text` any address
that does not survive inet_pton/inet_ntop unchanged, `macs` 6 bytes per endpoint (zeros for None).
`a`/`b` index the endpoints. `cats` lists the distinct (proto, vlan, a_flags, b_flags, end). Times are
integers in `unit_us` microseconds: `t` is each record's `last` minus the previous record's (the first
from `base`), `dur` is `last - first`. With unit_us=1 (default) a batch decodes to exactly the records
that went in; with 1000, times are floored to the millisecond. MACs must be lower-case colon hex (what
the pipeline emits), and not all zeros, which stands for None.
"""

from __future__ import annotations

import lzma
import re
import socket
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from agent.records import FlowRecord

SCHEMA_VERSION: Final = 1
KINDS: Final = ("flows", "devices", "findings", "health", "status", "config_ack")
DEVICE_MODES: Final = ("delta", "snapshot")
CODEC_NONE, CODEC_ZLIB, CODEC_LZMA = 0, 1, 2
MAX_PAYLOAD: Final = 16 << 20  # decompressed bytes accepted, against compression bombs
FLOWS_FORMAT: Final = 1
_LIMIT64: Final = 1 << 63
_SENSOR_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # safe inside an MQTT topic level
_NO_MAC: Final = bytes(6)
_LZMA_FILTERS: Final = ({"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 18, "lc": 0, "lp": 0,
                         "pb": 0},)
_PLAIN: Final = (type(None), bool, int, float, str, bytes)


class MessageError(ValueError):
    """An encoded header or payload that cannot be decoded; the caller counts it and drops the message."""


@dataclass(frozen=True, slots=True)
class Header:
    """The readable, authenticated part: (sensor, boot, seq) identifies a message for de-duplication."""

    sensor: str
    boot: int
    seq: int
    kind: str
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.sensor, str) or not _SENSOR_ID.match(self.sensor):
            problems.append(f"sensor id {self.sensor!r} is not 1-64 of [A-Za-z0-9_.-]")
        for name in ("boot", "seq", "version"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < _LIMIT64:
                problems.append(f"{name} {value!r} is not an integer in [0, 2**63)")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Message:
    """Header, creation time (epoch seconds, wall clock) and body.

    Bodies: flows, a sequence of FlowRecord; devices, {"mode": "delta"|"snapshot", "devices": [dict]};
    findings, a list of dicts (Finding.to_dict()); health, status, config_ack, a dict.
    """

    header: Header
    created: float
    body: Any


def topic(site: str, sensor: str, kind: str) -> str:
    """The MQTT topic of a kind (DESIGN.md section 4): data under up/, status and config/ack beside it."""
    for name, value in (("site", site), ("sensor", sensor)):
        if not _SENSOR_ID.match(value):
            raise ValueError(f"{name} {value!r} is not 1-64 of [A-Za-z0-9_.-]")
    suffix = {"status": "status", "config_ack": "config/ack"}.get(kind)
    if suffix is None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return f"ward/{site}/{sensor}/{suffix or 'up/' + kind}"


def encode_header(header: Header) -> bytes:
    return cbor2.dumps([header.version, header.sensor, header.boot, header.seq, header.kind])


def decode_header(data: bytes) -> Header:
    """The header from its CBOR; MessageError for another schema version or any bad field."""
    fields = _loads(data)
    if not isinstance(fields, list) or len(fields) != 5:
        raise MessageError("header is not a 5-item array")
    if fields[0] != SCHEMA_VERSION or type(fields[0]) is not int:
        raise MessageError(f"unsupported schema version {fields[0]!r}")
    try:
        return Header(fields[1], fields[2], fields[3], fields[4], fields[0])
    except (ValueError, TypeError) as exc:
        raise MessageError(f"bad header: {exc}") from None


def encode_payload(message: Message, codec: int | None = None, unit_us: int = 1) -> bytes:
    """The bytes to seal: codec byte + compressed CBOR [created, body]. codec None picks per kind;
    unit_us is the time unit of a flow batch (1: exact)."""
    kind = message.header.kind
    body = encode_flows(message.body, unit_us) if kind == "flows" else message.body
    _check_body(kind, body, ValueError)
    raw = cbor2.dumps([float(message.created), body])
    if codec is None:
        codec = CODEC_LZMA if kind == "flows" else CODEC_ZLIB
        packed = _compress(codec, raw)
        return bytes([codec]) + packed if len(packed) < len(raw) else bytes([CODEC_NONE]) + raw
    return bytes([codec]) + _compress(codec, raw)


def decode_payload(header: Header, data: bytes) -> Message:
    """The message in an opened payload; flow batches come back as FlowRecords. MessageError if bad."""
    if not data:
        raise MessageError("empty payload")
    decoded = _loads(_decompress(data[0], memoryview(data)[1:]))
    if not isinstance(decoded, list) or len(decoded) != 2 or type(decoded[0]) is not float:
        raise MessageError("payload is not [created, body]")
    created, body = decoded
    _check_body(header.kind, body, MessageError)
    return Message(header, created, decode_flows(body) if header.kind == "flows" else body)


# ---- flow batches -------------------------------------------------------------------------------

def encode_flows(records: Sequence[FlowRecord], unit_us: int = 1) -> list[Any]:
    """The columnar body of a flow batch (module docstring); ValueError on a MAC it cannot carry."""
    if not 1 <= unit_us <= 1_000_000:
        raise ValueError(f"unit_us must be in [1, 1000000], got {unit_us}")
    if not records:
        return [FLOWS_FORMAT, unit_us, 0, [], b"", [], b"", [], *([] for _ in range(11))]
    (firsts, lasts, protos, a_ips, a_ports, b_ips, b_ports, a_macs, b_macs, vlans, a_pkts, b_pkts, a_bytes,
     b_bytes, a_flags, b_flags, ends) = zip(*records, strict=True)  # columns, transposed in C
    a_keys, b_keys = list(zip(a_ips, a_macs, strict=True)), list(zip(b_ips, b_macs, strict=True))
    entry = {key: _endpoint(*key) for key in {*a_keys, *b_keys}}
    endpoints = sorted(set(entry.values()))
    position = {e: i for i, e in enumerate(endpoints)}
    index = {key: position[e] for key, e in entry.items()}
    v4 = [int.from_bytes(e[1], "big") for e in endpoints if e[0] == 0 and isinstance(e[1], bytes)]
    v6 = b"".join(e[1] for e in endpoints if e[0] == 1 and isinstance(e[1], bytes))
    last = [round(x * 1e6) // unit_us for x in lasts]
    cats: dict[tuple[Any, ...], int] = {}
    cat = [cats.setdefault(c, len(cats)) for c in zip(protos, vlans, a_flags, b_flags, ends, strict=True)]
    return [FLOWS_FORMAT, unit_us, last[0], [y - x for x, y in zip([0, *v4], v4, strict=False)], v6,
            [e[1] for e in endpoints if e[0] == 2], b"".join(e[2] for e in endpoints),
            [[p, list(v), fa, fb, end] for p, v, fa, fb, end in cats],
            [y - x for x, y in zip([last[0], *last], last, strict=False)],
            [y - round(x * 1e6) // unit_us for x, y in zip(firsts, last, strict=True)],
            [index[k] for k in a_keys], [index[k] for k in b_keys], list(a_ports), list(b_ports), cat,
            list(a_pkts), list(b_pkts), list(a_bytes), list(b_bytes)]


def decode_flows(body: Any) -> list[FlowRecord]:
    """The records of a columnar flow batch, in their order; MessageError when it does not add up."""
    try:
        return _decode_flows(body)
    except (IndexError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"bad flow batch: {exc}") from None


def _decode_flows(body: list[Any]) -> list[FlowRecord]:
    if len(body) != 19 or body[0] != FLOWS_FORMAT:
        raise ValueError("not a format-1 flow batch")
    unit, base, v4d, v6, text, macs, cat_table = body[1:8]
    cols = body[8:]
    n = len(cols[0])
    if not all(isinstance(c, list) and len(c) == n and _all_int(c) for c in cols):
        raise ValueError("columns differ in length or hold non-integers")
    if not _all_int([unit, base, *v4d]) or not 1 <= unit <= 1_000_000:
        raise ValueError("bad time unit, base or IPv4 table")
    if not (isinstance(v6, bytes) and isinstance(macs, bytes) and isinstance(text, list)) or len(v6) % 16:
        raise ValueError("bad IPv6, text address or MAC table")
    addresses, acc = [], 0
    for delta in v4d:
        acc += delta
        addresses.append(socket.inet_ntoa(acc.to_bytes(4, "big")))
    addresses += [socket.inet_ntop(socket.AF_INET6, v6[i:i + 16]) for i in range(0, len(v6), 16)]
    addresses += [s for s in text if isinstance(s, str)]
    if len(addresses) != len(v4d) + len(v6) // 16 + len(text) or len(macs) != 6 * len(addresses):
        raise ValueError("address and MAC tables differ in length")
    mac_text = [None if macs[i:i + 6] == _NO_MAC else macs[i:i + 6].hex(":") for i in range(0, len(macs), 6)]
    cats = [_category(c) for c in cat_table]
    t, dur, a, b, a_port, b_port, cat, a_pkts, b_pkts, a_bytes, b_bytes = cols
    if n and (min(min(c) for c in cols[1:]) < 0 or max(max(a_port), max(b_port)) > 65535):
        raise ValueError("negative duration, index or count, or a port over 65535")
    records, last = [], base
    for i in range(n):
        last += t[i]
        first = last - dur[i]
        ia, ib = a[i], b[i]
        proto, vlan, fa, fb, end = cats[cat[i]]
        records.append(FlowRecord(
            first * unit / 1_000_000, last * unit / 1_000_000,
            proto, addresses[ia], a_port[i], addresses[ib], b_port[i], mac_text[ia], mac_text[ib], vlan,
            a_pkts[i], b_pkts[i], a_bytes[i], b_bytes[i], fa, fb, end))
    return records


def _endpoint(ip: str, mac: str | None) -> tuple[int, bytes | str, bytes]:
    """Sort key and table entry: (0 IPv4 | 1 IPv6 | 2 text, address, 6 MAC bytes)."""
    raw_mac = _NO_MAC if mac is None else _mac_bytes(mac)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        raw = socket.inet_pton(family, ip)
    except OSError:
        return 2, ip, raw_mac
    if socket.inet_ntop(family, raw) != ip:
        return 2, ip, raw_mac
    return (0 if family == socket.AF_INET else 1), raw, raw_mac


def _mac_bytes(mac: str) -> bytes:
    try:
        raw = bytes.fromhex(mac.replace(":", ""))
    except (ValueError, AttributeError):
        raw = _NO_MAC
    if raw == _NO_MAC or raw.hex(":") != mac:
        raise ValueError(f"MAC {mac!r} is not six lower-case colon-separated hex bytes, or is all zeros")
    return raw


def _category(entry: Any) -> tuple[str | int, tuple[int, ...], str, str, str]:
    proto, vlan, fa, fb, end = entry
    if not (isinstance(proto, str) or type(proto) is int) or not _all_int(vlan):
        raise ValueError("bad protocol or VLAN list")
    if not (isinstance(fa, str) and isinstance(fb, str) and isinstance(end, str)):
        raise ValueError("bad flags or end reason")
    return proto, tuple(vlan), fa, fb, end


def _all_int(values: Sequence[Any]) -> bool:
    return all(type(v) is int for v in values)


# ---- bodies, CBOR and compression ---------------------------------------------------------------

def _check_body(kind: str, body: Any, error: type[ValueError]) -> None:
    if kind == "flows":  # built by encode_flows, checked item by item by decode_flows
        if not (isinstance(body, list) and len(body) == 19):
            raise error("body does not have the shape of a flows message")
        return
    if kind == "devices":
        ok = (isinstance(body, dict) and body.get("mode") in DEVICE_MODES
              and isinstance(body.get("devices"), list))
    elif kind == "findings":
        ok = isinstance(body, list) and all(isinstance(f, dict) for f in body)
    else:
        ok = isinstance(body, dict)
    if not ok:
        raise error(f"body does not have the shape of a {kind} message")
    if not _is_plain(body):
        raise error(f"{kind} body holds a value that is not plain CBOR data")


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Only null, bool, int, float, text, bytes, lists and text-keyed maps: no tags, sets or dates."""
    if depth > 32:
        return False
    if isinstance(value, list):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return type(value) in _PLAIN


def _loads(data: bytes | memoryview) -> Any:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2's errors are not ValueErrors, and vary by version and backend
        raise MessageError(f"not CBOR: {exc}") from None


def _compress(codec: int, raw: bytes) -> bytes:
    if codec == CODEC_NONE:
        return raw
    if codec == CODEC_ZLIB:
        return zlib.compress(raw, 9)
    if codec == CODEC_LZMA:
        return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    raise ValueError(f"unknown codec {codec}")


def _decompress(codec: int, data: memoryview) -> bytes:
    try:
        if codec == CODEC_NONE:
            out = bytes(data)
        elif codec == CODEC_ZLIB:
            inflate = zlib.decompressobj()
            out = inflate.decompress(data, MAX_PAYLOAD + 1)
            if not inflate.eof:
                raise MessageError("zlib stream truncated or over the size limit")
        elif codec == CODEC_LZMA:
            unpack = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            out = unpack.decompress(data, MAX_PAYLOAD + 1)
            if not unpack.eof:
                raise MessageError("LZMA stream truncated or over the size limit")
        else:
            raise MessageError(f"unknown codec {codec}")
    except (zlib.error, lzma.LZMAError) as exc:
        raise MessageError(f"cannot decompress: {exc}") from None
    if len(out) > MAX_PAYLOAD:
        raise MessageError("payload over the size limit")
    return out
