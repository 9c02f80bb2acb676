"""agent/acks.py: the collector's ack payloads, and the sensor's bookkeeping of unacknowledged entries."""

from __future__ import annotations

import contextlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import crypto, messages
from agent.acks import MAX_RANGES, Outstanding, ack_messages, ack_topic, decode_ack, encode_ack, ranges

_SIGNER, _RECIPIENT = Ed25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()


def sealed(seq: int, boot: int = 1) -> bytes:
    header = messages.Header("s1", boot, seq, "flows")
    return crypto.seal(b"x", messages.encode_header(header), _SIGNER, _RECIPIENT)


def tracker(count: int, timeout: float = 10.0, boot: int = 1) -> Outstanding:
    """Entries 1..count (seq = id - 1) sent and PUBACKed at time 0."""
    track = Outstanding(timeout)
    for entry_id in range(1, count + 1):
        assert track.sent(entry_id, sealed(entry_id - 1, boot))
        track.delivered(entry_id, 0.0)
    return track


def test_ranges_merge_and_deduplicate() -> None:
    """Sequence numbers in any order, with repeats, become sorted inclusive ranges."""
    assert ranges([5, 1, 2, 3, 3, 9, 10, 0]) == [(0, 3), (5, 5), (9, 10)]


def test_encode_is_compact_json() -> None:
    """The payload is the documented compact JSON."""
    assert encode_ack(3, [4, 5, 6, 8]) == [b'{"boot":3,"seqs":[[4,6],[8,8]]}']


def test_encode_splits_many_ranges() -> None:
    """More than MAX_RANGES ranges go out in several payloads that together cover every seq."""
    seqs = range(0, 4 * MAX_RANGES + 2, 2)
    payloads = encode_ack(1, seqs)
    assert len(payloads) == 3
    covered = {s for p in payloads for a, b in decode_ack(p)[1] for s in range(a, b + 1)}
    assert covered == set(seqs)


def test_encode_refuses_negative() -> None:
    """A negative seq or boot is a ValueError, not a payload."""
    with pytest.raises(ValueError):
        encode_ack(1, [-1])
    with pytest.raises(ValueError):
        encode_ack(-1, [1])


@given(st.integers(0, 2**63 - 1), st.lists(st.integers(0, 2**63 - 1), max_size=50))
def test_round_trip(boot: int, seqs: list[int]) -> None:
    """decode(encode(boot, seqs)) gives boot and ranges covering exactly seqs."""
    for payload in encode_ack(boot, seqs):
        assert decode_ack(payload)[0] == boot
    assert [r for p in encode_ack(boot, seqs) for r in decode_ack(p)[1]] == ranges(seqs)


@pytest.mark.parametrize("payload", [b"", b"[]", b'{"boot":1}', b'{"boot":1,"seqs":[[2,1]]}',
                                     b'{"boot":-1,"seqs":[]}', b'{"boot":1,"seqs":[[1,true]]}',
                                     b'{"boot":1.0,"seqs":[]}', b'{"boot":1,"seqs":[[0,1]],"x":0}',
                                     b'{"boot":1,"seqs":[[0,9223372036854775808]]}', b"\xff\xfe",
                                     b"[" * 100_000])
def test_decode_refuses_malformed(payload: bytes) -> None:
    """Anything but a well-formed ack is a ValueError."""
    with pytest.raises(ValueError):
        decode_ack(payload)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200) | st.builds(lambda o: json.dumps(o).encode(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["boot", "seqs", "x"]),
                                                                 inner, max_size=3))))
def test_decode_garbage_raises_only_value_error(payload: bytes) -> None:
    """Random bytes and random JSON: a result or ValueError, never another exception."""
    with contextlib.suppress(ValueError):
        decode_ack(payload)


def test_ack_messages_group_by_sensor_and_boot() -> None:
    """Committed (site, sensor, boot, seq) become one payload per sensor topic and boot."""
    out = ack_messages([("w", "a", 1, 0), ("w", "a", 1, 1), ("w", "b", 1, 5), ("w", "a", 2, 0)])
    assert sorted(out) == [("ward/w/a/ack", b'{"boot":1,"seqs":[[0,1]]}'),
                           ("ward/w/a/ack", b'{"boot":2,"seqs":[[0,0]]}'),
                           ("ward/w/b/ack", b'{"boot":1,"seqs":[[5,5]]}')]


@pytest.mark.parametrize("level", ["", "a/b", "+", "#", "..", "x" * 65])
def test_ack_topic_refuses_bad_levels(level: str) -> None:
    """A site or sensor that is not one plain topic level is refused."""
    with pytest.raises(ValueError):
        ack_topic("site", level)


def test_ack_returns_covered_entries_only() -> None:
    """An ack returns the entry ids of its (boot, seq)s, once; other boots' entries stay."""
    track = tracker(10)
    assert sorted(track.ack(1, [(2, 4)], 1.0)) == [3, 4, 5]
    assert track.ack(1, [(2, 4)], 1.0) == []
    assert track.ack(2, [(0, 100)], 1.0) == []
    assert len(track) == 7


def test_huge_range_is_cheap() -> None:
    """A range far larger than what is tracked is applied by scanning the tracked keys."""
    track = tracker(5)
    assert sorted(track.ack(1, [(0, 2**63 - 1)], 1.0)) == [1, 2, 3, 4, 5]


def test_unreadable_header_is_refused() -> None:
    """sent() answers False for bytes without a sealed header, and tracks nothing."""
    track = Outstanding(1.0)
    assert not track.sent(1, b"garbage")
    assert len(track) == 0


def test_nothing_due_before_timeout() -> None:
    """A delivered entry is not due before ack_timeout has passed."""
    track = tracker(3, timeout=10.0)
    track.ack(1, [(99, 99)], 5.0)
    assert track.due(9.9, 10) == []


def test_all_due_once_collector_is_alive() -> None:
    """After the timeout, entries PUBACKed before the last ack are all due (up to the limit)."""
    track = tracker(5, timeout=10.0)
    track.ack(1, [(0, 0)], 5.0)
    assert track.due(11.0, 3) == [2, 3, 4]
    assert track.due(11.0, 3) == [5]
    assert not track.is_delivered(2)


def test_only_a_probe_while_collector_is_silent() -> None:
    """With no ack since their PUBACK, one entry per timeout is due, not the whole backlog."""
    track = tracker(5, timeout=10.0)
    assert track.due(11.0, 10) == [1]
    assert track.due(15.0, 10) == []
    assert track.due(21.0, 10) == [2]


def test_new_session_forgets_delivery_not_keys() -> None:
    """After a reconnect nothing counts as delivered, but an ack still finds its entry."""
    track = tracker(3)
    track.new_session()
    assert not track.is_delivered(1) and track.due(100.0, 10) == []
    assert track.ack(1, [(1, 1)], 1.0) == [2]


def test_forget_before_drops_evicted_entries() -> None:
    """Entries below the spool's oldest id are forgotten; None (empty spool) forgets all."""
    track = tracker(6)
    assert track.forget_before(4) == 3
    assert len(track) == 3 and track.ack(1, [(0, 2)], 1.0) == []
    assert track.forget_before(None) == 3
    assert len(track) == 0


def test_same_key_twice_both_acked() -> None:
    """Two entries with the same (boot, seq) (a reset boot counter) both leave on its ack."""
    track = Outstanding(1.0)
    assert track.sent(1, sealed(0)) and track.sent(2, sealed(0))
    assert track.twins == 1
    assert sorted(track.ack(1, [(0, 0)], 1.0)) == [1, 2]
    assert len(track) == 0
