"""The minimal segmentation policy a learned baseline implies, as policy TOML and as a readable table.

One zone per clinical role seen (`roles = ["pacs"]`); addresses that are no profiled device fall in the
built-in zones "external" (not private) and "unzoned". Every service a device used toward a peer while
learning becomes an allow rule from its role's zone to the peer's zone for that protocol and port, merged
per (from, to, proto). Flows inside one zone need no rule (intra_zone = true). The output parses with
agent.policy, so `policy check` can show what it would block before anyone enforces it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Final

from agent.baseline import Baseline
from agent.baseline_stats import EPHEMERAL, address_class

_EPHEMERAL_RANGE: Final = f"{EPHEMERAL}-65535"


Path = tuple[str, str, str]  # (from zone, to zone, proto)


def suggest(baseline: Baseline) -> tuple[list[str], dict[Path, set[str]], dict[Path, int]]:
    """(zones, {(from, to, proto): ports}, {(from, to, proto): distinct device pairs}) from a baseline."""
    owner: dict[str, str] = {}
    for profile in baseline.devices.values():
        for ip in profile.ips:
            owner.setdefault(ip, profile.role)
    zones = sorted({p.role for p in baseline.devices.values()})
    rules: dict[Path, set[str]] = defaultdict(set)
    pairs: dict[Path, set[tuple[str, str]]] = defaultdict(set)
    for profile in baseline.devices.values():
        for peer_ip, peer in profile.peers.items():
            target = owner.get(peer_ip)
            if target is None:
                cls = address_class(peer_ip, baseline.local_networks)
                target = "external" if cls == "external" else "unzoned"
            if target == profile.role:
                continue
            for label in peer.services:
                proto, _, port = label.partition("/")
                key = (profile.role, target, proto)
                rules[key].add(_EPHEMERAL_RANGE if port.endswith("+") else port)
                pairs[key].add((profile.key, peer_ip))
    return zones, dict(rules), {k: len(v) for k, v in pairs.items()}


def _port_order(port: str) -> int:
    return int(port.split("-")[0])


def to_toml(baseline: Baseline) -> str:
    zones, rules, pairs = suggest(baseline)
    lines = ["# Segmentation policy suggested from a learned baseline (ward-agent policy suggest).",
             "# One zone per clinical role; review before enforcing, then check it: ward-agent policy check.",
             "", "[policy]", "intra_zone = true", ""]
    for zone in zones:
        lines += [f"[zones.{zone}]", f'roles = ["{zone}"]', ""]
    for (source, target, proto), ports in sorted(rules.items()):
        listed = ", ".join(p if p.isdigit() else f'"{p}"' for p in sorted(ports, key=_port_order))
        lines += ["[[allow]]", f'from = "{source}"', f'to = "{target}"', f'proto = "{proto}"',
                  f"ports = [{listed}]", f'why = "learned: {pairs[(source, target, proto)]} device pair(s)"',
                  ""]
    return "\n".join(lines)


def to_table(baseline: Baseline) -> str:
    zones, rules, pairs = suggest(baseline)
    header = ("from zone", "to zone", "proto", "ports", "device pairs")
    rows = [(s, t, p, ", ".join(sorted(ports, key=_port_order)), str(pairs[(s, t, p)]))
            for (s, t, p), ports in sorted(rules.items())]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = [f"zones: {', '.join(zones) or '(none)'} (+ external, unzoned)", ""]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        out.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"
