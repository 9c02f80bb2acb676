#!/usr/bin/env python3
"""The broker's small PKI: a CA, the broker's server certificate and one client certificate per MQTT client.

Usable as a module (tests) and as a CLI::

    python scripts/broker_pki.py DIR ca                       # DIR/ca.crt, DIR/ca.key
    python scripts/broker_pki.py DIR server [--host H ...]    # DIR/server.crt|key (SAN 127.0.0.1, localhost)
    python scripts/broker_pki.py DIR client CN [CN ...]       # DIR/clients/CN.crt|key
    options: --days N   --force (overwrite an existing certificate and key)

Identity: mosquitto (`use_identity_as_username true`) takes a client certificate's Common Name as the
MQTT user name, and the ACL confines each sensor by `%u` = that CN. So the CN of a sensor's certificate is
exactly its sensor id, and must be one whole topic level: 1-64 of [A-Za-z0-9_.-], no `/`, `+`, `#`
(`validate_cn`). Sensor ids must therefore be unique across sites. The collector's CN is `collector`.

Keys are ECDSA P-256 (cheap TLS handshakes on a Pi; every TLS stack has it), written with mode 0600 and
never overwritten without --force. Each command prints the SHA-256 fingerprint of what it issued.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

COLLECTOR_CN: Final = "collector"
DEFAULT_HOSTS: Final = ("127.0.0.1", "localhost")
_CN_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RESERVED: Final = frozenset({".", ".."})


@dataclass(frozen=True, slots=True)
class Issued:
    """Where a certificate and its key were written, and the certificate's SHA-256 fingerprint."""

    cert: Path
    key: Path
    fingerprint: str


def validate_cn(cn: str) -> str:
    """`cn` if it can serve as one MQTT topic level and a file name; ValueError otherwise."""
    if not _CN_RE.fullmatch(cn) or cn in _RESERVED:
        raise ValueError(f"bad client name {cn!r}: 1-64 of A-Z a-z 0-9 _ . - (one topic level)")
    return cn


def ca_paths(pki: Path) -> tuple[Path, Path]:
    return pki / "ca.crt", pki / "ca.key"


def client_paths(pki: Path, cn: str) -> tuple[Path, Path]:
    return pki / "clients" / f"{validate_cn(cn)}.crt", pki / "clients" / f"{cn}.key"


def init_ca(pki: Path, *, days: int = 3650, force: bool = False) -> Issued:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    cert_path, key_path = ca_paths(pki)
    _refuse_overwrite(cert_path, key_path, force)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ward-agent"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "ward broker CA")])
    builder = (_base(name, name, key.public_key(), days)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return _write(builder.sign(key, hashes.SHA256()), key, cert_path, key_path)


def issue_server(pki: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, *, days: int = 825,
                 force: bool = False) -> Issued:
    """The broker's certificate, with every host (IP address or DNS name) in its subjectAltName."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return _issue(pki, "server", hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, days, force)


def issue_client(pki: Path, cn: str, *, days: int = 825, force: bool = False) -> Issued:
    """A client certificate whose CN (= MQTT user name at the broker) is `cn`."""
    return _issue(pki, f"clients/{validate_cn(cn)}", cn, [], ExtendedKeyUsageOID.CLIENT_AUTH, days, force)


def _issue(pki: Path, stem: str, cn: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier,
           days: int, force: bool) -> Issued:
    ca_cert_path, ca_key_path = ca_paths(pki)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path}: not an EC private key")
    cert_path, key_path = pki / f"{stem}.crt", pki / f"{stem}.key"
    _refuse_overwrite(cert_path, key_path, force)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (_base(subject, ca_cert.subject, key.public_key(), days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False, False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _write(builder.sign(ca_key, hashes.SHA256()), key, cert_path, key_path)


def _base(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
          days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days)))


def _refuse_overwrite(cert: Path, key: Path, force: bool) -> None:
    if not force and (cert.exists() or key.exists()):
        raise FileExistsError(f"{cert} or {key} exists; pass --force to replace it")


def _write(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path,
           key_path: Path) -> Issued:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex(":"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="the PKI directory")
    parser.add_argument("--days", type=int, default=None, help="validity (CA 3650, others 825)")
    parser.add_argument("--force", action="store_true", help="replace an existing certificate and key")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ca", help="create the CA")
    server = sub.add_parser("server", help="issue the broker's certificate")
    server.add_argument("--host", action="append", default=None,
                        help="a subjectAltName (repeatable; default 127.0.0.1 and localhost)")
    client = sub.add_parser("client", help="issue client certificates (CN = sensor id, or 'collector')")
    client.add_argument("cn", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "ca":
            issued = [init_ca(args.dir, days=args.days or 3650, force=args.force)]
        elif args.command == "server":
            hosts = tuple(args.host) if args.host else DEFAULT_HOSTS
            issued = [issue_server(args.dir, hosts, days=args.days or 825, force=args.force)]
        else:
            issued = [issue_client(args.dir, cn, days=args.days or 825, force=args.force) for cn in args.cn]
    except (OSError, ValueError) as exc:
        print(f"broker_pki: {exc}", file=sys.stderr)
        return 1
    for item in issued:
        print(f"{item.cert}  {item.key}  sha256 {item.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
