"""Hygiene risks of one device, each explained in one sentence, and the 0-100 score they add up to.

Risks are read from the device record alone (agent.inventory builds it), so they can be recomputed
anywhere the record travels. Each risk is {"id", "summary", "weight"}; the weight (0..1) is how much
that weakness alone exposes the device. The score treats the factors as independent exposures:

    risk_score = round(100 * (1 - prod(1 - weight for each risk)))

so one weakness scores its own weight, several compound without ever passing 100, and a device
with no risk scores 0. The record's "risks" list is exactly the factors of its score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

Risk = dict[str, Any]

# Weights, one place to tune them.
CLEARTEXT_CLINICAL: Final = 0.35
CLEARTEXT_LOGIN_SUCCEEDED: Final = 0.4
CLEARTEXT_LOGIN: Final = 0.25
SMB1_NEGOTIATED: Final = 0.4
SMB1_OFFERED: Final = 0.2
TELNET_OFFERED: Final = 0.35
FTP_OFFERED: Final = 0.2
WEAK_TLS_NEGOTIATED: Final = 0.3
WEAK_TLS_OFFERED: Final = 0.15
SNMP_V1_V2C: Final = 0.2

_TLS_RANK: Final = {"SSL2.0": 0, "SSL3.0": 1, "TLS1.0": 2, "TLS1.1": 3, "TLS1.2": 4, "TLS1.3": 5}
_TLS_TEXT: Final = re.compile(r"^(SSL|TLS)V?([0-9])(?:\.?([0-9]))?$")


def assess(record: Mapping[str, Any]) -> list[Risk]:
    """The device's risks, heaviest first (ties by id)."""
    risks = [risk for check in _CHECKS if (risk := check(record)) is not None]
    return sorted(risks, key=lambda r: (-r["weight"], r["id"]))


def score(risks: list[Risk]) -> int:
    """0-100: 100 * (1 - prod(1 - weight))."""
    return round(100 * (1 - math.prod(1 - float(r["weight"]) for r in risks)))


def _risk(risk_id: str, summary: str, weight: float) -> Risk:
    return {"id": risk_id, "summary": summary, "weight": weight}


