"""agent.central.ingest: verify, decrypt, de-duplicate, store; tampered and replayed envelopes are refused."""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import crypto, messages
from agent.central.ingest import REASONS, Ingest, Sensor, parse_topic
from agent.central.store import Store
from agent.messages import Header, Message
from agent.records import FlowRecord

T0 = 1_767_225_600.0
SITE = "ward3"


class Keys:
    """Real key files for sensors s1, s2 (configured), s3 (not configured) and the collector."""

    def __init__(self, root: Path) -> None:
        self.sensor: dict[str, Ed25519PrivateKey] = {}
        for name in ("s1", "s2", "s3"):
            crypto.write_keypair(root / name, "sensor")
            self.sensor[name] = crypto.load_signing_key(root / name / "sensor.key")
        crypto.write_keypair(root / "collector", "collector")
        self.collector = crypto.load_decryption_key(root / "collector" / "collector.key")
        self.collector_pub = crypto.load_encryption_key(root / "collector" / "collector.pub")
        self.pinned = {name: Sensor(crypto.load_verify_key(root / name / "sensor.pub"), SITE)
                       for name in ("s1", "s2")}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "central.db")


@pytest.fixture
def ingest(store: Store, keys: Keys) -> Ingest:
    return Ingest(store, keys.collector, keys.pinned, clock=lambda: T0 + 100)


def _flow(i: int = 0) -> FlowRecord:
    return FlowRecord(T0 + i, T0 + i + 1.5, "tcp", f"10.0.{i % 250}.1", 49152 + i % 1000, "10.0.0.2", 443,
                      "02:00:00:00:00:01", None, (), 3, 2, 180, 120, "SA", "SA", "fin")


def _sealed(keys: Keys, seq: int, kind: str = "flows", body: Any = None, sensor: str = "s1", boot: int = 1,
            signer: str | None = None, to: X25519PrivateKey | None = None) -> tuple[str, bytes]:
    """(topic, sealed payload) of a message as the sensor would publish it."""
    if body is None:
        body = [_flow(seq), _flow(seq + 1)] if kind == "flows" else {"cpu": 0.5}
    header = Header(sensor, boot, seq, kind)
    plain = messages.encode_payload(Message(header, T0 + seq, body))
    recipient = keys.collector_pub if to is None else to.public_key()
    sealed = crypto.seal(plain, messages.encode_header(header), keys.sensor[signer or sensor], recipient)
    return messages.topic(SITE, sensor, kind), sealed


def test_message_is_stored_once(ingest: Ingest, store: Store, keys: Keys) -> None:
    """A valid flow batch is stored with its records, and counted."""
    assert ingest.handle(*_sealed(keys, 1)) == "stored"
    assert (store.count("messages"), store.count("flows"), ingest.flows) == (1, 2, 2)
    assert ingest.counts == Counter({"stored": 1})


@pytest.mark.parametrize("kind", ["devices", "findings", "health", "status", "config_ack"])
def test_every_kind_is_stored(ingest: Ingest, store: Store, keys: Keys, kind: str) -> None:
    """Each kind, on its own topic, is stored."""
    body = {"devices": {"mode": "delta", "devices": [{"mac": "02:00:00:00:00:01"}]},
            "findings": [{"kind": "port_scan", "ts": T0}], "health": {"cpu": 0.5},
            "status": {"online": True, "boot": 1}, "config_ack": {"version": 2, "errors": []}}[kind]
    assert ingest.handle(*_sealed(keys, 1, kind, body)) == "stored"
    assert store.query("SELECT kind FROM messages") == [(kind,)]


def test_duplicates_are_dropped_not_rejected(ingest: Ingest, store: Store, keys: Keys) -> None:
    """The same sealed bytes again are a duplicate: no new rows, no reject, counted on the sensor."""
    topic, payload = _sealed(keys, 1)
    outcomes = [ingest.handle(topic, payload) for _ in range(3)]
    assert outcomes == ["stored", "duplicate", "duplicate"]
    assert (store.count("flows"), store.count("rejects"), store.sensors()[0]["duplicates"]) == (2, 0, 2)


