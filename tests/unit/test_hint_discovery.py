"""Device-discovery hints: NBNS, SSDP, LLDP, CDP (and DNS on mDNS); real values out, garbage refused."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
from collections.abc import Callable

import pytest
from conftest import SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hints import cdp, dns, lldp, nbns, ssdp
from agent.hints.base import Fields, HintOptions

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)


def _shared(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_PCAPS / name).exists(), reason="shared captures absent")


def _tshark(capture: str, *args: str) -> list[list[str]]:
    command = ["tshark", "-r", str(SHARED_PCAPS / capture), "-T", "fields", "-E", "separator=|", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def _frames(capture: str) -> list[bytes]:
    command = ["tshark", "-r", str(SHARED_PCAPS / capture), "-T", "json", "-x", "-j", "frame"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [bytes.fromhex(p["_source"]["layers"]["frame_raw"][0]) for p in json.loads(out)]


def _list(fields: Fields, key: str) -> list[str] | list[int]:
    value = fields.get(key, [])
    assert isinstance(value, list)
    return value


def _first(fields: Fields, key: str) -> str | int:
    return _list(fields, key)[0]


# --- NBNS -------------------------------------------------------------------------------------------

def _nb_name(name: bytes, suffix: int) -> bytes:
    raw = name.ljust(15, b" ") + bytes([suffix])
    return b"\x20" + bytes(0x41 + (b >> 4 if i % 2 == 0 else b & 0x0F) for b in raw for i in (0, 1)) + b"\0"


def _nbns(flags: int, question: bytes | None, records: list[tuple[bytes, int, bytes]]) -> bytes:
    head = struct.pack("!HHHHHH", 7, flags, 1 if question else 0, 0, 0, len(records))
    body = question + b"\0\x20\0\x01" if question else b""
    for name, rtype, data in records:
        body += name + struct.pack("!HHIH", rtype, 1, 300000, len(data)) + data
    return head + body


def _registration(name: bytes = b"PUMP-WARD7", suffix: int = 0x00, group: bool = False) -> bytes:
    data = struct.pack("!H", 0xE000 if group else 0x6000) + socket.inet_aton("10.20.0.31")
    return _nbns(0x2910, _nb_name(name, suffix), [(b"\xc0\x0c", 0x20, data)])


def test_nbns_registration_gives_name_type_group_and_address() -> None:
    """A registration names the host, the suffix type, whether it is a group name and the address."""
    assert nbns.parse(_registration()) == {"nbns": "registration", "names": ["PUMP-WARD7"], "name_types": [0],
                                           "group": False, "addresses": ["10.20.0.31"]}


def test_nbns_workgroup_registration_is_a_group() -> None:
    """The workgroup's browser election name (0x1e) is registered as a group name."""
    fields = nbns.parse(_registration(b"WARD7", 0x1E, group=True))
    assert (fields["names"], fields["name_types"], fields["group"]) == (["WARD7"], [0x1E], True)


def test_nbns_query_gives_the_name_looked_for() -> None:
    """A query names what it looks for and says nothing about groups."""
    assert nbns.parse(_nbns(0x0110, _nb_name(b"WPAD", 0x00), [])) == {
        "nbns": "query", "names": ["WPAD"], "name_types": [0]}


def test_nbns_node_status_lists_the_name_table_and_mac() -> None:
    """A node status answer lists every name the host holds, the group names and its MAC."""
    table = (b"PACS01".ljust(15) + b"\x00\x04\x00" + b"WARD7".ljust(15) + b"\x00\x84\x00"
             + b"PACS01".ljust(15) + b"\x20\x04\x00")
    data = b"\x03" + table + bytes.fromhex("02000000aa01") + bytes(40)
    fields = nbns.parse(_nbns(0x8400, None, [(_nb_name(b"*", 0), 0x21, data)]))
    assert fields == {"nbns": "status_response", "names": ["PACS01", "WARD7", "PACS01"],
                      "name_types": [0, 0, 0x20], "group_names": ["WARD7"], "mac": "02:00:00:00:aa:01"}


