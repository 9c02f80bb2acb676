"""agent.hints.smb: dialects offered and chosen, SMB1 flagged, nothing else read, no crash on garbage."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
from conftest import SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st
from tcpflows import tcp_flows

from agent.hints import smb
from agent.hints.base import Fields, HintOptions

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
ETERNALBLUE, PSEXEC = "smb-eternalblue-ms17-010.pcap", "smb-psexec-add-user.pcap"
SMB2_DIALECTS = [0x0202, 0x0210, 0x0300, 0x0302, 0x0311]
WINDOWS_SMB1 = [b"PC NETWORK PROGRAM 1.0", b"LANMAN1.0", b"NT LM 0.12", b"SMB 2.002", b"SMB 2.???"]


def _nbss(message: bytes, kind: int = 0) -> bytes:
    return bytes([kind]) + len(message).to_bytes(3, "big") + message


def _smb1(command: int, reply: bool, words: bytes = b"", data: bytes = b"") -> bytes:
    flags = 0x98 if reply else 0x18
    header = b"\xffSMB" + bytes([command]) + bytes(4) + bytes([flags]) + b"\x01\xc8" + bytes(20)
    return _nbss(header + bytes([len(words) // 2]) + words + struct.pack("<H", len(data)) + data)


def _smb1_negotiate(dialects: list[bytes]) -> bytes:
    return _smb1(0x72, False, data=b"".join(b"\x02" + d + b"\x00" for d in dialects))


def _smb1_negotiate_response(index: int) -> bytes:
    return _smb1(0x72, True, words=struct.pack("<H", index) + bytes(32))


def _smb2(command: int, response: bool, body: bytes, status: int = 0) -> bytes:
    header = (b"\xfeSMB" + struct.pack("<HHIHHI", 64, 0, status, command, 1, int(response)) + bytes(4)
              + struct.pack("<Q", 7) + bytes(32))
    return _nbss(header + body)


def _smb2_negotiate(dialects: list[int]) -> bytes:
    body = struct.pack("<HHHHI", 36, len(dialects), 1, 0, 0x7F) + bytes(range(16)) + bytes(8)
    return _smb2(0, False, body + b"".join(struct.pack("<H", d) for d in dialects))


def _smb2_negotiate_response(dialect: int) -> bytes:
    return _smb2(0, True, struct.pack("<HHH", 65, 1, dialect) + bytes(range(58)))


def _feed(chunks: list[tuple[bytes, bool]]) -> tuple[list[Fields], bool]:
    flow = smb.start(HintOptions())
    found: list[Fields] = []
    for payload, from_a in chunks:
        found += flow.feed(payload, from_a)
    return found + flow.close(), flow.done


def test_smb2_negotiate_offers_and_chooses() -> None:
    """SMB2 dialect codes offered by the client and the one the server picks; done after that."""
    found, done = _feed([(_smb2_negotiate(SMB2_DIALECTS), True), (_smb2_negotiate_response(0x0311), False)])
    assert found == [
        {"smb": "negotiate_request", "dialects": ["2.0.2", "2.1", "3.0", "3.0.2", "3.1.1"],
         "smb1_offered": False},
        {"smb": "negotiate_response", "dialect": "3.1.1", "smb1": False}]
    assert done


def test_smb1_negotiate_names_the_chosen_dialect_by_index() -> None:
    """An SMB1 response's dialect index is resolved against the strings the client offered."""
    found, _ = _feed([(_smb1_negotiate(WINDOWS_SMB1[:3]), True), (_smb1_negotiate_response(2), False)])
    assert found == [
        {"smb": "negotiate_request", "dialects": ["PC NETWORK PROGRAM 1.0", "LANMAN1.0", "NT LM 0.12"],
         "smb1_offered": True},
        {"smb": "negotiate_response", "smb1": True, "dialect": "NT LM 0.12"}]


def test_smb1_session_is_flagged_once() -> None:
    """Further SMB1 messages flag the session as SMB1 once, and end the flow's reading."""
    found, done = _feed([(_smb1_negotiate([b"NT LM 0.12"]), True), (_smb1_negotiate_response(0), False),
                         (_smb1(0x73, False, bytes(24), b"nurse1\x00WARD7\x00"), True),
                         (_smb1(0x73, True, bytes(6)), False)])
    assert found[2:] == [{"smb": "smb1_session", "smb1": True}] and done
    assert "nurse1" not in json.dumps(found)


