"""Findings against a learned baseline: new_device, new_peer, new_service, volume_anomaly,
external_communication and clinical_protocol_misuse (issue 4).

One detector owns the Baseline (agent.baseline) and runs every check on each record before learning
from it, so the order is fixed and a record is learned once. While the sensor learns (`sensor_learning`
seconds of packet time from the first record, or a baseline file that is not yet complete) it raises
nothing. Afterwards a device not in the baseline raises new_device once and learns alone for
`device_learning` seconds, during which it raises no new_peer or new_service. Learned devices are not
changed any more (their role included, so an attacker cannot retrain a pump into a workstation).

Finding keys (stable; an allow rule with the same key approves the finding, issue 4 section 5):
    new_device:<device>
    new_peer:<device>:<peer ip>
    new_service:<device>:<offered|used>:<proto>/<port>      (ports >= 32768 as <proto>/32768+)
    volume_anomaly:<device>:<peer ip, or * for all peers together>
    external_communication:<device>:<external ip>
    clinical_protocol_misuse:<device>:<dicom|hl7>:<receiver ip>
<device> is the MAC, or ip:<address> for captures without one. The detector raises a key at most once
per interval (`interval` seconds of packet time) and at most `new_per_interval` new_peer/new_service
findings per device and interval; what that holds back is counted in `counters`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Final

from agent.baseline import Baseline, Profile
from agent.baseline_stats import Robust, service_label
from agent.detectors.base import Context, Device
from agent.detectors.learned_checks import (
    MEDICAL,
    Where,
    describe,
    dicom_misuse,
    finding,
    hl7_misuse,
    volume_summary,
    volume_threshold,
)
from agent.policy import Policy
from agent.policy import load as load_policy
from agent.records import Finding, FlowRecord, ProtoHint

NAME: Final = "learned"
KINDS: Final = ("new_device", "new_peer", "new_service", "volume_anomaly", "external_communication",
                "clinical_protocol_misuse")
_MAX_RAISED: Final = 65536


@dataclass(frozen=True, slots=True)
class Settings:
    baseline: str = ""  # a baseline file to start from; "" learns from scratch
    policy: str = ""  # a segmentation policy whose `bulk` allow rules volume_anomaly respects
    kinds: tuple[str, ...] = KINDS
    interval: float = 3600.0  # volume interval of a new baseline (a loaded one keeps its own)
    sensor_learning: float = 7 * 86400.0
    device_learning: float = 86400.0
    volume_mad_factor: float = 10.0
    volume_floor: int = 10_000_000  # bytes per interval never flagged
    volume_headroom: float = 1.5  # times the largest learned interval
    volume_min_samples: int = 3
    new_per_interval: int = 5
    external_allowed: tuple[str, ...] = ()  # CIDRs any medical device may reach
    local_networks: tuple[str, ...] = ()
    max_devices: int = 4096
    max_peers: int = 256

    def problems(self) -> list[str]:
        found = [f"kinds: unknown {k}" for k in self.kinds if k not in KINDS]
        for name, low, high in (("interval", 1, 86400), ("sensor_learning", 0, 365 * 86400),
                                ("device_learning", 0, 30 * 86400), ("volume_mad_factor", 0, 1000),
                                ("volume_floor", 0, 1 << 50), ("volume_headroom", 0, 1000),
                                ("volume_min_samples", 1, 10000), ("new_per_interval", 0, 10000),
                                ("max_devices", 1, 1 << 20), ("max_peers", 1, 1 << 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                found.append(f"{name}: must be between {low} and {high}, got {value!r}")
        for name in ("external_allowed", "local_networks"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    found.append(f"{name}: {cidr!r} is not a network")
        return found


class LearnedDetector:
    """Learns, then compares each flow and clinical hint with the baseline."""

    def __init__(self, settings: Settings, context: Context, baseline: Baseline,
                 policy: Policy | None = None) -> None:
        self.settings, self.context, self.baseline, self.policy = settings, context, baseline, policy
        self.counters = baseline.counters  # the engine reports them: bounds hit and findings held back
        self._kinds = frozenset(settings.kinds)
        self._external = "external_communication" in self._kinds
        self._volume_on = "volume_anomaly" in self._kinds
        self._allowed = tuple(ipaddress.ip_network(c, strict=False) for c in settings.external_allowed)
        self._raised: dict[str, int] = {}  # key -> interval it was last raised in
        self._new_count: dict[str, tuple[int, int]] = {}  # device -> (interval, new findings in it)
        self._volume: dict[tuple[str, str], list[int]] = {}  # (device, peer) -> [interval, bytes]
        self._stats: dict[tuple[str, str], Robust] = {}

    # --- the detector contract --------------------------------------------------------------------

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        base = self.baseline
        last = flow.last
        learning = False if base.complete else base.learning(last)
        key_of, devices = base.key_of, base.devices
        found: list[Finding] = []
        a_key = key_of(flow.a_mac, flow.a_ip)
        a = devices.get(a_key) if a_key else None
        if a is None and a_key:
            a = self._profile(a_key, flow.first, flow.a_ip, learning, found)
        b = None
        if flow.b_pkts:
            b_key = key_of(flow.b_mac, flow.b_ip)
            b = devices.get(b_key) if b_key else None
            if b is None and b_key:
                b = self._profile(b_key, flow.first, flow.b_ip, learning, found)
            if not learning:
                found += self._compare(flow, a, b)
        if learning:
            if a is not None or b is not None:
                base.observe_flow(flow, a, b)
        else:  # _learner inlined: once learning has ended, most flows teach nothing
            a_learns = a if a is not None and a.learn_until > last else None
            b_learns = b if b is not None and b.learn_until > last else None
            if a_learns is not None or b_learns is not None:
                base.observe_flow(flow, a_learns, b_learns)
        return [f for f in found if self._fresh(f)] if found else found

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        if "dicom" not in hint.fields and hint.app != "hl7":
            return []
        base = self.baseline
        learning = base.learning(hint.ts)
        src_key, dst_key = base.key_of(hint.src_mac, hint.src_ip), base.key_of(hint.dst_mac, hint.dst_ip)
        found: list[Finding] = []  # hints come at the flow's head, before its record: profiles may be new
        src = self._profile(src_key, hint.ts, hint.src_ip or "", learning, found)
        dst = self._profile(dst_key, hint.ts, hint.dst_ip or "", learning, found)
        if not learning and "clinical_protocol_misuse" in self._kinds:
            known = src is not None and src.learn_until <= hint.ts
            if hint.fields.get("dicom") == "associate_rq":
                misuse = dicom_misuse(hint, src, dst, known)
            else:
                misuse = hl7_misuse(hint, src, dst, known) if hint.app == "hl7" else None
            if misuse is not None:
                found.append(misuse)
        base.observe_hint(hint, _learner(src, learning, hint.ts), _learner(dst, learning, hint.ts))
        return [f for f in found if self._fresh(f)]

    def on_device(self, device: Device) -> list[Finding]:
        profile = self.baseline.devices.get(str(device.get("mac")))
        if profile is not None and (profile.role == "unknown" or not self.baseline.complete
                                    or profile.learn_until > float(device.get("last_seen") or 0.0)):
            self.baseline.on_device(device)
        return []

    def tick(self, now: float) -> list[Finding]:
        self.baseline.learning(now)
        return []

    # --- checks -----------------------------------------------------------------------------------

    def _profile(self, key: str | None, ts: float, ip: str, learning: bool,
                 found: list[Finding]) -> Profile | None:
        if key is None:
            return None
        profile = self.baseline.devices.get(key)
        if profile is not None:
            return profile
        profile = self.baseline.profile(key, ts, 0.0 if learning else ts + self.baseline.device_learning)
        if profile is None or learning:
            return profile
        self.baseline.on_device(self.context.device(key) or {"mac": key})
        if "new_device" in self._kinds:
            found.append(finding(
                "new_device", "medium", ts, profile, None, (ip, None, None, None, None),
                f"{describe(profile, ip)} ({key}) appeared on the ward after learning ended; it learns "
                f"on its own for {self.baseline.device_learning / 3600:g} h.",
                {"first_seen": ts, "vendor": profile.vendor, "hostname": profile.hostname},
                f"new_device:{key}"))
        return profile

    def _compare(self, flow: FlowRecord, a: Profile | None, b: Profile | None) -> list[Finding]:
        found: list[Finding] = []
        proto, last = flow.proto, flow.last
        tcp_reset = proto == "tcp" and "R" in flow.b_flags and "S" not in flow.b_flags
        service = service_label(proto, flow.b_port) if proto == "tcp" or proto == "udp" else ""
        kinds = self._kinds
        if a is not None and a.learn_until <= last and service and not tcp_reset:
            if "new_peer" in kinds and flow.b_ip not in a.peers and "peers" not in a.saturated \
                    and self.baseline.classify(flow.b_ip) != "other":
                found += self._new(flow, a, b, _where(flow), "new_peer", f"new_peer:{a.key}:{flow.b_ip}",
                                   f"{describe(a, flow.a_ip)} connected to {describe(b, flow.b_ip)} on "
                                   f"{service} for the first time; never seen while learning.")
            if "new_service" in kinds and service not in a.used and "used" not in a.saturated:
                found += self._new(flow, a, b, _where(flow), "new_service",
                                   f"new_service:{a.key}:used:{service}",
                                   f"{describe(a, flow.a_ip)} used {service} (to {flow.b_ip}), a service it "
                                   f"never used while learning.")
        if b is not None and b.learn_until <= last and service and not tcp_reset \
                and "new_service" in kinds and service not in b.offered and "offered" not in b.saturated:
            found += self._new(flow, b, a, _where(flow), "new_service",
                               f"new_service:{b.key}:offered:{service}",
                               f"{describe(b, flow.b_ip)} answered on {service} (from {flow.a_ip}), a "
                               f"service it never offered while learning.")
        if a is not None:
            self._side(flow, a, b, flow.a_ip, flow.b_ip, flow.a_bytes, service, found)
        if b is not None:
            self._side(flow, b, a, flow.b_ip, flow.a_ip, flow.b_bytes, service, found)
        return found

    def _side(self, flow: FlowRecord, side: Profile, other: Profile | None, own_ip: str, peer_ip: str,
              sent: int, service: str, found: list[Finding]) -> None:
        """The checks of one flow side against its own profile: external peers, volume."""
        if self._external and side.role in MEDICAL \
                and _external(peer_ip, self.baseline) and peer_ip not in side.external \
                and "external" not in side.saturated \
                and not any(ipaddress.ip_address(peer_ip) in n for n in self._allowed):
            found.append(finding(
                "external_communication", "high", flow.last, side, other, _where(flow),
                f"{describe(side, own_ip)} exchanged traffic with the external address {peer_ip} "
                f"({service or flow.proto}), outside the destinations it used while learning.",
                {"sent_bytes": sent, "learned_external": sorted(side.external)[:16]},
                f"external_communication:{side.key}:{peer_ip}"))
        if self._volume_on and sent > 0:
            found += self._volume_check(flow, side, other, own_ip, peer_ip, sent)

    def _new(self, flow: FlowRecord, src: Profile, dst: Profile | None, where: Where, kind: str, key: str,
             summary: str) -> list[Finding]:
        slot = int(flow.last // self.baseline.interval)
        interval, count = self._new_count.get(src.key, (slot, 0))
        count = count if interval == slot else 0
        if self._raised.get(key) == slot:
            return []
        if count >= self.settings.new_per_interval:
            self.counters.add(f"learned.{kind}_capped")
            return []
        self._new_count[src.key] = (slot, count + 1)
        evidence = {"service": service_label(flow.proto, flow.b_port), "bytes": flow.a_bytes + flow.b_bytes,
                    "packets": flow.a_pkts + flow.b_pkts, "known_peers": len(src.peers)}
        return [finding(kind, "low" if kind == "new_peer" else "medium", flow.last, src, dst, where, summary,
                        evidence, key)]

    def _volume_check(self, flow: FlowRecord, side: Profile, other: Profile | None, own_ip: str,
                      peer_ip: str, sent: int) -> list[Finding]:
        """Add `sent` to this interval's bytes toward the peer and toward all peers; judge both."""
        slot = int(flow.last // self.baseline.interval)
        s = self.settings
        to_peer = self._interval_bytes(side.key, peer_ip, slot)
        to_peer[1] += sent
        to_all = self._interval_bytes(side.key, "*", slot)
        to_all[1] += sent
        if to_peer[1] <= s.volume_floor and to_all[1] <= s.volume_floor:
            return []  # the floor bounds every threshold: no statistics needed
        a, b = (side, other) if own_ip == flow.a_ip else (other, side)
        if self._bulk(flow, a, b):  # sanctioned bulk traffic does not count at all
            to_peer[1] -= sent
            to_all[1] -= sent
            return []
        found: list[Finding] = []
        for peer, current in ((peer_ip, to_peer), ("*", to_all)):
            stats = self._robust(side, peer)
            if stats.n < s.volume_min_samples:
                continue
            limit = volume_threshold(stats, s.volume_mad_factor, s.volume_floor, s.volume_headroom)
            if current[1] > limit:
                found.append(finding(
                    "volume_anomaly", "high", flow.last, side, other, _where(flow),
                    volume_summary(side, own_ip, peer_ip if peer != "*" else "*", current[1], stats,
                                   self.baseline.interval),
                    {"bytes": current[1], "threshold": round(limit), "median": stats.median, "mad": stats.mad,
                     "largest": stats.largest, "samples": stats.n, "interval": self.baseline.interval,
                     "peer": peer},
                    f"volume_anomaly:{side.key}:{peer}"))
        return found

    def _interval_bytes(self, device: str, peer: str, slot: int) -> list[int]:
        """[slot, bytes] the device sent to `peer` ("*": all peers) in the current interval (bounded)."""
        current = self._volume.get((device, peer))
        if current is None or current[0] != slot:
            if len(self._volume) >= _MAX_RAISED:
                self._volume.clear()
                self.counters.add("learned.volume_reset")
            current = self._volume[(device, peer)] = [slot, 0]
        return current

    def _bulk(self, flow: FlowRecord, a: Profile | None, b: Profile | None) -> bool:
        """Whether the policy allows this flow by a rule marked bulk (a scheduled backup, say)."""
        if self.policy is None:
            return False
        verdict = self.policy.evaluate(flow.a_ip, flow.b_ip, flow.proto, flow.b_port, flow.vlan,
                                       a.role if a else None, b.role if b else None)
        if verdict.rule is not None and verdict.rule.bulk:
            self.counters.add("learned.volume_bulk_allowed")
            return True
        return False

    def _robust(self, side: Profile, peer: str) -> Robust:
        stats = self._stats.get((side.key, peer))
        if stats is None:
            known = side.peers.get(peer)
            samples = side.total.samples if peer == "*" else known.volume.samples if known is not None else []
            stats = self._stats[(side.key, peer)] = Robust.of(samples)
        return stats

    def _fresh(self, item: Finding) -> bool:
        """Raise a key once per interval; the engine's suppression window does the rest."""
        slot = int(item.ts // self.baseline.interval)
        if item.kind not in ("new_peer", "new_service") and self._raised.get(item.key) == slot:
            return False
        if len(self._raised) >= _MAX_RAISED:
            self._raised.clear()
            self.counters.add("learned.raised_reset")
        self._raised[item.key] = slot
        return True


def _learner(profile: Profile | None, learning: bool, now: float) -> Profile | None:
    """The profile when it may still learn at `now` (sensor learning, or its own window), else None."""
    if profile is None or learning or profile.learn_until > now:
        return profile
    return None


def _where(flow: FlowRecord) -> Where:
    """Source and destination of a finding about this flow (built only when a finding is)."""
    return (flow.a_ip, flow.a_port, flow.b_ip, flow.b_port, flow.proto)


def _external(ip: str, baseline: Baseline) -> bool:
    return baseline.classify(ip) == "external"


def make(settings: Settings, context: Context) -> LearnedDetector:
    """A detector that starts from `settings.baseline` when given, else learns a new baseline."""
    if settings.baseline:
        baseline = Baseline.load(settings.baseline)
    else:
        baseline = Baseline(settings.interval, settings.sensor_learning, settings.device_learning,
                            max_devices=settings.max_devices, max_peers=settings.max_peers,
                            local_networks=settings.local_networks)
    policy = load_policy(settings.policy) if settings.policy else None
    return LearnedDetector(settings, context, baseline, policy)


def detectors_from_baseline(path: str, context: Context, settings: Settings | None = None
                            ) -> dict[str, LearnedDetector]:
    """What `replay --baseline FILE` runs: the learned detector on that baseline (BaselineError if bad)."""
    return {NAME: make(replace(settings or Settings(), baseline=path), context)}
