"""firmware-config's tap settings: the networkd file and the sysctl file keep the sensor silent.

The files are parsed and the silent settings checked; then the sysctl file is applied for real to an
interface named eth1 in a network namespace of our own, which must send nothing when brought up the
way networkd brings it up (a control interface without the settings does send).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "firmware-config"
NETWORK = CONFIG / "10-ward-tap.network"
SYSCTL = CONFIG / "99-ward-sensor.conf"

_SILENT_NETWORK = {
    ("Match", "Name"): "eth1",
    ("Link", "ARP"): "no",
    ("Link", "Promiscuous"): "yes",
    ("Link", "RequiredForOnline"): "no",
    ("Network", "DHCP"): "no",
    ("Network", "LinkLocalAddressing"): "no",
    ("Network", "IPv6AcceptRA"): "no",
    ("Network", "IPv6SendRA"): "no",
    ("Network", "LLMNR"): "no",
    ("Network", "MulticastDNS"): "no",
    ("Network", "LLDP"): "no",
    ("Network", "EmitLLDP"): "no",
}

_SILENT_SYSCTL = {
    "net.ipv6.conf.eth1.disable_ipv6": "1",
    "net.ipv6.conf.eth1.accept_ra": "0",
    "net.ipv6.conf.eth1.autoconf": "0",
    "net.ipv6.conf.eth1.router_solicitations": "0",
    "net.ipv4.conf.eth1.arp_ignore": "8",
    "net.ipv4.conf.eth1.arp_announce": "2",
    "net.ipv4.conf.eth1.arp_notify": "0",
    "net.ipv4.conf.eth1.proxy_arp": "0",
    "net.ipv4.conf.eth1.rp_filter": "1",
    "net.ipv4.conf.eth1.forwarding": "0",
    "net.ipv4.conf.eth1.send_redirects": "0",
}


def _network() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # networkd keys are case-sensitive
    parser.read(NETWORK, encoding="utf-8")
    return parser


def _sysctl_lines() -> list[tuple[str, str, str]]:
    """(key, value, the line before it) for each setting of the sysctl file."""
    lines = SYSCTL.read_text(encoding="utf-8").splitlines()
    out = []
    for number, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, sep, value = line.partition("=")
            assert sep, f"line {number + 1} is not key = value: {line!r}"
            out.append((key.strip(), value.strip(), lines[number - 1] if number else ""))
    return out


def test_network_file_has_every_silent_setting() -> None:
    """The networkd file matches eth1 and switches off ARP, addresses, RA, LLMNR, mDNS and LLDP."""
    parser = _network()
    found = {(section, key): parser.get(section, key, fallback=None) for section, key in _SILENT_NETWORK}
    assert found == _SILENT_NETWORK


def test_network_file_gives_the_tap_no_address() -> None:
    """No Address=, Gateway=, DNS= or DHCPServer= anywhere: the tap has nothing to speak with."""
    parser = _network()
    keys = {key for section in parser.sections() for key in parser[section]}
    assert not keys & {"Address", "Gateway", "DNS", "DHCPServer", "NTP"}
    assert set(parser.sections()) <= {"Match", "Link", "Network"}


def test_network_settings_are_each_commented() -> None:
    """Every setting line in the networkd file has a comment line right above it."""
    lines = NETWORK.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"uncommented setting: {line}"


def test_sysctl_file_has_every_silent_setting() -> None:
    """The sysctl file sets each silencing key to its value, and sets no key twice."""
    settings = _sysctl_lines()
    keys = [key for key, _, _ in settings]
    assert len(keys) == len(set(keys))
    assert {key: value for key, value, _ in settings if key in _SILENT_SYSCTL} == _SILENT_SYSCTL


def test_sysctl_settings_are_each_commented() -> None:
    """Every sysctl line has a comment line right above it."""
    for key, _, before in _sysctl_lines():
        assert before.startswith("#"), f"uncommented setting: {key}"


def test_sysctl_keys_exist_in_this_kernel() -> None:
    """Each key names a real per-interface setting (checked against loopback's)."""
    for key, _, _ in _sysctl_lines():
        parts = key.split(".")
        assert parts[:3] in (["net", "ipv4", "conf"], ["net", "ipv6", "conf"]) and parts[3] == "eth1", key
        if parts[1] == "ipv6" and not Path("/proc/sys/net/ipv6").is_dir():
            continue
        assert Path("/proc/sys", *parts[:3], "lo", *parts[4:]).exists(), key


def _tx_packets(namespace: str) -> int:
    counter = "/sys/class/net/eth1/statistics/tx_packets"
    out = subprocess.run(["ip", "netns", "exec", namespace, "cat", counter],
                         check=True, capture_output=True, text=True)
    return int(out.stdout)


@pytest.fixture
def tap_namespace() -> Iterator[str]:
    """A namespace holding eth1, one end of a veth pair, down and without addresses."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("sysctl") is None:
        pytest.skip("needs root, iproute2 and sysctl for a network namespace")
    name = f"wardsilent{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1peer"],
                       check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _bring_up_like_networkd(namespace: str) -> None:
    """What 10-ward-tap.network does to the link: up, promiscuous, ARP off, no address."""
    for link, extra in (("eth1", ["promisc", "on", "arp", "off"]), ("eth1peer", [])):
        subprocess.run(["ip", "-n", namespace, "link", "set", link, "up", *extra],
                       check=True, capture_output=True)


def test_tap_with_the_sysctl_settings_sends_nothing(tap_namespace: str) -> None:
    """With the sysctl file applied, bringing eth1 up transmits not one packet in 3 s."""
    subprocess.run(["ip", "netns", "exec", tap_namespace, "sysctl", "-q", "-p", str(SYSCTL)],
                   check=True, capture_output=True)
    _bring_up_like_networkd(tap_namespace)
    time.sleep(3)
    assert _tx_packets(tap_namespace) == 0


def test_tap_without_the_settings_does_send(tap_namespace: str) -> None:
    """Control: the same link brought up without the sysctl file sends IPv6 housekeeping packets."""
    _bring_up_like_networkd(tap_namespace)
    deadline = time.monotonic() + 10
    while _tx_packets(tap_namespace) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tx_packets(tap_namespace) > 0