def _get(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _strings(record: Mapping[str, Any], *path: str) -> list[str]:
    value = _get(record, *path)
    return [str(v) for v in value] if isinstance(value, list) else []


def _services(record: Mapping[str, Any], kind: str, app: str | None = None) -> list[str]:
    """"proto/port" of offered or used services, optionally only those a hint named `app`."""
    entries = _get(record, "services", kind)
    return [f"{s.get('proto')}/{s.get('port')}" for s in entries or []
            if isinstance(s, dict) and (app is None or s.get("app") == app)]


def _logins(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = _get(record, "services", "cleartext_logins")
    return [e for e in entries or [] if isinstance(e, dict)]


def _cleartext_clinical(record: Mapping[str, Any]) -> Risk | None:
    parts = []
    hl7, dicom = _get(record, "clinical", "hl7"), _get(record, "clinical", "dicom")
    if hl7:
        ports = sorted(set(_services(record, "offered", "hl7") + _services(record, "used", "hl7")))
        types = sorted(set(_strings(record, "clinical", "hl7", "sent") + _strings(record, "clinical", "hl7",
                                                                                  "received")))
        parts.append(f"HL7 v2 ({', '.join(types) or 'messages'}{' on ' + ', '.join(ports) if ports else ''})")
    if dicom:
        services = sorted(set(_strings(record, "clinical", "dicom", "services_used")
                              + _strings(record, "clinical", "dicom", "services_provided")))
        parts.append(f"DICOM ({', '.join(services) or 'associations'})")
    if not parts:
        return None
    return _risk("cleartext_clinical_protocol",
                 f"Exchanges {' and '.join(parts)} without TLS: patient data is readable on the network.",
                 CLEARTEXT_CLINICAL)


def _cleartext_login(record: Mapping[str, Any]) -> Risk | None:
    entries = [e for e in _logins(record) if e.get("protocol") != "snmp"]
    if not entries:
        return None
    succeeded = any(int(e.get("success") or 0) > 0 for e in entries)
    seen = "; ".join(f"{e.get('protocol')} as {e.get('as')} ({e.get('success', 0)} succeeded, "
                     f"{e.get('failure', 0)} failed, {e.get('unknown', 0)} unknown)" for e in entries)
    return _risk("cleartext_login", f"Logs in or accepts logins with cleartext credentials: {seen}.",
                 CLEARTEXT_LOGIN_SUCCEEDED if succeeded else CLEARTEXT_LOGIN)


def _smb1(record: Mapping[str, Any]) -> Risk | None:
    flags = _strings(record, "software", "smb1")
    if "negotiated" in flags:
        return _risk("smbv1", "Negotiated SMBv1, the protocol EternalBlue/WannaCry exploit.",
                     SMB1_NEGOTIATED)
    if "offered" in flags:
        return _risk("smbv1", "Offers SMBv1 when connecting to file servers (downgrade possible).",
                     SMB1_OFFERED)
    return None


def _served(record: Mapping[str, Any], app: str, port: int) -> list[str]:
    """Evidence that the device offers a service: the well-known port, a hint's label, or logins to it."""
    evidence = sorted(set(s for s in _services(record, "offered") if s == f"tcp/{port}")
                      | set(_services(record, "offered", app)))
    if any(e.get("protocol") == app and e.get("as") == "server" for e in _logins(record)):
        evidence.append(f"{app} logins")
    if app == "ftp" and _strings(record, "software", "ftp_banner"):
        evidence.append("FTP banner")
    return evidence


def _telnet(record: Mapping[str, Any]) -> Risk | None:
    evidence = _served(record, "telnet", 23)
    if not evidence:
        return None
    return _risk("telnet_offered",
                 f"Offers a telnet service ({', '.join(evidence)}): cleartext remote shell.", TELNET_OFFERED)


def _ftp(record: Mapping[str, Any]) -> Risk | None:
    evidence = _served(record, "ftp", 21)
    if not evidence:
        return None
    return _risk("ftp_offered", f"Offers an FTP service ({', '.join(evidence)}): cleartext logins and files.",
                 FTP_OFFERED)


def _tls_version(text: str) -> str | None:
    match = _TLS_TEXT.match(text.upper().replace(" ", "").replace("_", ""))
    if match is None:
        return None
    name = f"{match[1]}{match[2]}.{match[3] or '0'}"
    return name if name in _TLS_RANK else None


def _weak(versions: list[str]) -> list[str]:
    found = {v for v in (_tls_version(t) for t in versions) if v is not None}
    return sorted((v for v in found if _TLS_RANK[v] < _TLS_RANK["TLS1.2"]), key=_TLS_RANK.__getitem__)


def _weak_tls(record: Mapping[str, Any]) -> Risk | None:
    negotiated = _weak(_strings(record, "software", "tls_negotiated"))
    if negotiated:
        return _risk("weak_tls", f"Negotiated {', '.join(negotiated)}, below TLS 1.2.", WEAK_TLS_NEGOTIATED)
    offered = _weak(_strings(record, "software", "tls_offered"))
    if offered:
        return _risk("weak_tls", f"Offers {', '.join(offered)}, below TLS 1.2, when connecting.",
                     WEAK_TLS_OFFERED)
    return None


def _snmp(record: Mapping[str, Any]) -> Risk | None:
    versions = sorted(v for v in _strings(record, "software", "snmp_versions") if v.lower() in ("v1", "v2c"))
    if not versions:
        return None
    return _risk("snmp_v1_v2c", f"Uses SNMP {'/'.join(versions)}: the community string travels in cleartext.",
                 SNMP_V1_V2C)


_CHECKS: Final[tuple[Callable[[Mapping[str, Any]], Risk | None], ...]] = (
    _cleartext_clinical, _cleartext_login, _smb1, _telnet, _ftp, _weak_tls, _snmp)
