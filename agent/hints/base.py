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
    """A flow whose every payload is one whole message (DHCP, DNS): parse each on its own."""

    def __init__(self, parse: Callable[[bytes], Fields]) -> None:
        self.done = False
        self._parse = parse

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        return [self._parse(payload)]

    def close(self) -> list[Fields]:
        return []
