"""Conversation packet counts from tshark and from our flow records, in one comparable shape.

Both sides become {(proto, endpoint, endpoint): (packets from the first endpoint, packets from the
second)} with the endpoints sorted, so the direction of each count is unambiguous. Our flows are
summed per 5-tuple (tshark does not split a conversation by time), and VLAN ids are ignored as
tshark's conversation table does.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Iterable
from typing import Any

Endpoint = tuple[str, int]
ConvKey = tuple[str, Endpoint, Endpoint]
Counts = dict[ConvKey, tuple[int, int]]

_ROW = re.compile(r"^(\S+)\s+<->\s+(\S+)\s+(\d+)\s+\S+(?:\s+\S+)?\s+(\d+)\s+\S+(?:\s+\S+)?\s+(\d+)\s")


def _endpoint(text: str) -> Endpoint:
    address, _, port = text.rpartition(":")
    return ipaddress.ip_address(address.strip("[]")).compressed, int(port)


def _add(counts: Counts, proto: str, a: Endpoint, b: Endpoint, from_a: int, from_b: int) -> None:
    if b < a:
        a, b, from_a, from_b = b, a, from_b, from_a
    before = counts.get((proto, a, b), (0, 0))
    counts[(proto, a, b)] = (before[0] + from_a, before[1] + from_b)


def tshark_counts(capture: str) -> Counts:
    """Parse `tshark -q -z conv,tcp -z conv,udp`; in its rows `<-` counts frames to the left endpoint."""
    out = subprocess.run(
        ["tshark", "-n", "-r", capture, "-q", "-z", "conv,tcp", "-z", "conv,udp"],
        check=True, capture_output=True, text=True,
    ).stdout
    counts: Counts = {}
    proto = ""
    for line in out.splitlines():
        if line.startswith("TCP Conversations"):
            proto = "tcp"
        elif line.startswith("UDP Conversations"):
            proto = "udp"
        elif (match := _ROW.match(line)) and proto:
            left, right = _endpoint(match[1]), _endpoint(match[2])
            to_left, from_left = int(match[3]), int(match[4])
            _add(counts, proto, left, right, from_left, to_left)
    return counts


def flow_counts(records: Iterable[dict[str, Any]]) -> Counts:
    counts: Counts = {}
    for r in records:
        if r.get("type") == "flow" and r["proto"] in ("tcp", "udp"):
            a = (ipaddress.ip_address(r["a_ip"]).compressed, r["a_port"])
            b = (ipaddress.ip_address(r["b_ip"]).compressed, r["b_port"])
            _add(counts, r["proto"], a, b, r["a_pkts"], r["b_pkts"])
    return counts
