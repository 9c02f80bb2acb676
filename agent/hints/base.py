"""What every hinter shares: the shape of its output, and the flow for one-message datagrams."""

from __future__ import annotations

from collections.abc import Callable

Fields = dict[str, "str | int | list[str] | list[int]"]


class DatagramFlow:
    """A flow whose every payload is one whole message (DHCP, DNS): parse each on its own."""

    def __init__(self, parse: Callable[[bytes], Fields]) -> None:
        self.done = False
        self._parse = parse

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        return [self._parse(payload)]
