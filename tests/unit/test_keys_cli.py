"""agent.keys_cli: `keys init` writes private key pairs and refuses to overwrite; `keys show` checks them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from agent import crypto, keys_cli

FINGERPRINT = re.compile(r"[0-9a-f]{4}(?::[0-9a-f]{4}){15}")


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ward-agent")
    keys_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


def test_init_writes_the_pair_and_prints_its_fingerprint(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """init exits 0, creates sensor.key (0600) and sensor.pub, and prints the key's fingerprint."""
    assert _run("keys", "init", "--role", "sensor", "--dir", str(tmp_path / "k")) == keys_cli.EX_OK
    printed = FINGERPRINT.search(capsys.readouterr().out)
    key = crypto.load_signing_key(tmp_path / "k" / "sensor.key")
    assert printed is not None and printed.group() == crypto.fingerprint(key.public_key())
    assert (tmp_path / "k" / "sensor.key").stat().st_mode & 0o777 == 0o600


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second init exits 73, says --force, and leaves the key as it was."""
    _run("keys", "init", "--role", "collector", "--dir", str(tmp_path))
    before = (tmp_path / "collector.key").read_bytes()
    capsys.readouterr()
    assert _run("keys", "init", "--role", "collector", "--dir", str(tmp_path)) == keys_cli.EX_CANTCREAT
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "collector.key").read_bytes() == before


def test_init_with_force_replaces_the_key(tmp_path: Path) -> None:
    """--force writes a new key pair over the old one."""
    _run("keys", "init", "--role", "central", "--dir", str(tmp_path))
    before = (tmp_path / "central.key").read_bytes()
    assert _run("keys", "init", "--role", "central", "--dir", str(tmp_path), "--force") == keys_cli.EX_OK
    assert (tmp_path / "central.key").read_bytes() != before


def test_init_into_an_unwritable_place_exits_73(tmp_path: Path) -> None:
    """A --dir that is a file cannot hold keys: exit 73."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _run("keys", "init", "--role", "sensor", "--dir", str(blocker / "keys")) == keys_cli.EX_CANTCREAT


def test_init_refuses_an_unknown_role(tmp_path: Path) -> None:
    """argparse rejects a role that is not sensor, central or collector."""
    with pytest.raises(SystemExit):
        _run("keys", "init", "--role", "broker", "--dir", str(tmp_path))


def test_show_prints_every_role_with_the_init_fingerprints(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """show lists each role present with the fingerprint init printed for it."""
    expected = {}
    for role in ("sensor", "collector", "central"):
        _run("keys", "init", "--role", role, "--dir", str(tmp_path))
        found = FINGERPRINT.search(capsys.readouterr().out)
        assert found is not None
        expected[role] = found.group()
    assert _run("keys", "show", "--dir", str(tmp_path)) == keys_cli.EX_OK
    lines = capsys.readouterr().out.splitlines()
    shown = {line.split()[0]: FINGERPRINT.search(line) for line in lines}
    assert {role: m.group() for role, m in shown.items() if m} == expected


def test_show_of_an_empty_folder_exits_66(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No key files: exit 66 with a message naming the folder."""
    assert _run("keys", "show", "--dir", str(tmp_path)) == keys_cli.EX_NOINPUT
    assert str(tmp_path) in capsys.readouterr().err


def test_show_refuses_a_private_key_others_can_read(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A private key file with mode 0644 makes show exit 65 and say chmod 600."""
    _run("keys", "init", "--role", "sensor", "--dir", str(tmp_path))
    (tmp_path / "sensor.key").chmod(0o644)
    assert _run("keys", "show", "--dir", str(tmp_path)) == keys_cli.EX_DATAERR
    assert "chmod 600" in capsys.readouterr().err


def test_show_catches_halves_of_different_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A .pub that does not belong to the .key beside it makes show exit 65."""
    _run("keys", "init", "--role", "sensor", "--dir", str(tmp_path / "a"))
    _run("keys", "init", "--role", "sensor", "--dir", str(tmp_path / "b"))
    (tmp_path / "a" / "sensor.pub").write_bytes((tmp_path / "b" / "sensor.pub").read_bytes())
    assert _run("keys", "show", "--dir", str(tmp_path / "a")) == keys_cli.EX_DATAERR
    assert "not halves of one key pair" in capsys.readouterr().err


def test_show_works_from_a_public_key_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder holding only collector.pub (as on a sensor) shows its fingerprint."""
    _run("keys", "init", "--role", "collector", "--dir", str(tmp_path))
    printed = FINGERPRINT.search(capsys.readouterr().out)
    (tmp_path / "collector.key").unlink()
    assert _run("keys", "show", "--dir", str(tmp_path)) == keys_cli.EX_OK
    out = capsys.readouterr().out
    assert printed is not None and printed.group() in out and "collector.key" not in out
