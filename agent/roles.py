"""Clinical roles: which kind of device a record describes, how sure we are, and why.

Rules live in firmware-config/roles.toml (the file documents the format). Each rule names a role, a
weight, a reason and conditions that must all hold on the device record; every matching rule adds
its weight to its role. The role is the best-scoring one (ties go to the earlier role in ROLES);
below `scoring.min_score` the device stays "unknown". Confidence, 0..1:

    confidence = min(1, best / saturation) * best / (sum of all roles' scores)

so one weak rule gives little, agreeing rules saturate, and competing roles dilute it. The evidence
is the winning role's matching rules, each with what it matched. A site override (MAC -> role) wins
with confidence 1.0 and evidence ["site override"].

Loading validates the whole document and lists every problem with its dotted path (RulesError, a
ConfigError, so the command line refuses it with exit 78 like any configuration). The shipped file is
found next to the package in a source tree, or under <prefix>/share/ward-agent/ when installed
with it as data; any other location is passed explicitly.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.config import ConfigError
from agent.roles_conditions import CONDITIONS, NEGATIVE, Check

ROLES: Final = ("imaging_modality", "pacs", "dicom_workstation", "hl7_engine", "infusion_pump",
                "patient_monitor", "clinical_workstation", "network_infrastructure", "printer",
                "iot_other", "unknown")
REPO_RULES: Final = Path(__file__).resolve().parents[1] / "firmware-config" / "roles.toml"
INSTALLED_RULES: Final = Path(sys.prefix) / "share" / "ward-agent" / "roles.toml"
_MAC: Final = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_SCORING: Final = {"min_score": 1.0, "saturation": 10.0}


class RulesError(ConfigError):
    """The role rules are refused; `problems` lists every reason with its dotted path."""


@dataclass(frozen=True, slots=True)
class Rule:
    role: str
    weight: float
    why: str
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class RoleRules:
    rules: tuple[Rule, ...] = ()
    min_score: float = _SCORING["min_score"]
    saturation: float = _SCORING["saturation"]
    overrides: Mapping[str, str] = field(default_factory=dict)

    def with_overrides(self, overrides: Mapping[str, Any], where: str = "site_overrides") -> RoleRules:
        """The same rules with more site overrides (winning over the file's); RulesError if any is bad."""
        parsed, problems = parse_overrides(overrides, where)
        if problems:
            raise RulesError(problems)
        return RoleRules(self.rules, self.min_score, self.saturation, {**self.overrides, **parsed})


def default_rules_path() -> Path:
    """The shipped roles.toml: the source tree's, else the installed data file."""
    return REPO_RULES if REPO_RULES.is_file() or not INSTALLED_RULES.is_file() else INSTALLED_RULES


def load_rules(path: str | Path | None = None) -> RoleRules:
    """Read and validate a rules file (the shipped one by default); RulesError lists every problem."""
    path = Path(path) if path is not None else default_rules_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError([f"{path}: not valid TOML: {exc}"]) from exc
    return parse_rules(document)


def parse_rules(document: Mapping[str, Any]) -> RoleRules:
    """Validate a parsed rules document; RulesError lists every problem."""
    problems: list[str] = []
    for name in document:
        if name not in ("scoring", "site_overrides", "rule"):
            problems.append(f"{name}: unknown section (known: scoring, site_overrides, rule)")
    scoring = dict(_SCORING)
    table = document.get("scoring", {})
    if not isinstance(table, Mapping):
        problems.append("scoring: must be a table")
        table = {}
    for key, value in table.items():
        if key not in _SCORING:
            problems.append(f"scoring.{key}: unknown key (known: {', '.join(_SCORING)})")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1000:
            problems.append(f"scoring.{key}: must be a number above 0 and at most 1000, got {value!r}")
        else:
            scoring[key] = float(value)
    overrides, override_problems = parse_overrides(document.get("site_overrides", {}), "site_overrides")
    problems += override_problems
    raw_rules = document.get("rule", [])
    rules: list[Rule] = []
    if not isinstance(raw_rules, list):
        problems.append("rule: must be an array of tables ([[rule]])")
        raw_rules = []
    for index, raw in enumerate(raw_rules):
        rule = _rule(raw, f"rule[{index}]", problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise RulesError(problems)
    return RoleRules(tuple(rules), scoring["min_score"], scoring["saturation"], overrides)


def parse_overrides(table: Any, where: str) -> tuple[dict[str, str], list[str]]:
    """MAC (or "ip:<address>") -> role, keys normalised to lower case with colons, and the problems."""
    if not isinstance(table, Mapping):
        return {}, [f"{where}: must be a table of MAC = role"]
    overrides: dict[str, str] = {}
    problems: list[str] = []
    for key, role in table.items():
        mac = str(key).strip().lower()
        if _MAC.match(mac):
            mac = mac.replace("-", ":")
        elif not mac.startswith("ip:"):
            problems.append(f"{where}.{key}: not a MAC address (aa:bb:cc:dd:ee:ff) nor ip:<address>")
            continue
        if role not in ROLES:
            problems.append(f"{where}.{key}: unknown role {role!r} (known: {', '.join(ROLES)})")
            continue
        overrides[mac] = role
    return overrides, problems


def _rule(raw: Any, where: str, problems: list[str]) -> Rule | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a table")
        return None
    found = len(problems)
    role, weight, why = raw.get("role"), raw.get("weight"), raw.get("why")
    if role not in ROLES or role == "unknown":
        problems.append(f"{where}.role: must be one of {', '.join(ROLES[:-1])}, got {role!r}")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 100:
        problems.append(f"{where}.weight: must be a number above 0 and at most 100, got {weight!r}")
    if not isinstance(why, str) or not why.strip():
        problems.append(f"{where}.why: must be a non-empty string saying what the rule means")
    checks: list[Check] = []
    for key, value in raw.items():
        if key in ("role", "weight", "why"):
            continue
        condition = CONDITIONS.get(key)
        if condition is None:
            problems.append(f"{where}.{key}: unknown condition (known: {', '.join(sorted(CONDITIONS))})")
            continue
        check, problem = condition(value)
        if problem is not None:
            problems.append(f"{where}.{key}: {problem}")
        elif check is not None:
            checks.append(check)
    if not any(key in CONDITIONS and key not in NEGATIVE for key in raw):
        problems.append(f"{where}: needs at least one positive condition (not only *_none)")
    if len(problems) > found:
        return None
    assert isinstance(weight, int | float)
    return Rule(str(role), float(weight), str(why).strip(), tuple(checks))


def classify(record: Mapping[str, Any], rules: RoleRules) -> tuple[str, float, list[str]]:
    """(role, confidence, evidence) for a device record; see the module docstring for the formula."""
    override = rules.overrides.get(str(record.get("mac", "")).lower())
    if override is not None:
        return override, 1.0, ["site override"]
    scores: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    for rule in rules.rules:
        details: list[str] = []
        for check in rule.checks:
            detail = check(record)
            if detail is None:
                break
            if detail:
                details.append(detail)
        else:
            scores[rule.role] = scores.get(rule.role, 0.0) + rule.weight
            evidence.setdefault(rule.role, []).append(f"{rule.why}: {', '.join(details)} (+{rule.weight:g})")
    if not scores:
        return "unknown", 0.0, []
    best = max(scores, key=lambda role: (scores[role], -ROLES.index(role)))
    if scores[best] < rules.min_score:
        return "unknown", 0.0, []
    confidence = min(1.0, scores[best] / rules.saturation) * scores[best] / sum(scores.values())
    return best, round(confidence, 2), evidence[best]
