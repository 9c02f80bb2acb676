"""policy_violation: a finished flow that the segmentation policy (agent.policy) does not allow.

Only flows the responder answered are judged by default (a SYN into the void moved nothing, and scans
have their own detectors); `unanswered = true` judges every flow. Roles for role-based zones come from
the inventory (the detector context) at the time the flow ends.

Key: policy_violation:<device>:<responder ip>:<proto>/<port>, with <device> the initiator's MAC or
ip:<address>; the same key is raised at most once per `repeat` seconds of packet time here, and the
engine's suppression window applies on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.baseline_stats import address_class
from agent.detectors.base import Context, Device
from agent.detectors.learned_checks import ROLE_NAMES
from agent.policy import Policy, load
from agent.records import Finding, FlowRecord, ProtoHint

NAME: Final = "policy_violation"
_MAX_KEYS: Final = 65536
_MEDICAL: Final = frozenset({"imaging_modality", "pacs", "dicom_workstation", "hl7_engine", "infusion_pump",
                             "patient_monitor"})


@dataclass(frozen=True, slots=True)
class Settings:
    policy: str = ""  # the policy TOML; required
    unanswered: bool = False
    repeat: float = 3600.0

    def problems(self) -> list[str]:
        found = [] if self.policy else ["policy: a policy file is required"]
        if not 0 <= self.repeat <= 7 * 86400:
            found.append(f"repeat: must be between 0 and 604800, got {self.repeat!r}")
        return found


def describe(device: Device | None, ip: str) -> str:
    if device is None:
        return f"host {ip}"
    name = ROLE_NAMES.get(str(device.get("role")), ROLE_NAMES["unknown"])[0]
    vendor = str(device.get("vendor") or "").split(" ")[0].strip(",")
    return f"{name} ({vendor}) {ip}" if vendor and not vendor.startswith("(") else f"{name} {ip}"


class PolicyDetector:
    takes_devices: Final = False  # the engine hands this detector no device deltas

    def __init__(self, settings: Settings, context: Context, policy: Policy) -> None:
        self.settings, self.context, self.policy = settings, context, policy
        self._raised: dict[str, float] = {}

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        if not flow.b_pkts and not self.settings.unanswered:
            return []
        if flow.proto == "tcp" and "R" in flow.b_flags and "S" not in flow.b_flags \
                and not self.settings.unanswered:
            return []
        a = self._device(flow.a_mac, flow.a_ip)
        b = self._device(flow.b_mac, flow.b_ip)
        a_role = None if a is None else str(a.get("role"))
        b_role = None if b is None else str(b.get("role"))
        verdict = self.policy.evaluate(flow.a_ip, flow.b_ip, flow.proto, flow.b_port, flow.vlan, a_role,
                                       b_role)
        if verdict.allowed:
            return []
        who = flow.a_mac if flow.a_mac else f"ip:{flow.a_ip}"
        key = f"policy_violation:{who}:{flow.b_ip}:{flow.proto}/{flow.b_port}"
        last = self._raised.get(key)
        if last is not None and flow.last - last < self.settings.repeat:
            return []
        if len(self._raised) >= _MAX_KEYS:
            self._raised.clear()
        self._raised[key] = flow.last
        severity = "high" if b_role in _MEDICAL or a_role in _MEDICAL else "medium"
        summary = (f"{describe(a, flow.a_ip)} (zone {verdict.source}) reached {describe(b, flow.b_ip)} "
                   f"(zone {verdict.target}) on {flow.proto}/{flow.b_port}, which no allow rule of the "
                   f"segmentation policy permits.")
        evidence = {"from_zone": verdict.source, "to_zone": verdict.target,
                    "packets": flow.a_pkts + flow.b_pkts, "bytes": flow.a_bytes + flow.b_bytes,
                    "vlan": list(flow.vlan)}
        return [Finding("policy_violation", severity, flow.last, flow.a_ip, flow.a_port, flow.b_ip,
                        flow.b_port, flow.proto, flow.a_mac, a_role, b_role, summary, evidence, key)]

    def _device(self, mac: str | None, ip: str) -> Device | None:
        if address_class(ip, self.policy.local_networks) == "external":
            return None  # behind the gateway: whatever device the MAC is, it is not this host
        device = self.context.device(mac) if mac else None
        if device is None or ip not in [e.get("ip") for e in device.get("ips", []) if isinstance(e, dict)]:
            device = self.context.device_of_ip(ip)  # not its own address: a router's MAC carries it
        return device

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        return []

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        return []


def make(settings: Settings, context: Context) -> PolicyDetector:
    """Loads the policy file (PolicyError, a ConfigError listing every problem, when it is bad)."""
    return PolicyDetector(settings, context, load(settings.policy))
