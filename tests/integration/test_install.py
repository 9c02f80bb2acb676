"""scripts/install.sh into staging roots: the tree, modes and owners, idempotence, config safety, uninstall.

Most tests install with --no-venv (under a second) and make the sensor key with this test run's own
Python (--python). One test takes the full path, a pip install of this checkout into a fresh venv
(about 20 s with a warm pip cache, and it needs the package index).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh sets owners: needs root")

Snapshot = dict[str, tuple[str, int, int, int, int, str]]


def _install(root: Path, *args: str, check: bool = True,
             script: Path = INSTALL) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", str(script), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _quick(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _install(root, "--no-venv", "--python", sys.executable, *args)


def _snapshot(root: Path) -> Snapshot:
    """Every path under root with its mode, owner, group, size, mtime and content checksum."""
    snap: Snapshot = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
        snap[str(path.relative_to(root))] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid,
                                             info.st_size, info.st_mtime_ns, digest)
    return snap


def _service_ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "ward-agent":
            return int(fields[2]), int(fields[3])
    raise AssertionError("no ward-agent user in the staging root")


def _meta(path: Path) -> tuple[str, int, int]:
    info = path.stat()
    return oct(stat.S_IMODE(info.st_mode)), info.st_uid, info.st_gid


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A staging root after one quick install (read-only for the tests that use it)."""
    root = tmp_path_factory.mktemp("staged")
    _quick(root)
    return root


def test_second_install_changes_nothing(tmp_path: Path) -> None:
    """Running the installer again leaves every path, mode, owner, mtime and checksum as it was."""
    _quick(tmp_path)
    before = _snapshot(tmp_path)
    _quick(tmp_path)
    assert _snapshot(tmp_path) == before


def test_tree_holds_units_config_keys_and_tap_files(staged: Path) -> None:
    """Units, configuration, keys, the tap's networkd and sysctl files and the README are installed."""
    expected = {
        "etc/systemd/system/ward-agent.service", "etc/systemd/system/ward-collector.service",
        "etc/ward-agent/agent.toml", "etc/ward-agent/roles.toml",
        "etc/ward-agent/keys/sensor.key", "etc/ward-agent/keys/sensor.pub",
        "etc/systemd/network/10-ward-tap.network", "etc/sysctl.d/99-ward-sensor.conf",
        "opt/ward-agent/README.md",
    }
    assert expected <= set(_snapshot(staged))
    assert not (staged / "opt/ward-agent/venv").exists()


def test_installed_units_are_the_repository_units(staged: Path) -> None:
    """The unit files are copied unchanged (the CI security checks apply to what is installed)."""
    for unit in ("ward-agent.service", "ward-collector.service"):
        assert (staged / "etc/systemd/system" / unit).read_bytes() == (ROOT / "systemd" / unit).read_bytes()


def test_service_user_is_a_system_user_without_login(staged: Path) -> None:
    """ward-agent gets a system uid, its own group, home /var/lib/ward-agent and no login shell."""
    entry = next(line for line in (staged / "etc/passwd").read_text().splitlines()
                 if line.startswith("ward-agent:"))
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert 0 < int(uid) < 1000 and home == "/var/lib/ward-agent" and shell == "/usr/sbin/nologin"
    assert f"ward-agent:x:{gid}:" in (staged / "etc/group").read_text()


def test_config_is_root_owned_and_readable_by_the_service_group_only(staged: Path) -> None:
    """/etc/ward-agent is 0750 and its files 0640, owned by root, group ward-agent."""
    _, gid = _service_ids(staged)
    assert _meta(staged / "etc/ward-agent") == ("0o750", 0, gid)
    for name in ("agent.toml", "roles.toml"):
        assert _meta(staged / "etc/ward-agent" / name) == ("0o640", 0, gid)


def test_keys_belong_to_the_service_user_alone(staged: Path) -> None:
    """The keys and TLS folders are 0700 and the private key 0600, all owned by ward-agent."""
    uid, gid = _service_ids(staged)
    assert _meta(staged / "etc/ward-agent/keys") == ("0o700", uid, gid)
    assert _meta(staged / "etc/ward-agent/tls") == ("0o700", uid, gid)
    assert _meta(staged / "etc/ward-agent/keys/sensor.key") == ("0o600", uid, gid)


def test_units_and_tap_files_are_world_readable_root_files(staged: Path) -> None:
    """Units, networkd and sysctl files are root's, mode 0644."""
    for rel in ("etc/systemd/system/ward-agent.service", "etc/systemd/network/10-ward-tap.network",
                "etc/sysctl.d/99-ward-sensor.conf"):
        assert _meta(staged / rel) == ("0o644", 0, 0), rel


