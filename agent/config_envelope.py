"""The envelope of a remote configuration document: encrypted to one sensor, signed by the central key.

Configuration documents can hold secrets, so they are encrypted, and they steer a sensor nobody visits,
so they are signed (DESIGN.md section 6). Layout (version 1):

    0       4 bytes   magic b"WCFG" (an uplink message on the config topic is refused as malformed)
    4       1 byte    envelope version (1)
    5       1 byte    header length n (1-255)
    6       n bytes   header: compact JSON {"sensor": id, "version": N}, readable and authenticated
    6+n     32 bytes  enc: an ephemeral X25519 public key (HPKE)
    38+n    ...       ChaCha20-Poly1305 ciphertext of the TOML document (UTF-8) and its 16-byte tag
    end-64  64 bytes  Ed25519 signature by the central key over crypto.CONFIG_CONTEXT + every byte before

Encryption is HPKE base mode (RFC 9180) in the uplink's suite (crypto.py): DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, ChaCha20-Poly1305, single-shot, through cryptography's `hpke.Suite` (cryptography >= 47;
byte-compatible with crypto.py's own implementation). The recipient is the sensor's "sensor-box"
X25519 key (the sensor's Ed25519 key only signs). The HPKE `info` is INFO_PREFIX + the central public
key + bytes 0..6+n, so the header is bound to the ciphertext and a ciphertext lifted into an envelope
with another header, or re-signed by another key, does not decrypt.

Encrypt-then-sign with its own signing context (crypto.sign_document): the sensor checks the signature
against the pinned central key before it trusts the header or spends a key agreement; a signature over
an uplink message can never pass for one over a configuration document, nor the reverse.
"""

from __future__ import annotations

import json
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from agent import crypto

MAGIC: Final = b"WCFG"
ENVELOPE_VERSION: Final = 1
INFO_PREFIX: Final = b"ward-agent config v1\x00"
MAX_VERSION: Final = (1 << 63) - 1
_FIXED: Final = len(MAGIC) + 2
_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_MIN_BODY: Final = crypto.ENC_LEN + crypto.TAG_LEN


class DocumentHeader(NamedTuple):
    sensor: str
    version: int


def seal_document(document: bytes, sensor: str, version: int, signer: Ed25519PrivateKey,
                  recipient: X25519PublicKey) -> bytes:
    """The envelope of `document` for `sensor` at `version`, encrypted to its box key and signed."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version must be in [1, 2**63), got {version}")
    header = json.dumps({"sensor": sensor, "version": version}, separators=(",", ":"),
                        sort_keys=True).encode()
    if not 1 <= len(header) <= crypto.MAX_HEADER:
        raise ValueError("sensor id too long for the envelope header")
    prefix = MAGIC + bytes([ENVELOPE_VERSION, len(header)]) + header
    info = INFO_PREFIX + signer.public_key().public_bytes_raw() + prefix
    signed = prefix + _SUITE.encrypt(document, recipient, info=info)
    return signed + crypto.sign_document(signed, signer)


def verify_envelope(envelope: bytes, central: Ed25519PublicKey) -> DocumentHeader:
    """Check the framing and the central signature, then read the header; crypto.OpenError if refused.

    reason "malformed" (framing or header), or "signature" (not signed by the pinned central key)."""
    n = _header_length(envelope)
    body, signature = envelope[:-crypto.SIG_LEN], envelope[-crypto.SIG_LEN:]
    crypto.verify_document(body, signature, central)
    try:
        fields = json.loads(envelope[_FIXED:_FIXED + n])
    except (ValueError, RecursionError):
        raise crypto.OpenError("malformed", "the header is not JSON") from None
    if not isinstance(fields, dict) or set(fields) != {"sensor", "version"}:
        raise crypto.OpenError("malformed", "the header must hold exactly sensor and version")
    sensor, version = fields["sensor"], fields["version"]
    if not isinstance(sensor, str) or type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise crypto.OpenError("malformed", "the header's sensor or version is out of range")
    return DocumentHeader(sensor, version)


def decrypt_envelope(envelope: bytes, recipient: X25519PrivateKey, central: Ed25519PublicKey) -> bytes:
    """The document of an envelope verify_envelope accepted; crypto.OpenError("decrypt") otherwise."""
    n = _header_length(envelope)
    prefix = envelope[:_FIXED + n]
    info = INFO_PREFIX + central.public_bytes_raw() + prefix
    try:
        return _SUITE.decrypt(envelope[_FIXED + n:-crypto.SIG_LEN], recipient, info=info)
    except (InvalidTag, ValueError):
        raise crypto.OpenError("decrypt", "not encrypted to this sensor's box key") from None


def _header_length(envelope: bytes) -> int:
    if len(envelope) < _FIXED + 1 + _MIN_BODY + crypto.SIG_LEN or envelope[:len(MAGIC)] != MAGIC:
        raise crypto.OpenError("malformed", "not a configuration envelope")
    if envelope[len(MAGIC)] != ENVELOPE_VERSION:
        raise crypto.OpenError("malformed", f"envelope version {envelope[len(MAGIC)]} is not supported")
    n = envelope[len(MAGIC) + 1]
    if n == 0 or len(envelope) < _FIXED + n + _MIN_BODY + crypto.SIG_LEN:
        raise crypto.OpenError("malformed", "header length out of range")
    return n
