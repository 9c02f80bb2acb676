"""The `ward-agent` command: replay output, exit codes, readable report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parents[1] / "golden" / "captures"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True)


def test_replay_writes_json_lines_ending_in_a_summary() -> None:
    """Every stdout line is a JSON object with "type" first: flows, then devices, then the summary."""
    result = _run("replay", str(GOLDEN / "sample.pcap"))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(next(iter(r)) == "type" for r in records)
    kinds = [r["type"] for r in records]
    flows, devices = kinds.count("flow"), kinds.count("device")
    assert kinds == ["flow"] * flows + ["device"] * devices + ["summary"] and devices > 0
    assert records[-1]["flows"] == flows


def test_report_goes_to_stderr(tmp_path: Path) -> None:
    """--report - prints a readable summary on stderr; --emit FILE keeps stdout clean."""
    out = tmp_path / "records.jsonl"
    result = _run("replay", str(GOLDEN / "sample.pcap"), "--emit", str(out), "--report", "-")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "largest flows:" in result.stderr and "unaccounted: 0" in result.stderr
    assert "devices:" in result.stderr
    assert out.read_text().count("\n") > 1


def test_invalid_config_exits_78_listing_problems(tmp_path: Path) -> None:
    """A bad config file stops the agent with EX_CONFIG and names each bad key."""
    bad = tmp_path / "agent.toml"
    bad.write_text("[flows]\nidle_timeout = -1\nmax_flow = 3\n")
    result = _run("replay", str(GOLDEN / "sample.pcap"), "--config", str(bad))
    assert result.returncode == 78
    assert "flows.idle_timeout" in result.stderr and "flows.max_flow" in result.stderr
    assert result.stdout == ""


def test_missing_capture_exits_66() -> None:
    """Nothing readable: EX_NOINPUT, and the summary still says why."""
    result = _run("replay", "/nonexistent/capture.pcap")
    assert result.returncode == 66
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["frames"] == 0 and "No such file" in summary["capture_errors"][0]


def test_damaged_capture_keeps_what_was_read(tmp_path: Path) -> None:
    """A capture cut mid-record: every whole packet before the cut is replayed, exit 65."""
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((GOLDEN / "sample.pcap").read_bytes()[:100_000])
    result = _run("replay", str(cut))
    assert result.returncode == 65
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["frames"] == 133 and summary["unaccounted"] == 0
    assert "truncated" in summary["capture_errors"][0]


def test_version() -> None:
    """--version names the program."""
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.startswith("ward-agent ")


def test_an_approved_finding_stops_recurring(tmp_path: Path) -> None:
    """The review loop: a finding approved by an allow rule keyed like it is gone from the next replay."""
    scenario = str(Path(__file__).parents[1] / "captures" / "scenario-attack.pcap")

    def findings(*options: str) -> dict[str, str]:
        result = _run("replay", scenario, *options)
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        return {r["key"]: r["kind"] for r in records if r["type"] == "finding"}

    before = findings()
    key = next(k for k, kind in before.items() if kind == "port_scan")
    approved = tmp_path / "agent.toml"
    approved.write_text(f'[[detectors.allow]]\nkind = "port_scan"\nkey = "{key}"\n')
    after = findings("--config", str(approved))
    assert key not in after and after == {k: v for k, v in before.items() if k != key}


def test_the_summary_counts_findings_by_kind_and_those_held_back(tmp_path: Path) -> None:
    """The summary's `findings` adds up to the finding records; an allow rule's drops are counted."""
    scenario = str(Path(__file__).parents[1] / "captures" / "scenario-attack.pcap")
    quiet = tmp_path / "agent.toml"
    quiet.write_text('[[detectors.allow]]\nkind = "port_scan"\nkey_prefix = "port_scan:10.1.0.66->"\n')
    result = _run("replay", scenario, "--config", str(quiet))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [r["kind"] for r in records if r["type"] == "finding"]
    counted = records[-1]["findings"]
    assert counted["emitted"] == len(kinds) > 0
    assert {kind: counted[kind] for kind in set(kinds)} == {kind: kinds.count(kind) for kind in set(kinds)}
    assert counted["allowed"] >= 1 and "port_scan" not in counted
