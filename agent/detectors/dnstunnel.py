"""dns_tunneling: data smuggled through DNS names, or a DNS query rate no resolver needs.

Three signals, one finding key per (client, DNS server):
1. Tunnel-like names: a question with a label of 40+ characters, 50+ characters left of the
   registered domain, or characters no host name has (binary data shows as '?'). Everyday names
   stay under ~30 characters a label (CDN names in the shared captures top out at 29); encoders
   fill labels towards the 63 allowed. 8 such names from one client in 300 s: a single long
   lookup (an anti-virus reputation query) is not a tunnel, a steady stream of them is.
2. Query rate to one registered domain: 300 distinct names under it from one client in 300 s
   (one new name a second for five minutes); a browser touches tens, a tunnel thousands. Only a
   pair with 32+ queries in the window gets a distinct-name counter (a plain query count before
   that), so a ward of 1500 clients does not pay a name set per client and domain.
3. One UDP socket carrying 50+ queries at 1+ a second. Stub resolvers use a fresh random source
   port per query (RFC 5452), so a long-lived query stream on one port is a tunnel client (iodine,
   dnscat2 keep one socket). Sources seen answering DNS themselves (forwarders) are left out.
The hinters read only the first queries of a flow (hints/dns.py HEAD_PACKETS), so signal 3 carries
the long single-socket tunnels and signals 1-2 the ones spread over many sockets. Multicast DNS
(5353), LLMNR, .local and reverse (.arpa) names are never counted. The registered domain is the
last two labels, or three under a two-letter country code with a generic second level (co.uk,
nhs.uk, com.au): an approximation of the public suffix list without shipping it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from agent.detectors.base import Context, Device
from agent.detectors.common import Bounded, Episode, describe, is_group, make_finding, seconds
from agent.records import Counters, Finding, FlowRecord, ProtoHint

NAME: Final = "dns_tunneling"
_NOT_HOSTNAME: Final = re.compile(r"[^a-z0-9_.-]")  # names are lower-cased first
_SECOND_LEVELS: Final = frozenset({"co", "com", "net", "org", "gov", "ac", "edu", "nhs", "or", "ne", "go",
                                   "gv", "med", "health"})
MAX_NAMES: Final = 4096  # analysed names cached (names repeat: a ward asks for the same few hundred)
_MAX_DOMAINS: Final = 64  # registered domains counted per client for the report
_SKIP_SUFFIXES: Final = (".local", ".arpa")
_UNSEEN: Final = ("", "", False)  # sentinel: a question not analysed yet (compared by identity)


@dataclass(frozen=True, slots=True)
class Settings:
    window: float = 300.0
    long_label: int = 40
    long_subdomain: int = 50
    tunnel_names: int = 8  # tunnel-like names from one client within the window
    domain_names: int = 300  # distinct names under one registered domain within the window
    socket_queries: int = 50  # queries on one UDP socket (one flow record) ...
    socket_rate: float = 1.0  # ... at this many per second or more
    quiet: float = 10.0
    within: float = 60.0
    max_sources: int = 1024  # tracked (client, server) pairs
    busy_queries: int = 32  # queries to one domain in the window before distinct names are counted
    max_pairs: int = 8192  # (client, domain) query counters
    max_domains: int = 256  # busy (client, domain) pairs: each may hold `domain_names` name hashes
    max_resolvers: int = 256  # addresses remembered as answering DNS

    def problems(self) -> list[str]:
        checks = [("window", 1 <= self.window <= 86400), ("long_label", 8 <= self.long_label <= 63),
                  ("long_subdomain", 8 <= self.long_subdomain <= 253),
                  ("tunnel_names", 1 <= self.tunnel_names <= 100000),
                  ("domain_names", 2 <= self.domain_names <= 100000),
                  ("socket_queries", 2 <= self.socket_queries <= 1 << 30),
                  ("socket_rate", 0 <= self.socket_rate <= 100000), ("quiet", 0 <= self.quiet <= 3600),
                  ("within", 0 <= self.within <= 3600), ("max_sources", 1 <= self.max_sources <= 1 << 20),
                  ("max_domains", 1 <= self.max_domains <= 1 << 20),
                  ("busy_queries", 1 <= self.busy_queries <= 100000),
                  ("max_pairs", 1 <= self.max_pairs <= 1 << 22),
                  ("max_resolvers", 1 <= self.max_resolvers <= 1 << 20)]
        return [f"{name}: out of range" for name, ok in checks if not ok]


def make(settings: Settings, context: Context) -> DnsTunnelDetector:
    return DnsTunnelDetector(settings, context)


def registered_domain(labels: list[str]) -> str:
    """The last two labels, or three under a country code with a generic second level."""
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVELS:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def tunnel_like(name: str, labels: list[str], domain: str, long_label: int, long_subdomain: int) -> bool:
    """A (lower-case) name that carries data: a very long label or subdomain, or non-hostname characters."""
    return (len(name) - len(domain) - 1 >= long_subdomain or max(map(len, labels)) >= long_label
            or _NOT_HOSTNAME.search(name) is not None)


class DnsTunnelDetector:
    """DNS questions from hints and port-53 flows; one finding key per (client, server)."""

    hint_apps: Final = frozenset({"dns"})  # the engine hands this detector only these hints,
    hint_ports: Final = frozenset({53})  # ... sent to this port (queries: answers come from it),
    flow_ports: Final = frozenset({53})  # ... only flows to these ports
    takes_devices: Final = False  # ... and no device deltas

    def __init__(self, settings: Settings, context: Context) -> None:
        self.counters = Counters()
        self._s = settings
        self._context = context
        self._clock = float("-inf")
        self._seq = 0
        self._names: Bounded[tuple[str, str], Episode] = Bounded(settings.max_sources, self.counters,
                                                                  "evicted.clients")
        self._pairs: Bounded[tuple[str, str], list[float]] = Bounded(settings.max_pairs, self.counters,
                                                                      "evicted.pairs")
        self._domains: Bounded[tuple[str, str], Episode] = Bounded(settings.max_domains, self.counters,
                                                                    "evicted.domains")
        self._resolvers: Bounded[str, bool] = Bounded(settings.max_resolvers, self.counters,
                                                      "evicted.resolvers")
        self._pending: dict[tuple[str, str, str], tuple[Episode, ProtoHint]] = {}
        self._analysed: dict[str, tuple[str, str, bool] | None] = {}  # question -> (name, domain, data)

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        first, last, proto, a_ip, _, b_ip, b_port, _, _, _, a_pkts, b_pkts, _, _, _, _, _ = flow  # one unpack
        if b_port != 53 or proto != "udp":
            return []
        if last > self._clock:
            self._clock = last
        if b_pkts:  # the responder answers DNS: Bounded.touch inlined for the usual known resolver
            if b_ip in (resolvers := self._resolvers.entries):
                resolvers.move_to_end(b_ip)
            else:
                self._resolvers.touch(b_ip, bool)
        s = self._s
        span = last - first
        if a_pkts < s.socket_queries or a_pkts < s.socket_rate * span or is_group(b_ip) \
                or self._resolvers.get(a_ip) is not None:
            return []
        summary = (f"{describe(self._context, flow.a_ip)} sent {flow.a_pkts} DNS queries from one socket to "
                   f"{describe(self._context, flow.b_ip)} in {seconds(span)} "
                   f"({flow.a_bytes} bytes out, {flow.b_bytes} back): resolvers use a new port per query")
        evidence = {"signal": "one_socket", "queries": flow.a_pkts, "answers": flow.b_pkts,
                    "bytes_out": flow.a_bytes, "bytes_in": flow.b_bytes, "seconds": round(span, 3),
                    "client_port": flow.a_port}
        return [make_finding(self._context, "dns_tunneling", "high", flow.last, flow.a_ip, flow.b_ip, summary,
                             evidence, f"dns_tunneling:{flow.a_ip}->{flow.b_ip}", src_port=flow.a_port,
                             dst_port=53, proto="udp", device=flow.a_mac)]

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        ts, app, _, _, src, _, _, dst, dst_port, _, fields = hint  # one unpack costs less than six reads
        if app != "dns":
            return []
        if ts > self._clock:
            self._clock = ts
        if fields.get("response") or dst_port != 53 or src is None or dst is None:
            return []
        questions = fields.get("questions")
        if not isinstance(questions, list):
            return []
        s = self._s
        analysed, pairs, counts = self._analysed, self._pairs, self._pairs.entries
        clock = self._clock  # fixed below
        for question in questions:
            if not isinstance(question, str):
                continue
            known = analysed.get(question, _UNSEEN)
            if known is _UNSEEN:
                known = self._analyse(question)
                if len(analysed) >= MAX_NAMES:
                    analysed.clear()
                analysed[question] = known
            if known is None:
                continue
            name, domain, data = known
            if data:
                self._seq += 1
                names = self._names.touch((src, dst), Episode)
                domains = names.extra.setdefault("domains", {})
                if domain in domains or len(domains) < _MAX_DOMAINS:
                    domains[domain] = domains.get(domain, 0) + 1
                if names.add(self._seq, clock, ts, ts, s.window, s.tunnel_names, 1 << 16):
                    self._pending[("names", src, dst)] = (names, hint)
            pair = (src, domain)
            count = counts.get(pair)  # [window start, queries]
            if count is None:
                count = pairs.touch(pair, list)
            else:
                counts.move_to_end(pair)  # Bounded.touch inlined: most queries repeat a pair
            if not count:
                count += (clock, 1.0)
            elif clock - count[0] > s.window:
                count[0], count[1] = clock, 1.0
            else:
                count[1] += 1
            if count[1] < s.busy_queries:
                continue
            rate = self._domains.touch(pair, Episode)
            if rate.add(hash(name), clock, ts, ts, s.window, s.domain_names, 1 << 16):
                rate.extra["domains"] = {domain: 1}
                self._pending[("rate", src, domain)] = (rate, hint)
        return []

    def _analyse(self, question: str) -> tuple[str, str, bool] | None:
        """(name, registered domain, carries data) of a question; None for names never counted."""
        name = question.lower().rstrip(".")
        if not name or name.endswith(_SKIP_SUFFIXES):
            return None
        labels = name.split(".")
        domain = registered_domain(labels)
        return name, domain, tunnel_like(name, labels, domain, self._s.long_label, self._s.long_subdomain)

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        if now > self._clock:
            self._clock = now
        found: list[Finding] = []
        for key, (episode, hint) in list(self._pending.items()):
            if episode.due(self._clock, self._s.quiet, self._s.within):
                del self._pending[key]
                (self._names if key[0] == "names" else self._domains).pop((key[1], key[2]))
                found.append(self._names_finding(key[0], episode, hint))
        return found

    def _names_finding(self, signal: str, episode: Episode, hint: ProtoHint) -> Finding:
        client, server = str(hint.src_ip), str(hint.dst_ip)
        domains: dict[str, int] = episode.extra.get("domains", {})
        top = max(domains, key=lambda d: domains[d]) if domains else "?"
        span = max(0.0, episode.last - episode.first)
        if signal == "names":
            what = f"{episode.events} DNS names that carry data (long or encoded labels)"
        else:
            what = f"{episode.distinct} distinct names under one domain"
        summary = (f"{describe(self._context, client)} asked {describe(self._context, server)} for {what} "
                   f"in {seconds(span)}, mostly under {top}")
        evidence = {"signal": "tunnel_names" if signal == "names" else "domain_rate", "names": episode.events,
                    "distinct": episode.distinct, "domain": top, "domains": len(domains),
                    "seconds": round(span, 3), "first": episode.first, "last": episode.last}
        return make_finding(self._context, "dns_tunneling", "high", episode.last, client, server, summary,
                            evidence, f"dns_tunneling:{client}->{server}", dst_port=53, proto=hint.proto,
                            device=hint.src_mac)
