"""The learned baseline: what each ward device normally does, per device and per clinical role.

A device is keyed like the inventory keys it (its MAC, or "ip:<address>" without one) and only devices
with a private address get a profile (agent.baseline_stats says what private means). For each device:
its peers (by address) with the services it used toward each and the bytes it sent per interval; the
services it offered and used ("tcp/11112"), named by the hinters where they could; DICOM use (services
requested as SCU and accepted as SCP, the AE titles it called and that called it, the ports it served
DICOM on); HL7 use (message types sent and received, partners, ports); external destinations; its total
bytes sent per interval. Role, vendor and hostname come from the inventory's device records.

Learning: `observe_flow` / `observe_hint` add what a record shows. A flow side counts only when it
answered or was answered (a SYN into the void is no peer and no service). The sensor learns while
`learning(now)`: until `learn_until` (set from the first record) or until `complete` is set (offline
learning ends with the capture). A device first seen later learns alone until its own `learn_until`.

Everything is bounded (max_devices, max_peers, max_services, max_values, max_samples); what does not fit
is dropped, never an older entry replaced, and counted in `counters` ("baseline.<what>_dropped").

Saved as JSON {"format": "ward-baseline", "version": 1, ...}: temp file in the same directory, fsync,
rename, so a crash leaves the old or the new file, never half of one. Loading checks everything and
raises BaselineError (a ValueError) naming the first bad path.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.baseline_stats import VolumeStats, address_class, ints, service_label, strings
from agent.records import Counters, FlowRecord, ProtoHint

FORMAT: Final = "ward-baseline"
VERSION: Final = 1
_GROUP: Final = frozenset("13579bdf")
_PER_ROLE: Final = ("offered", "used", "dicom_scu", "dicom_scp", "dicom_called", "dicom_callers",
                     "dicom_ports", "hl7_sent", "hl7_received", "hl7_partners", "hl7_ports")
_SETS: Final = ("saturated", "offered", "used", "external",  # saturated: sets that hit their bound
                "dicom_scu", "dicom_scp", "dicom_called", "dicom_callers",
                "dicom_ports", "hl7_sent", "hl7_received", "hl7_partners", "hl7_ports")


class BaselineError(ValueError):
    """A baseline file that cannot be used."""


@dataclass(slots=True)
class Peer:
    services: set[str] = field(default_factory=set)  # what this device used toward the peer
    volume: VolumeStats = field(default_factory=lambda: VolumeStats([]))


@dataclass(slots=True)
class Profile:
    """One device's learned behaviour; sets of labels so that membership tests are cheap."""

    key: str
    first_seen: float
    learn_until: float = 0.0  # 0: learned in the sensor's period
    role: str = "unknown"
    vendor: str | None = None
    hostname: str | None = None
    ips: set[str] = field(default_factory=set)
    peers: dict[str, Peer] = field(default_factory=dict)
    apps: dict[str, str] = field(default_factory=dict)
    total: VolumeStats = field(default_factory=lambda: VolumeStats([]))
    offered: set[str] = field(default_factory=set)
    used: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)
    dicom_scu: set[str] = field(default_factory=set)
    dicom_scp: set[str] = field(default_factory=set)
    dicom_called: set[str] = field(default_factory=set)
    dicom_callers: set[str] = field(default_factory=set)
    dicom_ports: set[str] = field(default_factory=set)
    hl7_sent: set[str] = field(default_factory=set)
    hl7_received: set[str] = field(default_factory=set)
    hl7_partners: set[str] = field(default_factory=set)
    hl7_ports: set[str] = field(default_factory=set)
    saturated: set[str] = field(default_factory=set)  # what hit its bound: "not learned" proves nothing there


