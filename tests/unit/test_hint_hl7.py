"""agent.hints.hl7: MSH/MSA metadata only; canary patient data never comes out, however it is cut."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hints import hl7
from agent.hints.base import HintOptions

CANARIES = ("CANARYSMITH", "CANARYJANE", "MRN998877", "19700101", "CANARYSTREET", "555CANARY")


def _message(sep: str = "|", enc: str = "^~\\&", kind: str = "ADT^A01^ADT_A01",
             control: str = "MSG1") -> bytes:
    s, c = sep, enc[0]
    segments = [
        f"MSH{s}{enc}{s}MONITOR{c}1.2.3{c}ISO{s}WARD7{s}ENGINE{s}HOSP{s}20260101120000{s}{s}{kind}{s}"
        f"{control}{s}P{s}2.5",
        f"EVN{s}A01{s}20260101120000",
        f"PID{s}1{s}{s}MRN998877{c}{c}{c}HOSP{c}MR{s}{s}CANARYSMITH{c}CANARYJANE{s}{s}19700101{s}F{s}{s}{s}"
        f"1 CANARYSTREET{s}{s}555CANARY",
        f"OBX{s}1{s}NM{s}HR{s}{s}72{s}bpm",
    ]
    return b"\x0b" + "\r".join(segments).encode() + b"\r\x1c\r"


def _ack(code: str = "AA") -> bytes:
    return (b"\x0bMSH|^~\\&|ENGINE|HOSP|MONITOR|WARD7|20260101120001||ACK^A01|ACK1|P|2.5\r"
            b"MSA|" + code.encode() + b"|MSG1\r\x1c\r")


def _feed_all(chunks: list[bytes], from_a: bool = True) -> list[dict[str, object]]:
    flow = hl7.start(HintOptions())
    found: list[dict[str, object]] = []
    for chunk in chunks:
        found += flow.feed(chunk, from_a)
    return found


def test_msh_metadata_is_read() -> None:
    """Sending/receiving application and facility, message type and version come from MSH."""
    assert _feed_all([_message()]) == [{
        "sending_app": "MONITOR", "sending_facility": "WARD7", "receiving_app": "ENGINE",
        "receiving_facility": "HOSP", "message_type": "ADT^A01^ADT_A01", "version": "2.5"}]


def test_ack_code_is_read_from_msa() -> None:
    """An acknowledgement carries its MSA-1 code."""
    found = _feed_all([_ack("AE")])
    assert found[0]["message_type"] == "ACK^A01" and found[0]["ack_code"] == "AE"


def test_other_separators_are_honoured() -> None:
    """The field separator is the byte after MSH, the component separator the first encoding char."""
    found = _feed_all([_message(sep="#", enc="$~\\&")])
    assert found[0]["message_type"] == "ADT^A01^ADT_A01" and found[0]["sending_app"] == "MONITOR"


def test_hd_field_holding_a_repetition_escape_or_subcomponent_character_is_left_out() -> None:
    """An application or facility with ~, \\ or & in it is not reported; a clean one still is."""
    found = _feed_all([b"\x0bMSH|^~\\&|MON~ITOR|WA\\RD7|EN&GINE|HOSP|20260101||ADT^A01|M1|P|2.5\r\x1c\r"])
    assert found == [{"receiving_facility": "HOSP", "message_type": "ADT^A01", "version": "2.5"}]


def test_field_with_bytes_outside_printable_ascii_is_left_out() -> None:
    """An MSH field holding a control byte or a byte above ASCII is not reported."""
    found = _feed_all([b"\x0bMSH|^~\\&|MONIT\xd6R|WARD\x017|ENGINE|HOSP|20260101||ADT^A01|M1|P|2.5\r\x1c\r"])
    assert found == [{"receiving_app": "ENGINE", "receiving_facility": "HOSP", "message_type": "ADT^A01",
                      "version": "2.5"}]


def test_field_ending_in_a_line_feed_is_left_out() -> None:
    """A value must match its pattern whole: a final line feed does not slip through."""
    found = _feed_all([b"\x0bMSH|^~\\&|MONITOR\n|WARD7|ENGINE|HOSP|20260101||ADT^A01\n|M1|P|2.5\n\r\x1c\r"])
    assert found == [{"sending_facility": "WARD7", "receiving_app": "ENGINE", "receiving_facility": "HOSP"}]


def test_accepts_mllp_on_any_port() -> None:
    """Detection is by the MLLP start byte and MSH, not by port."""
    assert hl7.accepts("tcp", 51000, 6661, _message(), True)
    assert not hl7.accepts("tcp", 51000, 2575, b"GET / HTTP/1.1\r\n", True)


def test_garbage_after_the_start_byte_is_refused() -> None:
    """An MLLP start byte not followed by MSH is a parse error, counted by the caller."""
    with pytest.raises(ValueError):
        hl7.start(HintOptions()).feed(b"\x0bXYZ|junk\r\x1c\r", True)


def test_two_messages_in_one_segment() -> None:
    """Back-to-back messages in one payload each give their header."""
    assert [f["message_type"] for f in _feed_all([_message() + _message(kind="ORU^R01")])] == [
        "ADT^A01^ADT_A01", "ORU^R01"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_no_canary_leaves_however_the_stream_is_cut(data: st.DataObject) -> None:
    """Messages and ACKs cut at random offsets, with other separators: no canary in any output."""
    sep, enc = data.draw(st.sampled_from([("|", "^~\\&"), ("#", "$~\\&"), ("!", "*~\\&")]))
    stream = _message(sep, enc) + _ack() + _message(sep, enc, kind="ORU^R01")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    found = _feed_all(chunks)
    text = json.dumps(found)
    assert not any(canary in text for canary in CANARIES)
    assert [f.get("message_type") for f in found] == ["ADT^A01^ADT_A01", "ACK^A01", "ORU^R01"]


@pytest.mark.parametrize("end", range(0, len(_message()) + 1, 7))
def test_no_canary_from_a_message_cut_short(end: int) -> None:
    """A message truncated anywhere yields at most its MSH metadata, never a patient field."""
    try:
        found = _feed_all([_message()[:end]])
    except ValueError:
        return
    assert not any(canary in json.dumps(found) for canary in CANARIES)
