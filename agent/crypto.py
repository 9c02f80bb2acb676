"""Key files, and the seal every uplink message gets: encrypted to the collector, signed by the sensor.

The only module that sees key material (DESIGN.md section 2).

Sealed message layout (all lengths fixed except the header and the ciphertext):

    0        1 byte    wire version (1)
    1        1 byte    header length n (1-255)
    2        n bytes   header: messages.py's CBOR (sensor, boot, seq, kind), readable for routing and dedupe
    2+n      32 bytes  enc: the sender's ephemeral X25519 public key
    34+n     ...       ChaCha20-Poly1305 ciphertext and 16-byte tag; AEAD aad = bytes 0..2+n
    end-64   64 bytes  Ed25519 signature over SIGNING_CONTEXT + every byte before it

Encryption is HPKE base mode (RFC 9180), suite DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
ChaCha20-Poly1305, single-shot (sequence 0), checked against the RFC's test vector A.2.1. The HPKE
`info` is INFO_PREFIX + the sender's Ed25519 public key, so a ciphertext re-signed by another key does
not decrypt. ChaCha20-Poly1305 rather than AES-GCM: a Raspberry Pi 4's Cortex-A72 has no AES
instructions, and ChaCha is fast and constant-time in software there. Nonces: every message has a fresh
ephemeral key, so every AEAD key is new and its one nonce cannot repeat, across restarts too (the
boot counter in the header additionally makes every header, hence every aad, unique per sensor).

Encrypt-then-sign: the collector reads the header, drops a (sensor, boot, seq) it already stored,
looks up that sensor's pinned key and checks the signature, all before any key agreement or decryption;
the signature covers the header, so headers cannot be swapped between messages, and the aad binds it
to the ciphertext as well.

Key files: PEM (PKCS#8 private, SubjectPublicKeyInfo public), `<role>.key` mode 0600 and `<role>.pub`
mode 0644, written to a temporary file and renamed. A private key file that group or others may read
is refused (like ssh). Fingerprint: SHA-256 of the raw 32-byte public key, in 16 groups of 4 hex digits.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

WIRE_VERSION: Final = 1
ENC_LEN, TAG_LEN, SIG_LEN, MAX_HEADER = 32, 16, 64, 255
SIGNING_CONTEXT: Final = b"ward-agent sealed message v1\x00"
CONFIG_CONTEXT: Final = b"ward-agent config document v1\x00"
INFO_PREFIX: Final = b"ward-agent uplink v1\x00"
_KEM_SUITE: Final = b"KEM\x00\x20"
_HPKE_SUITE: Final = b"HPKE\x00\x20\x00\x01\x00\x03"  # KEM 0x20, KDF 1, AEAD 3 (ChaCha20Poly1305)

PrivateKey = Ed25519PrivateKey | X25519PrivateKey
PublicKey = Ed25519PublicKey | X25519PublicKey
# sensor-box: the X25519 key remote configuration documents are encrypted to (agent/remote_config.py)
ROLES: Final = {"sensor": "ed25519", "sensor-box": "x25519", "central": "ed25519", "collector": "x25519"}


class OpenError(ValueError):
    """A sealed message is refused; `reason` is "malformed", "signature" or "decrypt" (for counters)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class KeyFileError(Exception):
    """A key file is missing, unreadable, of the wrong type, or readable by group or others."""


class Opened(NamedTuple):
    header: bytes  # authenticated
    plaintext: bytes


def overhead(header_len: int) -> int:
    """Bytes a seal adds to the plaintext, header included."""
    return 2 + header_len + ENC_LEN + TAG_LEN + SIG_LEN


# ---- HPKE base mode (RFC 9180 sections 4 and 5.1) ----------------------------------------------

def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def _key_schedule(dh: bytes, enc: bytes, recipient_pub: bytes, info: bytes) -> tuple[bytes, bytes]:
    """(AEAD key, nonce) of HPKE base mode from the X25519 output and the KEM context."""
    eae_prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    shared = _labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", enc + recipient_pub, 32)
    context = (b"\x00" + _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
               + _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info))
    secret = _labeled_extract(_HPKE_SUITE, shared, b"secret", b"")
    return (_labeled_expand(_HPKE_SUITE, secret, b"key", context, 32),
            _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, 12))


def _hpke_seal(ephemeral: X25519PrivateKey, recipient: X25519PublicKey, info: bytes, aad: bytes,
               plaintext: bytes) -> tuple[bytes, bytes]:
    enc = ephemeral.public_key().public_bytes_raw()
    key, nonce = _key_schedule(ephemeral.exchange(recipient), enc, recipient.public_bytes_raw(), info)
    return enc, ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


# ---- seal and open ------------------------------------------------------------------------------

