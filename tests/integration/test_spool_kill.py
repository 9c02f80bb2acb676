"""agent.spool under SIGKILL: a real child process spools and is killed at seeded random moments;
every entry it reported committed (append() returned) and not removed must be there, in order, once.

The child and the checks live in scripts/spool_torture.py (whose `kill` part runs 50 kills); here 10.
"""

from __future__ import annotations

from pathlib import Path

import spool_torture


def test_sigkill_loses_no_committed_entry(tmp_path: Path) -> None:
    """Ten SIGKILLs at random moments: nothing committed lost, nothing removed back, no damage."""
    result = spool_torture.kill_rounds(tmp_path / "spool", kills=10, seed=20260101)
    assert result["problems"] == []
    assert result["appends_reported"] > 1000 and result["removes_reported"] > 500


def test_the_check_reports_a_missing_or_resurrected_entry(tmp_path: Path) -> None:
    """The check is not vacuous: a committed id that is absent, or a removed id present, is reported."""
    directory = tmp_path / "spool"
    committed: dict[int, tuple[int, int]] = {}
    removed: set[int] = set()
    maybe: set[int] = set()
    spool_torture.parse(spool_torture.run_child(directory, 0, 0.5), committed, removed, maybe)
    unsure = frozenset(maybe)  # remove() called, the kill came before it was reported done

    def problems(committed_: dict[int, tuple[int, int]], removed_: set[int]) -> list[str]:
        return [p.split(":")[0] for p in spool_torture.verify(directory, committed_, removed_, unsure)[0]]

    kept = max(i for i in committed if i not in removed and i not in unsure)
    assert problems(committed, removed) == []
    assert problems({**committed, max(committed) + 10: (0, 10**9)}, removed) == ["lost"]
    assert problems(committed, removed | {kept}) == ["back"]
