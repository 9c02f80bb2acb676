"""agent.inventory: devices from flow records and protocol hints, bounded, with deltas and full records."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.inventory import Inventory
from agent.inventory_device import LOCALLY_ADMINISTERED, MAX_IPS
from agent.records import FlowRecord, ProtoHint
from agent.roles import load_rules

CISCO = "00:00:0c:00:00:01"  # OUI 00-00-0C: Cisco Systems
PC = "52:54:00:00:00:02"  # locally administered (a virtual machine)
MON = "00:09:fb:00:00:03"  # OUI 00-09-FB: Philips Patient Monitoring
ENGINE = "00:0c:29:00:00:04"
RULES = load_rules()


def _flow(a_mac: str | None = PC, a_ip: str = "10.0.0.2", b_mac: str | None = CISCO, b_ip: str = "10.0.0.1",
          proto: str | int = "tcp", b_port: int = 80, b_pkts: int = 3, b_flags: str = "SAF",
          first: float = 100.0, last: float = 101.0) -> FlowRecord:
    return FlowRecord(first, last, proto, a_ip, 50000, b_ip, b_port, a_mac, b_mac, (), 4, b_pkts, 400, 300,
                      "SAF", b_flags if b_pkts else "", "fin")


def _hint(app: str, fields: dict[str, Any], src: tuple[str | None, str | None, int] = (PC, "10.0.0.2", 50000),
          dst: tuple[str | None, str | None, int] = (ENGINE, "10.0.0.9", 6661), initiator: bool = True,
          ts: float = 200.0, proto: str = "tcp") -> ProtoHint:
    return ProtoHint(ts, app, proto, src[0], src[1], src[2], dst[0], dst[1], dst[2], initiator, fields)


def _devices(inventory: Inventory) -> dict[str, dict[str, Any]]:
    return {d["mac"]: d for d in inventory.devices()}


def _fed(*items: FlowRecord | ProtoHint, max_devices: int = 64) -> Inventory:
    inventory = Inventory(max_devices, RULES)
    for item in items:
        if isinstance(item, FlowRecord):
            inventory.on_flow(item)
        else:
            inventory.on_hint(item)
    return inventory


def test_one_device_per_mac_with_address_history() -> None:
    """Two addresses of one MAC are one device listing both with first/last seen."""
    inventory = _fed(_flow(a_ip="10.0.0.2", first=1, last=2), _flow(a_ip="10.0.0.22", first=5, last=6))
    device = _devices(inventory)[PC]
    assert device["ips"] == [{"ip": "10.0.0.2", "first_seen": 1, "last_seen": 2},
                             {"ip": "10.0.0.22", "first_seen": 5, "last_seen": 6}]
    assert (device["first_seen"], device["last_seen"]) == (1, 6)


def test_address_history_is_bounded_and_counted() -> None:
    """Addresses beyond MAX_IPS are dropped and counted, the first ones kept."""
    inventory = _fed(*(_flow(a_ip=f"10.0.1.{i}") for i in range(MAX_IPS + 3)))
    assert len(_devices(inventory)[PC]["ips"]) == MAX_IPS
    assert inventory.counters.get("inventory.ips_dropped") == 3


def test_vendor_comes_from_the_oui_registry() -> None:
    """The IEEE registry names the maker of a MAC."""
    assert _devices(_fed(_flow()))[CISCO]["vendor"].startswith("Cisco")


def test_locally_administered_mac_is_marked() -> None:
    """A random or virtual MAC has no maker and says so."""
    assert _devices(_fed(_flow()))[PC]["vendor"] == LOCALLY_ADMINISTERED


def test_group_mac_is_no_device() -> None:
    """Multicast and broadcast destinations do not become devices."""
    inventory = _fed(_flow(b_mac="01:00:5e:00:00:fb", b_ip="224.0.0.251", proto="udp", b_port=5353))
    assert list(_devices(inventory)) == [PC]


def test_macless_flows_key_devices_by_address() -> None:
    """Raw IP captures key each side as ip:<address>."""
    inventory = _fed(_flow(a_mac=None, b_mac=None, b_port=104))
    devices = _devices(inventory)
    assert sorted(devices) == ["ip:10.0.0.1", "ip:10.0.0.2"]
    assert devices["ip:10.0.0.1"]["services"]["offered"] == [{"proto": "tcp", "port": 104, "app": None}]


def test_internet_addresses_stay_off_the_gateway() -> None:
    """The gateway MAC carrying a public address gets neither the address nor its service."""
    device = _devices(_fed(_flow(b_ip="93.184.216.34", b_port=443)))[CISCO]
    assert device["ips"] == [] and device["services"]["offered"] == []


def test_remote_server_software_stays_off_the_gateway() -> None:
    """An HTTP Server header from an Internet host behind the gateway MAC is not the gateway's software."""
    hint = _hint("http", {"http": "response", "status": 200, "server": "gws"},
                 src=(CISCO, "142.250.1.1", 80), dst=(PC, "10.0.0.2", 50000), initiator=False)
    assert _devices(_fed(hint)).get(CISCO) is None


