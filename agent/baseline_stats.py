"""Small pieces the baseline is built from: address classes, service labels, robust volume statistics.

"Private" here is the RFC list a ward network is built from (RFC 1918, CGNAT, link-local, loopback, ULA),
not Python's `is_private`, which also counts the documentation ranges (192.0.2/24, 198.51.100/24,
203.0.113/24) and would hide traffic to them. A site with public addresses inside the ward names them
in `local_networks`.

Volume is bytes a device sent to one peer per interval (an hour by default). Only intervals with traffic
become samples; a bounded ring keeps the newest. The statistics are the median and the median absolute
deviation (MAD), which a few huge intervals cannot drag, plus the largest sample seen.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import median
from typing import Any, Final

_PRIVATE: Final = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8",
    "fc00::/7", "fe80::/10", "::1/128"))
EPHEMERAL: Final = 32768  # server ports at or above this are one bucket: "tcp/32768+"


@lru_cache(maxsize=65536)
def address_class(ip: str, local: tuple[str, ...] = ()) -> str:
    """"private", "external" or "other" (multicast, broadcast, unspecified, not an address)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "other"
    if address.is_multicast or address.is_unspecified or ip == "255.255.255.255":
        return "other"
    if any(address in ipaddress.ip_network(n, strict=False) for n in local):
        return "private"
    if address.version == 4 and ip.endswith(".255"):
        return "other"  # a subnet broadcast as far as a /24 ward can tell
    return "private" if any(address in n for n in _PRIVATE if n.version == address.version) else "external"


def service_label(proto: str | int, port: int) -> str:
    """'tcp/11112'; server ports in the ephemeral range share one label, so passive FTP is one service."""
    return f"{proto}/{EPHEMERAL}+" if port >= EPHEMERAL else f"{proto}/{port}"


@dataclass(slots=True)
class VolumeStats:
    """Bytes per interval: a bounded ring of non-empty interval totals and the interval being filled."""

    samples: list[int]
    slot: int = -1
    current: int = 0

    def add(self, slot: int, nbytes: int, limit: int) -> None:
        """Count bytes in interval `slot`; an earlier interval that ends becomes a sample."""
        if slot != self.slot:
            self.close(limit)
            self.slot = slot
        self.current += nbytes

    def close(self, limit: int) -> None:
        if self.current > 0:
            self.samples.append(self.current)
            if len(self.samples) > limit:
                del self.samples[: len(self.samples) - limit]
        self.current = 0

    def to_json(self) -> list[int]:
        return self.samples + ([self.current] if self.current > 0 else [])


@dataclass(frozen=True, slots=True)
class Robust:
    """Median, MAD and largest of a sample set; n = 0 means no history."""

    n: int
    median: float
    mad: float
    largest: int

    @classmethod
    def of(cls, samples: Sequence[int]) -> Robust:
        if not samples:
            return cls(0, 0.0, 0.0, 0)
        middle = median(samples)
        return cls(len(samples), float(middle), float(median(abs(s - middle) for s in samples)),
                   max(samples))


def ints(value: Any, limit: int) -> list[int]:
    """A JSON list of non-negative ints, cut to the newest `limit`; anything else raises ValueError."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in value):
        raise ValueError(f"expected a list of non-negative integers, got {value!r}"[:200])
    return value[-limit:] if limit else []


def strings(value: Any) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}"[:200])
    return set(value)
