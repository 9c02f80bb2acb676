"""SSDP / UPnP discovery (UDP 1900): what a device says it is, and what a client searches for.

NOTIFY announcements and search responses carry SERVER (OS, UPnP stack and product, such as
"Linux/3.14.0 UPnP/1.0 IpBridge/1.9.0" from a Philips Hue bridge), the notification or search type
(NT/ST) and the device description URL (LOCATION); M-SEARCH requests carry the searcher's
USER-AGENT. Only these headers are read, plus the uuid from USN. Values must be printable ASCII and
are cut to MAX_VALUE characters; a LOCATION keeps scheme, host, port and path only (no user info,
query or fragment, where a token could hide).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from agent.hints.base import DatagramFlow, Fields, HintOptions

NAME: Final = "ssdp"
PROTO: Final = "udp"
PORT: Final = 1900
MAX_VALUE: Final = 200
MAX_HEADERS: Final = 64
MAX_MESSAGE: Final = 8192
_STARTS: Final = {"M-SEARCH": "msearch", "NOTIFY": "notify"}
_HEADERS: Final = {"server": "server", "user-agent": "user_agent", "st": "st", "nt": "nt", "nts": "nts",
                   "location": "location", "usn": "uuid"}
_PRINTABLE: Final = re.compile(r"^[\x20-\x7e]+$")
_UUID: Final = re.compile(r"^uuid:([0-9A-Za-z-]{1,64})")
_RESPONSE: Final = re.compile(r"^HTTP/1\.[01] (\d{3})")


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    return proto == "udp" and PORT in (a_port, b_port)


def start(options: HintOptions) -> DatagramFlow:
    return _FLOW


def parse(message: bytes) -> Fields:
    """Kind and allow-listed headers of one SSDP datagram; ValueError if it is not SSDP."""
    head = message[:MAX_MESSAGE].split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.replace("\r\n", "\n").split("\n")
    fields: Fields = {"ssdp": _kind(lines[0])}
    if fields["ssdp"] == "response" and (status := _RESPONSE.match(lines[0])) and status.group(1) != "200":
        fields["status"] = int(status.group(1))
    for line in lines[1:MAX_HEADERS + 1]:
        name, colon, value = line.partition(":")
        key = _HEADERS.get(name.strip().lower())
        if not colon or key is None or key in fields:
            continue
        text = value.strip()[:MAX_VALUE]
        if not _PRINTABLE.match(text):
            continue
        if key == "location":
            text = _location(text)
        elif key == "uuid":
            uuid = _UUID.match(text)
            text = uuid.group(1) if uuid else ""
        if text:
            fields[key] = text
    return fields


def _kind(start_line: str) -> str:
    method, _, rest = start_line.partition(" ")
    if method in _STARTS and rest.strip().endswith(("HTTP/1.1", "HTTP/1.0")):
        return _STARTS[method]
    if _RESPONSE.match(start_line):
        return "response"
    raise ValueError("not an SSDP start line")


def _location(url: str) -> str:
    """The URL without user info, query and fragment; empty if it is not an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{parts.path}"


_FLOW: Final = DatagramFlow(parse)  # holds no per-flow state: shared by every flow