def test_local_networks_decide_attribution() -> None:
    """With local_networks set, only addresses inside them are attributed."""
    inventory = Inventory(8, local_networks=["128.2.0.0/16"])
    inventory.on_flow(_flow(a_ip="128.2.6.7", b_ip="10.0.0.1"))
    devices = _devices(inventory)
    assert [i["ip"] for i in devices[PC]["ips"]] == ["128.2.6.7"] and devices[CISCO]["ips"] == []


def test_answered_flow_is_a_service_offered_and_used() -> None:
    """The b side of an answered flow offers the service, the a side uses it."""
    devices = _devices(_fed(_flow(b_port=443)))
    assert devices[CISCO]["services"]["offered"] == [{"proto": "tcp", "port": 443, "app": None}]
    assert devices[PC]["services"]["used"] == [{"proto": "tcp", "port": 443, "app": None}]


def test_unanswered_syn_is_no_service_and_no_device() -> None:
    """A SYN with no reply offers nothing; the silent side is not a device."""
    inventory = _fed(_flow(b_pkts=0))
    assert list(_devices(inventory)) == [PC] and _devices(inventory)[PC]["services"]["used"] == []


def test_reset_reply_is_no_service() -> None:
    """A closed port answers with RST only: no service."""
    assert _devices(_fed(_flow(b_flags="RA")))[CISCO]["services"]["offered"] == []


def test_least_recently_seen_device_is_evicted_and_counted() -> None:
    """At the bound, the device touched longest ago goes first."""
    inventory = _fed(_flow(a_mac="00:00:0c:00:00:10", b_mac="00:00:0c:00:00:11"),
                     _flow(a_mac="00:00:0c:00:00:10", b_pkts=0),
                     _flow(a_mac="00:00:0c:00:00:12", b_pkts=0), max_devices=2)
    assert sorted(_devices(inventory)) == ["00:00:0c:00:00:10", "00:00:0c:00:00:12"]
    assert inventory.counters.get("inventory.evicted") == 1


def test_delta_reports_changes_once() -> None:
    """A delta carries new devices; a second delta with nothing new is empty."""
    inventory = _fed(_flow())
    assert sorted(d["mac"] for d in inventory.delta(1000.0)) == [CISCO, PC]
    assert inventory.delta(1001.0) == []


def test_delta_carries_a_material_change_at_once() -> None:
    """A new service makes the device part of the next delta."""
    inventory = _fed(_flow())
    inventory.delta(1000.0)
    inventory.on_flow(_flow(b_port=8080))
    assert [d["mac"] for d in inventory.delta(1001.0)] == [CISCO, PC]


def test_delta_refreshes_last_seen_only_after_the_interval() -> None:
    """A device merely seen again is re-sent once the refresh interval has passed."""
    inventory = Inventory(8, refresh=300.0)
    inventory.on_flow(_flow())
    inventory.delta(1000.0)
    inventory.on_flow(_flow(first=500.0, last=501.0))
    assert inventory.delta(1100.0) == []
    assert len(inventory.delta(1300.0)) == 2