class Baseline:
    """Device profiles plus the learning clock; mutated only through observe_* and on_device."""

    def __init__(self, interval: float = 3600.0, sensor_learning: float = 7 * 86400.0,
                 device_learning: float = 86400.0, *, max_devices: int = 4096, max_peers: int = 256,
                 max_services: int = 64, max_values: int = 64, max_samples: int = 336,
                 local_networks: tuple[str, ...] = ()) -> None:
        self.interval, self.sensor_learning, self.device_learning = interval, sensor_learning, device_learning
        self.max_devices, self.max_peers, self.max_services = max_devices, max_peers, max_services
        self.max_values, self.max_samples = max_values, max_samples
        self.local_networks = local_networks
        self.learn_start: float | None = None
        self.learn_until: float | None = None
        self.complete = False
        self.devices: dict[str, Profile] = {}
        self.counters = Counters()
        self._classes: dict[str, str] = {}

    # --- the learning clock -----------------------------------------------------------------------

    def learning(self, now: float) -> bool:
        """Whether the sensor as a whole is still learning at packet time `now` (starts the clock)."""
        if self.complete:
            return False
        if self.learn_start is None:
            self.learn_start, self.learn_until = now, now + self.sensor_learning
        assert self.learn_until is not None
        if now >= self.learn_until:
            self.finish()
            return False
        return True

    def finish(self) -> None:
        """End the sensor's learning period: from now on devices not yet profiled learn on their own."""
        self.complete = True
        for profile in self.devices.values():
            profile.total.close(self.max_samples)
            for peer in profile.peers.values():
                peer.volume.close(self.max_samples)

    def classify(self, ip: str) -> str:
        """address_class, memoised per address (bounded): it runs for both sides of every flow."""
        known = self._classes.get(ip)
        if known is None:
            if len(self._classes) >= 65536:
                self._classes.clear()
            known = self._classes[ip] = address_class(ip, self.local_networks)
        return known

    def is_private(self, ip: str) -> bool:
        return self.classify(ip) == "private"

    def key_of(self, mac: str | None, ip: str | None) -> str | None:
        """The profile key of a flow side: its MAC (not a group MAC), or "ip:<addr>"; None if not local."""
        if ip is None or (self._classes.get(ip) or self.classify(ip)) != "private":
            return None
        if mac is None:
            return "ip:" + ip
        if mac[1:2] in _GROUP or mac == "00:00:00:00:00:00":
            return None
        return mac

    def profile(self, key: str, ts: float, learn_until: float = 0.0) -> Profile | None:
        """The profile for key, created (with its own learning window) when there is room."""
        profile = self.devices.get(key)
        if profile is None:
            if len(self.devices) >= self.max_devices:
                self.counters.add("baseline.devices_dropped")
                return None
            profile = self.devices[key] = Profile(key, ts, learn_until)
        return profile

    # --- learning ---------------------------------------------------------------------------------

    def add(self, profile: Profile, what: str, value: str, limit: int = 0) -> bool:
        """Add a label to one of the profile's sets; False (and counted) when the set is full."""
        values: set[str] = getattr(profile, what)
        if value in values:
            return True
        if len(values) >= (limit or self.max_values):
            self.counters.add(f"baseline.{what}_dropped")
            profile.saturated.add(what)
            return False
        values.add(value)
        return True

    def observe_flow(self, flow: FlowRecord, a: Profile | None, b: Profile | None) -> None:
        """What one answered flow teaches about its initiator `a` and responder `b` (either may be None)."""
        if not flow.b_pkts or flow.proto not in ("tcp", "udp"):
            return
        if flow.proto == "tcp" and "R" in flow.b_flags and "S" not in flow.b_flags:
            return
        label = service_label(flow.proto, flow.b_port)
        slot = int(flow.last // self.interval)
        for side, own_ip, peer_ip, nbytes, what in ((a, flow.a_ip, flow.b_ip, flow.a_bytes, "used"),
                                                    (b, flow.b_ip, flow.a_ip, flow.b_bytes, "offered")):
            if side is None:
                continue
            self.add(side, "ips", own_ip)
            self.add(side, what, label, self.max_services)
            side.total.add(slot, nbytes, self.max_samples)
            cls = self.classify(peer_ip)
            if cls == "other":
                continue
            if cls == "external":
                self.add(side, "external", peer_ip)
            peer = side.peers.get(peer_ip)
            if peer is None:
                if len(side.peers) >= self.max_peers:
                    self.counters.add("baseline.peers_dropped")
                    side.saturated.add("peers")
                    continue
                peer = side.peers[peer_ip] = Peer()
            if what == "used" and len(peer.services) < self.max_services:
                peer.services.add(label)
            peer.volume.add(slot, nbytes, self.max_samples)

    def observe_hint(self, hint: ProtoHint, src: Profile | None, dst: Profile | None) -> None:
        """DICOM associations and HL7 messages: who uses which clinical service with whom, on which port."""
        fields = hint.fields
        port = hint.dst_port if hint.initiator else hint.src_port
        if hint.proto in ("tcp", "udp") and port:
            for side in (src, dst):
                if side is not None and len(side.apps) < self.max_services:
                    side.apps.setdefault(service_label(hint.proto, port), hint.app)
        kind = fields.get("dicom")
        if kind == "associate_rq":
            for service in _texts(fields.get("services")):
                if src is not None:
                    self.add(src, "dicom_scu", service)
            if src is not None:
                self.add(src, "dicom_called", str(fields.get("called_ae", "")))
            if dst is not None:
                self.add(dst, "dicom_callers", str(fields.get("calling_ae", "")))
                self.add(dst, "dicom_ports", str(hint.dst_port))
        elif kind == "associate_ac" and src is not None:
            for service in _texts(fields.get("accepted_services")):
                self.add(src, "dicom_scp", service)
        elif hint.app == "hl7":
            message = "^".join(str(fields.get("message_type", "")).split("^")[:2])
            if not message or message.startswith("ACK"):
                return
            if src is not None:
                self.add(src, "hl7_sent", message)
                self.add(src, "hl7_partners", hint.dst_ip or "?")
            if dst is not None:
                self.add(dst, "hl7_received", message)
                self.add(dst, "hl7_partners", hint.src_ip or "?")
                self.add(dst, "hl7_ports", str(port))

    def on_device(self, device: dict[str, Any]) -> None:
        """Take role, vendor, hostname and addresses from an inventory record of a profiled device."""
        profile = self.devices.get(str(device.get("mac")))
        if profile is None:
            return
        role = device.get("role")
        if isinstance(role, str) and role != "unknown":
            profile.role = role
        profile.vendor = device.get("vendor") or profile.vendor
        profile.hostname = device.get("hostname") or profile.hostname
        for entry in device.get("ips", [])[: self.max_values]:
            if isinstance(entry, dict) and isinstance(entry.get("ip"), str):
                self.add(profile, "ips", entry["ip"])

    def roles(self) -> dict[str, dict[str, list[str]]]:
        """Per clinical role: the union of its devices' services and clinical protocol use."""
        merged: dict[str, dict[str, set[str]]] = {}
        for profile in self.devices.values():
            role = merged.setdefault(profile.role, {n: set() for n in _PER_ROLE})
            for name in role:
                role[name] |= getattr(profile, name)
        return {role: {k: sorted(v) for k, v in sets.items()} for role, sets in sorted(merged.items())}

    # --- files ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "interval": self.interval,
            "sensor_learning": self.sensor_learning, "device_learning": self.device_learning,
            "learn_start": self.learn_start, "learn_until": self.learn_until, "complete": self.complete,
            "local_networks": list(self.local_networks),
            "counters": dict(sorted(self.counters.values.items())),
            "devices": {key: _profile_json(p) for key, p in sorted(self.devices.items())},
            "roles": self.roles(),
        }

    def save(self, path: str | Path) -> None:
        """Write atomically: a temp file next to the target, fsync, rename, fsync the directory."""
        target = Path(path)
        text = json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n"
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        directory = os.open(target.parent or Path("."), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BaselineError(f"{path}: cannot read baseline: {exc}") from exc
        return cls.from_json(document, str(path))

    @classmethod
    def from_json(cls, document: Any, where: str = "baseline") -> Baseline:
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BaselineError(f"{where}: not a ward baseline")
        if document.get("version") != VERSION:
            raise BaselineError(f"{where}.version: {document.get('version')!r} is not supported "
                                f"(this agent reads version {VERSION})")
        path = where
        try:
            path = f"{where}.interval"
            baseline = cls(float(document["interval"]), float(document["sensor_learning"]),
                           float(document["device_learning"]),
                           local_networks=tuple(sorted(strings(document.get("local_networks", [])))))
            if baseline.interval <= 0:
                raise ValueError("must be positive")
            baseline.learn_start = _optional_float(document.get("learn_start"))
            baseline.learn_until = _optional_float(document.get("learn_until"))
            baseline.complete = document.get("complete") is True
            for key, value in document["devices"].items():
                path = f"{where}.devices.{key}"
                if len(baseline.devices) < baseline.max_devices:
                    baseline.devices[key] = _profile_from(key, value, baseline.max_samples)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BaselineError(f"{path}: {exc}") from exc
        return baseline


def _texts(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _profile_json(profile: Profile) -> dict[str, Any]:
    record: dict[str, Any] = {
        "first_seen": profile.first_seen, "learn_until": profile.learn_until, "role": profile.role,
        "vendor": profile.vendor, "hostname": profile.hostname, "ips": sorted(profile.ips),
        "apps": dict(sorted(profile.apps.items())), "total": profile.total.to_json(),
        "peers": {ip: {"services": sorted(p.services), "volume": p.volume.to_json()}
                  for ip, p in sorted(profile.peers.items())},
    }
    for name in _SETS:
        record[name] = sorted(getattr(profile, name))
    return record


def _profile_from(key: str, value: Any, max_samples: int) -> Profile:
    profile = Profile(key, float(value["first_seen"]), float(value["learn_until"]), str(value["role"]),
                      value.get("vendor"), value.get("hostname"), strings(value["ips"]))
    profile.apps = {str(k): str(v) for k, v in dict(value["apps"]).items()}
    profile.total = VolumeStats(ints(value["total"], max_samples))
    for ip, peer in dict(value["peers"]).items():
        volume = VolumeStats(ints(peer["volume"], max_samples))
        profile.peers[str(ip)] = Peer(strings(peer["services"]), volume)
    for name in _SETS:
        setattr(profile, name, strings(value[name]))
    return profile
