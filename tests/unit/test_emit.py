"""agent.emit: flow lines are the same JSON as the json module would write, and the report reads well."""

from __future__ import annotations

import json

import pytest

from agent.emit import FlowTally, JsonLines, flow_line
from agent.records import FlowRecord

RECORDS = [
    FlowRecord(1767225600.000001, 1767225661.25, "tcp", "10.0.0.1", 51000, "10.0.0.2", 104,
               "02:00:00:00:00:01", "02:00:00:00:00:02", (30,), 10, 8, 12000, 640, "SPA", "SFA", "fin"),
    FlowRecord(1767225600.0, 1767225600.0, 132, "fd00::1", 0, "2001:db8::7", 0, None, None, (100, 30),
               1, 0, 60, 0, "", "", "end"),
    FlowRecord(0.1, 0.2, "icmp6", "::1", 128, "::1", 0, None, "02:00:00:00:00:02", (), 3, 3, 312, 312, "", "",
               "idle"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: str(r.proto))
def test_flow_line_is_the_json_of_the_record(record: FlowRecord) -> None:
    """The hand-formatted line parses to exactly the record's dict, "type" first, one line."""
    line = flow_line(record)
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert parsed == record.to_dict()
    assert next(iter(parsed)) == "type"
    assert list(parsed) == list(record.to_dict())


def test_json_lines_writes_records_and_summary() -> None:
    """JsonLines writes flows and plain dicts one per line."""
    out: list[str] = []

    class Sink:
        write = out.append

    writer = JsonLines(Sink())  # type: ignore[arg-type]
    writer.flow(RECORDS[0])
    writer.record({"type": "summary", "frames": 3})
    assert [json.loads(line)["type"] for line in out] == ["flow", "summary"]


def test_report_lists_the_largest_flows_first() -> None:
    """The readable report names the flow counts and puts the biggest flow first."""
    tally = FlowTally(top=2)
    for record in RECORDS:
        tally.flow(record)
    summary = {"captures": ["x.pcap"], "frames": 9, "seconds": 0.1, "flows": 3, "flows_by_end": {"fin": 1},
               "peak_live_flows": 3, "in_flows": 9, "non_ip": {}, "ip_fragments": 0, "skipped": {},
               "unaccounted": 0, "capture_errors": []}
    text = tally.report(summary)
    largest = text.split("largest flows:\n")[1].splitlines()
    assert len(largest) == 2 and "10.0.0.1:51000 -> 10.0.0.2:104 vlan 30" in largest[0]
