"""Shared test set-up: pinned environment, the golden update flag, and where the shared captures live."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_PCAPS = Path(os.environ.get("WARD_SHARED_PCAPS", ROOT.parent / "shared" / "pcaps"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ["TZ"] = "UTC"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/*/expected.jsonl from the current output, for review")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def shared_captures() -> list[Path]:
    """The public captures in ../shared/pcaps, or none when the folder is absent."""
    return sorted(SHARED_PCAPS.glob("*.pcap")) if SHARED_PCAPS.is_dir() else []
