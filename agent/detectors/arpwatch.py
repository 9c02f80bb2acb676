"""arp_spoofing: an address claimed by a new MAC while its holder is still around, and gratuitous ARP storms.

Every ARP frame (request or reply) binds its sender address to its sender MAC. When a different MAC
claims an address whose current holder claimed it within the last `recent` seconds, two machines
answer for one address: the classic ARP poisoning of a gateway or a PACS. A holder silent for
longer has most likely left (a DHCP lease moved on), so the new binding is simply learned.
Probes (sender 0.0.0.0, RFC 5227) bind nothing.

Defaults, and why:
- recent 300 s: ARP caches keep an entry for tens of seconds to minutes (Linux ~60 s reachable,
  Windows 15-45 s), and hosts re-resolve their peers within that; a holder heard in the last five
  minutes is still on the wire. Known false alarm: a multi-homed Linux host answering for one
  address on two NICs ("ARP flux") - approve it with an allow rule on its key.
- storm: 30 gratuitous ARPs from one MAC in 60 s. A host sends one to three on boot or link-up,
  a failover pair a few more; one every two seconds for a minute is a poisoning tool or a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.detectors.base import Context, Device
from agent.detectors.common import Bounded, Episode, describe, make_finding
from agent.records import Counters, Finding, FlowRecord, ProtoHint

NAME: Final = "arp_spoofing"
_UNSPECIFIED: Final = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class Settings:
    recent: float = 300.0  # s: a holder heard this recently still owns its address
    storm: int = 30  # gratuitous ARPs from one MAC ...
    storm_window: float = 60.0  # ... within this many seconds
    quiet: float = 10.0
    within: float = 60.0
    max_bindings: int = 8192  # addresses remembered
    max_senders: int = 4096  # MACs tracked for gratuitous storms

    def problems(self) -> list[str]:
        checks = [("recent", 1 <= self.recent <= 86400), ("storm", 2 <= self.storm <= 100000),
                  ("storm_window", 1 <= self.storm_window <= 86400), ("quiet", 0 <= self.quiet <= 3600),
                  ("within", 0 <= self.within <= 3600), ("max_bindings", 1 <= self.max_bindings <= 1 << 20),
                  ("max_senders", 1 <= self.max_senders <= 1 << 20)]
        return [f"{name}: out of range" for name, ok in checks if not ok]


def make(settings: Settings, context: Context) -> ArpWatch:
    return ArpWatch(settings, context)


class _Binding:
    __slots__ = ("last", "mac")

    def __init__(self) -> None:
        self.mac = ""
        self.last = float("-inf")


class ArpWatch:
    """Address-to-MAC bindings from ARP hints; conflicts and gratuitous storms become findings."""

    hint_apps: Final = frozenset({"arp"})  # the engine hands this detector only these hints
    takes_flows: Final = False  # ... and no flows
    takes_devices: Final = False  # ... nor device deltas

    def __init__(self, settings: Settings, context: Context) -> None:
        self.counters = Counters()
        self._s = settings
        self._context = context
        self._clock = float("-inf")
        self._seq = 0
        self._bindings: Bounded[str, _Binding] = Bounded(settings.max_bindings, self.counters,
                                                         "evicted.bindings")
        self._storms: Bounded[str, Episode] = Bounded(settings.max_senders, self.counters, "evicted.senders")
        self._pending: dict[str, tuple[Episode, ProtoHint]] = {}

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        return []

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        if hint.app != "arp":
            return []
        if hint.ts > self._clock:
            self._clock = hint.ts
        fields = hint.fields
        ip, mac = fields.get("sender_ip"), fields.get("sender_mac")
        if not isinstance(ip, str) or not isinstance(mac, str) or ip == _UNSPECIFIED:
            return []
        found: list[Finding] = []
        if fields.get("gratuitous"):
            s = self._s
            self._seq += 1
            storm = self._storms.touch(mac, Episode)
            if storm.add(self._seq, self._clock, hint.ts, hint.ts, s.storm_window, s.storm, 1 << 16):
                self._pending[mac] = (storm, hint)
        binding = self._bindings.touch(ip, _Binding)
        if binding.mac and binding.mac != mac:
            age = hint.ts - binding.last
            if age <= self._s.recent:
                found.append(self._conflict(hint, ip, binding.mac, mac, age))
        binding.mac, binding.last = mac, hint.ts
        return found

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        if now > self._clock:
            self._clock = now
        found: list[Finding] = []
        for mac, (episode, hint) in list(self._pending.items()):
            if episode.due(self._clock, self._s.quiet, self._s.within):
                del self._pending[mac]
                self._storms.pop(mac)
                found.append(self._storm(mac, episode, hint))
        return found

    def _conflict(self, hint: ProtoHint, ip: str, old: str, new: str, age: float) -> Finding:
        summary = (f"The address of {describe(self._context, ip)} was claimed by MAC {new} "
                   f"{max(age, 0.0):.0f} s after its holder {old} last claimed it (ARP spoofing?)")
        evidence = {"address": ip, "old_mac": old, "new_mac": new, "seconds_since_old": round(age, 3),
                    "arp": hint.fields.get("arp"), "gratuitous": bool(hint.fields.get("gratuitous"))}
        return make_finding(self._context, "arp_spoofing", "high", hint.ts, ip, None, summary, evidence,
                            f"arp_spoofing:{ip}", proto="arp", device=new)

    def _storm(self, mac: str, episode: Episode, hint: ProtoHint) -> Finding:
        span = max(0.0, episode.last - episode.first)
        ip = hint.fields.get("sender_ip")
        sender = describe(self._context, ip) if isinstance(ip, str) else mac
        summary = f"{sender} (MAC {mac}) sent {episode.events} gratuitous ARPs in {span:.0f} s"
        evidence = {"gratuitous": episode.events, "seconds": round(span, 3), "sender_ip": ip,
                    "first": episode.first, "last": episode.last}
        return make_finding(self._context, "arp_spoofing", "medium", episode.last,
                            ip if isinstance(ip, str) else None, None, summary, evidence,
                            f"arp_spoofing:storm:{mac}", proto="arp", device=mac)