def test_records_are_json_and_in_record_shape() -> None:
    """Device records carry exactly the agreed keys and survive JSON."""
    [device] = [d for d in _fed(_flow()).devices() if d["mac"] == PC]
    assert list(device) == ["type", "mac", "ips", "vendor", "hostname", "role", "role_confidence",
                            "role_evidence", "services", "clinical", "software", "risks", "risk_score",
                            "first_seen", "last_seen"]
    assert json.loads(json.dumps(device)) == device


def test_records_do_not_depend_on_arrival_order() -> None:
    """The same flows in another order give identical records (sorted lists, min/max times)."""
    ports = (80, 443, 22, 8080, 53)
    flows = [_flow(b_port=p, a_ip=f"10.0.0.{p % 7 + 2}", first=p, last=p + 1) for p in ports]
    assert _fed(*flows).devices() == _fed(*reversed(flows)).devices()


def test_dhcp_request_gives_hostname_and_fingerprint() -> None:
    """A DHCP request names the client and fingerprints it by option 55 and vendor class."""
    hint = _hint("dhcp", {"op": "request", "client_mac": PC, "message_type": "REQUEST", "hostname": "ws-12",
                          "vendor_class": "MSFT 5.0", "parameter_list": [1, 3, 6, 15]},
                 src=(PC, "0.0.0.0", 68), dst=("ff:ff:ff:ff:ff:ff", "255.255.255.255", 67), proto="udp")
    device = _devices(_fed(hint))[PC]
    assert device["hostname"] == "ws-12"
    assert device["software"] == {"dhcp_fingerprint": ["1,3,6,15"], "dhcp_vendor_class": ["MSFT 5.0"]}


def test_dhcp_ack_attributes_the_assigned_address() -> None:
    """The address a DHCP ACK assigns belongs to the client MAC, even a public one."""
    hint = _hint("dhcp", {"op": "reply", "client_mac": PC, "message_type": "ACK",
                          "assigned_ip": "128.2.6.189"},
                 src=(CISCO, "128.2.6.152", 67), dst=(PC, "128.2.6.189", 68), proto="udp")
    assert [i["ip"] for i in _devices(_fed(hint))[PC]["ips"]] == ["128.2.6.189"]


def test_arp_sender_binding_is_attributed() -> None:
    """An ARP sender's address belongs to its MAC, even outside the private ranges."""
    hint = _hint("arp", {"arp": "request", "sender_mac": PC, "sender_ip": "128.2.6.7",
                         "target_ip": "128.2.6.1", "gratuitous": False},
                 src=(PC, "128.2.6.7", 0), dst=("ff:ff:ff:ff:ff:ff", "128.2.6.1", 0), proto="arp")
    assert [i["ip"] for i in _devices(_fed(hint))[PC]["ips"]] == ["128.2.6.7"]


def test_arp_probe_attributes_nothing() -> None:
    """An ARP probe (sender 0.0.0.0) makes a device but binds no address."""
    hint = _hint("arp", {"arp": "request", "sender_mac": PC, "sender_ip": "0.0.0.0", "target_ip": "10.0.0.2"},
                 src=(PC, "0.0.0.0", 0), dst=("ff:ff:ff:ff:ff:ff", "10.0.0.2", 0), proto="arp")
    assert _devices(_fed(hint))[PC]["ips"] == []


def test_mdns_answer_names_the_sender() -> None:
    """An mDNS response announcing name.local gives the sender its hostname."""
    hint = _hint("dns", {"response": 1, "rcode": 0, "questions": [],
                         "answers": ["johanna-vm.local=10.0.2.7"]},
                 src=(PC, "10.0.2.7", 5353), dst=("01:00:5e:00:00:fb", "224.0.0.251", 5353), proto="udp")
    assert _devices(_fed(hint))[PC]["hostname"] == "johanna-vm"


