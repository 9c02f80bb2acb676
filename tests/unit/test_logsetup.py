"""agent.logsetup: JSON lines when the stream is not a terminal, a readable console when it is."""

from __future__ import annotations

import io
import json

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
