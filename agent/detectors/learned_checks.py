"""The checks behind the learned detector, one function per finding kind, plain data in and out.

Each check compares one record with a device's Profile (agent.baseline) and returns a Finding or None.
Summaries are one sentence naming the device by clinical role, vendor and address; `evidence` holds the
numbers; `key` is stable and documented in agent.detectors.learned so that a reviewer can approve it.

Clinical expectations by role (used when a device's own baseline has no such traffic): infusion pumps,
patient monitors, printers, IoT devices and network gear never use DICOM; printers, IoT devices and
network gear never send HL7. Those are conservative: a device whose baseline shows the protocol is fine.
"""

from __future__ import annotations

from typing import Any, Final

from agent.baseline import Profile
from agent.baseline_stats import Robust
from agent.records import Finding, ProtoHint

ROLE_NAMES: Final = {
    "imaging_modality": ("Imaging modality", "imaging modalities"), "pacs": ("PACS", "PACS servers"),
    "dicom_workstation": ("Reading workstation", "reading workstations"),
    "hl7_engine": ("HL7 interface engine", "HL7 engines"),
    "infusion_pump": ("Infusion pump", "infusion pumps"),
    "patient_monitor": ("Patient monitor", "patient monitors"),
    "clinical_workstation": ("Clinical workstation", "clinical workstations"),
    "network_infrastructure": ("Network device", "network devices"), "printer": ("Printer", "printers"),
    "iot_other": ("IoT device", "IoT devices"), "unknown": ("Unidentified device", "unidentified devices")}
MEDICAL: Final = frozenset({"imaging_modality", "pacs", "dicom_workstation", "hl7_engine", "infusion_pump",
                            "patient_monitor"})
NEVER_DICOM: Final = frozenset({"infusion_pump", "patient_monitor", "printer", "iot_other",
                                "network_infrastructure"})
NEVER_HL7: Final = frozenset({"printer", "iot_other", "network_infrastructure"})


def describe(profile: Profile | None, ip: str | None) -> str:
    """'Infusion pump (Baxter) 10.1.0.31'; an address alone for what the baseline does not know."""
    if profile is None:
        return f"host {ip}" if ip else "an unknown host"
    name = ROLE_NAMES.get(profile.role, ROLE_NAMES["unknown"])[0]
    vendor = (profile.vendor or "").split(" ")[0].strip(",")
    label = f"{name} ({vendor})" if vendor and not vendor.startswith("(") else name
    if profile.hostname:
        label += f" {profile.hostname}"
    return f"{label} {ip}" if ip else label


def megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


Where = tuple[str | None, int | None, str | None, int | None, str | int | None]  # src/dst ip+port, proto


def finding(kind: str, severity: str, ts: float, src: Profile | None, dst: Profile | None, where: Where,
            summary: str, evidence: dict[str, Any], key: str) -> Finding:
    src_ip, src_port, dst_ip, dst_port, proto = where
    return Finding(kind, severity, ts, src_ip, src_port, dst_ip, dst_port, proto,
                   None if src is None or src.key.startswith("ip:") else src.key,
                   None if src is None else src.role, None if dst is None else dst.role,
                   summary, evidence, key)


def volume_threshold(stats: Robust, mad_factor: float, floor: int, headroom: float) -> float:
    """Bytes in one interval above which sending is anomalous: all three bounds must be exceeded."""
    return max(float(floor), stats.median + mad_factor * stats.mad, headroom * stats.largest)


def volume_summary(src: Profile, src_ip: str, peer: str, sent: int, stats: Robust, interval: float) -> str:
    ratio = sent / stats.median if stats.median else float("inf")
    times = f"{ratio:.0f}x its usual {megabytes(stats.median)}" if ratio != float("inf") else "far above"
    span = f"{interval / 3600:g} h" if interval >= 3600 else f"{interval:g} s"
    to = "all its peers together" if peer == "*" else peer
    return (f"{describe(src, src_ip)} sent {megabytes(sent)} to {to} within one {span} interval, {times} "
            f"(median of {stats.n} learned intervals, largest {megabytes(stats.largest)}): "
            f"a possible data exfiltration.")


