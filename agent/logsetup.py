"""Structured logging: readable on a terminal, JSON lines otherwise. Never per packet: count instead."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", stream: object = None) -> None:
    out = stream if stream is not None else sys.stderr
    renderer: structlog.typing.Processor
    if getattr(out, "isatty", lambda: False)():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # one write per line (message and newline together): worker processes share stderr, and with
        # PYTHONUNBUFFERED a print() of the message and then its newline interleaves with theirs
        logger_factory=structlog.WriteLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
