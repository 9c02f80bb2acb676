"""The device inventory: one device per MAC, built from finished flows and protocol hints.

Fed by the pipeline with every FlowRecord (`on_flow`, once per finished flow, so it must stay cheap:
a few dict operations, no parsing, no role or risk work) and every ProtoHint (`on_hint`). Roles
(agent.roles) and hygiene risks (agent.risks) are computed only when records are asked for, by
`devices()` (everything, for the replay stream) or `delta(now)` (what changed, for the uplink).

Keys and attribution:
- A device is keyed by its MAC. Group (multicast/broadcast) and all-zero MACs are no device.
- A flow side without a MAC (raw IP, loopback captures) is keyed "ip:<address>" and that key stands
  in the record's "mac" field: it is the only identity such a capture offers, and it can never collide
  with a real MAC.
- An address is attributed to a device only when it is local: inside `local_networks` when given,
  otherwise any address that is not globally routable (RFC 1918, ULA, link-local, CGNAT, loopback).
  On a mirror port, the gateway's MAC carries every Internet address; those must not pile up on it.
  Services offered and used, and what hints say about a side (software, names, logins, clinical
  context), are recorded only for local addresses, for the same reason; frame-level hints without
  addresses (LLDP, CDP) go to their MAC. DHCP clients are found by the hint's client MAC, and the
  addresses a DHCP ACK assigns are attributed whatever they are: the DHCP server is authoritative.
- A side that sent nothing (b of an unanswered flow) is not touched. Services offered are the b side
  of answered TCP/UDP flows; a TCP reply that is only a reset (closed port) or no reply at all (a SYN
  scan) is no service. Services used are the same flows seen from side a.

Bounds: at most `max_devices` devices; a new one evicts the least recently touched (in record order)
and counts `inventory.evicted`. Per-device collections are bounded in agent.inventory_device.

Deltas: a device is in `delta(now)` when something other than its last_seen changed since it was
last reported, or when only last_seen moved and the last report is `refresh` seconds old. The live
service reports devices one at a time (`report`), a few hundred a second (agent.device_reports).

Cost: detectors ask for a device's record per flow (`device_record`, `device_of_ip`), and role
classification and risk assessment are the dear part of a record (~0.15 ms). Both read only the
content of a record, never its timestamps, so their result is cached on the device (an Assessment)
until its content changes (DeviceState.mark_changed) or the rules are replaced. Every record is
built fresh, so a caller that edits it cannot reach the cache.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from agent.inventory_device import Assessment, DeviceState
from agent.inventory_hints import HintApplier
from agent.records import Counters, FlowRecord, ProtoHint
from agent.risks import assess, score
from agent.roles import RoleRules, classify, load_rules

_GROUP_DIGITS: Final = frozenset("13579bdfBDF")
_ZERO_MAC: Final = "00:00:00:00:00:00"
_MAX_LOCAL_CACHE: Final = 65536
_BROADCAST: Final = ipaddress.ip_address("255.255.255.255")


class Inventory:
    """Devices seen on the ward, bounded and LRU-evicted; records on demand."""

    def __init__(self, max_devices: int = 4096, rules: RoleRules | None = None, *,
                 local_networks: Sequence[str] | None = None, refresh: float = 300.0,
                 counters: Counters | None = None) -> None:
        if max_devices < 1:
            raise ValueError("max_devices must be at least 1")
        self.max_devices = max_devices
        self.rules = rules if rules is not None else load_rules()
        self.counters = counters if counters is not None else Counters()
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in local_networks or ())
        self._refresh = refresh
        self._devices: OrderedDict[str, DeviceState] = OrderedDict()
        self._local: dict[str, bool] = {}
        self._by_ip: dict[str, str] = {}  # address -> key of the device that last held it
        self._apply_hint = HintApplier(self).apply
        self.version = 0  # counts changes: a reader holding records built earlier can tell they may be stale

    def reconfigure(self, max_devices: int, rules: RoleRules, local_networks: Sequence[str],
                    refresh: float) -> None:
        """New bounds, rules and networks for a running inventory; its devices are kept."""
        self.version += 1
        self.max_devices, self.rules, self._refresh = max_devices, rules, refresh  # new rules: reassess
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in local_networks)
        self._local.clear()
        while len(self._devices) > max_devices:
            self._devices.popitem(last=False)
            self.counters.add("inventory.evicted")

    def __len__(self) -> int:
        return len(self._devices)

    def on_flow(self, flow: FlowRecord) -> None:
        """One finished flow: touch both sides, attribute local addresses, note an answered service."""
        self.version += 1
        local = self._local
        a_local = local.get(flow.a_ip)
        if a_local is None:
            a_local = self.is_local(flow.a_ip)
        a = self.device(flow.a_mac, flow.a_ip, a_local, flow.first, flow.last)
        if not flow.b_pkts:
            return
        b_local = local.get(flow.b_ip)
        if b_local is None:
            b_local = self.is_local(flow.b_ip)
        b = self.device(flow.b_mac, flow.b_ip, b_local, flow.first, flow.last)
        proto = flow.proto
        if proto == "tcp":
            flags = flow.b_flags
            if "R" in flags and "S" not in flags:  # reset without a SYN-ACK: a closed port
                return
        elif proto != "udp":
            return
        service = (proto, flow.b_port)
        if b is not None and b_local and service not in b.offered and not b.add_service(b.offered, service):
            self.counters.add("inventory.values_dropped")
        if a is not None and a_local and service not in a.used and not a.add_service(a.used, service):
            self.counters.add("inventory.values_dropped")

    def on_hint(self, hint: ProtoHint) -> None:
        """One protocol hint: names, fingerprints, software, clinical context and logins of its two sides."""
        self.version += 1
        self.counters.add("inventory.hints")
        ts = hint.ts
        src = self._hint_side(hint.src_mac, hint.src_ip, ts)
        dst = self._hint_side(hint.dst_mac, hint.dst_ip, ts)
        self._apply_hint(hint, src, dst)

    def _hint_side(self, mac: str | None, ip: str | None, ts: float) -> DeviceState | None:
        """A hint's side is a device when its address is local, or when it has none (LLDP, CDP)."""
        if ip is None:
            return self.device(mac, None, False, ts, ts) if mac is not None else None
        local = self._local.get(ip)
        if local is None:
            local = self.is_local(ip)
        if not local:  # a remote host behind the gateway's MAC: not the gateway's doing
            return None
        return self.device(mac, ip, True, ts, ts)

    def device(self, mac: str | None, ip: str | None, local: bool, first: float,
               last: float) -> DeviceState | None:
        """The device for a MAC (or a local address when there is no MAC), created and touched."""
        if mac is not None:
            key = mac
        elif local and ip is not None:
            key = "ip:" + ip
        else:
            return None
        devices = self._devices
        device = devices.get(key)
        if device is not None:  # known, so a valid key: the common case costs no MAC checks
            devices.move_to_end(key)
            if first < device.first_seen:
                device.first_seen = first
                device.changed = True  # a timestamp: the delta carries it, the assessment stands
        elif mac is not None and (mac[1:2] in _GROUP_DIGITS or mac == _ZERO_MAC):
            return None
        else:
            device = self._create(key, first)
        if last > device.last_seen:
            device.last_seen = last
        if local and ip is not None:  # attribute the address
            seen = device.ips.get(ip)
            if seen is None:
                if not device.add_ip(ip, first, last):
                    self.counters.add("inventory.ips_dropped")
            else:  # a known address, most calls: add_ip's steps for it, inlined
                if last > seen[1]:
                    seen[1] = last
                if first < seen[0]:
                    seen[0] = first
            by_ip = self._by_ip
            if by_ip.get(ip) != key:  # the address now leads to this device
                if len(by_ip) >= _MAX_LOCAL_CACHE:
                    by_ip.clear()
                by_ip[ip] = key
        return device

    def _create(self, key: str, first: float) -> DeviceState:
        """A new device, evicting the least recently touched one when the inventory is full."""
        devices = self._devices
        if len(devices) >= self.max_devices:
            devices.popitem(last=False)
            self.counters.add("inventory.evicted")
        device = devices[key] = DeviceState(key, first)
        self.counters.add("inventory.created")
        return device

    def is_local(self, ip: str | None) -> bool:
        """Whether an address may be attributed to a device seen on this segment (cached)."""
        if ip is None:
            return False
        known = self._local.get(ip)
        if known is None:
            if len(self._local) >= _MAX_LOCAL_CACHE:
                self._local.clear()
            known = self._local[ip] = self._classify_address(ip)
        return known

    def _classify_address(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.is_multicast or address.is_unspecified or address == _BROADCAST:
            return False
        if self._networks:
            return any(address in network for network in self._networks)
        return not address.is_global

    def device_record(self, key: str) -> dict[str, Any] | None:
        """The record of one device by MAC (or "ip:<addr>"), None if unknown (detectors' context)."""
        device = self._devices.get(key)
        return self._record(device) if device is not None else None

    def device_of_ip(self, ip: str) -> dict[str, Any] | None:
        """The record of the device that last held a local address, None if none did."""
        key = self._by_ip.get(ip)
        return self.device_record(key) if key is not None else None

    def devices(self) -> list[dict[str, Any]]:
        """Every device's full record, sorted by key."""
        return [self._record(self._devices[key]) for key in sorted(self._devices)]

    def assess_pending(self, limit: int) -> int:
        """Assess up to `limit` devices whose role and risks are stale, ahead of their report; how many.

        A live sensor calls this every second, so the reports that follow find most assessments
        cached: a report round that assesses a whole ward at once (about 200 us a device here) holds the
        capture loop long enough for the kernel buffer to overflow on a busy mirror port.
        """
        done = 0
        rules = self.rules
        for device in self._devices.values():
            if done >= limit:
                break
            if device.assessment is None or device.assessment.rules is not rules:
                self._record(device)
                done += 1
        return done

    def delta(self, now: float) -> list[dict[str, Any]]:
        """Records of devices changed since the last delta (or merely seen again, every `refresh` s)."""
        reports = (self.report(key, now) for key in self.keys())
        return [report[0] for report in reports if report is not None]

    def keys(self) -> list[str]:
        """Every device's key, sorted."""
        return sorted(self._devices)

    def report(self, key: str, now: float, everything: bool = False) -> tuple[dict[str, Any], bool] | None:
        """One device's record for the uplink and whether it was due: changed since its last report,
        or merely seen again `refresh` s after it. None if the device is gone, or not due and not
        `everything` (a snapshot). Either way a reported device is due again only when it changes."""
        device = self._devices.get(key)
        if device is None:
            return None
        due = device.changed or (device.last_seen > device.reported_last
                                 and now - device.reported_at >= self._refresh)
        if not (due or everything):
            return None
        device.changed = False
        device.reported_at = now
        device.reported_last = device.last_seen
        return self._record(device), due

    def _record(self, device: DeviceState) -> dict[str, Any]:
        """The device's record with its role and risks, assessed again only if its content changed."""
        record = device.record()
        assessment = device.assessment
        if assessment is None or assessment.rules is not self.rules:
            assessment = device.assessment = self._assess(record)
        record["role"], record["role_confidence"] = assessment.role, assessment.confidence
        record["role_evidence"] = list(assessment.evidence)
        record["risks"] = [dict(risk) for risk in assessment.risks]  # fresh: callers may edit them
        record["risk_score"] = assessment.risk_score
        return record

    def _assess(self, record: dict[str, Any]) -> Assessment:
        role, confidence, evidence = classify(record, self.rules)
        risks = assess(record)
        return Assessment(self.rules, role, confidence, tuple(evidence), tuple(risks), score(risks))
