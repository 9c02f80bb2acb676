"""Packet-time expiry for the flow table: a one-second timer wheel with lazy rescheduling.

The wheel is visited whenever packet time crosses a second boundary, so the same packets give the
same flows whatever the batching. A flow is filed in the slot of its deadline (idle, active or
close grace); a visited flow that is not due yet moves to the slot of its real deadline. Eviction
under a full table walks the same wheel. FlowTable owns the columns; this base class reads them.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Final

from agent.fragments import FragmentTable
from agent.records import Counters

US: Final = 1_000_000
FREE, OPEN, CLOSING = 0, 1, 2


class Expiry:
    """The wheel and the timeouts, in integer microseconds of packet time."""

    _counters: Counters
    _state: bytearray
    _due: array[int]
    _first: array[int]
    _last: list[int]
    _flags: list[int]
    _continuing: dict[bytes, int]
    _fragments: FragmentTable

    def __init__(self, idle: float, active: float, grace: float) -> None:
        self._idle = round(idle * US)
        self._active = round(active * US)
        self._grace = round(grace * US)
        horizon = max(self._idle, self._active, self._grace) // US + 2
        self._wheel_size = 1 << horizon.bit_length()
        self._wheel: list[list[int]] = [[] for _ in range(self._wheel_size)]
        self._second = -1
        self._tick = 0
        self._evict_cursor = 0
        self.on_second: Callable[[int], None] | None = None  # called as packet time enters a new second

    def retime(self, idle: float, active: float, grace: float) -> None:
        """New timeouts for a running table (a remote push); ValueError if they outgrow the wheel.

        Filed flows keep their slots: a visit recomputes each deadline from the new timeouts."""
        horizon = round(max(idle, active, grace)) + 2
        if horizon > self._wheel_size:
            raise ValueError("timeouts longer than the running timer wheel: needs a restart")
        self._idle, self._active, self._grace = round(idle * US), round(active * US), round(grace * US)

    def _end(self, slot: int, reason: str) -> None:
        raise NotImplementedError

    def _clock(self, t: int, now: int) -> int:
        """A packet outside the current second: clamp a step back, or run the wheel forward."""
        if t < now:
            self._counters.add("clock.backwards")
            return now
        target = t // US
        if self._second < 0:
            self._second = self._evict_cursor = target
        second = max(self._second, target - self._wheel_size)
        while second < target:
            second += 1
            self._visit(second)
        self._second = self._evict_cursor = target
        self._tick = (target + 1) * US
        if self.on_second is not None:
            self.on_second(target)
        return t

    def _schedule(self, ja: int, second: int) -> None:
        self._due[ja >> 1] = second
        self._wheel[second % self._wheel_size].append(ja)

    def _deadline(self, slot: int) -> tuple[int, str]:
        ja = slot << 1
        last_a, last_b = self._last[ja], self._last[ja + 1]
        last = last_a if last_a > last_b else last_b
        if self._state[slot] == CLOSING:
            reason = "rst" if (self._flags[ja] | self._flags[ja + 1]) & 4 else "fin"
            return last + self._grace, reason
        idle_at, active_at = last + self._idle, self._first[slot] + self._active
        return (idle_at, "idle") if idle_at <= active_at else (active_at, "active")

    def _visit(self, second: int) -> None:
        position = second % self._wheel_size
        entries, self._wheel[position] = self._wheel[position], []
        clock = second * US
        state, due = self._state, self._due
        for ja in entries:
            slot = ja >> 1
            if state[slot] == FREE or due[slot] > second:
                continue  # stale: the flow ended or moved to a later slot
            deadline, reason = self._deadline(slot)
            if clock >= deadline:
                self._end(slot, reason)
            else:
                self._schedule(ja, (deadline - 1) // US + 1)
        self._fragments.expire(clock)
        if second % 64 == 0 and self._continuing:
            horizon = second - self._idle // US
            self._continuing = {k: s for k, s in self._continuing.items() if s >= horizon}

    def _evict(self) -> None:
        """Make room: end a closing flow, else the least recently active one (1 s resolution).

        The wheel is walked from now on. A flow filed early for its active-timeout cut but still
        sending is moved to the slot where it would go idle (under this pressure its cut may
        come late); the first flow found that is closing or idle by its slot is evicted.
        """
        state, due, limit = self._state, self._due, self._second + self._wheel_size
        while self._evict_cursor < limit:
            cursor = self._evict_cursor
            entries = self._wheel[cursor % self._wheel_size]
            while entries:
                ja = entries.pop()
                slot = ja >> 1
                if state[slot] == FREE or due[slot] != cursor:
                    continue
                last_a, last_b = self._last[ja], self._last[ja + 1]
                idle_due = ((last_a if last_a > last_b else last_b) + self._idle - 1) // US + 1
                if state[slot] == OPEN and idle_due > cursor:
                    self._schedule(ja, idle_due)
                    continue
                self._end(slot, "evicted")
                return
            self._evict_cursor += 1
        live = [s for s in range(len(state)) if state[s] != FREE]  # every filed entry was moved on
        self._end(min(live, key=lambda s: max(self._last[2 * s], self._last[2 * s + 1])), "evicted")