def test_nbns_skips_group_names() -> None:
    """NetBIOS workgroup and browser names are not the host's name."""
    hint = _hint("nbns", {"nbns": "registration", "names": ["__MSBROWSE__", "ARBEITSGRUPPE", "DJP95S0J"],
                          "name_types": [1, 0x1E, 0x20]}, proto="udp")
    assert _devices(_fed(hint))[PC]["hostname"] == "DJP95S0J"


def test_nbns_query_names_nobody() -> None:
    """The name a host looks for is not its own."""
    hint = _hint("nbns", {"nbns": "query", "names": ["FILESERVER"], "name_types": [0x20]}, proto="udp")
    assert _devices(_fed(hint))[PC]["hostname"] is None


def test_dhcp_name_beats_nbns_name() -> None:
    """What the device calls itself in DHCP wins over other names."""
    inventory = _fed(_hint("nbns", {"nbns": "registration", "names": ["NETBIOSNAME"], "name_types": [0x20]}),
                     _hint("dhcp", {"op": "request", "client_mac": PC, "hostname": "dhcpname"}))
    assert _devices(inventory)[PC]["hostname"] == "dhcpname"


def test_lldp_names_a_switch_and_its_role() -> None:
    """LLDP system name and bridge capability make a named network device."""
    hint = _hint("lldp", {"system_name": "sw-ward7", "system_description": "Cisco IOS 15.2",
                          "capabilities": ["Bridge", "Router"], "management_addresses": ["10.0.0.254"]},
                 src=(CISCO, None, 0), dst=("01:80:c2:00:00:0e", None, 0), proto="lldp")
    device = _devices(_fed(hint))[CISCO]
    assert device["hostname"] == "sw-ward7" and device["role"] == "network_infrastructure"
    assert device["software"]["capabilities"] == ["bridge", "router"]
    assert [i["ip"] for i in device["ips"]] == ["10.0.0.254"]


def test_cdp_software_keeps_its_first_line() -> None:
    """CDP's multi-line software version is kept as its first line."""
    hint = _hint("cdp", {"device_id": "core1", "platform": "cisco WS-C3750",
                         "software_version": "Cisco IOS Software, 12.2(25)\nCopyright (c) 1986"},
                 src=(CISCO, None, 0), dst=("01:00:0c:cc:cc:cc", None, 0), proto="cdp")
    assert _devices(_fed(hint))[CISCO]["software"]["cdp_software"] == ["Cisco IOS Software, 12.2(25)"]


def test_http_headers_are_software_of_each_side() -> None:
    """User-Agent belongs to the client, Server to the server."""
    request = {"http": "request", "method": "GET", "user_agent": "Mozilla/5.0 (Windows NT)"}
    inventory = _fed(_hint("http", request),
                     _hint("http", {"http": "response", "status": 200, "server": "Apache/2.2.3"},
                           src=(ENGINE, "10.0.0.9", 80), dst=(PC, "10.0.0.2", 50000), initiator=False))
    devices = _devices(inventory)
    assert devices[PC]["software"] == {"http_user_agent": ["Mozilla/5.0 (Windows NT)"]}
    assert devices[ENGINE]["software"] == {"http_server": ["Apache/2.2.3"]}


def test_tls_server_hello_marks_both_ends() -> None:
    """The version a server chose is recorded for both ends and a weak one is a risk."""
    hint = _hint("tls", {"tls": "server_hello", "version": "TLS1.0", "cipher": "0x002f"},
                 src=(ENGINE, "10.0.0.9", 443), dst=(PC, "10.0.0.2", 50000), initiator=False)
    devices = _devices(_fed(hint))
    assert all(d["software"]["tls_negotiated"] == ["TLS1.0"] for d in devices.values())
    assert [r["id"] for r in devices[ENGINE]["risks"]] == ["weak_tls"]


def test_smb1_negotiation_is_a_risk() -> None:
    """A negotiated SMB1 dialect flags both ends."""
    hint = _hint("smb", {"smb": "negotiate_response", "dialect": "NT LM 0.12", "smb1": True},
                 src=(ENGINE, "10.0.0.9", 445), dst=(PC, "10.0.0.2", 50000), initiator=False)
    assert [r["id"] for r in _devices(_fed(hint))[PC]["risks"]] == ["smbv1"]


