"""Agent configuration: TOML in, frozen settings out, every problem listed with its dotted path.

The same validator runs at start-up and (later) on remote pushes. Unknown keys are refused: a typo
must not silently fall back to a default on a box nobody will visit again.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.flowhead import HintSettings
from agent.flows import FlowSettings
from agent.hints import HINTERS
from agent.uplink import UplinkSettings

EX_CONFIG: Final = 78
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    interface: str = ""
    snaplen: int = 1600
    promiscuous: bool = True
    buffer_mb: int = 16
    timeout_ms: int = 100
    bpf: str = ""
    batch_size: int = 1024
    reopen_on_push: bool = True  # keep CAP_NET_RAW permitted (not effective) so pushes can reopen the capture
    workers: int = 1  # capture processes joined by PACKET_FANOUT (hash); 1: one process, as before


@dataclass(frozen=True, slots=True)
class InventorySettings:
    enabled: bool = True
    max_devices: int = 4096
    local_networks: tuple[str, ...] = ()  # empty: every non-global address is on the ward
    refresh: float = 300.0  # a device merely seen again is re-reported this often (seconds)
    roles_file: str = ""  # empty: the shipped firmware-config/roles.toml
    role_overrides: Mapping[str, str] = field(default_factory=dict)  # MAC -> role, wins


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval: float = 60.0  # seconds between health messages
    no_traffic_minutes: float = 10.0  # a silent tap for this long raises no_traffic
    loss_percent: float = 1.0  # kernel drops above this share of an interval raise capture_loss
    drop_to_user: str = "ward-agent"  # started as root: open the capture, then become this user


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    enabled: bool = True
    disabled: tuple[str, ...] = ()  # detector names switched off at this site
    suppress_seconds: float = 3600.0  # the same finding key within this window is reported once
    max_per_minute: int = 60  # findings per minute of packet time, beyond which they are counted only
    allow: tuple[Mapping[str, Any], ...] = ()  # approved findings: {kind, key | key_prefix, src_ip?, dst_ip?}
    tuning: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # detector name -> overrides


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    flows: FlowSettings = field(default_factory=FlowSettings)
    hints: HintSettings = field(default_factory=HintSettings)
    inventory: InventorySettings = field(default_factory=InventorySettings)
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    detectors: DetectorSettings = field(default_factory=DetectorSettings)
    log: LogSettings = field(default_factory=LogSettings)


class ConfigError(Exception):
    """The configuration is refused; `problems` lists every reason, each with its dotted path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


Check = Callable[[Any], str | None]


def _number(low: float, high: float, integer: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return f"must be {'an integer' if integer else 'a number'}, got {value!r}"
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}, got {value!r}"
        return None
    return check


def _of_type(kind: type, choices: tuple[str, ...] = ()) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, kind):
            return f"must be a {kind.__name__}, got {value!r}"
        if choices and value not in choices:
            return f"must be one of {', '.join(choices)}, got {value!r}"
        return None
    return check


_TOPIC_LEVEL: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _level(value: Any) -> str | None:
    if not isinstance(value, str) or not _TOPIC_LEVEL.match(value) or value in (".", ".."):
        return f"must be 1-64 of A-Z a-z 0-9 _ . - (one MQTT topic level), got {value!r}"
    return None