def seal(plaintext: bytes, header: bytes, sender: Ed25519PrivateKey, recipient: X25519PublicKey) -> bytes:
    """Encrypt plaintext to the recipient, bind the readable header to it, and sign the whole."""
    if not 1 <= len(header) <= MAX_HEADER:
        raise ValueError(f"header must be 1-{MAX_HEADER} bytes, got {len(header)}")
    aad = bytes([WIRE_VERSION, len(header)]) + header
    info = INFO_PREFIX + sender.public_key().public_bytes_raw()
    enc, ciphertext = _hpke_seal(X25519PrivateKey.generate(), recipient, info, aad, plaintext)
    signed = aad + enc + ciphertext
    return signed + sender.sign(SIGNING_CONTEXT + signed)


def read_header(sealed: bytes) -> bytes:
    """The header of a sealed message, NOT yet authenticated: for routing and dropping duplicates."""
    if len(sealed) < overhead(1) or sealed[0] != WIRE_VERSION:
        raise OpenError("malformed", f"not a version-{WIRE_VERSION} sealed message")
    n = sealed[1]
    if n == 0 or len(sealed) < overhead(n):
        raise OpenError("malformed", "header length out of range")
    return sealed[2:2 + n]


def open_sealed(sealed: bytes, recipient: X25519PrivateKey, sender: Ed25519PublicKey) -> Opened:
    """Check the signature with the sender's pinned key, then decrypt; OpenError on any mismatch."""
    header = read_header(sealed)
    body, signature = sealed[:-SIG_LEN], sealed[-SIG_LEN:]
    try:
        sender.verify(signature, SIGNING_CONTEXT + body)
    except InvalidSignature:
        raise OpenError("signature", "bad signature or wrong sender key") from None
    aad_end = 2 + len(header)
    enc = body[aad_end:aad_end + ENC_LEN]
    info = INFO_PREFIX + sender.public_bytes_raw()
    try:
        dh = recipient.exchange(X25519PublicKey.from_public_bytes(enc))
        key, nonce = _key_schedule(dh, enc, recipient.public_key().public_bytes_raw(), info)
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, body[aad_end + ENC_LEN:], body[:aad_end])
    except (InvalidTag, ValueError):
        raise OpenError("decrypt", "not encrypted to this collector key") from None
    return Opened(header, plaintext)


def sign_document(document: bytes, key: Ed25519PrivateKey) -> bytes:
    """A detached signature for a configuration document (DESIGN.md section 6)."""
    return key.sign(CONFIG_CONTEXT + document)


def verify_document(document: bytes, signature: bytes, key: Ed25519PublicKey) -> None:
    try:
        key.verify(signature, CONFIG_CONTEXT + document)
    except InvalidSignature:
        raise OpenError("signature", "configuration document signature does not verify") from None


# ---- keys and key files -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KeyInfo:
    role: str
    algorithm: str
    fingerprint: str
    private_path: Path
    public_path: Path


def fingerprint(key: PublicKey) -> str:
    digest = hashlib.sha256(key.public_bytes_raw()).hexdigest()
    return ":".join(digest[i:i + 4] for i in range(0, 64, 4))


def key_paths(directory: str | Path, role: str) -> tuple[Path, Path]:
    if role not in ROLES:
        raise ValueError(f"unknown key role {role!r}; one of {', '.join(ROLES)}")
    return Path(directory) / f"{role}.key", Path(directory) / f"{role}.pub"


def write_keypair(directory: str | Path, role: str, force: bool = False) -> KeyInfo:
    """Generate the role's key pair; FileExistsError when either file exists and not force."""
    private_path, public_path = key_paths(directory, role)
    if not force:
        for path in (private_path, public_path):
            if path.exists() or path.is_symlink():
                raise FileExistsError(f"{path} exists (use --force to replace it)")
    key: PrivateKey = (Ed25519PrivateKey.generate() if ROLES[role] == "ed25519"
                       else X25519PrivateKey.generate())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(private_path, private_pem, 0o600)
    _write_atomic(public_path, public_pem, 0o644)
    return KeyInfo(role, ROLES[role], fingerprint(key.public_key()), private_path, public_path)


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    key = _load_private(Path(path))
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def load_decryption_key(path: str | Path) -> X25519PrivateKey:
    key = _load_private(Path(path))
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path}: not an X25519 private key")
    return key


def load_verify_key(path: str | Path) -> Ed25519PublicKey:
    key = load_public(path)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def load_encryption_key(path: str | Path) -> X25519PublicKey:
    key = load_public(path)
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(f"{path}: not an X25519 public key")
    return key


def load_public(path: str | Path) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey | X25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 or X25519 public key")
    return key


def load_private(path: str | Path) -> PrivateKey:
    return _load_private(Path(path))


def _load_private(path: Path) -> PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"{path}: not a regular file")
        if mode & 0o077:
            raise KeyFileError(f"{path}: mode {stat.S_IMODE(mode):04o} lets group or others read a private "
                               f"key; run chmod 600 {path}")
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey | X25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 or X25519 private key")
    return key


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Temporary file created with `mode` (never wider), fsync, rename over path, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