def test_nbns_name_not_first_level_encoded_is_refused() -> None:
    """A name label that is not 32 letters A-P is a parse error."""
    with pytest.raises(ValueError):
        nbns.parse(_nbns(0x0110, b"\x04WPAD\0", []))


def test_nbns_pointer_loop_is_refused() -> None:
    """A record name pointing at itself cannot hang the parser."""
    looping = struct.pack("!HHHHHH", 7, 0x2910, 0, 0, 0, 1) + b"\xc0\x0c" + bytes(10)
    with pytest.raises(ValueError):
        nbns.parse(looping)


def test_nbns_accepts_udp_137_only() -> None:
    """The hinter takes NBNS datagrams, not TCP 137 or other ports."""
    assert nbns.accepts("udp", 137, 137, b"", True) and not nbns.accepts("tcp", 50000, 137, b"", True)
    assert not nbns.accepts("udp", 50000, 138, b"", True)


@_shared("windows-host-broadcasts.pcap")
def test_shared_windows_host_registers_name_and_workgroup() -> None:
    """The Windows host registers DJP95S0J (0x00, 0x20) and group ARBEITSGRUPPE, as tshark decodes."""
    rows = _tshark("windows-host-broadcasts.pcap", "-Y", "nbns", "-e", "udp.payload", "-e", "nbns.name")
    parsed = [(nbns.parse(bytes.fromhex(payload)), names) for payload, names in rows]
    for fields, names in parsed:
        expected = f"{_first(fields, 'names')}<{_first(fields, 'name_types'):02x}>"
        assert names.split(",")[0].split(" (")[0] == expected
    registered = {(_first(f, "names"), _first(f, "name_types"), f["group"])
                  for f, _ in parsed if f["nbns"] == "registration"}
    assert {("DJP95S0J", 0x00, False), ("DJP95S0J", 0x20, False), ("ARBEITSGRUPPE", 0x00, True),
            ("ARBEITSGRUPPE", 0x1E, True), ("ARBEITSGRUPPE", 0x1D, False)} <= registered


# --- SSDP -------------------------------------------------------------------------------------------

def test_ssdp_msearch_gives_user_agent_and_search_target() -> None:
    """An M-SEARCH tells the searcher's User-Agent and what it searches for."""
    message = (b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n"
               b"ST: ssdp:all\r\nUSER-AGENT: WardOS/2.1 UPnP/1.1 MonitorApp/3.0\r\n\r\n")
    assert ssdp.parse(message) == {"ssdp": "msearch", "st": "ssdp:all",
                                   "user_agent": "WardOS/2.1 UPnP/1.1 MonitorApp/3.0"}


def test_ssdp_response_gives_server_location_and_uuid() -> None:
    """A search response names the device's server string, description URL and uuid."""
    message = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nLOCATION: http://10.20.0.40:49152/desc.xml\r\n"
               b"server: Linux/4.9 UPnP/1.0 Printer/1.2\r\nST: upnp:rootdevice\r\n"
               b"USN: uuid:0000-aaaa::upnp:rootdevice\r\n\r\n")
    assert ssdp.parse(message) == {"ssdp": "response", "location": "http://10.20.0.40:49152/desc.xml",
                                   "server": "Linux/4.9 UPnP/1.0 Printer/1.2", "st": "upnp:rootdevice",
                                   "uuid": "0000-aaaa"}


def test_ssdp_location_loses_user_info_and_query() -> None:
    """A LOCATION keeps scheme, host, port and path; credentials and tokens are cut away."""
    message = b"NOTIFY * HTTP/1.1\r\nLOCATION: http://admin:secret@[fd00::5]:80/d.xml?token=abc#x\r\n\r\n"
    assert ssdp.parse(message) == {"ssdp": "notify", "location": "http://[fd00::5]:80/d.xml"}


