"""What the heuristic detectors share: bounded per-source state, episodes, and finding text.

Every detector keeps state per source (a scanner, a DNS client, an SMB peer); `Bounded` caps it and
drops the least recently used entry first, counting each eviction, so a flood of spoofed sources costs a
fixed amount of memory. It is an OrderedDict, not a dict popped and re-inserted: evicting the oldest
entry of a plain dict (`next(iter(d))`) walks over every hole the re-insertions left at its front,
several microseconds per eviction once a table churns (a scan's many (source, port) pairs). An `Episode`
counts distinct items (ports, hosts, names) in a sliding window of packet time and remembers when they
first crossed the detector's threshold. A crossed episode is reported once it has gone quiet for a few
seconds (or has run long enough): the finding then says "1000 ports in 23 s" instead of "25 ports so
far", and flows that end late (an unanswered SYN ends only at the idle timeout) still land in the right
episode. Packet time only: each detector's clock is the latest flow end, hint or tick time it has seen.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from functools import lru_cache
from ipaddress import ip_address, ip_network
from typing import Any, Final, Generic, TypeVar

from agent.detectors.base import Context
from agent.records import Counters, Finding

KINDS: Final = ("new_device", "new_peer", "new_service", "port_scan", "host_sweep", "brute_force",
                "cleartext_credentials", "clinical_protocol_misuse", "policy_violation",
                "external_communication", "volume_anomaly", "arp_spoofing", "dns_tunneling",
                "lateral_movement")
# Roles whose involvement makes a finding more urgent: they touch patients or patient data.
CLINICAL_ROLES: Final = frozenset({"imaging_modality", "pacs", "dicom_workstation", "hl7_engine",
                                   "infusion_pump", "patient_monitor"})
_ROLE_NAMES: Final = {"pacs": "PACS", "hl7_engine": "HL7 engine", "dicom_workstation": "DICOM workstation",
                      "iot_other": "IoT device"}

_INTERNAL: Final = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                 "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"))

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """A dict of at most `limit` entries; adding to a full one evicts the least recently used, counted.

    A hot path may read `entries` and mark an entry used (`entries.move_to_end(key)`) itself, which
    saves a call of `touch`; new entries go through `touch`, which keeps the bound and counts.
    """

    __slots__ = ("_counts", "_limit", "_name", "entries")

    def __init__(self, limit: int, counters: Counters, name: str) -> None:
        self.entries: OrderedDict[K, V] = OrderedDict()
        self._limit = limit
        self._counts = counters.values  # counted in place: a churning table evicts on most touches
        self._name = name

    def touch(self, key: K, factory: Callable[[], V]) -> V:
        """The entry for `key` (made by `factory` if new), now the most recently used."""
        items = self.entries
        value = items.get(key)
        if value is None:
            if len(items) >= self._limit:
                self._evict_oldest()
            value = items[key] = factory()
        else:
            items.move_to_end(key)
        return value

    def _evict_oldest(self) -> None:
        """Drop the least recently used entry and count it (the table is full)."""
        self.entries.popitem(last=False)
        counts = self._counts
        counts[self._name] = counts.get(self._name, 0) + 1

    def get(self, key: K) -> V | None:
        return self.entries.get(key)

    def pop(self, key: K) -> V | None:
        return self.entries.pop(key, None)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[K]:
        return iter(self.entries)


class Episode:
    """Distinct items of one tracked source within a sliding window, and whether they crossed a threshold.

    Before crossing, `recent` maps each item to the clock it was last seen at, oldest first, pruned
    to the window: it never holds more than the threshold. After crossing, `seen` collects items for
    the report, up to a cap (`capped` says it was hit). `events` and `first` restart when the window
    empties, so they describe the current burst, not the whole history.
    """

    __slots__ = ("capped", "crossed", "events", "extra", "first", "last", "recent", "seen", "touched")

    def __init__(self) -> None:
        self.recent: dict[Hashable, float] = {}
        self.seen: set[Hashable] | None = None
        self.events = 0
        self.first = float("inf")
        self.last = float("-inf")
        self.crossed = 0.0
        self.touched = 0.0
        self.capped = False
        self.extra: dict[str, Any] = {}

    def add(self, item: Hashable, clock: float, first: float, last: float, window: float, threshold: int,
            cap: int) -> bool:
        """Count one event at `clock`; True when it made the episode cross `threshold` distinct items."""
        self.touched = clock
        seen = self.seen
        if seen is not None:
            if item not in seen:
                if len(seen) < cap:
                    seen.add(item)
                else:
                    self.capped = True
            self.events += 1
            if first < self.first:
                self.first = first
            if last > self.last:
                self.last = last
            return False
        recent = self.recent
        if recent:  # a new episode (most of a scan's (source, port) pairs) has nothing to prune
            recent.pop(item, None)
            horizon = clock - window
            while recent:
                oldest = next(iter(recent))
                if recent[oldest] >= horizon:
                    break
                del recent[oldest]
        if not recent:
            self.events, self.first, self.last = 0, float("inf"), float("-inf")
        recent[item] = clock
        self.events += 1  # as on the crossed path above (inlined: this runs per scan probe)
        if first < self.first:
            self.first = first
        if last > self.last:
            self.last = last
        if len(recent) < threshold:
            return False
        self.seen, self.recent, self.crossed = set(recent), {}, clock
        return True

    @property
    def distinct(self) -> int:
        return len(self.seen) if self.seen is not None else len(self.recent)

    def due(self, clock: float, quiet: float, within: float) -> bool:
        """A crossed episode is reported when quiet for `quiet` s, or `within` s after it crossed."""
        return clock - self.touched >= quiet or clock - self.crossed >= within

    def items(self) -> set[Hashable]:
        return self.seen if self.seen is not None else set(self.recent)


Sighting = tuple[Hashable, float, float, float]  # (item, clock, first, last): an episode of one event


class Episodes(Bounded[K, Episode | Sighting]):
    """Bounded episodes by key, each held as a plain Sighting tuple until its second event.

    The same Episode.add semantics, cheaper where most keys see one event: a port scan touches
    each (source, service) pair once, a host sweep each (source, target) pair. A tuple costs a
    fraction of an Episode with its dicts, in time and memory.
    """

    __slots__ = ()

    def add(self, key: K, item: Hashable, clock: float, first: float, last: float, window: float,
            threshold: int, cap: int) -> Episode | None:
        """Episode.add on the episode of `key` (made if new, now the most recently used); returns the
        episode when this event made it cross `threshold`, else None."""
        items = self.entries
        held = items.get(key)
        if held is None:
            if len(items) >= self._limit:
                self._evict_oldest()
            items[key] = (item, clock, first, last)
            return None
        items.move_to_end(key)
        if isinstance(held, tuple):
            if held[0] == item:  # Episode.add would empty its window and restart with this event
                items[key] = (item, clock, first, last)
                return None
            held = items[key] = _episode_of(held)
        return held if held.add(item, clock, first, last, window, threshold, cap) else None

    def episode(self, key: K) -> Episode | None:
        """The episode of `key` as an Episode (a held Sighting becomes one), None if there is none."""
        held = self.entries.get(key)
        if isinstance(held, tuple):
            held = self.entries[key] = _episode_of(held)
        return held


def _episode_of(sighting: Sighting) -> Episode:
    """The Episode that Episode.add would have built from this one event."""
    episode = Episode()
    item, episode.touched, episode.first, episode.last = sighting
    episode.recent[item] = episode.touched
    episode.events = 1
    return episode


def role_of(context: Context, ip: str | None) -> str | None:
    """The device's clinical role at `ip`, None when unknown (no device, or role "unknown")."""
    if ip is None:
        return None
    device = context.device_of_ip(ip)
    role = device.get("role") if device else None
    return role if isinstance(role, str) and role and role != "unknown" else None


