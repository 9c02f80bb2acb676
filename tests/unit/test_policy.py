"""agent.policy, the policy_violation detector, policy suggest/check and learn on the command line."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent import learn_cli, policy_cli
from agent.baseline import Baseline
from agent.config import AgentConfig
from agent.detectors import policycheck
from agent.detectors.learned import Settings
from agent.learn_cli import learn
from agent.policy import PolicyError, parse
from agent.policy_suggest import suggest, to_toml
from agent.records import FlowRecord

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
POLICY = """
[zones.imaging]
cidrs = ["10.1.0.8/29"]
[zones.pumps]
roles = ["infusion_pump"]
[zones.voice]
vlans = [30]

[[allow]]
from = "imaging"
to = "imaging"
proto = "tcp"
ports = [11112]

[[allow]]
from = "pumps"
to = "*"
proto = "tcp"
ports = ["2570-2580"]
"""


class Devices:
    def __init__(self, roles: dict[str, str]) -> None:
        self.roles = roles

    def device(self, key: str) -> dict[str, Any] | None:
        return None

    def device_of_ip(self, ip: str) -> dict[str, Any] | None:
        return {"mac": "x", "role": self.roles[ip], "ips": [{"ip": ip}]} if ip in self.roles else None


def flow(a_ip: str, b_ip: str, port: int, b_pkts: int = 3, vlan: tuple[int, ...] = ()) -> FlowRecord:
    return FlowRecord(9.0, 10.0, "tcp", a_ip, 40000, b_ip, port, None, None, vlan, 3, b_pkts, 100, 100, "SAF",
                      "SAF", "fin")


def test_zones_by_cidr_vlan_role_and_builtins() -> None:
    """An endpoint's zone: first match by CIDR, VLAN or role; else external or unzoned."""
    policy = parse(tomllib.loads(POLICY))
    assert policy.zone_of("10.1.0.10") == "imaging"
    assert policy.zone_of("10.9.9.9", (30,)) == "voice"
    assert policy.zone_of("10.9.9.9", (), "infusion_pump") == "pumps"
    assert policy.zone_of("198.51.100.7") == "external" and policy.zone_of("10.9.9.9") == "unzoned"


def test_allow_rules_match_zone_proto_and_port_range() -> None:
    """A rule allows its zones, protocol and ports; wildcard targets and port ranges work."""
    policy = parse(tomllib.loads(POLICY))
    assert policy.evaluate("10.1.0.11", "10.1.0.10", "tcp", 11112).allowed
    assert not policy.evaluate("10.1.0.11", "10.9.9.9", "tcp", 11112).allowed
    assert policy.evaluate("10.9.0.31", "10.1.0.10", "tcp", 2575, (), "infusion_pump").allowed
    assert not policy.evaluate("10.9.0.31", "10.1.0.10", "udp", 2575, (), "infusion_pump").allowed


def test_intra_zone_traffic_follows_the_switch() -> None:
    """Inside one zone traffic is allowed by default and blocked with intra_zone = false."""
    assert parse(tomllib.loads(POLICY)).evaluate("10.9.0.1", "10.9.0.2", "tcp", 22).allowed
    strict = parse(tomllib.loads("[policy]\nintra_zone = false\n" + POLICY))
    assert not strict.evaluate("10.9.0.1", "10.9.0.2", "tcp", 22).allowed


def test_every_problem_is_listed_with_its_path() -> None:
    """All problems at once, each with its dotted path."""
    bad = """
[zones.a]
cidrs = ["10.0.0.0/33"]
roles = ["toaster"]
[zones.external]
vlans = [1]
[[allow]]
from = "a"
to = "nowhere"
ports = [70000, "9-1"]
proto = "sctp"
colour = "red"
"""
    with pytest.raises(PolicyError) as caught:
        parse(tomllib.loads(bad))
    problems = "\n".join(caught.value.problems)
    for path in ("zones.a.cidrs[0]", "zones.a.roles[0]", "zones.external:", "allow[0].to",
                 "allow[0].ports[0]", "allow[0].ports[1]", "allow[0].proto", "allow[0].colour"):
        assert path in problems, path