def test_tap_interface_is_set_everywhere(tmp_path: Path) -> None:
    """--tap renames eth1 in the networkd and sysctl files and sets capture.interface in agent.toml."""
    _quick(tmp_path, "--tap", "enx001122334455")
    network = (tmp_path / "etc/systemd/network/10-ward-tap.network").read_text()
    sysctl = (tmp_path / "etc/sysctl.d/99-ward-sensor.conf").read_text()
    assert "Name=enx001122334455" in network and "eth1" not in network
    assert "net.ipv4.conf.enx001122334455.arp_ignore = 8" in sysctl and "eth1" not in sysctl
    assert '\ninterface = "enx001122334455"\n' in (tmp_path / "etc/ward-agent/agent.toml").read_text()


def test_bad_tap_name_is_refused(tmp_path: Path) -> None:
    """An interface name that could inject into the sed expressions is refused with exit 2."""
    proc = _install(tmp_path, "--no-venv", "--tap", "eth1/g;d", check=False)
    assert proc.returncode == 2 and not (tmp_path / "etc").exists()


def test_edited_config_is_kept_and_the_sample_goes_beside_it(tmp_path: Path) -> None:
    """An agent.toml that differs from the sample is never overwritten; the sample becomes .new."""
    _quick(tmp_path)
    config = tmp_path / "etc/ward-agent/agent.toml"
    edited = config.read_text() + "# site edit\n"
    config.write_text(edited)
    _quick(tmp_path)
    assert config.read_text() == edited
    assert (tmp_path / "etc/ward-agent/agent.toml.new").read_text() + "# site edit\n" == edited


def test_existing_key_is_never_replaced(tmp_path: Path) -> None:
    """A second install keeps the sensor key made by the first."""
    _quick(tmp_path)
    key = (tmp_path / "etc/ward-agent/keys/sensor.key").read_bytes()
    _quick(tmp_path)
    assert (tmp_path / "etc/ward-agent/keys/sensor.key").read_bytes() == key


def test_network_manager_is_told_to_leave_the_tap_alone(tmp_path: Path) -> None:
    """With NetworkManager present, a drop-in marks the tap interface unmanaged."""
    (tmp_path / "etc/NetworkManager").mkdir(parents=True)
    _quick(tmp_path, "--tap", "eth2")
    dropin = (tmp_path / "etc/NetworkManager/conf.d/90-ward-tap.conf").read_text()
    assert "[keyfile]\nunmanaged-devices=interface-name:eth2\n" in dropin


def test_uninstall_keeps_configuration_and_purge_removes_it(tmp_path: Path) -> None:
    """--uninstall removes units, tap files and /opt/ward-agent; --purge then removes /etc/ward-agent."""
    _quick(tmp_path)
    (tmp_path / "var/lib/ward-agent").mkdir(parents=True)
    _install(tmp_path, "--uninstall")
    left = set(_snapshot(tmp_path))
    assert not {p for p in left if p.startswith(("opt/ward-agent", "etc/systemd/", "etc/sysctl.d/"))
                and not p.endswith(("system", "network", "sysctl.d"))}
    assert {"etc/ward-agent/agent.toml", "etc/ward-agent/keys/sensor.key", "var/lib/ward-agent"} <= left
    _install(tmp_path, "--uninstall", "--purge")
    assert not (tmp_path / "etc/ward-agent").exists() and not (tmp_path / "var/lib/ward-agent").exists()
    assert (tmp_path / "etc/passwd").exists()


def test_purge_without_uninstall_is_refused(tmp_path: Path) -> None:
    """--purge alone is a usage error (exit 2) and touches nothing."""
    proc = _install(tmp_path, "--purge", check=False)
    assert proc.returncode == 2 and list(tmp_path.iterdir()) == []


def _checkout_copy(dest: Path) -> Path:
    """A frozen copy of what install.sh reads, so edits in the work tree cannot race the test."""
    for name in ("agent", "systemd", "firmware-config"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "scripts/install.sh"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest / "scripts/install.sh"


def test_full_install_builds_a_working_venv_once(tmp_path: Path) -> None:
    """The pip path installs the agent into /opt/ward-agent/venv, scripts point at the target path,
    and a second run changes nothing (no reinstall)."""
    script = _checkout_copy(tmp_path / "checkout")
    target = tmp_path / "target"
    _install(target, script=script)
    venv = target / "opt/ward-agent/venv"
    assert (venv / "bin/ward-agent").read_text().startswith("#!/opt/ward-agent/venv/bin/python")
    version = subprocess.run([str(venv / "bin/python"), "-m", "agent", "--version"],
                             capture_output=True, text=True, check=True, cwd=target)
    assert version.stdout.startswith("ward-agent ")
    assert (target / "etc/ward-agent/keys/sensor.key").exists()
    before = _snapshot(target)
    second = _install(target, script=script)
    assert "pip install" not in second.stderr
    assert _snapshot(target) == before
