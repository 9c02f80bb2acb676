"""agent.crypto: HPKE matches RFC 9180, seals open only for the right keys, key files stay private."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import crypto, messages
from agent.crypto import KeyFileError, OpenError

HEADER = messages.encode_header(messages.Header("s1", 3, 41, "flows"))
SENDER = Ed25519PrivateKey.generate()
COLLECTOR = X25519PrivateKey.generate()


def _seal(plaintext: bytes = b"forty-one flow records", header: bytes = HEADER) -> bytes:
    return crypto.seal(plaintext, header, SENDER, COLLECTOR.public_key())


def test_hpke_matches_rfc9180_vector_a21() -> None:
    """Base mode with X25519, HKDF-SHA256, ChaCha20-Poly1305 gives RFC 9180 A.2.1's enc and ct."""
    h = bytes.fromhex
    ephemeral = X25519PrivateKey.from_private_bytes(
        h("f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600"))
    recipient = X25519PrivateKey.from_private_bytes(
        h("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"))
    enc, ct = crypto._hpke_seal(ephemeral, recipient.public_key(), b"Ode on a Grecian Urn", b"Count-0",
                                b"Beauty is truth, truth beauty")
    assert enc.hex() == "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a"
    assert ct.hex() == ("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db"
                        "21993c62ce81883d2dd1b51a28")


def test_seal_round_trips() -> None:
    """The collector gets back the plaintext and the header."""
    opened = crypto.open_sealed(_seal(), COLLECTOR, SENDER.public_key())
    assert opened == crypto.Opened(HEADER, b"forty-one flow records")


def test_empty_plaintext_round_trips() -> None:
    """A zero-byte plaintext seals and opens."""
    assert crypto.open_sealed(_seal(b""), COLLECTOR, SENDER.public_key()).plaintext == b""


def test_header_stays_readable_and_overhead_is_fixed() -> None:
    """The header can be read without keys, and the seal adds exactly overhead(len(header)) bytes."""
    sealed = _seal(b"x" * 100)
    assert crypto.read_header(sealed) == HEADER
    assert len(sealed) == 100 + crypto.overhead(len(HEADER))


def test_plaintext_does_not_appear_in_the_sealed_bytes() -> None:
    """The body is encrypted: a distinctive plaintext is nowhere in the output."""
    assert b"CANARY-PATIENT" not in _seal(b"CANARY-PATIENT" * 4)


def test_two_seals_of_one_message_differ() -> None:
    """A fresh ephemeral key per seal: the same plaintext and header never give the same bytes."""
    assert _seal()[2 + len(HEADER):] != _seal()[2 + len(HEADER):]


def test_every_flipped_byte_is_rejected() -> None:
    """Flipping any single byte of a sealed message raises OpenError."""
    sealed = _seal()
    for at in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[at] ^= 0x01
        with pytest.raises(OpenError):
            crypto.open_sealed(bytes(tampered), COLLECTOR, SENDER.public_key())


def test_truncation_is_rejected_at_every_length() -> None:
    """Every proper prefix raises OpenError."""
    sealed = _seal()
    for cut in range(len(sealed)):
        with pytest.raises(OpenError):
            crypto.open_sealed(sealed[:cut], COLLECTOR, SENDER.public_key())


def test_wrong_recipient_key_is_rejected_as_decrypt() -> None:
    """A different collector key cannot decrypt: reason "decrypt"."""
    with pytest.raises(OpenError) as caught:
        crypto.open_sealed(_seal(), X25519PrivateKey.generate(), SENDER.public_key())
    assert caught.value.reason == "decrypt"


def test_wrong_sender_key_is_rejected_as_signature() -> None:
    """A message is refused when checked against another sensor's key: reason "signature"."""
    with pytest.raises(OpenError) as caught:
        crypto.open_sealed(_seal(), COLLECTOR, Ed25519PrivateKey.generate().public_key())
    assert caught.value.reason == "signature"


def test_swapped_header_is_rejected() -> None:
    """Putting another message's header (another seq) on a body, same length, raises OpenError."""
    other = messages.encode_header(messages.Header("s1", 3, 42, "flows"))
    sealed = _seal()
    assert len(other) == len(HEADER)
    with pytest.raises(OpenError):
        crypto.open_sealed(sealed[:2] + other + sealed[2 + len(HEADER):], COLLECTOR, SENDER.public_key())


def test_re_signed_ciphertext_does_not_decrypt() -> None:
    """An attacker who re-signs a sensor's ciphertext with its own key gets a decrypt failure."""
    mallory = Ed25519PrivateKey.generate()
    stripped = _seal()[:-crypto.SIG_LEN]
    forged = stripped + mallory.sign(crypto.SIGNING_CONTEXT + stripped)
    with pytest.raises(OpenError) as caught:
        crypto.open_sealed(forged, COLLECTOR, mallory.public_key())
    assert caught.value.reason == "decrypt"


