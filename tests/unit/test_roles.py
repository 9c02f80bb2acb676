"""agent.roles: the shipped rules load, bad rules are refused with every problem, roles follow the rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError
from agent.roles import (
    REPO_RULES,
    ROLES,
    RoleRules,
    RulesError,
    classify,
    default_rules_path,
    load_rules,
    parse_rules,
)

SHIPPED = load_rules()


def _record(**parts: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"type": "device", "mac": "00:11:22:33:44:55", "ips": [], "vendor": None,
                              "hostname": None, "services": {"offered": [], "used": []}, "clinical": {},
                              "software": {}}
    record.update(parts)
    return record


def _dicom(used: list[str] | None = None, provided: list[str] | None = None) -> dict[str, Any]:
    return {"dicom": {"services_used": used or [], "services_provided": provided or []}}


def _offers(*ports: int) -> dict[str, Any]:
    return {"offered": [{"proto": "tcp", "port": p, "app": None} for p in ports], "used": []}


def test_shipped_rules_load_with_known_roles() -> None:
    """roles.toml loads, has rules, and every rule names a known role other than unknown."""
    assert SHIPPED.rules
    assert {rule.role for rule in SHIPPED.rules} <= set(ROLES) - {"unknown"}


def test_every_role_but_unknown_has_a_rule() -> None:
    """Each role the product names can be reached by at least one shipped rule."""
    assert {rule.role for rule in SHIPPED.rules} == set(ROLES) - {"unknown"}


def test_default_path_is_the_repository_file() -> None:
    """In a source tree the shipped file is found next to the package."""
    assert default_rules_path() == REPO_RULES and REPO_RULES.is_file()


def test_bad_rules_list_every_problem() -> None:
    """One refusal lists all problems, each with its dotted path."""
    document = {
        "scoring": {"min_score": -1, "speed": 3},
        "site_overrides": {"not-a-mac": "pacs", "00:11:22:33:44:55": "toaster"},
        "rule": [
            {"role": "wizard", "weight": 0, "vendor": ["x"]},
            {"role": "pacs", "weight": 2, "why": "w", "hostname": ["(unclosed"], "colour": "blue"},
            {"role": "pacs", "weight": 2, "why": "only negative", "dicom_uses_none": ["qr_*"]},
        ],
        "extra": {},
    }
    with pytest.raises(RulesError) as caught:
        parse_rules(document)
    problems = "\n".join(caught.value.problems)
    for path in ("extra:", "scoring.min_score:", "scoring.speed:", "site_overrides.not-a-mac:",
                 "site_overrides.00:11:22:33:44:55:", "rule[0].role:", "rule[0].weight:", "rule[0].why:",
                 "rule[1].hostname:", "rule[1].colour:", "rule[2]:"):
        assert path in problems
    assert len(caught.value.problems) == 11


def test_rules_error_is_a_config_error() -> None:
    """The command line refuses bad rules like any bad configuration (exit 78)."""
    assert issubclass(RulesError, ConfigError)


def test_broken_toml_is_refused(tmp_path: Path) -> None:
    """A file that is not TOML gives one problem naming the file."""
    path = tmp_path / "roles.toml"
    path.write_text("[[rule]\nrole = ", encoding="utf-8")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """An unreadable path is a RulesError, not an OSError."""
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")


def test_nothing_matching_is_unknown() -> None:
    """A device no rule fits is unknown with no confidence and no evidence."""
    assert classify(_record(), SHIPPED) == ("unknown", 0.0, [])


def test_vendor_decides_infusion_pump() -> None:
    """An infusion pump maker's OUI gives infusion_pump, the evidence naming the vendor."""
    role, confidence, evidence = classify(_record(vendor="Baxter International Inc"), SHIPPED)
    assert role == "infusion_pump" and 0 < confidence < 1
    assert evidence == ["infusion pump maker: vendor 'Baxter International Inc' (+4)"]


def test_site_override_wins() -> None:
    """A site override beats every rule, with confidence 1.0 and evidence 'site override'."""
    rules = SHIPPED.with_overrides({"00-11-22-33-44-55": "patient_monitor"})
    assert classify(_record(vendor="Baxter International Inc"), rules) == (
        "patient_monitor", 1.0, ["site override"])


def test_bad_site_override_is_refused() -> None:
    """Overrides from the agent configuration are validated too."""
    with pytest.raises(RulesError, match="unknown role"):
        SHIPPED.with_overrides({"00:11:22:33:44:55": "toaster"})