def test_smb1_session_without_negotiation_is_a_risk() -> None:
    """An SMB1 session picked up after its negotiation still flags SMBv1."""
    hint = _hint("smb", {"smb": "smb1_session", "smb1": True}, dst=(ENGINE, "10.0.0.9", 445))
    assert _devices(_fed(hint))[ENGINE]["software"]["smb1"] == ["negotiated"]


def test_login_counts_on_both_sides_without_the_user() -> None:
    """A cleartext login counts for the client and the server; the user name is never kept."""
    hint = _hint("ftp", {"login": "ftp", "outcome": "failure", "user": "bro"},
                 src=(ENGINE, "10.0.0.9", 21), dst=(PC, "10.0.0.2", 50000), initiator=False)
    devices = _devices(_fed(hint, hint))
    assert devices[PC]["services"]["cleartext_logins"] == [
        {"protocol": "ftp", "as": "client", "success": 0, "failure": 2, "unknown": 0}]
    assert devices[ENGINE]["services"]["cleartext_logins"][0]["as"] == "server"
    assert "bro" not in json.dumps(list(devices.values()))


def test_snmp_login_records_the_version() -> None:
    """An SNMP v2c exchange gives the agent the SNMP risk."""
    hint = _hint("snmp", {"login": "snmp", "outcome": "success", "version": "v2c"},
                 dst=(ENGINE, "10.0.0.9", 161), proto="udp")
    assert [r["id"] for r in _devices(_fed(hint))[ENGINE]["risks"]] == ["snmp_v1_v2c"]


def test_hint_names_the_service_port() -> None:
    """A hint labels the server port of its flow with the hinter's name."""
    inventory = _fed(_flow(b_mac=ENGINE, b_ip="10.0.0.9", b_port=6661),
                     _hint("hl7", {"message_type": "ORU^R01"}))
    offered = _devices(inventory)[ENGINE]["services"]["offered"]
    assert offered == [{"proto": "tcp", "port": 6661, "app": "hl7"}]


def test_hl7_exchange_gives_both_sides_their_context() -> None:
    """Sender and receiver get their applications, facilities and message types; the engine its ACKs."""
    message = _hint("hl7", {"sending_app": "MONITOR", "sending_facility": "WARD7", "receiving_app": "ENGINE",
                            "receiving_facility": "HOSP", "message_type": "ORU^R01^ORU_R01",
                            "version": "2.5"})
    ack = _hint("hl7", {"sending_app": "ENGINE", "sending_facility": "HOSP", "receiving_app": "MONITOR",
                        "receiving_facility": "WARD7", "message_type": "ACK^R01", "ack_code": "AA"},
                src=(ENGINE, "10.0.0.9", 6661), dst=(PC, "10.0.0.2", 50000), initiator=False)
    devices = _devices(_fed(message, ack))
    assert devices[PC]["clinical"]["hl7"] == {
        "applications": ["MONITOR"], "facilities": ["WARD7"], "received": ["ACK^R01"], "sent": ["ORU^R01"],
        "versions": ["2.5"]}
    assert devices[ENGINE]["clinical"]["hl7"]["acks_sent"] == ["AA"]
    assert devices[ENGINE]["clinical"]["hl7"]["senders"] == ["10.0.0.2"]
    assert devices[PC]["role"] == "patient_monitor"


def test_hl7_engine_role_from_two_senders() -> None:
    """An engine receiving from two senders and acknowledging is named hl7_engine."""
    hints = [_hint("hl7", {"message_type": "ADT^A01"}, src=(mac, ip, 50000))
             for mac, ip in ((PC, "10.0.0.2"), (MON, "10.0.0.3"))]
    ack = _hint("hl7", {"message_type": "ACK", "ack_code": "AA"}, src=(ENGINE, "10.0.0.9", 6661),
                dst=(PC, "10.0.0.2", 50000), initiator=False)
    device = _devices(_fed(*hints, ack))[ENGINE]
    assert device["role"] == "hl7_engine" and device["role_confidence"] >= 0.7