def describe(context: Context, ip: str | None) -> str:
    """'Patient monitor 10.1.0.5 (Philips)' when the inventory knows the device, else the address."""
    if ip is None:
        return "an unknown host"
    device = context.device_of_ip(ip)
    if not device:
        return ip
    role = device.get("role")
    words = [_ROLE_NAMES.get(role, role.replace("_", " ").capitalize()) if isinstance(role, str)
             and role not in ("", "unknown") else "", ip]
    vendor = device.get("vendor")
    if isinstance(vendor, str) and vendor and not vendor.startswith("("):
        words.append(f"({vendor.split()[0].rstrip(',.')})")
    return " ".join(w for w in words if w)


def escalate(severity: str, *roles: str | None) -> str:
    """One step up (medium -> high) when a clinical device is involved."""
    if any(role in CLINICAL_ROLES for role in roles):
        return {"info": "low", "low": "medium", "medium": "high", "high": "critical"}.get(severity, severity)
    return severity


class Draft:
    """A finding whose text is not built yet: what the engine's filters read, and `build()` for the rest.

    A detector that raises many findings the engine drops (a port-scan storm: the rate limit and the
    suppression window let through about one in ten) offers them as drafts (its `tick_drafts`), so the
    summary and the device records behind it are built only for the findings that leave the engine.
    `severity` is the one before escalation (escalation keeps it in the vocabulary); `ts` is rounded as
    in the Finding; `origin` names the detector, for the error counter should `build` raise.
    """

    __slots__ = ("build", "dst_ip", "key", "kind", "origin", "severity", "src_ip", "ts")

    def __init__(self, origin: str, kind: str, severity: str, ts: float, src_ip: str | None,
                 dst_ip: str | None, key: str, build: Callable[[], Finding]) -> None:
        self.origin = origin
        self.kind = kind
        self.severity = severity
        self.ts = round(ts, 6)
        self.src_ip = src_ip
        self.dst_ip = dst_ip
        self.key = key
        self.build = build


def make_finding(context: Context, kind: str, severity: str, ts: float, src_ip: str | None,
                 dst_ip: str | None, summary: str, evidence: dict[str, Any], key: str, *,
                 src_port: int | None = None, dst_port: int | None = None, proto: str | int | None = None,
                 device: str | None = None, clinical: bool = True) -> Finding:
    """A Finding with roles filled from the context; `clinical` escalates severity for clinical roles."""
    role, peer_role = role_of(context, src_ip), role_of(context, dst_ip)
    if clinical:
        severity = escalate(severity, role, peer_role)
    return Finding(kind, severity, round(ts, 6), src_ip, src_port, dst_ip, dst_port, proto, device, role,
                   peer_role, summary, evidence, key)


@lru_cache(maxsize=4096)
def is_internal(ip: str) -> bool:
    """RFC 1918, shared (CGNAT), link-local or unique-local unicast: the ward's own address space.

    Not `ipaddress.is_private`, which also counts the documentation ranges (TEST-NET) that synthetic
    captures use for external peers.
    """
    try:
        address = ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in _INTERNAL if network.version == address.version)


@lru_cache(maxsize=4096)
def is_group(ip: str) -> bool:
    """Multicast or (likely) broadcast: such a destination never answers as one host. Cheap, no parsing."""
    if ":" in ip:
        return ip[:2].lower() == "ff"
    first = ip[:ip.index(".")] if "." in ip else ip
    return (first.isdigit() and int(first) >= 224) or ip.endswith(".255")


def seconds(value: float) -> str:
    """A duration for a sentence: '23 s', '4 min'."""
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"
