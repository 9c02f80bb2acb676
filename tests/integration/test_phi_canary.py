"""The PHI guarantee: canary patients in HL7 and DICOM traffic never reach a record, a hint or a log.

Every run here goes through the whole sensor pipeline (flow heads, hinters, inventory, JSON output,
the readable report, logs at debug level) and then looks for the canaries in everything it wrote.
The traffic comes from the project's own captures made with real software (tests/captures, see its
README) and from messages cut at every offset, with `|` and other field separators.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import wardgen
from batches import pack
from wardgen import ACK, FIN, PSH, SYN, Host

from agent import logsetup
from agent.config import AgentConfig
from agent.emit import JsonLines
from agent.flowhead import HintSettings
from agent.flows import FlowSettings, FlowTable
from agent.inventory import Inventory
from agent.records import Counters, FlowRecord, ProtoHint

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
# The capture README's canaries (any spelling), and this file's own.
CANARIES = ("ZZQX", "MRN-CANARY-7731", "19010203", "ACC-CANARY-1", "canary", "CANARY", "QXJONES",
            "MRN-998877", "19211231", "Glucose")
SENDER = Host("10.9.0.21", "02:09:00:00:00:21")
ENGINE = Host("10.9.0.20", "02:09:00:00:00:20")
T0 = wardgen.EPOCH + 50.25


def _hits(text: str) -> list[str]:
    return [c for c in CANARIES if c.lower() in text.lower()]


def _hl7(separator: str = "|") -> bytes:
    """An ADT message whose PID, NK1 and OBX carry the canary patient; MSH fields are clean."""
    f, comp = separator, "^" if separator != "^" else "$"
    segments = [
        f"MSH{f}{comp}~\\&{f}ADT_FEED{f}WARD_9{f}ENGINE{f}MAIN{f}20260101120000{f}{f}ADT{comp}A01{f}C1{f}P{f}2.5",
        f"PID{f}1{f}{f}MRN-998877{comp}{comp}{comp}HOSP{comp}MR{f}{f}QXJONES{comp}CANARY{f}{f}19211231{f}F",
        f"NK1{f}1{f}QXJONES{comp}MOTHER{f}MTH",
        f"OBX{f}1{f}NM{f}Glucose{f}{f}5.4{f}mmol/L",
    ]
    return b"\x0b" + "\r".join(segments).encode() + b"\r\x1c\r"


def _dicom_with_patient() -> bytes:
    """An association request, then a P-DATA-TF whose data set names the canary patient."""
    dataset = (wardgen._elem(0x10, 0x10, b"QXJONES^CANARY") + wardgen._elem(0x10, 0x20, b"MRN-998877")
               + wardgen._elem(0x10, 0x30, b"19211231"))
    return wardgen.dicom_associate("CT_SCANNER_09", "PACS_MAIN") + wardgen._pdata(dataset, 2)


def _session(pieces: list[bytes], port: int) -> Iterator[tuple[float, bytes]]:
    conn = wardgen._Tcp(wardgen._Pair(SENDER, ENGINE), 40200, port)
    t = T0
    for frame in (conn.seg(0, SYN), conn.seg(1, SYN | ACK), conn.seg(0, ACK)):
        yield t, frame
        t += 0.001
    for piece in pieces:
        yield t, conn.seg(0, ACK | PSH, piece)
        yield t + 0.0004, conn.seg(1, ACK)
        t += 0.002
    yield t, conn.seg(0, FIN | ACK)
    yield t + 0.001, conn.seg(1, FIN | ACK)


def _pipeline_output(pieces: list[bytes], port: int) -> str:
    """Flows, hints and devices of one session, as the replay stream writes them."""
    stream = io.StringIO()
    writer = JsonLines(stream)
    counters = Counters()
    inventory = Inventory(counters=counters)

    def on_flow(record: FlowRecord) -> None:
        writer.flow(record)
        inventory.on_flow(record)

    def on_hint(hint: ProtoHint) -> None:
        writer.hint(hint)
        inventory.on_hint(hint)

    table = FlowTable(FlowSettings(), on_flow, counters, on_hint=on_hint,
                      hints=HintSettings(record_user=True))
    table.ingest(*pack(list(_session(pieces, port))))
    table.flush()
    for device in inventory.devices():
        writer.record(device)
    writer.record(counters.values)
    return stream.getvalue()


@pytest.mark.parametrize("separator", ["|", "#", "!"])
def test_hl7_cut_at_every_offset_leaks_no_canary(separator: str) -> None:
    """An HL7 message split into two segments at every offset: the header is read, no canary leaves."""
    message = _hl7(separator)
    read = 0
    for cut in range(1, len(message)):
        output = _pipeline_output([message[:cut], message[cut:]], 2575)
        assert _hits(output) == [], (separator, cut)
        read += '"message_type":"ADT^A01"' in output or '"message_type":"ADT$A01"' in output
    assert read == len(message) - 1  # the hinter really read every split message


def test_hl7_in_three_pieces_leaks_no_canary() -> None:
    """Three-way splits around the patient segments: still only MSH fields leave."""
    message = _hl7()
    for first in range(1, len(message), 7):
        for second in range(first + 1, len(message), 11):
            output = _pipeline_output([message[:first], message[first:second], message[second:]], 6661)
            assert _hits(output) == [], (first, second)


def test_dicom_data_set_cut_at_every_offset_leaks_no_canary() -> None:
    """Association + P-DATA with the canary, split at every offset: AE titles leave, the patient not."""
    stream = _dicom_with_patient()
    titles = 0
    for cut in range(1, len(stream)):
        output = _pipeline_output([stream[:cut], stream[cut:]], 104)
        assert _hits(output) == [], cut
        titles += "CT_SCANNER_09" in output
    assert titles == len(stream) - 1


@pytest.mark.parametrize("capture", ["hl7-mllp.pcap", "dicom-workflow.pcap"])
def test_real_software_captures_leak_no_canary_anywhere(capture: str, tmp_path: Path) -> None:
    """The replay command on captures made by pynetdicom and an MLLP sender: stdout, report, debug logs."""
    config = tmp_path / "agent.toml"
    config.write_text('[log]\nlevel = "debug"\n\n[hints]\nrecord_user = true\n')
    result = subprocess.run([sys.executable, "-m", "agent", "replay", str(CAPTURES / capture), "--hints",
                             "--report", "-", "--config", str(config)], capture_output=True, text=True,
                            check=True)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(r["type"] == "hint" for r in records) and any(r["type"] == "device" for r in records)
    assert _hits(result.stdout) == [] and _hits(result.stderr) == []


def test_logs_of_malformed_clinical_payloads_hold_no_canary(capsys: pytest.CaptureFixture[str]) -> None:
    """Garbage after an MLLP start and a hinter failure are counted, and the log lines carry no payload."""
    logsetup.configure("debug")
    try:
        message = _hl7()
        broken = b"\x0bMSX|" + message[5:]
        output = _pipeline_output([broken, message], 2575)
        structlog.get_logger("test").info("done")
    finally:
        structlog.reset_defaults()  # the captured stream closes after this test
    captured = capsys.readouterr()
    assert _hits(output + captured.out + captured.err) == []
    assert AgentConfig().hints.record_user is False
