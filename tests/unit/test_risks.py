"""agent.risks: each hygiene weakness is found and explained, and the score follows its formula."""

from __future__ import annotations

from typing import Any

from agent import risks
from agent.risks import assess, score


def _record(**parts: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"type": "device", "mac": "00:11:22:33:44:55",
                              "services": {"offered": [], "used": []}, "clinical": {}, "software": {}}
    record.update(parts)
    return record


def _ids(record: dict[str, Any]) -> list[str]:
    return [r["id"] for r in assess(record)]


def _login(protocol: str, side: str, success: int = 0, failure: int = 0) -> dict[str, Any]:
    return {"offered": [], "used": [], "cleartext_logins": [
        {"protocol": protocol, "as": side, "success": success, "failure": failure, "unknown": 0}]}


def test_clean_device_has_no_risk() -> None:
    """No weakness, no risk, score 0."""
    assert assess(_record()) == [] and score([]) == 0


def test_score_compounds_weights() -> None:
    """risk_score = round(100 * (1 - prod(1 - weight)))."""
    factors = [{"id": "a", "summary": "", "weight": 0.35}, {"id": "b", "summary": "", "weight": 0.25}]
    assert score(factors) == round(100 * (1 - 0.65 * 0.75))


def test_score_never_passes_100() -> None:
    """Every risk at once still scores at most 100."""
    record = _record(
        clinical={"hl7": {"sent": ["ADT^A01"]}},
        services={"offered": [{"proto": "tcp", "port": 23, "app": None},
                              {"proto": "tcp", "port": 21, "app": None}], "used": [],
                  "cleartext_logins": _login("ftp", "server", success=1)["cleartext_logins"]},
        software={"smb1": ["negotiated"], "tls_negotiated": ["TLS1.0"], "snmp_versions": ["v1"]})
    found = assess(record)
    assert len(found) == 7 and 0 < score(found) <= 100


def test_hl7_in_cleartext_is_a_risk() -> None:
    """HL7 seen on the wire means it travelled without TLS; the summary names types and port."""
    record = _record(clinical={"hl7": {"sent": ["ORU^R01"]}},
                     services={"offered": [], "used": [{"proto": "tcp", "port": 6661, "app": "hl7"}]})
    [risk] = assess(record)
    assert risk["id"] == "cleartext_clinical_protocol" and risk["weight"] == risks.CLEARTEXT_CLINICAL
    assert "ORU^R01 on tcp/6661" in risk["summary"]


def test_dicom_in_cleartext_is_a_risk() -> None:
    """A DICOM association seen in cleartext is the same risk, naming the services."""
    [risk] = assess(_record(clinical={"dicom": {"services_used": ["storage:ct"]}}))
    assert risk["id"] == "cleartext_clinical_protocol" and "DICOM (storage:ct)" in risk["summary"]


def test_successful_cleartext_login_weighs_more() -> None:
    """A login that succeeded exposed a working credential."""
    [failed] = assess(_record(services=_login("pop3", "server", failure=30)))
    [succeeded] = assess(_record(services=_login("telnet", "client", success=1)))
    assert failed["id"] == succeeded["id"] == "cleartext_login"
    assert succeeded["weight"] > failed["weight"]
    assert "pop3 as server (0 succeeded, 30 failed, 0 unknown)" in failed["summary"]


def test_ftp_server_logins_show_the_service() -> None:
    """Logins accepted by an FTP server are both a login risk and an FTP service offered."""
    assert _ids(_record(services=_login("ftp", "server", failure=3))) == ["cleartext_login", "ftp_offered"]


def test_snmp_community_is_its_own_risk() -> None:
    """SNMP v1/v2c is reported as such, not again as a cleartext login."""
    record = _record(services=_login("snmp", "server", success=1), software={"snmp_versions": ["v2c"]})
    assert _ids(record) == ["snmp_v1_v2c"]


def test_smbv1_negotiated_outweighs_offered() -> None:
    """Negotiated SMBv1 is worse than a client merely offering it."""
    [negotiated] = assess(_record(software={"smb1": ["negotiated", "offered"]}))
    [offered] = assess(_record(software={"smb1": ["offered"]}))
    assert negotiated["id"] == offered["id"] == "smbv1" and negotiated["weight"] > offered["weight"]


def test_telnet_port_offered_is_a_risk() -> None:
    """An answered tcp/23 is a telnet service even without a hint."""
    record = _record(services={"offered": [{"proto": "tcp", "port": 23, "app": None}], "used": []})
    assert _ids(record) == ["telnet_offered"]


def test_ftp_banner_is_an_ftp_service() -> None:
    """An FTP banner on a non-standard port still shows an FTP service."""
    assert _ids(_record(software={"ftp_banner": ["vsFTPd 3.0.3"]})) == ["ftp_offered"]


def test_ftp_client_is_not_an_ftp_service() -> None:
    """Using FTP is a login risk, not a service offered."""
    assert "ftp_offered" not in _ids(_record(services=_login("ftp", "client", failure=1)))


def test_weak_tls_negotiated() -> None:
    """A TLS 1.0 session is a risk for both ends."""
    [risk] = assess(_record(software={"tls_negotiated": ["TLS1.0", "TLS1.2"]}))
    assert risk["id"] == "weak_tls" and risk["weight"] == risks.WEAK_TLS_NEGOTIATED
    assert "TLS1.0" in risk["summary"]


def test_weak_tls_offered_only_weighs_less() -> None:
    """A client offering TLS 1.1 that ended on 1.3 carries the lighter risk."""
    [risk] = assess(_record(software={"tls_offered": ["TLS1.3", "TLS1.1"], "tls_negotiated": ["TLS1.3"]}))
    assert risk["weight"] == risks.WEAK_TLS_OFFERED


def test_modern_tls_is_no_risk() -> None:
    """TLS 1.2 and 1.3 are fine."""
    assert assess(_record(software={"tls_offered": ["TLS1.3", "TLS1.2"], "tls_negotiated": ["TLS1.3"]})) == []


def test_risks_are_heaviest_first() -> None:
    """Factors are listed by weight, then id, so records are stable."""
    record = _record(software={"smb1": ["negotiated"], "snmp_versions": ["v1"], "tls_offered": ["SSL3.0"]})
    weights = [r["weight"] for r in assess(record)]
    assert weights == sorted(weights, reverse=True) and len(weights) == 3
