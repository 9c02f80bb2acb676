"""port_scan and host_sweep: many failed attempts from one source, over ports or over hosts.

Only attempts that failed count: a TCP flow in which nobody pushed data and the initiator sent at
most three packets (SYN to a closed, filtered or half-open port), an unanswered UDP datagram, an
ICMP echo request (answered or not: ping sweeps find live hosts). Real conversations never count,
so a busy server talking to hundreds of clients, or a central station holding sessions with every
bedside monitor, is not a sweep. As in Zeek's scan policy, distinct ports per (source, target) make
a port scan, distinct targets per (source, service) a host sweep; broadcast ARP who-has requests
for many addresses of the segment are a sweep too (unicast requests only re-validate a cache entry;
probes from 0.0.0.0 and gratuitous ARPs announce, they do not ask).

Defaults, and why:
- ports 25 / hosts 25 in 300 s: Zeek's scan.zeek thresholds are 15 ports and 25 hosts in 5 min;
  25 ports leaves room for a client trying a handful of fallback ports (DICOM 104/11112/4242 ...).
- ARP: 64 distinct addresses in 60 s. Ordinary hosts resolve a gateway and a few servers; routers
  refresh known neighbours mostly by unicast; asking for a quarter of a /24 within a minute is
  enumeration.
- Unanswered UDP from DHCP, NetBIOS, SSDP, WS-Discovery, mDNS or LLMNR ports is left out: these
  servers answer broadcast requests by unicast, and the asker never replies (a DHCP server would
  otherwise "sweep" every client it offers an address to).
- Echo requests from a host seen serving DHCP (UDP from port 67) are left out: DHCP servers ping
  each address before they offer it, and a ward's morning shift brings many leases at once.
- UDP to 33434-33534 is left out: traceroute sends three probes per hop to consecutive ports there.
- A crossed episode is reported after 10 s without new attempts, or 60 s after it crossed, so the
  finding carries the whole scan's numbers (see common.py).

Reports leave as drafts (`tick_drafts`): a scan storm raises far more findings than the engine's
rate limit and suppression let through, and each one's text names two devices, whose records the
inventory builds afresh; only the findings the engine emits get their text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from agent.detectors.base import Context, Device
from agent.detectors.common import (
    Bounded,
    Draft,
    Episode,
    Episodes,
    describe,
    is_group,
    make_finding,
    seconds,
)
from agent.records import Counters, Finding, FlowRecord, ProtoHint

NAME: Final = "scan"
_ECHO: Final = {"icmp": 8, "icmp6": 128}
_ARP_PROTO: Final = "arp"
_BROADCAST: Final = "ff:ff:ff:ff:ff:ff"
_DHCP_SERVER: Final = 67
# UDP services that answer a broadcast or multicast request by unicast from their own port: the
# answer starts a flow of its own that the asker never replies to (DHCP offers, NBNS, SSDP, mDNS ...).
_GROUP_RESPONDERS: Final = frozenset({67, 68, 137, 138, 546, 547, 1900, 3702, 5353, 5355})
_TRACEROUTE: Final = range(33434, 33535)  # classic traceroute's UDP probes: a port per hop, not a scan


@dataclass(frozen=True, slots=True)
class Settings:
    window: float = 300.0  # s of packet time in which distinct items count
    ports: int = 25  # distinct failed ports of one target
    hosts: int = 25  # distinct targets of one service
    arp_window: float = 60.0
    arp_hosts: int = 64  # distinct addresses asked for by one sender
    quiet: float = 10.0  # s without new attempts before a crossed episode is reported
    within: float = 60.0  # ... or at the latest this long after it crossed
    max_sources: int = 4096  # tracked (source, target) and (source, service) pairs, each
    max_dhcp_servers: int = 64  # addresses remembered as serving DHCP
    max_items: int = 4096  # distinct items remembered per reported episode

    def problems(self) -> list[str]:
        checks = [("window", 1 <= self.window <= 86400), ("ports", 2 <= self.ports <= 65535),
                  ("hosts", 2 <= self.hosts <= 65535), ("arp_window", 1 <= self.arp_window <= 86400),
                  ("arp_hosts", 2 <= self.arp_hosts <= 65535), ("quiet", 0 <= self.quiet <= 3600),
                  ("within", 0 <= self.within <= 3600), ("max_sources", 1 <= self.max_sources <= 1 << 20),
                  ("max_items", 1 <= self.max_items <= 65536),
                  ("max_dhcp_servers", 1 <= self.max_dhcp_servers <= 65536)]
        return [f"{name}: out of range" for name, ok in checks if not ok]


def make(settings: Settings, context: Context) -> ScanDetector:
    return ScanDetector(settings, context)


def failed(flow: FlowRecord) -> bool:
    """A TCP attempt that carried no data, or a UDP datagram nobody answered."""
    if flow.proto == "tcp":
        return ("S" in flow.a_flags and "P" not in flow.a_flags and "P" not in flow.b_flags
                and flow.a_pkts <= 3)
    return flow.proto == "udp" and flow.b_pkts == 0 and flow.a_pkts <= 2


class ScanDetector:
    """Port scans per (source, target), host sweeps per (source, proto, port) and ARP sweeps per sender."""

    hint_apps: Final = frozenset({"arp"})  # the engine hands this detector only these hints
    takes_devices: Final = False  # ... and no device deltas

    def __init__(self, settings: Settings, context: Context) -> None:
        self.counters = Counters()
        self._s = settings
        self._context = context
        self._clock = float("-inf")
        self._targets: Episodes[tuple[str, str]] = Episodes(settings.max_sources, self.counters,
                                                             "evicted.targets")
        self._services: Episodes[tuple[str, Any, int]] = Episodes(settings.max_sources, self.counters,
                                                                  "evicted.services")
        self._dhcp_servers: Bounded[str, bool] = Bounded(settings.max_dhcp_servers, self.counters,
                                                         "evicted.dhcp_servers")
        self._pending: dict[tuple[Any, ...], tuple[Episode, FlowRecord | ProtoHint]] = {}

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        # The tests of `failed` inlined, cheapest first: most flows are conversations, never attempts.
        if "P" in flow.a_flags:
            return []
        if flow.b_pkts and flow.proto == "udp" and flow.a_port != _DHCP_SERVER:  # answered: no attempt
            if flow.last > self._clock:
                self._clock = flow.last
            return []
        first, last, proto, a_ip, a_port, b_ip, b_port, _, _, _, a_pkts, b_pkts, _, _, a_flags, b_flags, _ \
            = flow  # one unpack costs less than the attribute reads below
        if last > self._clock:
            self._clock = last
        if proto == "tcp":
            if "S" not in a_flags or "P" in b_flags or a_pkts > 3:
                return []
        elif proto == "udp":
            if a_port in _GROUP_RESPONDERS:
                if a_port == _DHCP_SERVER:
                    self._dhcp_servers.touch(a_ip, bool)
                return []
            if b_pkts or a_pkts > 2 or b_port in _TRACEROUTE:
                return []
        else:
            if _ECHO.get(proto if isinstance(proto, str) else "") == a_port and not is_group(b_ip) \
                    and self._dhcp_servers.get(a_ip) is None:
                s = self._s
                service = self._services.add((a_ip, proto, a_port), b_ip, self._clock, first, last, s.window,
                                             s.hosts, s.max_items)
                if service is not None:
                    self._pending[("sweep", a_ip, proto, a_port)] = (service, flow)
            return []
        if is_group(b_ip):
            return []
        s, clock = self._s, self._clock
        target = self._targets.add((a_ip, b_ip), b_port, clock, first, last, s.window, s.ports, s.max_items)
        if target is not None:
            self._pending[("port", a_ip, b_ip)] = (target, flow)
        if "S" in b_flags and (opened := self._targets.episode((a_ip, b_ip))) is not None:
            opened.extra["open"] = opened.extra.get("open", 0) + 1
        service = self._services.add((a_ip, proto, b_port), b_ip, clock, first, last, s.window, s.hosts,
                                     s.max_items)
        if service is not None:
            self._pending[("sweep", a_ip, proto, b_port)] = (service, flow)
        return []

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        if hint.ts > self._clock:
            self._clock = hint.ts
        if hint.app != "arp":
            return []
        fields = hint.fields
        sender, target = fields.get("sender_ip"), fields.get("target_ip")
        if fields.get("arp") != "request" or hint.dst_mac != _BROADCAST or fields.get("gratuitous") \
                or sender == "0.0.0.0" or not isinstance(sender, str) or not isinstance(target, str):
            return []
        s = self._s
        sweep = self._services.add((sender, _ARP_PROTO, 0), target, self._clock, hint.ts, hint.ts,
                                   s.arp_window, s.arp_hosts, s.max_items)
        if sweep is not None:
            self._pending[("sweep", sender, _ARP_PROTO, 0)] = (sweep, hint)
        return []

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        return [draft.build() for draft in self.tick_drafts(now)]

    def tick_drafts(self, now: float) -> list[Draft]:
        """The findings now due, as drafts: the engine builds the text only of those it lets through."""
        if now > self._clock:
            self._clock = now
        found: list[Draft] = []
        for key, (episode, record) in list(self._pending.items()):
            if episode.due(self._clock, self._s.quiet, self._s.within):
                del self._pending[key]
                if key[0] == "port":
                    self._targets.pop((key[1], key[2]))
                    found.append(self._port_scan(episode, record))
                else:
                    self._services.pop((key[1], key[2], key[3]))
                    found.append(self._sweep(episode, record, key[2], key[3]))
        return found

    def _port_scan(self, episode: Episode, record: FlowRecord | ProtoHint) -> Draft:
        assert isinstance(record, FlowRecord)
        key = f"port_scan:{record.a_ip}->{record.b_ip}"

        def build() -> Finding:
            ports = sorted(p for p in episode.items() if isinstance(p, int))
            span = max(0.0, episode.last - episode.first)
            count = f"at least {len(ports)}" if episode.capped else str(len(ports))
            summary = (f"{describe(self._context, record.a_ip)} scanned {count} ports of "
                       f"{describe(self._context, record.b_ip)} in {seconds(span)}")
            evidence = {"ports": len(ports), "attempts": episode.events, "seconds": round(span, 3),
                        "open": episode.extra.get("open", 0), "capped": episode.capped,
                        "sample_ports": ports[:20], "first": episode.first, "last": episode.last}
            return make_finding(self._context, "port_scan", "medium", episode.last, record.a_ip, record.b_ip,
                                summary, evidence, key, proto=record.proto, device=record.a_mac)

        return Draft(NAME, "port_scan", "medium", episode.last, record.a_ip, record.b_ip, key, build)

    def _sweep(self, episode: Episode, record: FlowRecord | ProtoHint, proto: Any, port: int) -> Draft:
        if isinstance(record, ProtoHint):
            src, device, what = str(record.fields["sender_ip"]), record.src_mac, "ARP-swept"
            service, dst_port, key_service = "addresses", None, "arp"
        else:
            src, device, what = record.a_ip, record.a_mac, "swept"
            service = f"hosts with ICMP echo ({proto})" if proto in _ECHO else f"hosts on {proto}/{port}"
            dst_port, key_service = (None if proto in _ECHO else port), f"{proto}/{port}"
        key = f"host_sweep:{src}:{key_service}"

        def build() -> Finding:
            hosts = sorted(str(h) for h in episode.items())
            span = max(0.0, episode.last - episode.first)
            count = f"at least {len(hosts)}" if episode.capped else str(len(hosts))
            summary = f"{describe(self._context, src)} {what} {count} {service} in {seconds(span)}"
            evidence = {"hosts": len(hosts), "attempts": episode.events, "seconds": round(span, 3),
                        "service": key_service, "capped": episode.capped, "sample_hosts": hosts[:20],
                        "first": episode.first, "last": episode.last}
            return make_finding(self._context, "host_sweep", "medium", episode.last, src, None, summary,
                                evidence, key, dst_port=dst_port,
                                proto=_ARP_PROTO if key_service == "arp" else proto, device=device)

        return Draft(NAME, "host_sweep", "medium", episode.last, src, None, key, build)