def test_dicom_association_names_scu_and_scp() -> None:
    """A-ASSOCIATE-RQ/AC give AE titles, services used/provided and implementations, and roles."""
    rq = _hint("dicom", {"dicom": "associate_rq", "calling_ae": "CT01", "called_ae": "PACS",
                         "services": ["storage:ct", "verification"], "implementation_uid": "1.2.3",
                         "implementation_version": "MODALITY_1"}, dst=(ENGINE, "10.0.0.9", 104))
    ac = _hint("dicom", {"dicom": "associate_ac", "accepted_services": ["storage:ct", "verification"],
                         "implementation_uid": "1.2.4"}, src=(ENGINE, "10.0.0.9", 104),
               dst=(PC, "10.0.0.2", 50000), initiator=False)
    qr = _hint("dicom", {"dicom": "associate_ac", "accepted_services": ["qr_find", "qr_move"]},
               src=(ENGINE, "10.0.0.9", 104), dst=(MON, "10.0.0.3", 50000), initiator=False)
    devices = _devices(_fed(rq, ac, qr))
    assert devices[PC]["clinical"]["dicom"] == {
        "ae_titles_scu": ["CT01"], "implementations": ["1.2.3 MODALITY_1"],
        "services_used": ["storage:ct", "verification"]}
    assert devices[ENGINE]["clinical"]["dicom"]["ae_titles_scp"] == ["PACS"]
    assert devices[PC]["role"] == "imaging_modality" and devices[ENGINE]["role"] == "pacs"
    assert devices[PC]["risks"][0]["id"] == "cleartext_clinical_protocol"


def test_unknown_hint_is_counted() -> None:
    """A hint the inventory has no use for is counted, not an error."""
    inventory = _fed(_hint("quic", {"version": 1}))
    assert inventory.counters.get("inventory.hints_unused") == 1


def test_ill_typed_hint_fields_are_ignored() -> None:
    """Fields of the wrong type are skipped without raising."""
    dhcp = {"op": "request", "client_mac": 7, "hostname": ["x"], "parameter_list": "1,3"}
    inventory = _fed(_hint("dhcp", dhcp),
                     _hint("hl7", {"message_type": 5, "sending_app": None}),
                     _hint("dicom", {"dicom": "associate_rq", "services": "storage:ct"}))
    assert _devices(inventory)[PC]["hostname"] is None


_KEYS = ("arp", "sender_mac", "sender_ip", "management_addresses", "addresses",
         "op", "client_mac", "message_type", "hostname", "vendor_class", "parameter_list", "assigned_ip",
         "response", "answers", "nbns", "names", "name_types", "server", "user_agent", "system_name",
         "system_description", "capabilities", "device_id", "software_version", "http", "tls", "versions",
         "version", "smb", "dialects", "dialect", "smb1", "smb1_offered", "login", "outcome", "ftp", "dicom",
         "calling_ae", "called_ae", "services", "accepted_services", "sending_app", "receiving_app",
         "ack_code")
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                    st.lists(st.one_of(st.integers(), st.text(max_size=12)), max_size=4),
                    st.sampled_from(["request", "reply", "ACK", "client_hello", "server_hello",
                                     "negotiate_response", "associate_rq", "associate_ac", "banner",
                                     "00:11:22:33:44:55", "TLS1.0"]))


@settings(max_examples=300, deadline=None)
@given(app=st.sampled_from(["dhcp", "dns", "hl7", "lldp", "cdp", "nbns", "ssdp", "tls", "http", "smb",
                            "dicom", "ftp", "telnet", "snmp", "other"]),
       fields=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=8), initiator=st.booleans())
def test_arbitrary_hint_fields_never_raise(app: str, fields: dict[str, Any],
                                           initiator: bool) -> None:
    """Whatever a hinter puts in its fields, on_hint neither raises nor breaks the records' JSON."""
    inventory = Inventory(8, RULES)
    inventory.on_hint(_hint(app, fields, initiator=initiator, dst=(ENGINE, "10.0.0.9", 67)))
    json.dumps(inventory.devices())