def test_detector_raises_a_keyed_violation(tmp_path: Path) -> None:
    """A blocked, answered flow is a policy_violation keyed by initiator, responder and service."""
    path = tmp_path / "p.toml"
    path.write_text(POLICY)
    context = Devices({"10.9.0.31": "infusion_pump"})
    detector = policycheck.make(policycheck.Settings(policy=str(path)), context)
    found = detector.on_flow(flow("10.9.0.31", "10.1.0.10", 11112))
    assert [f.key for f in found] == ["policy_violation:ip:10.9.0.31:10.1.0.10:tcp/11112"]
    assert found[0].evidence["from_zone"] == "pumps" and found[0].evidence["to_zone"] == "imaging"
    assert detector.on_flow(flow("10.9.0.31", "10.1.0.10", 11112)) == []  # once per `repeat`


def test_detector_ignores_unanswered_and_allowed_flows(tmp_path: Path) -> None:
    """Unanswered flows and allowed flows raise nothing."""
    path = tmp_path / "p.toml"
    path.write_text(POLICY)
    detector = policycheck.make(policycheck.Settings(policy=str(path)), Devices({}))
    assert detector.on_flow(flow("10.9.0.31", "10.1.0.10", 22, b_pkts=0)) == []
    assert detector.on_flow(flow("10.1.0.11", "10.1.0.10", 11112)) == []


def test_detector_needs_a_policy() -> None:
    """Without a policy file the settings are refused."""
    assert policycheck.Settings().problems() == ["policy: a policy file is required"]


def _learned() -> Baseline:
    detector, _, _ = learn([str(CAPTURES / "dicom-workflow.pcap"), str(CAPTURES / "hl7-mllp.pcap")],
                           AgentConfig(), Settings())
    return detector.baseline


def test_suggestion_allows_what_was_learned() -> None:
    """The suggested policy parses, allows the learned DICOM and HL7 flows and blocks others."""
    baseline = _learned()
    zones, rules, _ = suggest(baseline)
    assert {"pacs", "imaging_modality", "hl7_engine"} <= set(zones)
    policy = parse(tomllib.loads(to_toml(baseline)))
    assert policy.evaluate("10.77.0.11", "10.77.0.10", "tcp", 11112, (), "imaging_modality", "pacs").allowed
    assert not policy.evaluate("10.77.0.11", "10.77.0.10", "tcp", 22, (), "imaging_modality", "pacs").allowed
    assert rules[("imaging_modality", "pacs", "tcp")] == {"11112"}


def _cli(module: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_learn_then_suggest_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`learn` writes a baseline; `policy suggest --format table` prints its allow-list."""
    path = tmp_path / "b.json"
    assert _cli(learn_cli, ["learn", str(CAPTURES / "dicom-workflow.pcap"), "--baseline", str(path)]) == 0
    assert _cli(policy_cli, ["policy", "suggest", "--baseline", str(path), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "imaging_modality" in out and "11112" in out


def test_policy_check_lists_what_would_be_blocked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`policy check` with a DICOM-only policy lists the HL7 conversations it would block."""
    path = tmp_path / "p.toml"
    path.write_text('[policy]\nintra_zone = false\n'
                    '[[allow]]\nfrom = "*"\nto = "*"\nproto = "tcp"\nports = [11112]\n')
    status = _cli(policy_cli, ["policy", "check", "--policy", str(path),
                               str(CAPTURES / "dicom-workflow.pcap"), str(CAPTURES / "hl7-mllp.pcap")])
    out = capsys.readouterr().out
    assert status == 0 and "tcp/2575" in out and "tcp/11112" not in out
    assert "would be blocked" in out.splitlines()[-1]


def test_bad_policy_exits_78(tmp_path: Path) -> None:
    """A bad policy is a configuration error."""
    path = tmp_path / "p.toml"
    path.write_text('[[allow]]\nfrom = "nowhere"\n')
    assert _cli(policy_cli, ["policy", "check", "--policy", str(path), str(CAPTURES / "hl7-mllp.pcap")]) == 78
