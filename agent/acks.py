"""Collector acknowledgements: what the collector publishes after a commit, and what the sensor reads back.

Why: mosquitto answers PUBACK as soon as a message is in its memory, and a SIGKILL loses it, so a sensor
that deleted spooled entries on PUBACK could lose data (DESIGN.md section 5). The sensor therefore keeps
every entry until the collector says it has committed it, end to end.

Wire format, on `ward/<site>/<sensor>/ack` (QoS 1, not retained; only the collector may write it, only
that sensor may read it): compact JSON `{"boot": B, "seqs": [[first, last], ...]}`, the sequence numbers
of boot B that the collector committed to its database (a duplicate it dropped counts as committed: it
was committed before), as inclusive ranges, ascending and disjoint. A collector acknowledges only
messages whose signature it verified (stored, duplicate, or authentic but unusable), never a rejected
one: otherwise anyone able to inject a message could make a sensor forget a real entry.

The collector calls `ack_messages(committed)` after each commit and publishes every (topic, payload)
it returns at QoS 1. Payloads stay small: at most `MAX_RANGES` ranges each (a few KiB). The sensor's
publisher keeps the bookkeeping in `Outstanding` (below).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from typing import Final

from agent import crypto, messages

MAX_RANGES: Final = 256
_LIMIT: Final = 1 << 63
_LEVEL: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def ack_topic(site: str, sensor: str) -> str:
    """The topic on which the collector acknowledges `sensor`'s messages; ValueError for a bad level."""
    for value in (site, sensor):
        if not _LEVEL.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not one topic level of [A-Za-z0-9_.-]")
    return f"ward/{site}/{sensor}/ack"


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges covering exactly the given sequence numbers (repeats allowed)."""
    merged: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if merged and seq == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], seq)
        else:
            merged.append((seq, seq))
    return merged


def encode_ack(boot: int, seqs: Iterable[int]) -> list[bytes]:
    """The ack payloads for these sequence numbers of `boot` (one per MAX_RANGES ranges; [] for none)."""
    spans = ranges(seqs)
    for value in (boot, *(s[0] for s in spans[:1]), *(s[1] for s in spans[-1:])):
        if type(value) is not int or not 0 <= value < _LIMIT:
            raise ValueError(f"{value!r} is not an integer in [0, 2**63)")
    return [json.dumps({"boot": boot, "seqs": [list(s) for s in spans[i:i + MAX_RANGES]]},
                       separators=(",", ":")).encode() for i in range(0, len(spans), MAX_RANGES)]


def decode_ack(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(boot, ranges) from an ack payload; ValueError for anything that is not a well-formed ack."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"ack is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"boot", "seqs"} or not isinstance(doc["seqs"], list):
        raise ValueError("ack must be an object with exactly 'boot' and 'seqs' (a list)")
    boot, spans = doc["boot"], []
    if type(boot) is not int or not 0 <= boot < _LIMIT:
        raise ValueError(f"bad boot {boot!r}")
    for span in doc["seqs"]:
        if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)
                and 0 <= span[0] <= span[1] < _LIMIT):
            raise ValueError(f"bad range {span!r}")
        spans.append((span[0], span[1]))
    return boot, spans


def ack_messages(committed: Iterable[tuple[str, str, int, int]]) -> list[tuple[str, bytes]]:
    """(topic, payload) to publish for committed messages given as (site, sensor, boot, seq)."""
    grouped: dict[tuple[str, str, int], list[int]] = {}
    for site, sensor, boot, seq in committed:
        grouped.setdefault((site, sensor, boot), []).append(seq)
    return [(ack_topic(site, sensor), payload) for (site, sensor, boot), seqs in grouped.items()
            for payload in encode_ack(boot, seqs)]


class Outstanding:
    """The sensor's side: spool entries published and not yet acknowledged by the collector.

    Used by the publisher thread only (no lock). `sent()` registers an entry when it is published,
    reading its (boot, seq) from the sealed header; `delivered()` notes the broker's PUBACK; `ack()`
    applies a collector ack (any boot) and returns the spool ids to remove. The maps hold only entries
    still in the spool: acknowledged ones leave in ack(), evicted ones in `forget_before()`.

    Re-sending after `timeout`: an entry PUBACKed `timeout` seconds ago and still unacknowledged is due
    if an ack arrived after its PUBACK (the collector is alive, so this one went missing, e.g. the broker
    dropped it for want of a subscriber). While no ack has come since, the collector is presumably away
    and the broker queues for it; then only one entry per `timeout` is re-sent, as a probe, instead of
    the whole backlog every `timeout` seconds.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._keys: dict[int, tuple[int, int]] = {}  # entry id -> (boot, seq), in id order
        self._ids: dict[tuple[int, int], int] = {}  # (boot, seq) -> entry id
        self._twins: dict[tuple[int, int], list[int]] = {}  # further entries with the same (boot, seq)
        self._delivered: dict[int, float] = {}  # entry id -> PUBACK time, in PUBACK order (this session)
        self._last_ack = float("-inf")
        self._next_probe = float("-inf")
        self.twins = 0

    def __len__(self) -> int:
        return len(self._keys)

    def sent(self, entry_id: int, sealed: bytes) -> bool:
        """Track an entry being published; False if its header cannot be read (the caller drops it)."""
        if entry_id in self._keys:
            return True
        try:
            header = messages.decode_header(crypto.read_header(sealed))
        except ValueError:  # crypto.OpenError and messages.MessageError
            return False
        key = (header.boot, header.seq)
        self._keys[entry_id] = key
        if key in self._ids:  # only if a boot counter was reset: the collector keeps just one of them
            self._twins.setdefault(key, []).append(entry_id)
            self.twins += 1
        else:
            self._ids[key] = entry_id
        return True

    def delivered(self, entry_id: int, now: float) -> None:
        """The broker PUBACKed the entry: it waits for the collector from now on."""
        if entry_id in self._keys:
            self._delivered.pop(entry_id, None)
            self._delivered[entry_id] = now

    def is_delivered(self, entry_id: int) -> bool:
        return entry_id in self._delivered

    def ack(self, boot: int, spans: Iterable[tuple[int, int]], now: float) -> list[int]:
        """Apply a collector ack; the ids of the entries it covers (to remove from the spool)."""
        self._last_ack = now
        done: list[int] = []
        for first, last in spans:
            if last - first >= len(self._ids):
                keys = [k for k in self._ids if k[0] == boot and first <= k[1] <= last]
            else:
                keys = [(boot, seq) for seq in range(first, last + 1) if (boot, seq) in self._ids]
            for key in keys:
                done.append(self._ids.pop(key))
                done.extend(self._twins.pop(key, ()))
        for entry_id in done:
            self.forget(entry_id)
        return done

    def due(self, now: float, limit: int) -> list[int]:
        """Up to `limit` delivered entries to publish again now (no longer counted as delivered)."""
        found: list[int] = []
        for entry_id, at in self._delivered.items():
            if len(found) >= limit or at + self._timeout > now:
                break
            if at < self._last_ack:
                found.append(entry_id)
            elif now >= self._next_probe:
                found.append(entry_id)
                self._next_probe = now + self._timeout
                break
            else:
                break
        for entry_id in found:
            del self._delivered[entry_id]
        return found

    def forget(self, entry_id: int) -> None:
        """Stop tracking an entry (acknowledged, or gone from the spool)."""
        key = self._keys.pop(entry_id, None)
        self._delivered.pop(entry_id, None)
        if key is None:
            return
        if self._ids.get(key) == entry_id:
            twins = self._twins.pop(key, [])
            if twins:
                self._ids[key] = twins.pop(0)
                if twins:
                    self._twins[key] = twins
            else:
                del self._ids[key]
        elif key in self._twins:
            self._twins[key] = [i for i in self._twins[key] if i != entry_id]
            if not self._twins[key]:
                del self._twins[key]

    def forget_before(self, oldest: int | None) -> int:
        """Forget entries with ids below the spool's oldest (None: empty spool), i.e. evicted; how many."""
        gone = list(itertools.takewhile(lambda i: oldest is None or i < oldest, self._keys))
        for entry_id in gone:
            self.forget(entry_id)
        return len(gone)

    def new_session(self) -> None:
        """A new connection: everything not acknowledged will be published again."""
        self._delivered.clear()
        self._next_probe = float("-inf")
