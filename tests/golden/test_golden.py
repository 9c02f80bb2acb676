"""Golden cases (Zeek btest style): a generated capture, config overrides, expected canonical JSON Lines.

Run `pytest tests/golden --update-golden` to rewrite the expected files, then review the diff.
"""

from __future__ import annotations

import io
import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import wardgen

from agent import config
from agent.emit import JsonLines
from agent.pipeline import RunTotals, build_inventory, replay

HERE = Path(__file__).parent
CASES = sorted(p.parent for p in HERE.glob("*/case.toml"))


def _case(case_dir: Path) -> dict[str, Any]:
    return tomllib.loads((case_dir / "case.toml").read_text())


def _canonical(lines: str) -> str:
    """Drop what varies between runs (timing, paths); keep everything else as emitted."""
    out = []
    for line in lines.splitlines():
        record = json.loads(line)
        if record["type"] == "summary":
            record.pop("seconds")
            record["captures"] = [Path(c).name for c in record["captures"]]
        out.append(json.dumps(record, separators=(",", ":")))
    return "\n".join(out) + "\n"


def _run(case_dir: Path, fast_path: bool = True) -> str:
    case = _case(case_dir)
    settings = config.parse(case.get("config", {}))
    stream = io.StringIO()
    writer = JsonLines(stream)
    totals = RunTotals()
    inventory = build_inventory(settings, totals)
    replay([str(HERE / "captures" / case["capture"])], settings, writer.flow, fast_path=fast_path,
           on_hint=writer.hint, inventory=inventory, totals=totals)
    for device in inventory.devices():
        writer.record(device)
    writer.record(totals.summary())
    return _canonical(stream.getvalue())


@pytest.mark.parametrize("case_dir", CASES, ids=lambda p: p.name)
def test_golden_output(case_dir: Path, update_golden: bool) -> None:
    """Replaying the case's capture with its config gives exactly the expected records."""
    expected = case_dir / "expected.jsonl"
    actual = _run(case_dir)
    if update_golden:
        expected.write_text(actual)
    assert actual == expected.read_text()


@pytest.mark.parametrize("case_dir", CASES, ids=lambda p: p.name)
def test_general_path_gives_the_same_records(case_dir: Path) -> None:
    """With the inlined fast path switched off, the general decoder produces identical records."""
    assert _run(case_dir, fast_path=False) == _run(case_dir, fast_path=True)


@pytest.mark.parametrize("case_dir", CASES, ids=lambda p: p.name)
def test_capture_regenerates_identically(case_dir: Path, tmp_path: Path) -> None:
    """The committed capture is exactly what its wardgen command writes today."""
    case = _case(case_dir)
    out = tmp_path / case["capture"]
    args = shlex.split(case["command"])
    assert args[0] == "wardgen.py"
    assert wardgen.main([*args[1:2], str(out), *args[2:]]) == 0
    assert out.read_bytes() == (HERE / "captures" / case["capture"]).read_bytes()
