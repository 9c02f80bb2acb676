"""agent.hints.dicom: association metadata only; P-DATA (the patient data sets) is never read."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hints import dicom
from agent.hints.base import HintOptions

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
CANARIES = ("CANARY^PATIENT^ZZQX", "CANARY", "MRN-CANARY-7731", "19010203")
VERIFICATION, CT, MR = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLEMENTATION = "1.2.826.0.1.3680043.9.3811.3.0.4"
IMPLICIT_LE = b"1.2.840.10008.1.2"


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack("!BBH", kind, 0, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack("!BBI", kind, 0, len(body)) + body


def _user_info(uid: str = IMPLEMENTATION, version: bytes = b"PYNETDICOM_304") -> bytes:
    identity = _item(0x58, b"\x02\x00" + struct.pack("!H", 6) + b"doctor" + struct.pack("!H", 6) + b"s3cret")
    return _item(0x50, _item(0x51, struct.pack("!I", 16384)) + _item(0x52, uid.encode())
                 + _item(0x55, version) + identity)


def _rq(calling: bytes = b"CT_SCANNER_01", called: bytes = b"PACS_MAIN",
        syntaxes: tuple[str, ...] = (VERIFICATION, CT, MR), user_info: bytes | None = None) -> bytes:
    contexts = b"".join(
        _item(0x20, bytes([2 * i + 1, 0, 0, 0]) + _item(0x30, uid.encode()) + _item(0x40, IMPLICIT_LE))
        for i, uid in enumerate(syntaxes))
    fixed = b"\x00\x01\x00\x00" + called.ljust(16) + calling.ljust(16) + bytes(32)
    application = _item(0x10, b"1.2.840.10008.3.1.1.1")
    return _pdu(0x01, fixed + application + contexts + (_user_info() if user_info is None else user_info))


def _ac(results: tuple[int, ...] = (0, 0, 3)) -> bytes:
    contexts = b"".join(_item(0x21, bytes([2 * i + 1, 0, result, 0]) + _item(0x40, IMPLICIT_LE))
                        for i, result in enumerate(results))
    fixed = b"\x00\x01\x00\x00" + b"PACS_MAIN".ljust(16) + b"CT_SCANNER_01".ljust(16) + bytes(32)
    return _pdu(0x02, fixed + _item(0x10, b"1.2.840.10008.3.1.1.1") + contexts
                + _user_info("1.2.3.4", b"PACS_V2"))


def _p_data(payload: bytes) -> bytes:
    """A P-DATA-TF PDU with one presentation data value holding `payload` (a data set fragment)."""
    return _pdu(0x04, struct.pack("!IB", len(payload) + 2, 1) + b"\x02" + payload)


PATIENT = (b"\x10\x00\x10\x00PN\x14\x00CANARY^PATIENT^ZZQX \x10\x00\x20\x00LO\x10\x00MRN-CANARY-7731 "
           b"\x10\x00\x30\x00DA\x08\x0019010203")
RELEASE_RQ, RELEASE_RP = _pdu(0x05, bytes(4)), _pdu(0x06, bytes(4))


def _feed(chunks: list[tuple[bytes, bool]]) -> tuple[list[dict[str, object]], dicom.DicomFlow]:
    flow = dicom.start(HintOptions())
    found: list[dict[str, object]] = []
    for chunk, from_a in chunks:
        if not flow.done:
            found += flow.feed(chunk, from_a)
    return found, flow


def test_associate_rq_names_titles_services_and_implementation() -> None:
    """AE titles, services, abstract syntaxes and implementation class/version come from the RQ."""
    assert _feed([(_rq(), True)])[0] == [{
        "dicom": "associate_rq", "calling_ae": "CT_SCANNER_01", "called_ae": "PACS_MAIN",
        "implementation_uid": IMPLEMENTATION, "implementation_version": "PYNETDICOM_304",
        "services": ["storage:ct", "storage:mr", "verification"],
        "abstract_syntaxes": [VERIFICATION, CT, MR]}]


def test_user_identity_is_never_read() -> None:
    """The user identity sub-item (user name and passcode) leaves nothing in the output."""
    text = json.dumps(_feed([(_rq(), True)])[0])
    assert "doctor" not in text and "s3cret" not in text


def test_associate_ac_lists_only_accepted_services() -> None:
    """Presentation contexts with result 0 count as accepted; a refused one (3) does not."""
    found, flow = _feed([(_rq(), True), (_ac(), False)])
    assert found[1] == {"dicom": "associate_ac", "implementation_uid": "1.2.3.4",
                        "implementation_version": "PACS_V2",
                        "accepted_services": ["storage:ct", "verification"]}
    assert not flow.done


def test_associate_rj_gives_result_source_reason() -> None:
    """A rejection names its result, source and reason, and ends the hint."""
    found, flow = _feed([(_rq(), True), (_pdu(0x03, bytes([0, 1, 1, 7])), False)])
    assert found[1] == {"dicom": "associate_rj", "result": "rejected_permanent", "source": "service_user",
                        "reason": "called_ae_not_recognized"}
    assert flow.done


def test_abort_gives_source_and_reason() -> None:
    """An A-ABORT names its source and reason, and ends the hint."""
    found, flow = _feed([(_rq(), True), (_pdu(0x07, bytes([0, 0, 2, 2])), False)])
    assert found[1] == {"dicom": "abort", "source": "service_provider", "reason": "unexpected_pdu"}
    assert flow.done


def test_release_ends_the_hint() -> None:
    """After A-RELEASE the association is over and the hinter is done."""
    found, flow = _feed([(_rq(), True), (_ac(), False), (RELEASE_RQ, True)])
    assert len(found) == 2 and flow.done


def test_p_data_is_skipped_unread_across_segments() -> None:
    """A data set split over segments, even one holding a whole fake RQ, yields nothing; the next PDU does."""
    fake = _rq(calling=b"CANARY", called=b"CANARY")
    data = _p_data(PATIENT + fake + PATIENT)
    chunks = [(_rq(), True), (_ac(), False), (data[:9], True), (data[9:40], True), (data[40:], True),
              (_pdu(0x07, bytes([0, 0, 0, 0])), True)]
    found, _ = _feed(chunks)
    assert [f["dicom"] for f in found] == ["associate_rq", "associate_ac", "abort"]
    assert not any(canary in json.dumps(found) for canary in CANARIES)


def test_rq_split_at_every_offset_gives_the_same_fields() -> None:
    """An RQ cut in two anywhere is buffered and read once whole."""
    whole = _feed([(_rq(), True)])[0]
    message = _rq()
    for cut in range(1, len(message)):
        assert _feed([(message[:cut], True), (message[cut:], True)])[0] == whole


def test_malformed_titles_and_uids_are_left_out() -> None:
    """A title with a control byte, a UID with letters or over 64 characters is not emitted."""
    long_uid = "1." + "2" * 70
    found = _feed([(_rq(calling=b"BAD\x01TITLE", syntaxes=("1.2.x.4", long_uid, CT),
                        user_info=_user_info("not-a-uid", b"\x07bell")), True)])[0][0]
    assert "calling_ae" not in found and "implementation_uid" not in found
    assert "implementation_version" not in found
    assert found["abstract_syntaxes"] == [CT] and found["called_ae"] == "PACS_MAIN"


@pytest.mark.parametrize("payload", [
    _pdu(0x09, bytes(4)),  # no such PDU type
    _pdu(0x03, bytes(5)),  # A-ASSOCIATE-RJ is 4 bytes long
    struct.pack("!BBI", 1, 0, dicom.MAX_PDU),  # association PDU beyond the buffer bound
    _pdu(0x01, bytes([0, 1, 0, 0]) + bytes(64) + b"\x20\x00\xff\xff"),  # item longer than its PDU
])
def test_garbage_is_refused_with_value_error(payload: bytes) -> None:
    """Unknown PDU types, wrong lengths and items overrunning the PDU are parse errors."""
    with pytest.raises(ValueError):
        dicom.start(HintOptions()).feed(payload, True)


def test_accepts_an_associate_rq_on_any_port_from_the_initiator() -> None:
    """Detection is by the A-ASSOCIATE-RQ header sent by side a, not by port."""
    assert dicom.accepts("tcp", 50000, 11112, _rq(), True)
    assert dicom.accepts("tcp", 50000, 104, _rq()[:10], True)
    assert not dicom.accepts("tcp", 50000, 104, _rq(), False)
    assert not dicom.accepts("udp", 50000, 104, _rq(), True)
    assert not dicom.accepts("tcp", 50000, 104, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True)
    assert not dicom.accepts("tcp", 50000, 104, _rq()[:6] + b"\x00\x02" + _rq()[8:], True)


@pytest.mark.parametrize(("uid", "name"), [
    ("1.2.840.10008.1.1", "verification"), ("1.2.840.10008.5.1.4.1.1.2", "storage:ct"),
    ("1.2.840.10008.5.1.4.1.1.1", "storage:cr"), ("1.2.840.10008.5.1.4.1.1.1.1", "storage:dx"),
    ("1.2.840.10008.5.1.4.1.1.1.2.1", "storage:mg"), ("1.2.840.10008.5.1.4.1.1.6.1", "storage:us"),
    ("1.2.840.10008.5.1.4.1.1.128", "storage:pt"), ("1.2.840.10008.5.1.4.1.1.20", "storage:nm"),
    ("1.2.840.10008.5.1.4.1.1.12.1", "storage:xa"), ("1.2.840.10008.5.1.4.1.1.481.5", "storage:rt"),
    ("1.2.840.10008.5.1.4.1.1.7", "storage:sc"), ("1.2.840.10008.5.1.4.1.1.88.22", "storage:sr"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "storage:other"), ("1.2.840.10008.5.1.4.1.2.1.1", "qr_find"),
    ("1.2.840.10008.5.1.4.1.2.2.2", "qr_move"), ("1.2.840.10008.5.1.4.1.2.2.3", "qr_get"),
    ("1.2.840.10008.5.1.4.31", "worklist_find"), ("1.2.840.10008.3.1.2.3.3", "mpps"),
    ("1.2.840.10008.1.20.1", "storage_commitment"), ("1.2.840.10008.5.1.1.9", "other"),
])
def test_service_names_from_abstract_syntax_uids(uid: str, name: str) -> None:
    """Each public SOP class UID maps to its service family."""
    assert dicom.service(uid) == name


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_give_fields_or_value_error(payload: bytes) -> None:
    """Random payloads in either direction never raise anything but ValueError."""
    flow = dicom.start(HintOptions())
    with contextlib.suppress(ValueError):
        flow.feed(payload, True)
        flow.feed(payload, False)


@FUZZ
@given(st.data())
def test_no_canary_leaves_however_the_association_is_cut(data: st.DataObject) -> None:
    """RQ, P-DATA with canaries and release, cut at random offsets: same PDUs read, no canary out."""
    stream = _rq() + _p_data(PATIENT) + _p_data(PATIENT * 3) + RELEASE_RQ
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [(stream[a:b], True) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    found, flow = _feed(chunks)
    assert [f["dicom"] for f in found] == ["associate_rq"] and flow.done
    assert not any(canary in json.dumps(found) for canary in CANARIES)


@pytest.mark.parametrize("end", range(0, len(_rq() + _p_data(PATIENT)) + 1, 5))
def test_truncated_stream_with_random_tail_never_escapes(end: int) -> None:
    """A stream cut short and followed by junk gives fields or ValueError, and never a canary."""
    stream = (_rq() + _p_data(PATIENT))[:end] + b"\x01\xff\x00\x00\x00\x10junk"
    try:
        found, _ = _feed([(stream, True)])
    except ValueError:
        return
    assert not any(canary in json.dumps(found) for canary in CANARIES)


def _flows(capture: Path) -> dict[str, list[tuple[bytes, bool]]]:
    """TCP payloads per stream, in order, with their direction (True: from the stream's initiator)."""
    command = ["tshark", "-r", str(capture), "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.stream",
               "-e", "tcp.srcport", "-e", "tcp.payload", "-o", "tcp.desegment_tcp_streams:FALSE"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    flows: dict[str, list[tuple[bytes, bool]]] = defaultdict(list)
    first_port: dict[str, str] = {}
    for line in out.splitlines():
        stream, port, payload = line.split("\t")
        first_port.setdefault(stream, port)
        flows[stream].append((bytes.fromhex(payload.replace(":", "")), first_port[stream] == port))
    return flows


def _hints(capture: Path) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for chunks in _flows(capture).values():
        payload, from_a = chunks[0]
        if dicom.accepts("tcp", 0, 0, payload, from_a):
            found += _feed(chunks)[0]
    return found


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / "dicom-association-ndpi.pcap").exists(),
                    reason="shared captures absent")