def test_storage_scu_only_is_imaging_modality() -> None:
    """Sending images without query/retrieve or storing for others is a modality."""
    role, _, evidence = classify(_record(clinical=_dicom(used=["storage:ct", "verification"])), SHIPPED)
    assert role == "imaging_modality"
    assert evidence[0].startswith("sends DICOM images but neither queries nor stores for others")


def test_storage_and_query_retrieve_scp_is_pacs() -> None:
    """Accepting storage and query/retrieve is a PACS."""
    record = _record(clinical=_dicom(provided=["qr_find", "qr_move", "storage:ct", "storage:mr"]))
    assert classify(record, SHIPPED)[0] == "pacs"


def test_query_retrieve_scu_is_dicom_workstation() -> None:
    """Querying and retrieving studies is a reading workstation."""
    record = _record(clinical=_dicom(used=["qr_find", "qr_move"], provided=["storage:ct"]))
    assert classify(record, SHIPPED)[0] == "dicom_workstation"


def test_hl7_receiver_of_several_senders_is_engine() -> None:
    """Receiving HL7 from several senders and acknowledging is an interface engine, with high confidence."""
    hl7 = {"received": ["ADT^A01", "ORU^R01"], "sent": ["ACK"], "acks_sent": ["AA"],
           "senders": ["10.0.0.1", "10.0.0.2"]}
    role, confidence, _ = classify(_record(clinical={"hl7": hl7}), SHIPPED)
    assert role == "hl7_engine" and confidence == 1.0


def test_oru_only_sender_is_patient_monitor() -> None:
    """A device that sends only observation results is a monitor."""
    hl7 = {"sent": ["ORU^R01"], "received": ["ACK"]}
    assert classify(_record(clinical={"hl7": hl7}), SHIPPED)[0] == "patient_monitor"


def test_adt_sender_is_not_patient_monitor() -> None:
    """Sending ADT as well as ORU breaks the ORU-only rule."""
    hl7 = {"sent": ["ADT^A01", "ORU^R01"]}
    assert classify(_record(clinical={"hl7": hl7}), SHIPPED)[0] != "patient_monitor"


def test_print_ports_make_a_printer() -> None:
    """Offering raw JetDirect printing is a printer."""
    assert classify(_record(services=_offers(9100)), SHIPPED)[0] == "printer"


def test_bridge_capability_is_network_infrastructure() -> None:
    """LLDP/CDP bridge or router capability is network infrastructure."""
    record = _record(software={"capabilities": ["bridge", "router"]})
    assert classify(record, SHIPPED)[0] == "network_infrastructure"


def test_hostname_pattern_counts() -> None:
    """Hostname regexes are searched case-insensitively."""
    assert classify(_record(hostname="ICU-Pump-07"), SHIPPED)[0] == "infusion_pump"


def test_competing_roles_dilute_confidence() -> None:
    """confidence = min(1, best/saturation) * best/total."""
    rules = parse_rules({"scoring": {"saturation": 10, "min_score": 1}, "rule": [
        {"role": "printer", "weight": 6, "why": "p", "offers": ["tcp/9100"]},
        {"role": "iot_other", "weight": 2, "why": "i", "vendor": ["Acme"]}]})
    record = _record(vendor="Acme Ltd", services=_offers(9100))
    assert classify(record, rules) == ("printer", round(0.6 * 6 / 8, 2), ["p: offers tcp/9100 (+6)"])


def test_score_below_minimum_stays_unknown() -> None:
    """A weak lone hint under min_score does not name a role."""
    rules = parse_rules({"scoring": {"min_score": 3}, "rule": [
        {"role": "iot_other", "weight": 2, "why": "i", "vendor": ["Acme"]}]})
    assert classify(_record(vendor="Acme Ltd"), rules)[0] == "unknown"


def test_ties_go_to_the_earlier_role() -> None:
    """Equal scores resolve by the order of ROLES, so the result is deterministic."""
    rules = parse_rules({"rule": [
        {"role": "printer", "weight": 2, "why": "p", "vendor": ["Acme"]},
        {"role": "pacs", "weight": 2, "why": "q", "vendor": ["Acme"]}]})
    assert classify(_record(vendor="Acme"), rules)[0] == "pacs"


def test_all_conditions_of_a_rule_must_hold() -> None:
    """A rule with two conditions does not fire on one."""
    rules = RoleRules(parse_rules({"rule": [
        {"role": "printer", "weight": 5, "why": "p", "vendor": ["Acme"], "offers": ["tcp/9100"]}]}).rules)
    assert classify(_record(vendor="Acme"), rules)[0] == "unknown"