@pytest.mark.parametrize("header", [b"", b"h" * 256])
def test_header_length_is_bounded(header: bytes) -> None:
    """Headers must be 1-255 bytes."""
    with pytest.raises(ValueError):
        _seal(header=header)


def test_config_document_signature_verifies_and_catches_changes() -> None:
    """A detached document signature verifies, and fails for a changed document."""
    central = Ed25519PrivateKey.generate()
    signature = crypto.sign_document(b'{"version": 4}', central)
    crypto.verify_document(b'{"version": 4}', signature, central.public_key())
    with pytest.raises(OpenError):
        crypto.verify_document(b'{"version": 5}', signature, central.public_key())


def test_uplink_signature_is_not_a_document_signature() -> None:
    """Domain separation: a sealed message's signature does not verify as a config signature."""
    sealed = _seal()
    with pytest.raises(OpenError):
        crypto.verify_document(sealed[:-crypto.SIG_LEN], sealed[-crypto.SIG_LEN:], SENDER.public_key())


# ---- key files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("role", sorted(crypto.ROLES))
def test_keypair_files_have_private_modes(role: str, tmp_path: Path) -> None:
    """The private key file is 0600 and the public one 0644, whatever the umask."""
    old = os.umask(0)
    try:
        info = crypto.write_keypair(tmp_path / "keys", role)
    finally:
        os.umask(old)
    modes = (info.private_path.stat().st_mode & 0o777, info.public_path.stat().st_mode & 0o777)
    assert modes == (0o600, 0o644)


def test_keys_load_back_with_their_types(tmp_path: Path) -> None:
    """Sensor keys load as Ed25519, collector keys as X25519, and the halves belong together."""
    sensor = crypto.write_keypair(tmp_path, "sensor")
    collector = crypto.write_keypair(tmp_path, "collector")
    sealed = crypto.seal(b"p", HEADER, crypto.load_signing_key(sensor.private_path),
                         crypto.load_encryption_key(collector.public_path))
    opened = crypto.open_sealed(sealed, crypto.load_decryption_key(collector.private_path),
                                crypto.load_verify_key(sensor.public_path))
    assert opened.plaintext == b"p"


def test_key_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    """An X25519 file given where an Ed25519 key is expected raises KeyFileError."""
    collector = crypto.write_keypair(tmp_path, "collector")
    with pytest.raises(KeyFileError):
        crypto.load_signing_key(collector.private_path)
    with pytest.raises(KeyFileError):
        crypto.load_verify_key(collector.public_path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_private_key_readable_by_others_is_refused(mode: int, tmp_path: Path) -> None:
    """A private key file with any group or other permission raises KeyFileError naming chmod 600."""
    info = crypto.write_keypair(tmp_path, "sensor")
    info.private_path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        crypto.load_signing_key(info.private_path)


def test_missing_or_garbled_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    """No file, or a file that is not PEM, raises KeyFileError."""
    with pytest.raises(KeyFileError):
        crypto.load_signing_key(tmp_path / "none.key")
    garbled = tmp_path / "garbled.key"
    garbled.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    garbled.chmod(0o600)
    with pytest.raises(KeyFileError):
        crypto.load_signing_key(garbled)


def test_existing_key_is_not_overwritten_without_force(tmp_path: Path) -> None:
    """A second write raises FileExistsError and leaves the first key; force replaces it."""
    first = crypto.write_keypair(tmp_path, "central")
    with pytest.raises(FileExistsError):
        crypto.write_keypair(tmp_path, "central")
    assert crypto.fingerprint(crypto.load_verify_key(first.public_path)) == first.fingerprint
    second = crypto.write_keypair(tmp_path, "central", force=True)
    assert second.fingerprint != first.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["central.key", "central.pub"]


def test_fingerprint_is_sha256_of_the_raw_key_in_groups() -> None:
    """16 groups of 4 hex digits; the same key always gives the same fingerprint."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    assert crypto.fingerprint(key) == crypto.fingerprint(
        Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key())
    assert re.fullmatch(r"[0-9a-f]{4}(:[0-9a-f]{4}){15}", crypto.fingerprint(key))
    assert crypto.fingerprint(key).replace(":", "") == hashlib.sha256(key.public_bytes_raw()).hexdigest()


def test_fingerprint_survives_a_reload(tmp_path: Path) -> None:
    """The fingerprint printed at creation is the one of the key loaded from either file."""
    info = crypto.write_keypair(tmp_path, "sensor")
    assert crypto.fingerprint(crypto.load_signing_key(info.private_path).public_key()) == info.fingerprint
    assert crypto.fingerprint(crypto.load_verify_key(info.public_path)) == info.fingerprint
