"""`ward-agent replay` against tshark: per-direction packets of each conversation, every frame accounted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import wardgen
from conftest import SHARED_PCAPS, shared_captures
from tshark_conv import flow_counts, tshark_counts


def _replay(*captures: Path) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "agent", "replay", *map(str, captures)],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def _assert_agrees(capture: Path) -> None:
    records = _replay(capture)
    summary = records[-1]
    assert summary["type"] == "summary"
    assert summary["unaccounted"] == 0, summary
    assert summary["frames"] > 0
    ours, theirs = flow_counts(records), tshark_counts(str(capture))
    differences = {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys()
                   if ours.get(k) != theirs.get(k)}
    assert not differences, f"(ours, tshark) per conversation: {differences}"


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_PCAPS.is_dir(), reason=f"{SHARED_PCAPS} is absent")
@pytest.mark.parametrize("capture", shared_captures(), ids=lambda p: p.name)
def test_shared_capture_agrees_with_tshark(capture: Path) -> None:
    """A public capture: conversations equal tshark's and no frame is unaccounted."""
    _assert_agrees(capture)


@pytest.mark.parametrize("linktype", [1, 113, 101, 0, 9, 51, 104, 105, 127, 192])
def test_generated_sample_agrees_with_tshark(tmp_path: Path, linktype: int) -> None:
    """The project's own ward sample, in each supported link type, agrees with tshark."""
    capture = tmp_path / "sample.pcap"
    with wardgen.PcapWriter(capture, linktype=linktype) as out:
        for ts, frame in wardgen.sample():
            relinked = wardgen.relink(linktype, frame)
            if relinked is not None:
                out.write(ts, relinked)
    _assert_agrees(capture)


def test_edge_cases_agree_with_tshark(tmp_path: Path) -> None:
    """ICMP errors, fragments, tunnels, TSO, QinQ and IPv6 are counted as tshark counts them."""
    capture = tmp_path / "edge.pcap"
    with wardgen.PcapWriter(capture) as out:
        for ts, frame in wardgen.edge():
            out.write(ts, frame)
    _assert_agrees(capture)


def test_pcapng_agrees_with_tshark(tmp_path: Path) -> None:
    """A pcapng file is read like a pcap."""
    capture = tmp_path / "sample.pcapng"
    wardgen.write_pcapng(capture, 1, wardgen.sample())
    _assert_agrees(capture)
