"""scripts/clinical_captures.py and its captures: real DICOM and HL7 traffic that decodes as documented."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import clinical_captures as cc
import pytest
from conftest import ROOT

CAPTURES = ROOT / "tests" / "captures"
DICOM, HL7 = CAPTURES / "dicom-workflow.pcap", CAPTURES / "hl7-mllp.pcap"
CANARIES = (b"ZZQX", b"MRN-CANARY-7731", b"19010203")


def _tshark(capture: Path, decode_as: str, *fields: str) -> list[list[str]]:
    command = ["tshark", "-r", str(capture), "-d", decode_as, "-T", "fields", "-E", "separator=\t"]
    for field in fields:
        command += ["-e", field]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def _summary(capture: Path, decode_as: str) -> list[str]:
    """tshark's one-line summary of each frame, Info column last (its field name differs by version)."""
    command = ["tshark", "-r", str(capture), "-d", decode_as]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()


def _payloads(capture: Path) -> list[tuple[str, str, bytes]]:
    """(stream, source port, TCP payload) of each segment that carries data."""
    rows = _tshark(capture, "tcp.port==1,data", "tcp.stream", "tcp.srcport", "tcp.payload")
    return [(stream, port, bytes.fromhex(data.replace(":", ""))) for stream, port, data in rows if data]


def test_dicom_capture_holds_the_documented_associations() -> None:
    """tshark sees the four associations with their AE titles, echo, two stores, a find and a reject."""
    info = _summary(DICOM, "tcp.port==11112,dicom")
    requests = [line[line.index("A-ASSOCIATE"):] for line in info if "A-ASSOCIATE request" in line]
    assert requests == ["A-ASSOCIATE request CT_SCANNER_01 --> PACS_MAIN"] * 2 + [
        "A-ASSOCIATE request CT_SCANNER_01 --> NO_SUCH_AE", "A-ASSOCIATE request READ_WS_3 --> PACS_MAIN"]
    assert sum("A-ASSOCIATE accept" in line for line in info) == 3
    assert sum("Called AE title not recognized" in line for line in info) == 1
    assert sum("C-ECHO-RQ" in line for line in info) == 1
    assert sum("C-STORE-RQ" in line for line in info) == 2
    assert sum("C-FIND-RQ ID" in line for line in info) == 1
    assert sum("A-RELEASE response" in line for line in info) == 3


def test_hl7_capture_holds_messages_and_acks() -> None:
    """tshark sees ADT and ORU messages, each answered by an ACK."""
    info = _summary(HL7, "tcp.port==2575,hl7")
    assert sum(" ADT (A01)" in line for line in info) == 2  # the "#"-separated one as well
    assert sum(" ORU (R01)" in line for line in info) == 2
    assert sum(" ACK (" in line for line in info) == 4


def test_hl7_capture_has_other_separators_and_a_split_message() -> None:
    """One message uses '#' as field separator; one is spread over six TCP segments."""
    payloads = _payloads(HL7)
    assert any(data.startswith(b"\x0bMSH#$~\\&#ADT_FEED#") for _, _, data in payloads)
    assert any(data.startswith(b"\x0bMSH#$~\\&#INTERFACE_ENG#") and b"\rMSA#AA#CTRL0003\r" in data
               for _, _, data in payloads)
    by_stream: dict[str, int] = {}
    for stream, port, _ in payloads:
        if port != str(cc.MLLP_PORT):
            by_stream[stream] = by_stream.get(stream, 0) + 1
    assert sorted(by_stream.values()) == [1, 2, 6]


def test_captures_carry_the_canaries_and_stay_small() -> None:
    """Both captures hold every canary (for the PHI suite to hunt) and stay under 200 KB."""
    for capture in (DICOM, HL7):
        raw = capture.read_bytes()
        assert all(canary in raw for canary in CANARIES), capture.name
        assert len(raw) < 200_000


def test_only_the_documented_hosts_talk() -> None:
    """Every IP packet is between the addresses the README lists; nothing else is in the captures."""
    hosts = {address for address, _ in cc.HOSTS.values()}
    for capture in (DICOM, HL7):
        rows = _tshark(capture, "tcp.port==1,data", "ip.src", "ip.dst", "arp.src.proto_ipv4")
        seen = {value for row in rows for value in row if value}
        assert seen <= hosts, capture.name


def test_ack_answers_in_the_message_separators() -> None:
    """The engine's ACK swaps sender and receiver, keeps the separators and echoes the control id."""
    ack = cc.hl7_ack(cc.hl7_message("ADT^A01^ADT_A01", "X1", sep="#", enc="$~\\&"))
    assert ack.startswith(b"\x0bMSH#$~\\&#INTERFACE_ENG#MAIN_HOSP#ADT_FEED#WARD_7#")
    assert b"#ACK$A01#ACKX1#" in ack and ack.endswith(b"\rMSA#AA#X1\r\x1c\r")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None
                    or importlib.util.find_spec("pynetdicom") is None,
                    reason="needs root, tcpdump and pynetdicom")
def test_script_regenerates_both_captures_and_cleans_up(tmp_path: Path) -> None:
    """A fresh run writes both captures with the same associations and leaves no namespace behind."""
    script = ROOT / "scripts" / "clinical_captures.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, timeout=300,
                   capture_output=True)
    fresh = _summary(tmp_path / "dicom-workflow.pcap", "tcp.port==11112,dicom")
    assert sum("A-ASSOCIATE request" in line for line in fresh) == 4
    assert (tmp_path / "hl7-mllp.pcap").stat().st_size > 1000
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "wcap-" not in namespaces
