"""The systemd units: `systemd-analyze verify`, `systemd-analyze security` (exposure <= 2.0), the
directives the deployment relies on, and MemoryDenyWriteExecute= against the real agent code.

`verify` checks that ExecStart's program exists on this machine, and /opt/ward-agent is not installed
here. So each unit is verified as a copy whose ExecStart names this test run's own `ward-agent` entry
point (the same console script, from the development venv); the copy differs from the unit in that
one path and nowhere else, which the test checks too. `--root=` does not help: systemd 252 still looks
up the program on the host.

MemoryDenyWriteExecute= is emulated with the seccomp filter systemd installs for it (mmap with
PROT_WRITE|PROT_EXEC, and mprotect/pkey_mprotect adding PROT_EXEC, fail with EPERM), and the agent's
modules, its crypto, ctypes and a replay through pcapy-ng then run under it.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = {name: ROOT / "systemd" / name for name in ("ward-agent.service", "ward-collector.service")}
INSTALLED_BIN = "/opt/ward-agent/venv/bin/ward-agent"
MAX_EXPOSURE = 2.0

_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(_ANALYZE is None, reason="systemd-analyze (Debian package systemd) absent")


def _directives(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> every value it is given, in order (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert _ANALYZE is not None
    return subprocess.run([_ANALYZE, *args], capture_output=True, text=True, timeout=120)


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning."""
    entry_point = Path(sys.prefix) / "bin" / "ward-agent"
    if not entry_point.exists():
        pytest.skip(f"no ward-agent entry point in {sys.prefix} to stand in for {INSTALLED_BIN}")
    original = UNITS[unit].read_text(encoding="utf-8")
    copy = tmp_path / unit
    copy.write_text(original.replace(f"ExecStart={INSTALLED_BIN} ", f"ExecStart={entry_point} "),
                    encoding="utf-8")
    pairs = zip(original.splitlines(), copy.read_text().splitlines(), strict=True)
    changed = [(a, b) for a, b in pairs if a != b]
    assert len(changed) == 1 and changed[0][0].startswith(f"ExecStart={INSTALLED_BIN} ")
    proc = _analyze("verify", str(copy))
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_exposure_is_at_most_two(unit: str) -> None:
    """`systemd-analyze security --offline=yes` rates the unit 2.0 or better."""
    proc = _analyze("security", "--offline=yes", "--no-pager", str(UNITS[unit]))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_agent_unit_has_the_deployment_contract() -> None:
    """ward-agent.service: notify + watchdog, restart except on EX_CONFIG, CAP_NET_RAW and nothing else."""
    unit = _directives(UNITS["ward-agent.service"])
    expected = {
        "Service.Type": ["notify"], "Service.NotifyAccess": ["main"], "Service.WatchdogSec": ["30"],
        "Service.Restart": ["on-failure"], "Service.RestartPreventExitStatus": ["78"],
        "Service.User": ["ward-agent"], "Service.AmbientCapabilities": ["CAP_NET_RAW"],
        "Service.CapabilityBoundingSet": ["CAP_NET_RAW"], "Service.NoNewPrivileges": ["yes"],
        "Service.ProtectSystem": ["strict"], "Service.StateDirectory": ["ward-agent"],
        "Service.ConfigurationDirectory": ["ward-agent"], "Service.MemoryDenyWriteExecute": ["yes"],
        "Service.ExecStart": [f"{INSTALLED_BIN} run --config /etc/ward-agent/agent.toml"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert "DynamicUser" not in str(unit) and "Service.MemoryMax" in unit
    assert set(unit["Service.RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK"}


def test_collector_unit_holds_no_capability_and_no_packet_socket() -> None:
    """ward-collector.service: empty bounding set, no ambient capability, no AF_PACKET or AF_NETLINK."""
    unit = _directives(UNITS["ward-collector.service"])
    assert unit["Service.CapabilityBoundingSet"] == [""]
    assert unit.get("Service.AmbientCapabilities", [""]) == [""]
    assert set(unit["Service.RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit["Service.ExecStart"] == [
        f"{INSTALLED_BIN} central collect --config /etc/ward-agent/collector.toml"]
    assert unit["Service.RestartPreventExitStatus"] == ["78"]


# systemd's MemoryDenyWriteExecute= filter, for the architectures a sensor runs on.
_ARCHES = {"x86_64": (0xC000003E, 9, 10, 329), "aarch64": (0xC00000B7, 222, 226, 288)}

_UNDER_MDWE = textwrap.dedent("""
    import ctypes, json, os, struct, sys
    arch, mmap_nr, mprotect_nr, pkey_nr = json.loads(sys.argv[1])
    LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
    ALLOW, EPERM = 0x7FFF0000, 0x00050001
    program = [  # (code, jt, jf, k); jumps count the instructions to skip
        (LD, 0, 0, 4), (JEQ, 0, 10, arch),                      # other ABI: allow
        (LD, 0, 0, 0), (JEQ, 2, 0, mprotect_nr), (JEQ, 1, 0, pkey_nr), (JEQ, 2, 6, mmap_nr),
        (LD, 0, 0, 32), (JSET, 3, 4, 0x4),                      # mprotect: PROT_EXEC -> EPERM
        (LD, 0, 0, 32), (AND, 0, 0, 0x6), (JEQ, 0, 1, 0x6),     # mmap: WRITE|EXEC -> EPERM
        (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW),
    ]
    code = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    filt = ctypes.create_string_buffer(code)
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(program), ctypes.addressof(filt))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    assert libc.prctl(38, 1, None, 0, 0) == 0                   # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0, ctypes.get_errno()  # seccomp filter
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[2], *sys.argv[3:]])
""")

_WORKLOAD = textwrap.dedent("""
    import importlib, json, mmap, pkgutil, sys, contextlib, io
    import ctypes
    import agent
    out = {}
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        out["wx_mmap"] = "allowed"
    except OSError:
        out["wx_mmap"] = "refused"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    c_int = ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = libc.mmap(None, 4096, 3, 0x22, -1, 0)                # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    out["mprotect_exec"] = "allowed" if libc.mprotect(page, 4096, 5) == 0 else "refused"  # READ|EXEC
    out["imports"] = {}
    for mod in pkgutil.walk_packages(agent.__path__, "agent."):
        if mod.name == "agent.__main__":  # runs the command line when imported
            continue
        try:
            importlib.import_module(mod.name)
            out["imports"][mod.name] = "ok"
        except Exception as exc:
            out["imports"][mod.name] = type(exc).__name__
    out["ctypes_callback"] = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)()
    from agent.privileges import current_capabilities
    out["caps_read"] = sorted(current_capabilities())
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from agent import crypto
    sender, recipient = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    sealed = crypto.seal(b"flows", b"header", sender, recipient.public_key())
    out["crypto"] = crypto.open_sealed(sealed, recipient, sender.public_key()).plaintext.decode()
    from agent.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as emitted:
        out["replay_status"] = main(["replay", sys.argv[1]])
    out["replay_lines"] = len(emitted.getvalue().splitlines())
    print(json.dumps(out, sort_keys=True))
""")


def _run_workload(under_mdwe: bool) -> dict[str, object]:
    capture = str(ROOT / "tests" / "captures" / "hl7-mllp.pcap")
    if under_mdwe:
        arch = json.dumps(_ARCHES[_machine()])
        argv = [sys.executable, "-c", _UNDER_MDWE, arch, _WORKLOAD, capture]
    else:
        argv = [sys.executable, "-c", _WORKLOAD, capture]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def _machine() -> str:
    machine = platform.machine()
    if machine not in _ARCHES:
        pytest.skip(f"no MemoryDenyWriteExecute filter written for {machine}")
    return machine


def test_agent_runs_under_memory_deny_write_execute() -> None:
    """Under systemd's W^X seccomp filter, every module imports and crypto, ctypes and replay work
    exactly as without it, while writable+executable memory is refused."""
    _machine()
    free, confined = _run_workload(False), _run_workload(True)
    for probe in ("wx_mmap", "mprotect_exec"):
        assert (free.pop(probe), confined.pop(probe)) == ("allowed", "refused"), probe
    assert confined == free
    imports = confined["imports"]
    assert isinstance(imports, dict)
    for name in ("agent.capture", "agent.crypto", "agent.privileges", "agent.sdnotify", "agent.publisher"):
        assert imports[name] == "ok", name
    assert confined["crypto"] == "flows" and confined["ctypes_callback"] == 7
    assert confined["replay_status"] == 0 and isinstance(confined["replay_lines"], int)
    assert confined["replay_lines"] > 1