def test_multi_protocol_negotiate_moves_on_to_smb2() -> None:
    """An SMB1 negotiate offering SMB 2.x answered with the SMB2 wildcard, then a real SMB2 negotiate."""
    found, done = _feed([(_smb1_negotiate(WINDOWS_SMB1), True), (_smb2_negotiate_response(0x02FF), False),
                         (_smb2_negotiate([0x0202, 0x0210]), True),
                         (_smb2_negotiate_response(0x0210), False)])
    assert [f.get("dialect") for f in found if f["smb"] == "negotiate_response"] == ["2.???", "2.1"]
    assert found[0]["smb1_offered"] is True and done


def test_smb1_negotiate_offering_only_smb2_is_not_smb1() -> None:
    """SMB1 framing that offers only SMB 2.x dialects does not offer SMB1."""
    found, _ = _feed([(_smb1_negotiate([b"SMB 2.002", b"SMB 2.???"]), True)])
    assert found == [{"smb": "negotiate_request", "dialects": ["SMB 2.002", "SMB 2.???"],
                      "smb1_offered": False}]


def test_messages_split_and_joined_across_segments() -> None:
    """Messages cut byte by byte, or several in one segment, give the same fields."""
    stream = _smb2_negotiate(SMB2_DIALECTS) + _smb2_negotiate(SMB2_DIALECTS[:1])
    assert _feed([(stream[i:i + 1], True) for i in range(len(stream))]) == _feed([(stream, True)])


def test_large_messages_are_skipped_without_losing_the_framing() -> None:
    """A large write of identical zero-filled segments is skipped; the next message is still read."""
    write = _smb2(0x09, False, bytes(12000))
    segments = [write[i:i + 1000] for i in range(0, len(write), 1000)]
    found, _ = _feed([(s, True) for s in segments] + [(_smb1(0x73, False), True)])
    assert found == [{"smb": "smb1_session", "smb1": True}]


def test_retransmitted_message_is_ignored() -> None:
    """A whole message segment repeated at once (a retransmission) is read once."""
    request = _smb2_negotiate(SMB2_DIALECTS)
    found, _ = _feed([(request, True), (request, True)])
    assert len(found) == 1


def test_netbios_session_request_and_keepalive_are_skipped() -> None:
    """Port-139 session request/response and keepalives carry no SMB and give nothing."""
    called = b" " + b"CACAEBFDEFFCFGEJEMEFCACACACACAAA" + b"\x00"
    found, _ = _feed([(_nbss(called * 2, 0x81), True), (_nbss(b"", 0x82), False), (_nbss(b"", 0x85), True),
                      (_smb2_negotiate([0x0202]), True)])
    assert found == [{"smb": "negotiate_request", "dialects": ["2.0.2"], "smb1_offered": False}]


def test_no_path_or_share_name_is_read() -> None:
    """Tree connects and creates with share and file names give nothing."""
    path = "\\\\PACS01\\PATIENTS\\canary.dcm".encode("utf-16-le")
    found, _ = _feed([(_smb2(0x03, False, struct.pack("<HHHH", 9, 0, 72, len(path)) + path), True),
                      (_smb2(0x05, False, bytes(56) + path), True)])
    assert found == []


def test_encrypted_messages_are_passed_over() -> None:
    """SMB3 transform (encrypted) messages give nothing and raise nothing."""
    assert _feed([(_nbss(b"\xfdSMB" + bytes(60)), True)]) == ([], False)


def test_accepts_by_port_or_by_header() -> None:
    """NetBIOS framing on 139/445, or an SMB header behind it on any port."""
    negotiate = _smb2_negotiate(SMB2_DIALECTS)
    assert smb.accepts("tcp", 50000, 445, negotiate, True)
    assert smb.accepts("tcp", 50000, 139, _nbss(b"x" * 68, 0x81), True)
    assert smb.accepts("tcp", 50000, 8445, negotiate, True)
    assert not smb.accepts("tcp", 50000, 8445, _nbss(b"x" * 68, 0x81), True)
    assert not smb.accepts("tcp", 50000, 445, b"GET / HTTP/1.1\r\n\r\n", True)
    assert not smb.accepts("udp", 50000, 445, negotiate, True)


