"""Plain records exchanged between pipeline stages (DESIGN.md section 2).

Times are epoch seconds as floats. Addresses are text (dotted quad or RFC 5952 IPv6); MACs are
lower-case colon-separated hex, or None where the link layer carried none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

END_REASONS = ("fin", "rst", "idle", "active", "evicted", "end")


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One bidirectional flow; side a is the initiator."""

    first: float
    last: float
    proto: str | int
    a_ip: str
    a_port: int
    b_ip: str
    b_port: int
    a_mac: str | None
    b_mac: str | None
    vlan: tuple[int, ...]
    a_pkts: int
    b_pkts: int
    a_bytes: int
    b_bytes: int
    a_flags: str
    b_flags: str
    end: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "flow",
            "first": self.first,
            "last": self.last,
            "proto": self.proto,
            "a_ip": self.a_ip,
            "a_port": self.a_port,
            "b_ip": self.b_ip,
            "b_port": self.b_port,
            "a_mac": self.a_mac,
            "b_mac": self.b_mac,
            "vlan": list(self.vlan),
            "a_pkts": self.a_pkts,
            "b_pkts": self.b_pkts,
            "a_bytes": self.a_bytes,
            "b_bytes": self.b_bytes,
            "a_flags": self.a_flags,
            "b_flags": self.b_flags,
            "end": self.end,
        }


@dataclass(slots=True)
class Counters:
    """Named counters; every bound and every skip reason increments one."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n

    def get(self, name: str) -> int:
        return self.values.get(name, 0)