def test_shared_capture_gives_its_four_association_requests() -> None:
    """The public nDPI capture's four A-ASSOCIATE-RQs (one split over two segments) are all read."""
    found = _hints(SHARED_PCAPS / "dicom-association-ndpi.pcap")
    assert [(f["calling_ae"], f["called_ae"]) for f in found] == [("testclient", "testserver")] * 3 + [
        ("bogus_local", "bogus_remote")]
    assert found[0]["services"] == ["qr_find", "worklist_find"]
    assert {"storage:ct", "storage:mr", "qr_get"} <= set(found[1]["services"])  # type: ignore[arg-type]
    assert {f["implementation_version"] for f in found} == {"GODICOM_1_1"}


def test_own_workflow_capture_names_modality_pacs_and_workstation() -> None:
    """The project's pynetdicom capture: echo, CT store, C-FIND and a rejection, and no canary out."""
    found = _hints(ROOT / "tests" / "captures" / "dicom-workflow.pcap")
    requests = {(f["calling_ae"], f["called_ae"]) for f in found if f["dicom"] == "associate_rq"}
    assert requests == {("CT_SCANNER_01", "PACS_MAIN"), ("READ_WS_3", "PACS_MAIN"),
                        ("CT_SCANNER_01", "NO_SUCH_AE")}
    accepted = [f["accepted_services"] for f in found if f["dicom"] == "associate_ac"]
    assert ["verification"] in accepted and ["storage:ct"] in accepted and ["qr_find"] in accepted
    assert [f["reason"] for f in found if f["dicom"] == "associate_rj"] == ["called_ae_not_recognized"]
    assert not any(canary in json.dumps(found) for canary in CANARIES)