@pytest.mark.parametrize("garbage", [
    b"\x07\x00\x00\x04abcd",  # not a NetBIOS message type
    _nbss(b"GARBAGE!"),  # a session message without an SMB header
    _nbss(b"\xfeSMB" + bytes(20)),  # SMB2 header cut short
    _smb1(0x72, False, data=b"NT LM 0.12\x00")])  # a dialect without its 0x02 format byte
def test_garbage_is_refused(garbage: bytes) -> None:
    """What cannot be SMB raises ValueError."""
    with pytest.raises(ValueError):
        _feed([(garbage, True)])


def _exchange() -> list[tuple[bytes, bool]]:
    return [(_smb1_negotiate(WINDOWS_SMB1), True), (_smb2_negotiate_response(0x02FF), False),
            (_smb2_negotiate(SMB2_DIALECTS), True), (_smb2_negotiate_response(0x0302), False)]


def test_every_truncation_returns_or_raises_value_error() -> None:
    """Each message cut at every offset, or damaged there, gives fields, nothing, or ValueError."""
    for message, from_a in _exchange():
        for end in range(len(message) + 1):
            for payload in (message[:end], message[:end] + b"\xff" + message[end + 1:]):
                with contextlib.suppress(ValueError):
                    _feed([(payload, from_a)])


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=80), st.booleans()), max_size=8))
def test_random_bytes_return_or_raise_value_error(chunks: list[tuple[bytes, bool]]) -> None:
    """Random segments in either direction give fields, nothing, or ValueError."""
    with contextlib.suppress(ValueError):
        _feed(chunks)


@FUZZ
@given(st.sampled_from([b"\xffSMB", b"\xfeSMB"]), st.binary(max_size=160), st.booleans())
def test_random_smb_messages_return_or_raise_value_error(magic: bytes, body: bytes, from_a: bool) -> None:
    """Well-framed messages with an SMB1/SMB2 magic and random contents: fields, nothing, or ValueError."""
    with contextlib.suppress(ValueError):
        _feed([(_nbss(magic + body), from_a)])


@FUZZ
@given(st.data())
def test_any_segmentation_gives_the_same_fields(data: st.DataObject) -> None:
    """The negotiate exchange cut at random offsets gives exactly the fields of the whole exchange."""
    chunks: list[tuple[bytes, bool]] = []
    for message, from_a in _exchange():
        cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=10)))
        chunks += [(message[a:b], from_a) for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    assert _feed(chunks) == _feed(_exchange())


def hinted(capture: Path) -> dict[int, list[Fields]]:
    """The SMB hinter run over each TCP flow of a capture as the flow head would run it, by client port."""
    results: dict[int, list[Fields]] = {}
    for a_port, b_port, segments in tcp_flows(capture):
        flow = None
        for payload, from_a in segments:
            if flow is None and smb.accepts("tcp", a_port, b_port, payload, from_a):
                flow = smb.start(HintOptions())
            if flow is not None and not flow.done:
                results.setdefault(a_port, []).extend(flow.feed(payload, from_a))
    return results


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / ETERNALBLUE).exists(), reason="shared captures absent")
def test_shared_eternalblue_runs_smb1() -> None:
    """The EternalBlue attacker offers only NT LM 0.12, the victim accepts it, and the session is SMB1."""
    assert hinted(SHARED_PCAPS / ETERNALBLUE) == {35573: [
        {"smb": "negotiate_request", "dialects": ["NT LM 0.12"], "smb1_offered": True},
        {"smb": "negotiate_response", "smb1": True, "dialect": "NT LM 0.12"},
        {"smb": "smb1_session", "smb1": True}]}


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / PSEXEC).exists(), reason="shared captures absent")
def test_shared_psexec_negotiates_smb21() -> None:
    """PsExec's client offers SMB1 and SMB2 dialects; the domain controller settles on SMB 2.1."""
    found = hinted(SHARED_PCAPS / PSEXEC)
    first, second = found[49282], found[49285]
    dialects = first[0]["dialects"]
    assert first[0]["smb1_offered"] is True and isinstance(dialects, list) and "NT LM 0.12" in dialects
    assert [f.get("dialect") for f in first if f["smb"] == "negotiate_response"] == ["2.???", "2.1"]
    assert second == [{"smb": "negotiate_request", "dialects": ["2.0.2", "2.1"], "smb1_offered": False},
                      {"smb": "negotiate_response", "dialect": "2.1", "smb1": False}]
