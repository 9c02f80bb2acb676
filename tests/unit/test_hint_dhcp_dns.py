"""agent.hints.dhcp and agent.hints.dns: the fields devices give away, and no crash on garbage."""

from __future__ import annotations

import contextlib
import struct
import subprocess

import pytest
import wardgen
from conftest import SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hints import HINTERS, dhcp, dns
from agent.hints.base import HintOptions

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)


def _discover() -> bytes:
    return wardgen.dhcp_message(1, 7, "02:00:00:00:00:31", options=[
        (12, b"pump-ward7-03"), (60, b"MSFT 5.0"), (55, bytes([1, 3, 6, 15])), (61, b"\x01\x02\0\0\0\0\x31"),
        (50, bytes([10, 20, 0, 31]))])


def test_dhcp_discover_gives_the_client_identity() -> None:
    """Hostname, vendor class, parameter list, client id and requested address are read."""
    assert dhcp.parse(_discover()) == {
        "op": "request", "client_mac": "02:00:00:00:00:31", "message_type": "DISCOVER",
        "hostname": "pump-ward7-03", "vendor_class": "MSFT 5.0", "parameter_list": [1, 3, 6, 15],
        "client_id": "01:02:00:00:00:00:31", "requested_ip": "10.20.0.31"}


def test_dhcp_ack_gives_the_assigned_address() -> None:
    """A server's ACK names the address it assigned and itself."""
    ack = wardgen.dhcp_message(5, 7, "02:00:00:00:00:31", yiaddr="10.20.0.31",
                               options=[(54, bytes([10, 1, 0, 67]))])
    fields = dhcp.parse(ack)
    assert (fields["assigned_ip"], fields["server_id"], fields["op"]) == ("10.20.0.31", "10.1.0.67", "reply")


def test_dhcp_option_running_past_the_end_is_refused() -> None:
    """An option longer than the message is a parse error."""
    with pytest.raises(ValueError):
        dhcp.parse(_discover()[:-1][:260] + b"\x0c\x40abc")


def test_dns_query_and_answer() -> None:
    """Questions, A/AAAA answers (through compression pointers) and NXDOMAIN are read."""
    assert dns.parse(wardgen.dns_message(1, "pacs.ward.example")) == {
        "response": 0, "rcode": 0, "questions": ["pacs.ward.example"]}
    answer = dns.parse(wardgen.dns_message(1, "pacs.ward.example", answers=["10.1.0.10"], response=True))
    assert answer["answers"] == ["pacs.ward.example=10.1.0.10"]
    missing = dns.parse(wardgen.dns_message(2, "nope.example", response=True))
    assert missing["nxdomain"] == 1


def test_dns_pointer_loop_is_refused() -> None:
    """A compression pointer pointing at itself cannot hang the parser."""
    looping = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\0\x01\0\x01"
    with pytest.raises(ValueError):
        dns.parse(looping)


def _labels(name: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in name.split(b".")) + b"\0"


def test_dns_aaaa_answer_gives_the_ipv6_address() -> None:
    """An AAAA answer is name=address in IPv6 text form."""
    message = wardgen.dns_message(1, "pacs.ward.example", qtype=28, answers=["fd00::10"], response=True)
    assert dns.parse(message)["answers"] == ["pacs.ward.example=fd00::10"]


def test_dns_srv_answer_gives_target_and_port() -> None:
    """An SRV answer (how mDNS devices announce services) is name->target:port."""
    data = struct.pack("!HHH", 0, 0, 104) + _labels(b"pacs7.local")
    record = _labels(b"_dicom._tcp.local") + struct.pack("!HHIH", 33, 1, 120, len(data)) + data
    message = struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0) + record
    assert dns.parse(message)["answers"] == ["_dicom._tcp.local->pacs7.local:104"]


def test_dns_unprintable_name_bytes_become_question_marks() -> None:
    """Spaces, control bytes and bytes above ASCII in a label each read as '?'."""
    message = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x08pump 7\x00\xe9\0" + b"\0\x01\0\x01"
    assert dns.parse(message)["questions"] == ["pump?7??"]


def test_dns_root_name_reads_as_a_dot() -> None:
    """The empty (root) name is '.'."""
    message = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\0" + b"\0\x02\0\x01"
    assert dns.parse(message)["questions"] == ["."]


def test_registry_picks_by_protocol_and_port() -> None:
    """Each hinter accepts its own traffic only."""
    names = {h.NAME for h in HINTERS if h.accepts("udp", 68, 67, _discover(), True)}
    assert names == {"dhcp"}
    assert {h.NAME for h in HINTERS if h.accepts("udp", 51000, 53, b"", True)} == {"dns"}


@FUZZ
@given(st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=64), st.booleans())
def test_no_hinter_accepts_a_flow_of_the_other_transport(a_port: int, b_port: int, payload: bytes,
                                                          from_a: bool) -> None:
    """A hinter is asked only about flows of its PROTO (flowhead.py), so it must want no other."""
    for hinter in HINTERS:
        other = "udp" if hinter.PROTO == "tcp" else "tcp"
        assert hinter.PROTO in ("tcp", "udp")
        assert not hinter.accepts(other, a_port, b_port, payload, from_a), hinter.NAME
    for port in (21, 23, 53, 67, 104, 110, 137, 139, 143, 161, 443, 445, 1883, 1900, 2575):
        for hinter in HINTERS:
            other = "udp" if hinter.PROTO == "tcp" else "tcp"
            assert not hinter.accepts(other, port, b_port, payload, from_a), hinter.NAME


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_never_escape_as_another_exception(payload: bytes) -> None:
    """Random payloads give fields or ValueError, nothing else, for every hinter."""
    for hinter in HINTERS:
        with contextlib.suppress(ValueError):
            hinter.start(HintOptions()).feed(payload, True)


@FUZZ
@given(st.integers(0, 400), st.binary(max_size=40))
def test_cut_and_damaged_messages_never_escape(cut: int, tail: bytes) -> None:
    """Real DHCP and DNS messages cut anywhere, with random tails, give fields or ValueError."""
    answer = wardgen.dns_message(3, "a.b.example", answers=["10.0.0.1"], response=True)
    for parse, message in ((dhcp.parse, _discover()), (dns.parse, answer)):
        with contextlib.suppress(ValueError):
            parse(message[:cut] + tail)


@pytest.mark.skipif(not (SHARED_PCAPS / "dhcp-dora.pcap").exists(), reason="shared captures absent")
def test_shared_dhcp_capture_names_the_client() -> None:
    """The public DHCP capture's client announces hostname btest.is.cool from 90:b1:1c:99:49:29."""
    command = ["tshark", "-r", str(SHARED_PCAPS / "dhcp-dora.pcap"), "-T", "fields", "-e", "udp.payload"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    parsed = [dhcp.parse(bytes.fromhex(line.replace(":", ""))) for line in out.split()]
    assert {p.get("hostname") for p in parsed} >= {"btest.is.cool"}
    assert {p["client_mac"] for p in parsed} == {"90:b1:1c:99:49:29"}