def test_ssdp_unprintable_value_is_left_out() -> None:
    """A header value with control or non-ASCII bytes is dropped, not passed on."""
    assert ssdp.parse(b"NOTIFY * HTTP/1.1\r\nSERVER: bad\x01\xffvalue\r\nNT: upnp:rootdevice\r\n\r\n") == {
        "ssdp": "notify", "nt": "upnp:rootdevice"}


def test_ssdp_other_text_is_refused() -> None:
    """A datagram that does not start like SSDP is a parse error."""
    with pytest.raises(ValueError):
        ssdp.parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


@_shared("ssdp-msearch.pcap")
def test_shared_msearch_user_agent() -> None:
    """The public M-SEARCH capture gives Chrome's User-Agent and the DIAL search target."""
    rows = _tshark("ssdp-msearch.pcap", "-e", "udp.payload", "-e", "http.user_agent")
    for payload, agent in rows:
        fields = ssdp.parse(bytes.fromhex(payload))
        assert fields["user_agent"] == agent.strip() == "Google Chrome/99.0.4844.74 Mac OS X"
        assert fields["st"] == "urn:dial-multiscreen-org:service:dial:1"


@_shared("iot-setup-huebridge.pcap")
def test_shared_hue_bridge_announces_its_server() -> None:
    """The Hue bridge's NOTIFYs carry its SERVER string, description URL and uuid."""
    rows = _tshark("iot-setup-huebridge.pcap", "-Y", "ssdp", "-e", "udp.payload", "-e", "http.server")
    parsed = [(ssdp.parse(bytes.fromhex(payload)), server) for payload, server in rows]
    assert parsed and all(f["server"] == server.strip() for f, server in parsed)
    assert {(f["ssdp"], f["server"], f["location"], f["uuid"]) for f, _ in parsed} == {
        ("notify", "Linux/3.14.0 UPnP/1.0 IpBridge/1.9.0", "http://10.10.10.6:80/description.xml",
         "2f402f80-da50-11e1-9b23-0017882476ff")}


@_shared("windows-host-broadcasts.pcap")
def test_shared_windows_host_searches_for_a_gateway() -> None:
    """The Windows host's M-SEARCH looks for an Internet gateway device."""
    rows = _tshark("windows-host-broadcasts.pcap", "-Y", "ssdp", "-e", "udp.payload")
    assert {ssdp.parse(bytes.fromhex(r[0]))["st"] for r in rows} == {
        "urn:schemas-upnp-org:device:InternetGatewayDevice:1"}


# --- LLDP -------------------------------------------------------------------------------------------

def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!H", kind << 9 | len(value)) + value


def _lldpdu() -> bytes:
    return b"".join([
        _tlv(1, b"\x04" + bytes.fromhex("020000000a01")), _tlv(2, b"\x05eth0"), _tlv(3, b"\x00\x78"),
        _tlv(5, b"infusion-07"), _tlv(6, b"PumpOS 4.2\nbuild 77"), _tlv(4, b"LAN port"),
        _tlv(7, b"\x00\x24\x00\x20"),
        _tlv(8, b"\x05\x01" + socket.inet_aton("10.20.0.7") + b"\x02" + bytes(5)),
        _tlv(127, b"\x00\x80\xc2\x01\x00\x07"), _tlv(127, b"\x00\x12\xbb\x09ACME Medical"),
        _tlv(127, b"\x00\x12\xbb\x0aPump 9000"), _tlv(127, b"\x00\x12\xbb\x08SERIAL123"), _tlv(0, b"")])


def test_lldp_gives_identity_capabilities_and_inventory() -> None:
    """Chassis, port, names, enabled capabilities, management address, VLAN and MED inventory are read."""
    assert lldp.parse(_lldpdu()) == {
        "chassis_id": "02:00:00:00:0a:01", "chassis_id_subtype": "mac", "port_id": "eth0",
        "port_id_subtype": "interface_name", "system_name": "infusion-07", "system_description": "PumpOS 4.2",
        "port_description": "LAN port", "capabilities": ["telephone"], "management_addresses": ["10.20.0.7"],
        "port_vlan": 7, "manufacturer": "ACME Medical", "model": "Pump 9000"}


