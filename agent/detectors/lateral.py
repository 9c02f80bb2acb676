"""lateral_movement: remote-administration fan-out, SMBv1 exploit-like bursts, PsExec-like remote execution.

Three patterns, each explainable from flow records and the SMB negotiate hints:
1. Fan-out: one internal host holding established sessions (both sides pushed data) on SMB
   (445/139), RDP (3389) or WinRM (5985/5986) with 10 or more internal hosts within 600 s.
   Workstations talk to a file server or two and a domain controller; touching ten machines'
   admin services in ten minutes is a worm or an operator moving through the ward (or a software
   deployment server: approve its key).
2. SMBv1 transaction burst: a session the hints marked SMB1 in which the client pushed 32 KiB or
   more, at least 10 times what the server sent. SMB1 control exchanges (negotiate, session setup,
   tree connect, transactions) stay under a few KiB; EternalBlue grooms the server pool with ~64 KiB
   of Trans2 secondaries that are never answered. A large one-way write to a legacy SMB1 share looks
   the same - SMB1 on a ward is a finding of its own - so the key names the pair for approval.
3. Remote execution (PsExec-like): an SMB upload of 64 KiB or more (client sent 4x what it got)
   to a host, and within 120 s another established session from the same client to that host's
   RPC endpoint mapper (135) or SMB: copy a service binary to ADMIN$, then start it through the
   service control manager. Deployment tools do the same on purpose: approve them by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.detectors.base import Context, Device
from agent.detectors.common import Bounded, Episode, describe, is_internal, make_finding, seconds
from agent.records import Counters, Finding, FlowRecord, ProtoHint

NAME: Final = "lateral_movement"
SERVICES: Final = {445: "SMB", 139: "SMB", 3389: "RDP", 5985: "WinRM", 5986: "WinRM"}
_SMB_PORTS: Final = frozenset({139, 445})
_RPC: Final = 135
_KEEP: Final = 4  # sessions remembered per (client, host) for the remote-execution pattern

FlowId = tuple[str, int, str, int]  # client ip, client port, server ip, server port


@dataclass(frozen=True, slots=True)
class Settings:
    window: float = 600.0
    fanout_hosts: int = 10
    smb1_bytes: int = 32768
    smb1_ratio: float = 10.0
    upload_bytes: int = 65536
    upload_ratio: float = 4.0
    exec_window: float = 120.0
    quiet: float = 10.0
    within: float = 60.0
    max_sources: int = 4096  # tracked (client, service) and (client, host) pairs, each
    max_smb_flows: int = 4096  # SMB sessions whose negotiate hints are remembered until the flow ends

    def problems(self) -> list[str]:
        checks = [("window", 1 <= self.window <= 86400), ("fanout_hosts", 2 <= self.fanout_hosts <= 65535),
                  ("smb1_bytes", 1024 <= self.smb1_bytes <= 1 << 30),
                  ("smb1_ratio", 1 <= self.smb1_ratio <= 1e6),
                  ("upload_bytes", 1024 <= self.upload_bytes <= 1 << 34),
                  ("upload_ratio", 1 <= self.upload_ratio <= 1e6),
                  ("exec_window", 1 <= self.exec_window <= 86400),
                  ("quiet", 0 <= self.quiet <= 3600), ("within", 0 <= self.within <= 3600),
                  ("max_sources", 1 <= self.max_sources <= 1 << 20),
                  ("max_smb_flows", 1 <= self.max_smb_flows <= 1 << 20)]
        return [f"{name}: out of range" for name, ok in checks if not ok]


def make(settings: Settings, context: Context) -> LateralDetector:
    return LateralDetector(settings, context)


class _Smb:
    __slots__ = ("dialects", "smb1")

    def __init__(self) -> None:
        self.smb1 = False
        self.dialects = 0


def _established(flow: FlowRecord) -> bool:
    return "P" in flow.a_flags and "P" in flow.b_flags


class LateralDetector:
    """Fan-out per (client, service), SMB1 bursts per session, remote execution per (client, host)."""

    hint_apps: Final = frozenset({"smb"})  # the engine hands this detector only these hints,
    flow_ports: Final = frozenset(SERVICES) | {_RPC}  # ... only flows to these ports
    takes_devices: Final = False  # ... and no device deltas

    def __init__(self, settings: Settings, context: Context) -> None:
        self.counters = Counters()
        self._s = settings
        self._context = context
        self._clock = float("-inf")
        self._fanout: Bounded[tuple[str, str], Episode] = Bounded(settings.max_sources, self.counters,
                                                                   "evicted.fanout")
        self._smb: Bounded[FlowId, _Smb] = Bounded(settings.max_smb_flows, self.counters, "evicted.smb_flows")
        self._hosts: Bounded[tuple[str, str], list[FlowRecord]] = Bounded(settings.max_sources, self.counters,
                                                                          "evicted.hosts")
        self._pending: dict[tuple[str, str], tuple[Episode, FlowRecord]] = {}

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        port = flow.b_port
        if (port not in SERVICES and port != _RPC) or flow.proto != "tcp":
            return []
        if flow.last > self._clock:
            self._clock = flow.last
        found: list[Finding] = []
        smb = self._smb.pop((flow.a_ip, flow.a_port, flow.b_ip, flow.b_port)) if port in _SMB_PORTS else None
        if not _established(flow):
            return found
        s = self._s
        if smb is not None and smb.smb1 and flow.a_bytes >= max(s.smb1_bytes, s.smb1_ratio * flow.b_bytes):
            found.append(self._smb1_burst(flow, smb))
        if port != _RPC and is_internal(flow.a_ip) and is_internal(flow.b_ip):
            service = SERVICES[port]
            fanout = self._fanout.touch((flow.a_ip, service), Episode)
            if fanout.add(flow.b_ip, self._clock, flow.first, flow.last, s.window, s.fanout_hosts, 65536):
                self._pending[(flow.a_ip, service)] = (fanout, flow)
        if port == _RPC or port in _SMB_PORTS:
            found += self._remote_exec(flow)
        return found

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        if hint.app != "smb" or hint.src_ip is None or hint.dst_ip is None:
            return []
        if hint.ts > self._clock:
            self._clock = hint.ts
        flow_id = ((hint.src_ip, hint.src_port, hint.dst_ip, hint.dst_port) if hint.initiator
                   else (hint.dst_ip, hint.dst_port, hint.src_ip, hint.src_port))
        smb = self._smb.touch(flow_id, _Smb)
        fields = hint.fields
        if fields.get("smb1") is True:
            smb.smb1 = True
        dialects = fields.get("dialects")
        if fields.get("smb") == "negotiate_request" and isinstance(dialects, list) and not smb.dialects:
            smb.dialects = len(dialects)
        return []

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        if now > self._clock:
            self._clock = now
        found: list[Finding] = []
        for key, (episode, flow) in list(self._pending.items()):
            if episode.due(self._clock, self._s.quiet, self._s.within):
                del self._pending[key]
                self._fanout.pop(key)
                found.append(self._fanout_finding(key[1], episode, flow))
        return found

    def _remote_exec(self, flow: FlowRecord) -> list[Finding]:
        s = self._s
        recent = self._hosts.touch((flow.a_ip, flow.b_ip), list)
        recent.append(flow)
        horizon = flow.first - s.exec_window
        recent[:] = [f for f in recent[-_KEEP:] if f.last >= horizon]
        uploads = [f for f in recent if f.b_port in _SMB_PORTS and f.a_bytes >= s.upload_bytes
                   and f.a_bytes >= s.upload_ratio * f.b_bytes]
        for upload in uploads:
            others = [f for f in recent if f is not upload and abs(f.first - upload.first) <= s.exec_window]
            if others:
                return [self._exec_finding(upload, others[0])]
        return []

    def _exec_finding(self, upload: FlowRecord, other: FlowRecord) -> Finding:
        client, host = upload.a_ip, upload.b_ip
        what = "RPC (135)" if other.b_port == _RPC else f"another SMB session ({other.b_port})"
        gap = other.first - upload.first
        summary = (f"{describe(self._context, client)} uploaded {upload.a_bytes // 1024} KiB over SMB to "
                   f"{describe(self._context, host)}:{upload.b_port} and opened {what} to it "
                   f"{abs(gap):.0f} s {'after' if gap >= 0 else 'before'}: "
                   "the shape of PsExec-style remote execution")
        evidence = {"pattern": "remote_execution", "upload_bytes": upload.a_bytes,
                    "upload_returned_bytes": upload.b_bytes, "upload_port": upload.b_port,
                    "control_port": other.b_port, "seconds_between": round(gap, 3)}
        return make_finding(self._context, "lateral_movement", "medium", max(upload.last, other.last), client,
                            host, summary, evidence, f"lateral_movement:exec:{client}->{host}",
                            src_port=upload.a_port, dst_port=upload.b_port, proto="tcp", device=upload.a_mac)

    def _smb1_burst(self, flow: FlowRecord, smb: _Smb) -> Finding:
        span = flow.last - flow.first
        summary = (f"{describe(self._context, flow.a_ip)} pushed {flow.a_bytes // 1024} KiB in "
                   f"{flow.a_pkts} packets over SMBv1 to {describe(self._context, flow.b_ip)}:{flow.b_port}, "
                   f"which sent back only {flow.b_bytes} bytes: "
                   "an exploit-like transaction burst (EternalBlue, MS17-010)")
        evidence = {"pattern": "smb1_burst", "client_bytes": flow.a_bytes, "server_bytes": flow.b_bytes,
                    "client_packets": flow.a_pkts, "server_packets": flow.b_pkts, "seconds": round(span, 3),
                    "dialects_offered": smb.dialects}
        return make_finding(self._context, "lateral_movement", "high", flow.last, flow.a_ip, flow.b_ip,
                            summary, evidence, f"lateral_movement:smb1:{flow.a_ip}->{flow.b_ip}",
                            src_port=flow.a_port, dst_port=flow.b_port, proto="tcp", device=flow.a_mac)

    def _fanout_finding(self, service: str, episode: Episode, flow: FlowRecord) -> Finding:
        hosts = sorted(str(h) for h in episode.items())
        span = max(0.0, episode.last - episode.first)
        summary = (f"{describe(self._context, flow.a_ip)} opened {service} sessions to {len(hosts)} "
                   f"internal hosts in {seconds(span)}")
        evidence = {"pattern": "fanout", "service": service, "hosts": len(hosts), "sessions": episode.events,
                    "seconds": round(span, 3), "sample_hosts": hosts[:20], "first": episode.first,
                    "last": episode.last}
        return make_finding(self._context, "lateral_movement", "medium", episode.last, flow.a_ip, None,
                            summary, evidence, f"lateral_movement:fanout:{flow.a_ip}:{service}", proto="tcp",
                            device=flow.a_mac)
