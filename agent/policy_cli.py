"""`ward-agent policy suggest|check`: the allow-list a baseline implies, and what a policy would block.

    ward-agent policy suggest --baseline FILE [--format toml|table]
    ward-agent policy check --policy FILE CAPTURE... [--config FILE]

`check` replays the captures with an Inventory (roles for role-based zones are those known at the end
of the replay), groups the answered flows by initiator, responder, protocol and responder port, and
lists every group the policy would block: what would break before anyone enforces it. Exit status: 0
(whether or not something would be blocked), 65/66 as for replay, 78 for a bad policy or configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any, Final

from agent import config
from agent.baseline import Baseline, BaselineError
from agent.baseline_stats import address_class
from agent.detectors.base import Device
from agent.detectors.policycheck import describe
from agent.inventory import Inventory
from agent.learn_cli import EX_NOINPUT, exit_status, run
from agent.policy import Policy, PolicyError, load
from agent.policy_suggest import to_table, to_toml
from agent.records import FlowRecord, ProtoHint

MAX_GROUPS: Final = 100_000
Group = tuple[str | None, str, str | None, str, str | int, int, tuple[int, ...]]


def _suggest(args: argparse.Namespace) -> int:
    try:
        baseline = Baseline.load(args.baseline)
    except BaselineError as exc:
        print(f"ward-agent: {exc}", file=sys.stderr)
        return EX_NOINPUT
    sys.stdout.write(to_toml(baseline) if args.format == "toml" else to_table(baseline))
    return 0


def blocked(policy: Policy, groups: Counter[Group], devices: list[Device]) -> list[dict[str, Any]]:
    """The flow groups the policy does not allow, with zones and readable ends, most frequent first."""
    by_mac = {str(d["mac"]): d for d in devices}
    by_ip = {str(e["ip"]): d for d in devices for e in d.get("ips", []) if isinstance(e, dict)}

    def device(mac: str | None, ip: str) -> Device | None:
        if address_class(ip, policy.local_networks) == "external":
            return None  # behind the gateway, whichever device its MAC is
        found = by_mac.get(mac) if mac else None
        return found if found is not None and found is by_ip.get(ip) else by_ip.get(ip)

    rows = []
    for (a_mac, a_ip, b_mac, b_ip, proto, port, vlans), count in groups.most_common():
        a, b = device(a_mac, a_ip), device(b_mac, b_ip)
        verdict = policy.evaluate(a_ip, b_ip, proto, port, vlans, _role(a), _role(b))
        if not verdict.allowed:
            rows.append({"from": describe(a, a_ip), "from_zone": verdict.source, "to": describe(b, b_ip),
                         "to_zone": verdict.target, "service": f"{proto}/{port}", "flows": count})
    return rows


def _role(device: Device | None) -> str | None:
    return None if device is None else str(device.get("role"))


def _check(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args.config)
        policy = load(args.policy)
    except (config.ConfigError, PolicyError) as exc:
        print(f"ward-agent: {exc}", file=sys.stderr)
        return config.EX_CONFIG
    inventory = Inventory(local_networks=policy.local_networks or None)
    groups: Counter[Group] = Counter()
    dropped = 0

    def on_flow(flow: FlowRecord) -> None:
        nonlocal dropped
        inventory.on_flow(flow)
        if not flow.b_pkts or (flow.proto == "tcp" and "R" in flow.b_flags and "S" not in flow.b_flags):
            return
        group = (flow.a_mac, flow.a_ip, flow.b_mac, flow.b_ip, flow.proto, flow.b_port, flow.vlan)
        if group in groups or len(groups) < MAX_GROUPS:
            groups[group] += 1
        else:
            dropped += 1

    def on_hint(hint: ProtoHint) -> None:
        inventory.on_hint(hint)

    totals = run(args.captures, settings, on_flow, on_hint, "policy check")
    rows = blocked(policy, groups, inventory.devices())
    out = sys.stdout
    header = ("from", "zone", "to", "zone", "service", "flows")
    table = [header] + [(r["from"], r["from_zone"], r["to"], r["to_zone"], r["service"], str(r["flows"]))
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    if rows:
        for row in [table[0], tuple("-" * w for w in widths), *table[1:]]:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
    flows = sum(r["flows"] for r in rows)
    out.write(f"{len(rows)} of {len(groups)} observed conversations ({flows} flows) would be blocked"
              + (f"; {dropped} flows not grouped (limit {MAX_GROUPS})" if dropped else "") + "\n")
    return exit_status(totals)


def add_commands(subparsers: Any) -> None:
    """Add `policy suggest` and `policy check` to the ward-agent command line; sets args.handler."""
    policy = subparsers.add_parser("policy", help="segmentation policy: suggest from a baseline, check flows")
    commands = policy.add_subparsers(dest="policy_command", required=True)
    suggest = commands.add_parser("suggest", help="print the minimal allow-list a baseline implies")
    suggest.add_argument("--baseline", metavar="FILE", required=True, help="a baseline written by learn")
    suggest.add_argument("--format", choices=("toml", "table"), default="toml")
    suggest.set_defaults(handler=_suggest)
    check = commands.add_parser("check", help="list the observed flows a policy would block")
    check.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files, read in order")
    check.add_argument("--policy", metavar="FILE", required=True, help="the proposed policy (TOML)")
    check.add_argument("--config", metavar="FILE", help="agent TOML configuration (defaults otherwise)")
    check.set_defaults(handler=_check)