def test_lldp_without_mandatory_tlvs_is_refused() -> None:
    """An LLDPDU that does not start with chassis id, port id and TTL is a parse error."""
    with pytest.raises(ValueError):
        lldp.parse(_tlv(5, b"name") + _tlv(0, b""))


def test_lldp_tlv_past_the_frame_is_refused() -> None:
    """A TLV longer than what is left of the frame is a parse error."""
    with pytest.raises(ValueError):
        lldp.parse(_lldpdu()[:30])


@_shared("lldp-cdp.pcap")
def test_shared_lldp_matches_tshark() -> None:
    """Chassis MAC, port id, system name and port description agree with tshark for every LLDP frame."""
    rows = _tshark("lldp-cdp.pcap", "-Y", "lldp", "-e", "lldp.chassis.id.mac", "-e", "lldp.port.id",
                   "-e", "lldp.tlv.system.name", "-e", "lldp.port.desc")
    frames = [f for f in _frames("lldp-cdp.pcap") if f[12:14] == b"\x88\xcc"]
    parsed = [lldp.parse(f[14:]) for f in frames]
    assert len(parsed) == len(rows) == 8
    for fields, row in zip(parsed, rows, strict=True):
        keys = ("chassis_id", "port_id", "system_name", "port_description")
        assert [fields[k] for k in keys] == row
        assert fields["capabilities"] == ["bridge"] and fields["port_vlan"] == 1
    assert {f["system_name"] for f in parsed} == {"S1.cisco.com", "S2.cisco.com"}


# --- CDP --------------------------------------------------------------------------------------------

def _cdp_tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, 4 + len(value)) + value


def _cdp() -> bytes:
    addresses = (struct.pack("!I", 3) + b"\x01\x01\xcc\x00\x04" + socket.inet_aton("10.20.0.1")
                 + b"\x02\x08" + b"\xaa\xaa\x03\x00\x00\x00\x86\xdd" + b"\x00\x10"
                 + socket.inet_pton(socket.AF_INET6, "fd00::1") + b"\x01\x01\xcc\x00\x04" + bytes(4))
    return b"\x02\xb4\x00\x00" + b"".join([
        _cdp_tlv(1, b"ward7-sw1"), _cdp_tlv(2, addresses), _cdp_tlv(3, b"GigabitEthernet1/0/7"),
        _cdp_tlv(4, b"\x00\x00\x00\x29"), _cdp_tlv(5, b"Cisco IOS XE 17.3\nCopyright (c) Cisco"),
        _cdp_tlv(6, b"cisco C9200-24P"), _cdp_tlv(0x0A, b"\x00\x64"), _cdp_tlv(0x0B, b"\x01")])


def test_cdp_gives_identity_addresses_and_capabilities() -> None:
    """Device id, addresses, port, capabilities, first software line, platform and native VLAN are read."""
    assert cdp.parse(_cdp()) == {
        "cdp_version": 2, "device_id": "ward7-sw1", "addresses": ["10.20.0.1", "fd00::1"],
        "port_id": "GigabitEthernet1/0/7", "capabilities": ["router", "switch", "igmp"],
        "software_version": "Cisco IOS XE 17.3", "platform": "cisco C9200-24P", "native_vlan": 100}


def test_cdp_unknown_version_is_refused() -> None:
    """A packet whose version byte is not 1 or 2 is a parse error."""
    with pytest.raises(ValueError):
        cdp.parse(b"\x07" + _cdp()[1:])


def test_cdp_tlv_shorter_than_its_header_is_refused() -> None:
    """A TLV length below 4 would loop forever; it is a parse error."""
    with pytest.raises(ValueError):
        cdp.parse(b"\x02\xb4\x00\x00\x00\x01\x00\x02")


