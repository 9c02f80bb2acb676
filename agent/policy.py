"""Segmentation policy: zones (by CIDR, VLAN or clinical role) and the flows allowed between them.

    [policy]
    intra_zone = true          # flows inside one zone are allowed (default true)

    [zones.imaging]            # a zone holds an endpoint when ANY of its lists matches it
    cidrs = ["10.1.0.0/28"]
    vlans = [20]
    roles = ["pacs", "imaging_modality"]

    [[allow]]
    from = "imaging"           # a zone, "external", "unzoned" or "*"
    to = "backup"
    proto = "tcp"              # tcp, udp, icmp, icmp6 or any (default any)
    ports = [873, "8000-8100"] # the responder's port; absent or empty: any (ICMP ignores ports)
    bulk = true                # high volume on this path is expected: volume_anomaly stays quiet
    why = "nightly PACS backup"

An endpoint belongs to the first zone in file order that matches it; otherwise to "external" when its
address is not private (agent.baseline_stats) and "unzoned" when it is. A flow (initiator -> responder
port) is allowed when an allow rule matches both zones, the protocol and the port, or when both ends
share a zone and intra_zone is on. Everything else is a policy_violation.

Parsing lists every problem with its dotted path (zones.imaging.cidrs[1], allow[3].ports[0]) and raises
PolicyError, a ConfigError, so the command line refuses it with exit 78 like any configuration.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.baseline_stats import address_class
from agent.config import ConfigError
from agent.roles import ROLES

BUILTIN: Final = ("external", "unzoned")
PROTOS: Final = ("tcp", "udp", "icmp", "icmp6", "any")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ConfigError):
    """The policy is refused; `problems` lists every reason with its dotted path."""


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    cidrs: tuple[Network, ...] = ()
    vlans: frozenset[int] = frozenset()
    roles: frozenset[str] = frozenset()

    def holds(self, ip: str, vlans: tuple[int, ...], role: str | None) -> bool:
        if role is not None and role in self.roles:
            return True
        if self.vlans and any(v in self.vlans for v in vlans):
            return True
        if self.cidrs:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(address in n for n in self.cidrs)
        return False


@dataclass(frozen=True, slots=True)
class Allow:
    source: str
    target: str
    proto: str = "any"
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges; () is any port
    bulk: bool = False
    why: str = ""

    def matches(self, source: str, target: str, proto: str | int, port: int) -> bool:
        if self.source not in ("*", source) or self.target not in ("*", target):
            return False
        if self.proto != "any" and self.proto != proto:
            return False
        if not self.ports or proto in ("icmp", "icmp6"):
            return True
        return any(low <= port <= high for low, high in self.ports)


@dataclass(frozen=True, slots=True)
class Verdict:
    source: str
    target: str
    rule: Allow | None  # the allow rule that matched; None when intra-zone or blocked
    allowed: bool


@dataclass(frozen=True, slots=True)
class Policy:
    zones: tuple[Zone, ...] = ()
    allow: tuple[Allow, ...] = ()
    intra_zone: bool = True
    local_networks: tuple[str, ...] = ()
    _cache: dict[tuple[str, tuple[int, ...], str | None], str] = field(default_factory=dict, compare=False,
                                                                      repr=False)

    def zone_of(self, ip: str, vlans: tuple[int, ...] = (), role: str | None = None) -> str:
        """The endpoint's zone, memoised (bounded) because it runs for both ends of every flow."""
        key = (ip, vlans, role)
        zone = self._cache.get(key)
        if zone is None:
            if len(self._cache) >= 65536:
                self._cache.clear()
            zone = self._cache[key] = self._zone_of(ip, vlans, role)
        return zone

    def _zone_of(self, ip: str, vlans: tuple[int, ...], role: str | None) -> str:
        for zone in self.zones:
            if zone.holds(ip, vlans, role):
                return zone.name
        return "external" if address_class(ip, self.local_networks) == "external" else "unzoned"

    def evaluate(self, a_ip: str, b_ip: str, proto: str | int, port: int, vlans: tuple[int, ...] = (),
                 a_role: str | None = None, b_role: str | None = None) -> Verdict:
        """Whether the initiator a may reach the responder b on proto/port."""
        source, target = self.zone_of(a_ip, vlans, a_role), self.zone_of(b_ip, vlans, b_role)
        for rule in self.allow:
            if rule.matches(source, target, proto, port):
                return Verdict(source, target, rule, True)
        return Verdict(source, target, None, self.intra_zone and source == target)


