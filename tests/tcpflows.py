"""TCP payloads per flow of a capture, read with tshark, as the flow head would see them (hint tests)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache
def tcp_flows(capture: Path) -> list[tuple[int, int, list[tuple[bytes, bool]]]]:
    """(a_port, b_port, [(payload, from_a)...]) per TCP stream, read with tshark; side a sent the SYN."""
    fields = ["tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport",
              "tcp.flags", "tcp.payload"]
    command = ["tshark", "-n", "-r", str(capture), "-Y", "tcp", "-T", "fields"]
    out = subprocess.run([*command, *[a for f in fields for a in ("-e", f)]], capture_output=True, text=True,
                         check=True).stdout
    flows: dict[str, tuple[tuple[str, int], tuple[str, int], list[tuple[bytes, bool]]]] = {}
    for line in out.splitlines():
        stream, src4, src6, sport, dst4, dst6, dport, flags, payload = line.split("\t")
        source, target = (src4 or src6, int(sport)), (dst4 or dst6, int(dport))
        if stream not in flows:  # a SYN-ACK seen first makes its receiver the initiator
            syn_ack = int(flags, 16) & 0x12 == 0x12
            flows[stream] = (target, source, []) if syn_ack else (source, target, [])
        a, _, segments = flows[stream]
        if payload:
            segments.append((bytes.fromhex(payload.replace(":", "")), source == a))
    return [(a[1], b[1], segments) for a, b, segments in flows.values()]