@_shared("lldp-cdp.pcap")
def test_shared_cdp_matches_tshark() -> None:
    """Device id, platform, port id and native VLAN agree with tshark for every CDP frame."""
    rows = _tshark("lldp-cdp.pcap", "-Y", "cdp", "-e", "cdp.deviceid", "-e", "cdp.platform",
                   "-e", "cdp.portid", "-e", "cdp.native_vlan")
    frames = [f for f in _frames("lldp-cdp.pcap") if f[14:22] == cdp.SNAP_HEADER]
    parsed = [cdp.parse(f[22:]) for f in frames]
    assert len(parsed) == len(rows) == 4
    for fields, row in zip(parsed, rows, strict=True):
        assert [fields["device_id"], fields["platform"], fields["port_id"], str(fields["native_vlan"])] == row
        assert fields["capabilities"] == ["switch", "igmp"] and "addresses" not in fields
        assert str(fields["software_version"]).startswith("Cisco IOS Software, C3560 Software")


# --- mDNS through the DNS hinter ---------------------------------------------------------------------

@_shared("mdns.pcap")
def test_shared_mdns_maps_the_host_name_to_its_addresses() -> None:
    """The DNS hinter reads mDNS: the VM's .local name maps to its IPv4 and both ULA IPv6 addresses,
    and the reverse (PTR) records point back at it."""
    rows = _tshark("mdns.pcap", "-Y", "mdns", "-e", "udp.payload")
    parsed = [dns.parse(bytes.fromhex(r[0])) for r in rows]
    answers = {str(a) for f in parsed for a in _list(f, "answers")}
    host = "johanna-QEMU-Virtual-Machine.local"
    assert {a for a in answers if "->" not in a} == {
        f"{host}=10.0.2.7", f"{host}=fd52:429e:c03c:8235:883c:d6ff:fee1:4dc4",
        f"{host}=fd52:429e:c03c:8235:5968:5bc6:1563:f82f"}
    assert f"7.2.0.10.in-addr.arpa->{host}" in answers
    assert {str(q) for f in parsed for q in _list(f, "questions")} >= {"_ipp._tcp.local", host}


# --- fuzzing ----------------------------------------------------------------------------------------

_PARSERS: tuple[tuple[Callable[[bytes], Fields], bytes], ...] = (
    (nbns.parse, _registration()), (ssdp.parse, b"NOTIFY * HTTP/1.1\r\nSERVER: a/1\r\nLOCATION: http://h:1/\r\n\r\n"),
    (lldp.parse, _lldpdu()), (cdp.parse, _cdp()))


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_give_fields_or_value_error(payload: bytes) -> None:
    """Random bytes give fields or ValueError from every parser, nothing else."""
    for parse, _ in _PARSERS:
        with contextlib.suppress(ValueError):
            parse(payload)
    for hinter in (nbns, ssdp):
        with contextlib.suppress(ValueError):
            hinter.start(HintOptions()).feed(payload, True)


@FUZZ
@given(st.integers(0, 400), st.binary(max_size=40))
def test_cut_and_damaged_messages_give_fields_or_value_error(cut: int, tail: bytes) -> None:
    """Valid messages cut anywhere, with random tails, give fields or ValueError."""
    for parse, message in _PARSERS:
        with contextlib.suppress(ValueError):
            parse(message[:cut] + tail)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["SERVER", "LOCATION", "USN", "NT", "X"]), st.text(max_size=60)),
                max_size=8))
def test_ssdp_odd_header_values_give_fields_or_value_error(headers: list[tuple[str, str]]) -> None:
    """Arbitrary header values (odd URLs, unicode) never escape as another exception."""
    text = "NOTIFY * HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    with contextlib.suppress(ValueError):
        fields = ssdp.parse(text.encode("utf-8", "surrogatepass"))
        assert all(isinstance(v, str) and v.isprintable() for v in fields.values())


def test_every_offset_cut_of_the_parsers_is_handled() -> None:
    """Each valid message truncated at every offset gives fields or ValueError."""
    for parse, message in _PARSERS:
        for cut in range(len(message)):
            with contextlib.suppress(ValueError):
                parse(message[:cut])
