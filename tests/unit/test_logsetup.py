"""agent.logsetup: JSON lines when the stream is not a terminal, a readable console when it is."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import structlog

from agent import logsetup


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_terminal() -> None:
    """Piped or journald output gets one JSON object per event, with level and timestamp."""
    out = io.StringIO()
    logsetup.configure("info", out)
    structlog.get_logger("t").info("replay_done", frames=3)
    record = json.loads(out.getvalue())
    assert (record["event"], record["frames"], record["level"]) == ("replay_done", 3, "info")
    assert record["timestamp"].endswith("Z")


def test_console_rendering_on_a_terminal() -> None:
    """An installer at a terminal reads plain text, not JSON."""
    out = _Terminal()
    logsetup.configure("info", out)
    structlog.get_logger("t").info("capture_opened", interface="eth1")
    text = out.getvalue()
    assert "capture_opened" in text and "eth1" in text and not text.startswith("{")


def test_level_filters_debug() -> None:
    """Below the configured level nothing is written."""
    out = io.StringIO()
    logsetup.configure("warning", out)
    structlog.get_logger("t").info("chatty")
    assert out.getvalue() == ""


_LOGGING_CHILD = """
import os, sys
from agent import logsetup
import structlog
logsetup.configure("info")
log = structlog.get_logger("child")
for n in range(2000):
    log.info("line", child=sys.argv[1], n=n, pad="x" * 200)
"""


def test_processes_sharing_stderr_never_interleave_a_line() -> None:
    """Two unbuffered processes logging into one pipe (capture workers and the service) each write
    whole lines: every line parses as JSON and none is lost."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    read, write = os.pipe()
    children = [subprocess.Popen([sys.executable, "-c", _LOGGING_CHILD, str(n)], stderr=write, env=env)
                for n in range(2)]
    os.close(write)
    with os.fdopen(read) as stream:
        lines = stream.read().splitlines()
    assert [child.wait(timeout=60) for child in children] == [0, 0]
    parsed = [json.loads(line) for line in lines]
    expected = sorted((str(child), n) for child in range(2) for n in range(2000))
    assert sorted((p["child"], p["n"]) for p in parsed) == expected