def _names(known: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"must be a list of names, got {value!r}"
        unknown = [v for v in value if v not in known]
        return f"unknown {', '.join(unknown)} (known: {', '.join(known)})" if unknown else None
    return check


def _networks(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"must be a list of CIDR strings, got {value!r}"
    bad = []
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            bad.append(network)
    return f"not networks: {', '.join(bad)}" if bad else None


def _role_overrides(value: Any) -> str | None:
    from agent.roles import parse_overrides  # roles imports this module's ConfigError

    _, problems = parse_overrides(value, "role_overrides")
    return "; ".join(problems) if problems else None


_SCHEMA: Final[dict[str, tuple[type, dict[str, Check]]]] = {
    "capture": (CaptureSettings, {
        "interface": _of_type(str),
        "snaplen": _number(64, 262144, integer=True),
        "promiscuous": _of_type(bool),
        "buffer_mb": _number(1, 1024, integer=True),
        "timeout_ms": _number(1, 10000, integer=True),
        "bpf": _of_type(str),
        "batch_size": _number(1, 65536, integer=True),
        "reopen_on_push": _of_type(bool),
        "workers": _number(1, 16, integer=True),
    }),
    "flows": (FlowSettings, {
        "idle_timeout": _number(1, 3600),
        "active_timeout": _number(1, 600),
        "tcp_close_grace": _number(0, 60),
        "max_flows": _number(1, 16_777_216, integer=True),
    }),
    "hints": (HintSettings, {
        "enabled": _of_type(bool),
        "packets": _number(1, 64, integer=True),
        "bytes": _number(64, 1 << 20, integer=True),
        "record_user": _of_type(bool),
        "disabled": _names(tuple(h.NAME for h in HINTERS)),
    }),
    "inventory": (InventorySettings, {
        "enabled": _of_type(bool),
        "max_devices": _number(1, 1_000_000, integer=True),
        "local_networks": _networks,
        "refresh": _number(10, 86400),
        "roles_file": _of_type(str),
        "role_overrides": _role_overrides,
    }),
    "uplink": (UplinkSettings, {
        "enabled": _of_type(bool),
        "site": _level,
        "sensor_id": _level,
        "state_dir": _of_type(str),
        "keys_dir": _of_type(str),
        "broker_host": _of_type(str),
        "broker_port": _number(1, 65535, integer=True),
        "ca_file": _of_type(str),
        "cert_file": _of_type(str),
        "key_file": _of_type(str),
        "spool_max_mb": _number(1, 65536, integer=True),
        "fsync_interval": _number(0.01, 60),
        "batch_flows": _number(1, 100_000, integer=True),
        "batch_seconds": _number(0.1, 600),
        "snapshot_seconds": _number(60, 86400),
    }),
    "health": (HealthSettings, {
        "interval": _number(1, 3600),
        "no_traffic_minutes": _number(1, 1440),
        "loss_percent": _number(0, 100),
        "drop_to_user": _of_type(str),
    }),
    "log": (LogSettings, {"level": _of_type(str, LOG_LEVELS)}),
}


def parse(document: Mapping[str, Any]) -> AgentConfig:
    """Validate a parsed TOML document; raises ConfigError listing every problem."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for name in document:
        if name not in _SCHEMA and name != "detectors":
            problems.append(f"{name}: unknown section (known: {', '.join(_SCHEMA)}, detectors)")
    for name, (settings_type, checks) in _SCHEMA.items():
        table = document.get(name, {})
        if not isinstance(table, Mapping):
            problems.append(f"{name}: must be a table")
            continue
        values: dict[str, Any] = {}
        for key, value in table.items():
            check = checks.get(key)
            if check is None:
                problems.append(f"{name}.{key}: unknown key (known: {', '.join(checks)})")
            elif (problem := check(value)) is not None:
                problems.append(f"{name}.{key}: {problem}")
            else:
                values[key] = tuple(value) if isinstance(value, list) else value
        sections[name] = settings_type(**values)
    sections["detectors"] = _detectors(document.get("detectors", {}), problems)
    flows = sections.get("flows")
    if isinstance(flows, FlowSettings) and flows.active_timeout < flows.idle_timeout:
        problems.append("flows.active_timeout: must not be shorter than flows.idle_timeout")
    if problems:
        raise ConfigError(problems)
    return AgentConfig(**sections)


_DETECTOR_KEYS: Final = {"enabled": _of_type(bool), "suppress_seconds": _number(0, 86400 * 30),
                         "max_per_minute": _number(1, 100_000, integer=True)}


def _detectors(table: Any, problems: list[str]) -> DetectorSettings:
    """[detectors]: engine settings, `disabled`, `[[detectors.allow]]` and one table per detector."""
    from agent.detectors import DETECTORS
    from agent.detectors.engine import check_settings, parse_allow

    if not isinstance(table, Mapping):
        problems.append("detectors: must be a table")
        return DetectorSettings()
    values: dict[str, Any] = {}
    tuning: dict[str, Mapping[str, Any]] = {}
    for key, value in table.items():
        check = _DETECTOR_KEYS.get(key)
        if check is not None:
            if (problem := check(value)) is not None:
                problems.append(f"detectors.{key}: {problem}")
            else:
                values[key] = value
        elif key == "disabled":
            if (problem := _names(tuple(DETECTORS))(value)) is not None:
                problems.append(f"detectors.disabled: {problem}")
            else:
                values["disabled"] = tuple(value)
        elif key == "allow":
            _, found = parse_allow(value if isinstance(value, list) else [value])
            problems += found
            values["allow"] = tuple(value) if isinstance(value, list) and not found else ()
        else:
            tuning[key] = value
    problems += check_settings(tuning)
    return DetectorSettings(**values, tuning=tuning)


def load(path: str | Path | None) -> AgentConfig:
    """Read and validate a TOML file; no path gives the defaults."""
    if path is None:
        return AgentConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return parse(document)
