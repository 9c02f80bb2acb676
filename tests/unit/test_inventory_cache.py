"""agent.inventory caches: role and risks assessed again only after a content change, records always fresh."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from agent.inventory import Inventory
from agent.records import FlowRecord, ProtoHint
from agent.roles import RoleRules, Rule, load_rules

SERVER = "00:0c:29:00:00:09"
CLIENT = "52:54:00:00:00:02"


def _flow(b_port: int = 104, first: float = 100.0, last: float = 101.0) -> FlowRecord:
    return FlowRecord(first, last, "tcp", "10.0.0.2", 50000, "10.0.0.9", b_port, CLIENT, SERVER, (), 4, 3,
                      400, 300, "SAF", "SAF", "fin")


def _hint(fields: dict[str, Any], app: str = "http") -> ProtoHint:
    return ProtoHint(200.0, app, "tcp", CLIENT, "10.0.0.2", 50000, SERVER, "10.0.0.9", 80, True, fields)


def _counting_rules(calls: list[str], role: str = "pacs") -> RoleRules:
    """Rules with one rule that always matches and notes each device it was asked about."""
    def check(record: Mapping[str, Any]) -> str:
        calls.append(str(record["mac"]))
        return "any device"
    return RoleRules((Rule(role, 5.0, "test rule", (check,)),))


def _vandalise(value: Any) -> None:
    """Edit every container of a record, as a careless caller might."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _vandalise(item)
        value["vandal"] = True
    elif isinstance(value, list):
        for item in value:
            _vandalise(item)
        value.append("vandal")


def test_lookup_classifies_once_until_the_content_changes() -> None:
    """Asking for a device again classifies it again only after something other than its times changed."""
    calls: list[str] = []
    inventory = Inventory(8, _counting_rules(calls))
    inventory.on_flow(_flow())
    inventory.device_record(SERVER)
    inventory.device_record(SERVER)
    inventory.on_flow(_flow(first=500.0, last=501.0))  # seen again: times only
    inventory.device_of_ip("10.0.0.9")
    assert calls == [SERVER]
    inventory.on_flow(_flow(b_port=11112))  # a new service
    inventory.device_record(SERVER)
    assert calls == [SERVER, SERVER]


def test_cached_assessment_comes_with_current_times() -> None:
    """A record built on a cached role still carries the latest first/last seen of device and address."""
    inventory = Inventory(8, _counting_rules([]))
    inventory.on_flow(_flow())
    inventory.device_record(SERVER)
    inventory.on_flow(_flow(first=50.0, last=900.0))
    record = inventory.device_record(SERVER)
    assert record is not None and record["role"] == "pacs"
    assert (record["first_seen"], record["last_seen"]) == (50.0, 900.0)
    assert record["ips"] == [{"ip": "10.0.0.9", "first_seen": 50.0, "last_seen": 900.0}]


def test_edited_record_does_not_change_later_ones() -> None:
    """Whatever a caller does to a record it got, the next record of that device is unchanged."""
    inventory = Inventory(8, load_rules())
    inventory.on_flow(_flow(b_port=23))
    inventory.on_hint(_hint({"tls": "server_hello", "version": "TLS1.0"}, app="tls"))
    inventory.on_hint(_hint({"login": "telnet", "outcome": "success"}, app="telnet"))
    inventory.on_hint(_hint({"receiving_app": "PACS", "message_type": "ORU^R01"}, app="hl7"))
    first = inventory.device_record(SERVER)
    pristine = copy.deepcopy(first)
    _vandalise(first)
    assert inventory.device_record(SERVER) == pristine
    assert pristine is not None and all(pristine[k] for k in ("risks", "software", "clinical", "services"))


def test_new_rules_classify_again() -> None:
    """Rules replaced by reconfigure decide the next record's role."""
    inventory = Inventory(8, _counting_rules([], "pacs"))
    inventory.on_flow(_flow())
    assert (inventory.device_record(SERVER) or {})["role"] == "pacs"
    inventory.reconfigure(8, _counting_rules([], "printer"), (), 300.0)
    assert (inventory.device_record(SERVER) or {})["role"] == "printer"


def test_repeated_value_is_stored_once_in_normal_form() -> None:
    """A software string sent with odd spacing, then clean, is one value with single spaces."""
    inventory = Inventory(8, load_rules())
    for agent in ("curl  /8.0\t(x)", "curl /8.0 (x)", "curl  /8.0\t(x)"):
        inventory.on_hint(_hint({"http": "request", "user_agent": agent}))
    record = inventory.device_record(CLIENT)
    assert record is not None and record["software"] == {"http_user_agent": ["curl /8.0 (x)"]}


def test_first_dispatch_key_wins() -> None:
    """A hint carrying several dispatch keys goes to the handler of the first in order (login before tls)."""
    inventory = Inventory(8, load_rules())
    inventory.on_hint(_hint({"tls": "client_hello", "versions": ["TLS1.0"], "login": "ftp",
                             "outcome": "failure"}, app="ftp"))
    record = inventory.device_record(CLIENT)
    assert record is not None and record["software"] == {}
    assert record["services"]["cleartext_logins"][0]["protocol"] == "ftp"


def test_assess_pending_assesses_at_most_the_limit_of_stale_devices() -> None:
    """A live sensor spreads the assessments over seconds: each call takes at most `limit` stale devices."""
    calls: list[str] = []
    inventory = Inventory(8, _counting_rules(calls))
    inventory.on_flow(_flow())  # two devices, both new
    assert inventory.assess_pending(1) == 1 and len(calls) == 1
    assert inventory.assess_pending(5) == 1 and len(calls) == 2
    assert inventory.assess_pending(5) == 0


def test_a_delta_after_assess_pending_reuses_the_assessments() -> None:
    """The delta carries the same records whether or not the assessments were made ahead of it."""
    calls: list[str] = []
    ahead, plain = Inventory(8, _counting_rules(calls)), Inventory(8, _counting_rules([]))
    for inventory in (ahead, plain):
        inventory.on_flow(_flow())
        inventory.on_hint(_hint({"http": "response", "server": "PACS/1.0"}))
    ahead.assess_pending(10)
    assessed = len(calls)
    assert ahead.delta(1000.0) == plain.delta(1000.0)
    assert len(calls) == assessed == 2