def test_replays_of_old_envelopes_are_never_stored_twice(ingest: Ingest, store: Store, keys: Keys) -> None:
    """50 messages, then all of them replayed three times in a shuffled order: each stored exactly once."""
    sent = [_sealed(keys, seq, boot=1 + seq // 25) for seq in range(50)]
    assert all(ingest.handle(*m) == "stored" for m in sent)
    replays = sent * 3
    random.Random(7).shuffle(replays)
    assert {ingest.handle(*m) for m in replays} == {"duplicate"}
    assert (store.count("messages"), store.count("flows")) == (50, 100)
    assert store.query("SELECT COUNT(*) FROM (SELECT DISTINCT boot, seq FROM flows)") == [(50,)]


def test_thousand_tampered_envelopes_are_all_refused(ingest: Ingest, store: Store, keys: Keys) -> None:
    """1,000 single-bit flips in header, ephemeral key + ciphertext, or signature: 0 accepted, all counted."""
    originals = [_sealed(keys, seq) for seq in range(40)]
    for message in originals[:20]:  # half of them already stored: forged copies must not pass as duplicates
        ingest.handle(*message)
    rng = random.Random(20260101)
    regions: Counter[str] = Counter()
    for _ in range(1000):
        topic, sealed = rng.choice(originals)
        end_header = 2 + sealed[1]
        region, low, high = rng.choice([("header", 0, end_header),
                                        ("ciphertext", end_header, len(sealed) - 64),
                                        ("signature", len(sealed) - 64, len(sealed))])
        regions[region] += 1
        at = rng.randrange(low, high)
        tampered = bytearray(sealed)
        tampered[at] ^= 1 << rng.randrange(8)
        assert ingest.handle(topic, bytes(tampered)) in REASONS
    assert min(regions.values()) > 250
    assert (store.count("messages"), store.count("flows")) == (20, 40)
    refused = {reason: n for reason, n in ingest.counts.items() if reason in REASONS}
    assert sum(refused.values()) == 1000 and refused["signature"] > 500
    assert store.query("SELECT SUM(count) FROM rejects") == [(1000,)]
    assert [ingest.handle(*m) for m in originals[20:]] == ["stored"] * 20  # the genuine ones still pass


def test_topic_of_another_sensor_is_a_mismatch(ingest: Ingest, store: Store, keys: Keys) -> None:
    """s1's message published under s2's topic is refused as topic_mismatch."""
    _, payload = _sealed(keys, 1)
    assert ingest.handle(messages.topic(SITE, "s2", "flows"), payload) == "topic_mismatch"
    assert store.count("messages") == 0


def test_kind_of_another_topic_is_a_mismatch(ingest: Ingest, keys: Keys) -> None:
    """A flows message published on up/health is refused as topic_mismatch."""
    _, payload = _sealed(keys, 1)
    assert ingest.handle(messages.topic(SITE, "s1", "health"), payload) == "topic_mismatch"


def test_unknown_sensor_is_refused(ingest: Ingest, store: Store, keys: Keys) -> None:
    """A well-formed message from a sensor the collector does not know is refused as unknown_sensor."""
    assert ingest.handle(*_sealed(keys, 1, sensor="s3")) == "unknown_sensor"
    assert store.query("SELECT reason, sensor FROM rejects") == [("unknown_sensor", "s3")]


def test_wrong_site_is_refused(ingest: Ingest, keys: Keys) -> None:
    """A sensor publishing under a site it is not pinned to is refused as wrong_site."""
    _, payload = _sealed(keys, 1)
    assert ingest.handle("ward/ward9/s1/up/flows", payload) == "wrong_site"


def test_message_signed_by_another_sensor_is_refused(ingest: Ingest, keys: Keys) -> None:
    """s1's header signed with s2's key fails s1's pinned key: signature."""
    assert ingest.handle(*_sealed(keys, 1, signer="s2")) == "signature"


def test_message_encrypted_to_another_collector_is_refused(ingest: Ingest, keys: Keys) -> None:
    """A correctly signed message sealed to another X25519 key cannot be decrypted: decrypt."""
    assert ingest.handle(*_sealed(keys, 1, to=X25519PrivateKey.generate())) == "decrypt"


def test_authentic_payload_that_does_not_decode_is_bad_payload(ingest: Ingest, store: Store,
                                                               keys: Keys) -> None:
    """A signed, decryptable payload that is not a message is refused as bad_payload, nothing stored."""
    header = messages.encode_header(Header("s1", 1, 1, "health"))
    sealed = crypto.seal(b"\x00not cbor", header, keys.sensor["s1"], keys.collector_pub)
    assert ingest.handle(messages.topic(SITE, "s1", "health"), sealed) == "bad_payload"
    assert store.count("messages") == 0


def test_lower_boot_after_a_reboot_is_accepted(ingest: Ingest, store: Store, keys: Keys) -> None:
    """A message from the previous boot arriving after the new boot's first one is still stored."""
    assert ingest.handle(*_sealed(keys, 1, boot=5)) == "stored"
    assert ingest.handle(*_sealed(keys, 900, boot=4)) == "stored"
    assert (store.sensors()[0]["last_boot"], store.sensors()[0]["last_seq"]) == (5, 1)


@pytest.mark.parametrize("topic", ["ward/ward3/s1", "ward/ward3/s1/up", "ward/ward3/s1/up/pcap",
                                   "ward/ward3/s1/up/flows/x", "ward//s1/up/flows", "other/ward3/s1/status",
                                   "ward/ward3/s1/config", "ward/ward3/s1/up/status"])
def test_bad_topics_are_refused(ingest: Ingest, keys: Keys, topic: str) -> None:
    """Topics outside up/<data kind>, status and config/ack are refused as bad_topic."""
    assert ingest.handle(topic, _sealed(keys, 1)[1]) == "bad_topic"


def test_parse_topic_maps_suffixes_to_kinds() -> None:
    """up/<kind>, status and config/ack give (site, sensor, kind)."""
    assert [parse_topic(f"ward/w/s/{t}") for t in ("up/devices", "status", "config/ack")] == [
        ("w", "s", "devices"), ("w", "s", "status"), ("w", "s", "config_ack")]


def test_plain_status_updates_online(ingest: Ingest, store: Store) -> None:
    """The publisher's JSON birth and will messages set the sensor online and offline."""
    topic = messages.topic(SITE, "s1", "status")
    assert ingest.handle(topic, json.dumps({"online": True, "boot": 3}).encode()) == "status"
    assert store.sensors()[0]["online"] == 1
    assert ingest.handle(topic, b'{"online":false,"boot":3}') == "status"
    assert store.sensors()[0]["online"] == 0


@pytest.mark.parametrize("payload", [b"", b"{", b"[1]", b'{"online": "yes"}', b"\xff\xfe"])
def test_bad_plain_status_is_malformed(ingest: Ingest, payload: bytes) -> None:
    """A status that is neither sealed nor a JSON object with a boolean `online` is malformed."""
    assert ingest.handle(messages.topic(SITE, "s1", "status"), payload) == "malformed"


def test_truncated_envelope_is_refused_at_every_offset(ingest: Ingest, store: Store, keys: Keys) -> None:
    """A sealed message cut at any length is refused by reason, and nothing is stored."""
    topic, sealed = _sealed(keys, 1)
    assert {ingest.handle(topic, sealed[:cut]) for cut in range(len(sealed))} <= set(REASONS)
    assert store.count("messages") == 0


@pytest.fixture(scope="module")
def shared_ingest(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Ingest:
    return Ingest(Store(tmp_path_factory.mktemp("random") / "c.db"), keys.collector, keys.pinned)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(["flows", "status", "config/ack"]), st.binary(max_size=400))
def test_random_bytes_are_refused_without_raising(shared_ingest: Ingest, suffix: str, data: bytes) -> None:
    """Random payloads on any topic are refused by reason (or are a status), never raise, never store."""
    topic = f"ward/{SITE}/s1/{'up/' if suffix == 'flows' else ''}{suffix}"
    assert shared_ingest.handle(topic, data) in (*REASONS, "status")
    assert shared_ingest.counts["stored"] == 0


def test_unexpected_failure_is_quarantined(keys: Keys, tmp_path: Path) -> None:
    """A bug inside storing is caught: outcome "error", the payload kept whole in quarantine."""
    class Failing(Store):
        def add(self, message: Message, size: int, received: float) -> bool:
            raise RuntimeError("bug")

    store = Failing(tmp_path / "c.db")
    topic, sealed = _sealed(keys, 1)
    assert Ingest(store, keys.collector, keys.pinned).handle(topic, sealed) == "error"
    kept = store.query("SELECT topic, payload, error FROM quarantine")
    assert kept == [(topic, sealed, "RuntimeError: bug")]


def test_failing_database_raises(ingest: Ingest, store: Store, keys: Keys) -> None:
    """When the database itself fails the error propagates, so the message is not acknowledged."""
    store.close()
    with pytest.raises(sqlite3.Error):
        ingest.handle(*_sealed(keys, 1))