def dicom_misuse(hint: ProtoHint, src: Profile | None, dst: Profile | None,
                 src_known: bool) -> Finding | None:
    """A DICOM association request that the sender's role or the receiver's baseline does not explain."""
    fields = hint.fields
    listed = fields.get("services")
    services = [str(s) for s in listed] if isinstance(listed, list) else []
    calling, called = str(fields.get("calling_ae", "?")), str(fields.get("called_ae", "?"))
    reasons: list[tuple[str, str, str]] = []  # (code, severity, clause)
    if src is not None and src.role in NEVER_DICOM and not src.dicom_scu:
        reasons.append(("role", "high", f"{ROLE_NAMES[src.role][1]} never use DICOM"))
    if not src_known:
        reasons.append(("unknown_sender", "high", "the sender is not in the learned baseline"))
    elif dst is not None and dst.dicom_callers and calling not in dst.dicom_callers \
            and "dicom_callers" not in dst.saturated:
        reasons.append(("unknown_sender", "medium", f"AE title {calling} never called it while learning"))
    if dst is not None and dst.dicom_ports and str(hint.dst_port) not in dst.dicom_ports \
            and "dicom_ports" not in dst.saturated:
        ports = ", ".join(sorted(dst.dicom_ports))
        reasons.append(("port", "medium", f"it served DICOM only on port {ports} while learning"))
    if not reasons:
        return None
    severity = "high" if any(r[1] == "high" for r in reasons) else "medium"
    what = "/".join(services) or "DICOM"
    summary = (f"{describe(src, hint.src_ip)} requested a DICOM {what} association (AE {calling} -> "
               f"{called}) to {describe(dst, hint.dst_ip)}; {'; '.join(r[2] for r in reasons)}.")
    evidence = {"reasons": [r[0] for r in reasons], "services": services, "calling_ae": calling,
                "called_ae": called, "learned_callers": sorted(dst.dicom_callers) if dst else [],
                "learned_ports": sorted(dst.dicom_ports) if dst else []}
    key = f"clinical_protocol_misuse:{_who(src, hint.src_ip)}:dicom:{hint.dst_ip}"
    return finding("clinical_protocol_misuse", severity, hint.ts, src, dst, _where(hint), summary, evidence,
                   key)


def hl7_misuse(hint: ProtoHint, src: Profile | None, dst: Profile | None,
               src_known: bool) -> Finding | None:
    """An HL7 message (not an ACK) from a sender the role or the receiver's baseline does not explain."""
    message = "^".join(str(hint.fields.get("message_type", "")).split("^")[:2])
    if not message or message.startswith("ACK"):
        return None
    port = hint.dst_port if hint.initiator else hint.src_port
    reasons: list[tuple[str, str, str]] = []
    if src is not None and src.role in NEVER_HL7 and not src.hl7_sent:
        reasons.append(("role", "high", f"{ROLE_NAMES[src.role][1]} never send HL7"))
    if not src_known:
        reasons.append(("unknown_sender", "high", "the sender is not in the learned baseline"))
    elif dst is not None and dst.hl7_partners and (hint.src_ip or "?") not in dst.hl7_partners \
            and "hl7_partners" not in dst.saturated:
        reasons.append(("unknown_sender", "medium", "it never exchanged HL7 with this sender while learning"))
    if dst is not None and dst.hl7_ports and str(port) not in dst.hl7_ports \
            and "hl7_ports" not in dst.saturated:
        ports = ", ".join(sorted(dst.hl7_ports))
        reasons.append(("port", "medium", f"it received HL7 only on port {ports} while learning"))
    if not reasons:
        return None
    severity = "high" if any(r[1] == "high" for r in reasons) else "medium"
    summary = (f"{describe(src, hint.src_ip)} sent an HL7 {message} message to {describe(dst, hint.dst_ip)}; "
               f"{'; '.join(r[2] for r in reasons)}.")
    evidence = {"reasons": [r[0] for r in reasons], "message_type": message, "port": port,
                "learned_partners": sorted(dst.hl7_partners) if dst else [],
                "learned_ports": sorted(dst.hl7_ports) if dst else []}
    key = f"clinical_protocol_misuse:{_who(src, hint.src_ip)}:hl7:{hint.dst_ip}"
    return finding("clinical_protocol_misuse", severity, hint.ts, src, dst, _where(hint), summary, evidence,
                   key)


def _where(hint: ProtoHint) -> Where:
    return (hint.src_ip, hint.src_port, hint.dst_ip, hint.dst_port, hint.proto)


def _who(profile: Profile | None, ip: str | None) -> str:
    return profile.key if profile is not None else f"ip:{ip}"
