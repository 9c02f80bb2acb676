"""`ward-agent keys init` and `keys show`: create a role's key pair, print fingerprints.

Roles: `sensor` (Ed25519, signs uplink messages), `collector` (X25519, uplink messages are encrypted
to it) and `central` (Ed25519, signs configuration pushes). Files are `<role>.key` (mode 0600) and
`<role>.pub` in --dir; compare the fingerprints out of band when pinning a key on the other side.

Exit status: 0 done; 73 (EX_CANTCREAT) a file exists without --force, or cannot be written; 66
(EX_NOINPUT) no key file in --dir; 65 (EX_DATAERR) a key file is unreadable, malformed, readable by
group or others, or does not match its public half.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import crypto

EX_OK, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT = 0, 65, 66, 73


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys init` and `keys show`; each sets `handler(args) -> exit status` on the namespace."""
    keys = subparsers.add_parser("keys", help="create key pairs and show their fingerprints",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = keys.add_subparsers(dest="keys_command", required=True)
    init = commands.add_parser("init", help="generate a role's key pair")
    init.add_argument("--role", required=True, choices=tuple(crypto.ROLES), help="whose key pair")
    init.add_argument("--dir", required=True, type=Path, metavar="DIR", help="where the files go")
    init.add_argument("--force", action="store_true", help="replace existing key files")
    init.set_defaults(handler=run_init)
    show = commands.add_parser("show", help="print the fingerprints of the key files in a folder")
    show.add_argument("--dir", required=True, type=Path, metavar="DIR", help="folder to look in")
    show.set_defaults(handler=run_show)


def run_init(args: argparse.Namespace) -> int:
    try:
        info = crypto.write_keypair(args.dir, args.role, force=args.force)
    except FileExistsError as exc:
        return _fail(str(exc), EX_CANTCREAT)
    except OSError as exc:
        return _fail(f"cannot write keys in {args.dir}: {exc.strerror or exc}", EX_CANTCREAT)
    print(f"{info.role} {info.algorithm} key pair written: {info.private_path} (mode 0600), "
          f"{info.public_path}")
    print(f"fingerprint {info.fingerprint}")
    return EX_OK


def run_show(args: argparse.Namespace) -> int:
    found, status = 0, EX_OK
    for role in crypto.ROLES:
        private_path, public_path = crypto.key_paths(args.dir, role)
        present = [p for p in (private_path, public_path) if _present(p)]
        if not present:
            continue
        found += 1
        try:
            print(f"{role:<10} {crypto.ROLES[role]:<8} {_fingerprint(private_path, public_path)}  "
                  f"{' '.join(p.name for p in present)}")
        except crypto.KeyFileError as exc:
            status = _fail(str(exc), EX_DATAERR)
    if not found:
        return _fail(f"no key files in {args.dir} (expected {', '.join(f'{r}.key' for r in crypto.ROLES)})",
                     EX_NOINPUT)
    return status


def _fingerprint(private_path: Path, public_path: Path) -> str:
    """The fingerprint of the pair; the private half, when present, must match the public one."""
    public = crypto.load_public(public_path) if _present(public_path) else None
    if _present(private_path):
        derived = crypto.load_private(private_path).public_key()
        if public is not None and derived.public_bytes_raw() != public.public_bytes_raw():
            raise crypto.KeyFileError(f"{private_path} and {public_path} are not halves of one key pair")
        public = derived
    assert public is not None  # the caller saw one of the two files
    return crypto.fingerprint(public)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _fail(message: str, status: int) -> int:
    print(f"ward-agent keys: {message}", file=sys.stderr)
    return status
