"""What every hinter shares: the shape of its output and options, and the flow for datagrams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Fields = dict[str, "str | int | bool | list[str] | list[int]"]


@dataclass(frozen=True, slots=True)
class HintOptions:
    """Site policy the hinters obey. Off by default: user names are personal data too."""

    record_user: bool = False


class DatagramFlow:
    """A flow whose every payload is one whole message (DHCP, DNS): parse each on its own.

    It holds nothing of its flow, so one instance serves every flow of its protocol:
    a DNS-heavy ward keeps tens of thousands of such flows in their head at once.
    """

    __slots__ = ("_parse",)
    done = False  # never done by itself: the head's packet and byte limits end it

    def __init__(self, parse: Callable[[bytes], Fields]) -> None:
        self._parse = parse

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        return [self._parse(payload)]

    def close(self) -> list[Fields]:
        return []
