"""Episodes: bounded episodes held as plain tuples until their second event, with Episode's semantics."""

from __future__ import annotations

import random
from collections.abc import Hashable

from agent.detectors.common import Episode, Episodes
from agent.records import Counters


def _state(episode: Episode) -> tuple[object, ...]:
    return (dict(episode.recent), episode.seen, episode.events, episode.first, episode.last, episode.crossed,
            episode.touched, episode.capped)


def test_episodes_cross_exactly_where_plain_episodes_do() -> None:
    """Random event streams (repeats, gaps past the window, caps) give the same crossings and states."""
    rng = random.Random(7)
    for _ in range(200):
        window, threshold, cap = rng.choice((5.0, 30.0)), rng.randint(2, 5), rng.randint(2, 8)
        table: Episodes[str] = Episodes(1000, Counters(), "evicted")
        plain: dict[str, Episode] = {}
        clock = 0.0
        for _ in range(60):
            clock += rng.choice((0.5, 1.0, 4.0, 40.0))
            key, item = rng.choice("ab"), rng.randint(1, 6)
            plain_episode = plain.setdefault(key, Episode())
            crossed = plain_episode.add(item, clock, clock - 0.5, clock, window, threshold, cap)
            episode = table.add(key, item, clock, clock - 0.5, clock, window, threshold, cap)
            assert (episode is not None) == crossed
        for key, expected in plain.items():
            held = table.episode(key)
            assert held is not None and _state(held) == _state(expected)


def test_episodes_hold_a_key_seen_once_as_a_tuple() -> None:
    """One event (or the same item again) keeps the plain tuple; a second distinct item makes an Episode."""
    table: Episodes[str] = Episodes(10, Counters(), "evicted")
    table.add("k", 80, 1.0, 1.0, 1.0, 300.0, 25, 100)
    table.add("k", 80, 2.0, 2.0, 2.0, 300.0, 25, 100)
    assert table.get("k") == (80, 2.0, 2.0, 2.0)
    table.add("k", 443, 3.0, 3.0, 3.0, 300.0, 25, 100)
    held = table.get("k")
    assert isinstance(held, Episode) and held.distinct == 2


def test_episodes_evict_the_least_recently_added_and_count_it() -> None:
    """A full table drops its oldest key, tuple or Episode alike, and counts the eviction."""
    counters = Counters()
    table: Episodes[str] = Episodes(2, counters, "evicted")
    for key, item in (("a", 1), ("b", 1), ("a", 2), ("c", 1)):
        table.add(key, item, 1.0, 1.0, 1.0, 300.0, 25, 100)
    assert list(table) == ["a", "c"] and counters.get("evicted") == 1


def test_episode_of_a_tuple_is_the_episode_one_add_makes() -> None:
    """Asking for the Episode of a key held as a tuple gives the state Episode.add would have built."""
    table: Episodes[Hashable] = Episodes(10, Counters(), "evicted")
    table.add("k", "10.0.0.9", 7.0, 6.5, 7.0, 300.0, 25, 100)
    expected = Episode()
    expected.add("10.0.0.9", 7.0, 6.5, 7.0, 300.0, 25, 100)
    held = table.episode("k")
    assert held is not None and _state(held) == _state(expected) and table.episode("k") is held
    assert table.episode("absent") is None