def load(path: str | Path) -> Policy:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        return parse(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{path}: not valid TOML: {exc}"]) from exc


def parse(document: Mapping[str, Any]) -> Policy:
    """Validate a parsed policy document; raises PolicyError listing every problem."""
    problems: list[str] = [f"{k}: unknown section (known: policy, zones, allow)" for k in document
                           if k not in ("policy", "zones", "allow")]
    options = _table(document.get("policy", {}), "policy", problems)
    for key in options:
        if key not in ("intra_zone", "local_networks"):
            problems.append(f"policy.{key}: unknown key (known: intra_zone, local_networks)")
    intra = options.get("intra_zone", True)
    if not isinstance(intra, bool):
        problems.append(f"policy.intra_zone: must be true or false, got {intra!r}")
    local = tuple(str(n) for n in _networks(options.get("local_networks", []), "policy.local_networks",
                                            problems))
    zones = [_zone(name, body, problems) for name, body in _table(document.get("zones", {}), "zones",
                                                                  problems).items()]
    names = {z.name for z in zones} | set(BUILTIN) | {"*"}
    rules = document.get("allow", [])
    if not isinstance(rules, list):
        problems.append("allow: must be an array of tables ([[allow]])")
        rules = []
    allow = [_allow(i, body, names, problems) for i, body in enumerate(rules)]
    if problems:
        raise PolicyError(problems)
    return Policy(tuple(zones), tuple(allow), intra is True, local)


def _table(value: Any, where: str, problems: list[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        problems.append(f"{where}: must be a table")
        return {}
    return value


def _list(value: Any, where: str, problems: list[str]) -> list[Any]:
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list, got {value!r}")
        return []
    return value


def _networks(value: Any, where: str, problems: list[str]) -> list[Network]:
    found: list[Network] = []
    for i, cidr in enumerate(_list(value, where, problems)):
        try:
            found.append(ipaddress.ip_network(cidr, strict=False))
        except (TypeError, ValueError):
            problems.append(f"{where}[{i}]: not a network: {cidr!r}")
    return found


def _zone(name: str, body: Any, problems: list[str]) -> Zone:
    where = f"zones.{name}"
    table = _table(body, where, problems)
    if name in BUILTIN or name == "*":
        problems.append(f"{where}: the name is reserved ({', '.join(BUILTIN)}, *)")
    for key in table:
        if key not in ("cidrs", "vlans", "roles"):
            problems.append(f"{where}.{key}: unknown key (known: cidrs, vlans, roles)")
    vlans = []
    for i, vlan in enumerate(_list(table.get("vlans", []), f"{where}.vlans", problems)):
        if isinstance(vlan, bool) or not isinstance(vlan, int) or not 0 <= vlan <= 4095:
            problems.append(f"{where}.vlans[{i}]: must be a VLAN id 0-4095, got {vlan!r}")
        else:
            vlans.append(vlan)
    roles = []
    for i, role in enumerate(_list(table.get("roles", []), f"{where}.roles", problems)):
        if role not in ROLES:
            problems.append(f"{where}.roles[{i}]: unknown role {role!r} (known: {', '.join(ROLES)})")
        else:
            roles.append(role)
    cidrs = tuple(_networks(table.get("cidrs", []), f"{where}.cidrs", problems))
    if table and not (cidrs or vlans or roles):
        problems.append(f"{where}: needs cidrs, vlans or roles")
    return Zone(name, cidrs, frozenset(vlans), frozenset(roles))


def _allow(index: int, body: Any, names: set[str], problems: list[str]) -> Allow:
    where = f"allow[{index}]"
    table = _table(body, where, problems)
    for key in table:
        if key not in ("from", "to", "proto", "ports", "bulk", "why"):
            problems.append(f"{where}.{key}: unknown key (known: from, to, proto, ports, bulk, why)")
    ends = []
    for key in ("from", "to"):
        value = table.get(key)
        if value not in names:
            problems.append(f"{where}.{key}: {'missing' if value is None else f'unknown zone {value!r}'} "
                            f"(zones: {', '.join(sorted(names))})")
        ends.append(str(value))
    proto = table.get("proto", "any")
    if proto not in PROTOS:
        problems.append(f"{where}.proto: must be one of {', '.join(PROTOS)}, got {proto!r}")
    ports = []
    for i, port in enumerate(_list(table.get("ports", []), f"{where}.ports", problems)):
        span = _port_range(port)
        if span is None:
            problems.append(f"{where}.ports[{i}]: must be a port 0-65535 or \"low-high\", got {port!r}")
        else:
            ports.append(span)
    bulk, why = table.get("bulk", False), table.get("why", "")
    if not isinstance(bulk, bool):
        problems.append(f"{where}.bulk: must be true or false, got {bulk!r}")
    if not isinstance(why, str):
        problems.append(f"{where}.why: must be a string, got {why!r}")
    return Allow(ends[0], ends[1], str(proto), tuple(ports), bulk is True, str(why))


def _port_range(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value) if 0 <= value <= 65535 else None
    if isinstance(value, str) and value.count("-") == 1:
        low, high = value.split("-")
        if low.strip().isdigit() and high.strip().isdigit() and int(low) <= int(high) <= 65535:
            return int(low), int(high)
    return None
