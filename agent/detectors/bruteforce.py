"""brute_force: repeated failed logins, or many short sessions to one authentication service.

Two kinds of evidence, counted per (client, server, server port) in a sliding window of packet
time, reported together under one key:
- failed cleartext logins from the login hints (FTP, telnet, POP3/IMAP, MQTT, HTTP, SNMP), whose
  outcome the hinters read from the server's answer;
- short sessions to SSH 22, RDP 3389, telnet 23, FTP 21, POP3 110, IMAP 143 or VNC 5900, where the
  exchange is encrypted or unhinted: an established TCP session (both sides pushed data) that lasted
  at most 30 s and carried at most 32 KiB. Guessing tools open one such session per attempt (or per
  three); an interactive login stays longer or moves more.

Defaults, and why:
- 5 failed logins in 600 s: fail2ban's default jail (maxretry 5, findtime 10 min). A nurse mistyping
  twice is not an attack; five failures in ten minutes on a cleartext service is worth a look.
- 8 short sessions in 600 s: a short session is at least one attempt, but scripts with key
  authentication also make short sessions, so more than fail2ban's five are needed.
- A success seen after the threshold makes the finding high: a guess may have worked.
- Reported 10 s after the last attempt, or 60 s after the threshold was crossed (common.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.detectors.base import Context, Device
from agent.detectors.common import Bounded, Episode, describe, make_finding, seconds
from agent.records import Counters, Finding, FlowRecord, ProtoHint

NAME: Final = "brute_force"
AUTH_PORTS: Final = {21: "FTP", 22: "SSH", 23: "Telnet", 110: "POP3", 143: "IMAP", 3389: "RDP", 5900: "VNC"}
# The hinters that emit login hints (hints/: telnet, ftp, mail for POP3/IMAP, snmp, mqtt, http). A new
# login hinter must be added here, or its logins reach neither this detector nor cleartext_credentials.
LOGIN_APPS: Final = frozenset({"telnet", "ftp", "mail", "snmp", "mqtt", "http"})
LOGIN_NAMES: Final = {"telnet": "Telnet", "ftp": "FTP", "pop3": "POP3", "imap": "IMAP", "snmp": "SNMP",
                      "mqtt": "MQTT", "http_basic": "HTTP Basic", "http_form": "HTTP form"}

_CAP: Final = 65536  # attempts remembered per reported episode (each is one small int)
Pair = tuple[str, str, int]  # client, server, server port


@dataclass(frozen=True, slots=True)
class Settings:
    window: float = 600.0  # s of packet time in which attempts count
    failures: int = 5  # failed logins
    sessions: int = 8  # short sessions to an authentication port
    short_seconds: float = 30.0
    short_bytes: int = 32768  # both directions, IP bytes
    quiet: float = 10.0
    within: float = 60.0
    max_sources: int = 4096  # tracked (client, server, port), per kind of evidence

    def problems(self) -> list[str]:
        checks = [("window", 1 <= self.window <= 86400), ("failures", 2 <= self.failures <= 100000),
                  ("sessions", 2 <= self.sessions <= 100000),
                  ("short_seconds", 1 <= self.short_seconds <= 3600),
                  ("short_bytes", 256 <= self.short_bytes <= 1 << 30), ("quiet", 0 <= self.quiet <= 3600),
                  ("within", 0 <= self.within <= 3600), ("max_sources", 1 <= self.max_sources <= 1 << 20)]
        return [f"{name}: out of range" for name, ok in checks if not ok]


def make(settings: Settings, context: Context) -> BruteForceDetector:
    return BruteForceDetector(settings, context)


class BruteForceDetector:
    """Failed logins and short authentication sessions per (client, server, port)."""

    hint_apps: Final = LOGIN_APPS  # the engine hands this detector only these hints,
    flow_ports: Final = frozenset(AUTH_PORTS)  # ... only flows to these ports
    takes_devices: Final = False  # ... and no device deltas

    def __init__(self, settings: Settings, context: Context) -> None:
        self.counters = Counters()
        self._s = settings
        self._context = context
        self._clock = float("-inf")
        self._seq = 0
        limit = settings.max_sources
        self._failures: Bounded[Pair, Episode] = Bounded(limit, self.counters, "evicted.failures")
        self._sessions: Bounded[Pair, Episode] = Bounded(limit, self.counters, "evicted.sessions")
        self._pending: dict[Pair, tuple[Episode, str, str | int, str | None]] = {}

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        if flow.b_port not in AUTH_PORTS or flow.proto != "tcp" or "P" not in flow.a_flags \
                or "P" not in flow.b_flags or "S" not in flow.a_flags or flow.a_pkts < 4 or flow.b_pkts < 3:
            return []
        if flow.last > self._clock:
            self._clock = flow.last
        s = self._s
        if flow.last - flow.first > s.short_seconds or flow.a_bytes + flow.b_bytes > s.short_bytes:
            return []
        pair = (flow.a_ip, flow.b_ip, flow.b_port)
        self._seq += 1
        episode = self._sessions.touch(pair, Episode)
        if episode.add(self._seq, self._clock, flow.first, flow.last, s.window, s.sessions, _CAP):
            self._pending.setdefault(pair, (episode, AUTH_PORTS[flow.b_port], flow.proto, flow.a_mac))
        return []

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        if hint.ts > self._clock:
            self._clock = hint.ts
        fields = hint.fields
        login = fields.get("login")
        if login is None or hint.src_ip is None or hint.dst_ip is None:
            return []
        if hint.initiator:
            pair, mac = (hint.src_ip, hint.dst_ip, hint.dst_port), hint.src_mac
        else:
            pair, mac = (hint.dst_ip, hint.src_ip, hint.src_port), hint.dst_mac
        outcome = fields.get("outcome")
        if outcome == "success":
            for episodes in (self._failures, self._sessions):
                if (episode := episodes.get(pair)) is not None and episode.seen is not None:
                    episode.extra["success"] = hint.ts
            return []
        if outcome != "failure":
            return []
        s = self._s
        self._seq += 1
        episode = self._failures.touch(pair, Episode)
        if episode.add(self._seq, self._clock, hint.ts, hint.ts, s.window, s.failures, _CAP):
            name = LOGIN_NAMES.get(str(login), str(login))
            self._pending.setdefault(pair, (episode, name, hint.proto, mac))
        return []

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        if now > self._clock:
            self._clock = now
        found: list[Finding] = []
        for pair, (episode, service, proto, mac) in list(self._pending.items()):
            if episode.due(self._clock, self._s.quiet, self._s.within):
                del self._pending[pair]
                found.append(self._report(pair, service, proto, mac))
        return found

    def _report(self, pair: Pair, service: str, proto: str | int, mac: str | None) -> Finding:
        client, server, port = pair
        failures, sessions = self._failures.pop(pair), self._sessions.pop(pair)
        parts, first, last, success = [], float("inf"), float("-inf"), None
        evidence: dict[str, object] = {"service": service}
        for episode, adjective, noun, name in ((failures, "failed", "logins", "failed_logins"),
                                               (sessions, "short", "sessions", "short_sessions")):
            if episode is None or not episode.events:
                continue
            parts.append(f"{episode.events} {adjective} {service} {noun}")
            evidence[name] = episode.events
            first, last = min(first, episode.first), max(last, episode.last)
            success = episode.extra.get("success", success)
        span = max(0.0, last - first)
        summary = (f"{describe(self._context, client)} made {' and '.join(parts)} to "
                   f"{describe(self._context, server)}:{port} in {seconds(span)}")
        if success is not None:
            summary += ", then a login succeeded"
        evidence.update({"seconds": round(span, 3), "first": first, "last": last,
                         "success_after": success is not None})
        return make_finding(self._context, "brute_force", "high" if success is not None else "medium", last,
                            client, server, summary, evidence, f"brute_force:{client}->{server}:{port}",
                            dst_port=port, proto=proto, device=mac)
