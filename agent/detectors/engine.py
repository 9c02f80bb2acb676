"""The detector engine: hands records to every detector, isolates their failures, filters findings.

Each detector sees every finished flow, protocol hint and device delta, and a `tick(now)` in packet
time (DESIGN.md section 3). What the detectors return passes four filters, in this order, each
counted in the shared Counters:

1. a finding whose kind or severity is outside the vocabulary is dropped (`detectors.invalid`);
2. allow rules, the review loop's "this is fine": a matching finding is dropped (`findings.allowed`);
3. de-duplication: a key already reported within `suppress_seconds` of packet time (either side:
   an episode reported late may carry an earlier time) is dropped (`findings.suppressed`); a key is
   reported again once its window has passed;
4. a global rate limit of `max_per_minute` findings in any 60 s of packet time (`findings.rate_limited`).

Each method returns the findings that passed, and hands each to `on_finding` first when given one.

A detector that raises is counted (`detectors.errors.<name>`), logged at most once a minute of wall
time, and skipped for that record; the others still run. Optional detector attributes, read once at
construction: `counters` (the detector's own Counters: evictions and the like), copied under
`detectors.<name>.` on each tick; `hint_apps` (a frozenset of ProtoHint.app values): such a detector
is handed only those hints, so a DNS-heavy ward does not pay every detector per message;
`flow_ports` (a frozenset of responder ports): such a detector is handed only flows to those ports;
`hint_ports` (a frozenset of ports): only hints sent to those ports (DNS queries, not their answers);
`tick_drafts(now)`, called instead of `tick`, returns drafts (agent.detectors.common.Draft) that
pass the filters on their key, kind, time and addresses and are built into Findings only when let
through, so a storm of findings the filters drop costs no text (a draft whose build raises counts
as its detector's error); `takes_flows = False` for a detector that has nothing to do with flows,
and `takes_devices = False` for one that ignores device deltas (`wants_devices` then tells the
caller whether building deltas is worth it at all). The routes are tables built once: a flow costs
one dict lookup by port plus the detectors that asked for it, most of them returning at their first
test.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import structlog

from agent.detectors.base import Context, Detector, Device
from agent.detectors.common import KINDS, Draft
from agent.records import SEVERITIES, Counters, Finding, FlowRecord, ProtoHint

log = structlog.get_logger("agent.detectors")

LOG_INTERVAL: Final = 60.0  # wall seconds between two error logs of one detector
MAX_APPS: Final = 256  # hint apps whose routing is remembered (the hinters name a few dozen)
MAX_KEYS: Final = 65536  # de-duplication memory; the oldest key is forgotten first (counted)
FINISH_AHEAD: Final = 3600.0  # finish() ticks this far past the end: every held episode is due


@dataclass(frozen=True, slots=True)
class AllowRule:
    """An approved finding: drops findings of `kind` whose key equals `key` (or starts with `key_prefix`)
    and, when given, whose source / destination address match. Empty strings match anything."""

    kind: str
    key: str = ""
    key_prefix: str = ""
    src_ip: str = ""
    dst_ip: str = ""

    def matches(self, finding: Finding | Draft) -> bool:
        return (finding.kind == self.kind
                and (not self.key or finding.key == self.key)
                and (not self.key_prefix or finding.key.startswith(self.key_prefix))
                and (not self.src_ip or finding.src_ip == self.src_ip)
                and (not self.dst_ip or finding.dst_ip == self.dst_ip))


def parse_allow(items: Iterable[Any], where: str = "detectors.allow") -> tuple[list[AllowRule], list[str]]:
    """Allow rules from config tables ({kind, key | key_prefix, src_ip?, dst_ip?}), and every problem."""
    rules: list[AllowRule] = []
    problems: list[str] = []
    known = tuple(f.name for f in fields(AllowRule))
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{at}: must be a table")
            continue
        bad = [f"{at}.{k}: unknown key (known: {', '.join(known)})" for k in item if k not in known]
        bad += [f"{at}.{k}: must be a string" for k in known if k in item and not isinstance(item[k], str)]
        if not bad and item.get("kind") not in KINDS:
            bad.append(f"{at}.kind: must be one of {', '.join(KINDS)}, got {item.get('kind')!r}")
        if not bad and not (item.get("key") or item.get("key_prefix")):
            bad.append(f"{at}: needs key or key_prefix (an empty rule would silence a whole kind)")
        problems += bad
        if not bad:
            rules.append(AllowRule(**{k: str(v) for k, v in item.items()}))
    return rules, problems


class DetectorEngine:
    """Runs the detectors over records and returns the findings that pass the filters."""

    def __init__(self, detectors: Mapping[str, Detector], counters: Counters, suppress_seconds: float = 3600,
                 max_per_minute: int = 60, allow: Sequence[AllowRule] = (),
                 clock: Callable[[], float] = time.monotonic,
                 on_finding: Callable[[Finding], None] | None = None) -> None:
        self._detectors = dict(detectors)
        self._on_finding = on_finding
        self._counters = counters
        self._suppress = suppress_seconds
        self._max_per_minute = max_per_minute
        self._allow = tuple(allow)
        self._clock = clock
        self._reported: dict[str, float] = {}  # key -> ts it was last let through, oldest first
        self._recent: deque[float] = deque()  # ts of findings let through in the last minute
        self._logged: dict[str, float] = {}
        self._latest = float("-inf")
        self._flow_all, self._flow_routes = _flow_routes(self._detectors)
        self._hint_all = tuple((n, d.on_hint, getattr(d, "hint_apps", None), getattr(d, "hint_ports", None))
                               for n, d in self._detectors.items())
        self._hint_routes: dict[str, HintRoutes] = {}
        self._device = tuple((n, d.on_device) for n, d in self._detectors.items()
                             if getattr(d, "takes_devices", True))
        self.wants_devices = bool(self._device)
        self._tick: tuple[tuple[str, Callable[[float], Sequence[Finding | Draft]]], ...] = tuple(
            (n, getattr(d, "tick_drafts", d.tick)) for n, d in self._detectors.items())
        self._own_counters = tuple((n, c) for n, d in self._detectors.items()
                                   if isinstance(c := getattr(d, "counters", None), Counters))

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        found: list[Finding] = []
        for name, call in self._flow_routes.get(flow.b_port, self._flow_all):
            try:
                found += call(flow)
            except Exception as exc:  # a detector bug must never stop the sensor
                self._failed(name, exc)
        return self._filter(found) if found else found

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        routes = self._hint_routes.get(hint.app)
        if routes is None:
            routes = _hint_routes(self._hint_all, hint.app)
            if len(self._hint_routes) < MAX_APPS:
                self._hint_routes[hint.app] = routes
        by_port, route = routes
        if by_port is not None:
            route = by_port.get(hint.dst_port, route)
        found: list[Finding] = []
        for name, call in route:
            try:
                found += call(hint)
            except Exception as exc:
                self._failed(name, exc)
        return self._filter(found) if found else found

    def on_device(self, device: Device) -> list[Finding]:
        found: list[Finding] = []
        for name, call in self._device:
            try:
                found += call(device)
            except Exception as exc:
                self._failed(name, exc)
        return self._filter(found) if found else found

    def tick(self, now: float) -> list[Finding]:
        """Packet time `now`; call at least once per second of traffic."""
        if now > self._latest:
            self._latest = now
        found: list[Finding | Draft] = []
        for name, call in self._tick:
            try:
                found += call(now)
            except Exception as exc:
                self._failed(name, exc)
        values = self._counters.values
        for name, own in self._own_counters:
            for counter, value in own.values.items():
                values[f"detectors.{name}.{counter}"] = value
        return self._filter(found) if found else []

    def finish(self, now: float | None = None) -> list[Finding]:
        """End of a capture (or shutdown) at packet time `now`, no earlier than the last record (default:
        the last tick): a tick far enough ahead that detectors report what they hold. Records do not
        move the engine's clock (a comparison per record); their detectors keep their own."""
        latest = self._latest if now is None else max(self._latest, now)
        return self.tick(latest + FINISH_AHEAD) if latest > float("-inf") else []

    def _failed(self, name: str, exc: Exception) -> None:
        self._counters.add("detectors.errors." + name)
        now = self._clock()
        last = self._logged.get(name)
        if last is None or now - last >= LOG_INTERVAL:
            self._logged[name] = now
            log.error("detector_failed", detector=name, error=repr(exc),
                      errors=self._counters.get("detectors.errors." + name))

    def _filter(self, found: Sequence[Finding | Draft]) -> list[Finding]:
        passed: list[Finding] = []
        counters, reported, recent = self._counters, self._reported, self._recent
        for finding in found:
            if not isinstance(finding, (Finding, Draft)) or finding.kind not in KINDS \
                    or finding.severity not in SEVERITIES:
                counters.add("detectors.invalid")
                continue
            if any(rule.matches(finding) for rule in self._allow):
                counters.add("findings.allowed")
                continue
            last = reported.get(finding.key)
            if last is not None and abs(finding.ts - last) < self._suppress:
                counters.add("findings.suppressed")
                continue
            while recent and recent[0] <= finding.ts - 60:
                recent.popleft()
            if len(recent) >= self._max_per_minute:
                counters.add("findings.rate_limited")
                continue
            if isinstance(finding, Draft):
                draft = finding
                try:
                    finding = draft.build()
                except Exception as exc:  # as if the detector's tick had raised: counted, logged
                    self._failed(draft.origin, exc)
                    continue
            recent.append(finding.ts)
            reported.pop(finding.key, None)
            if len(reported) >= MAX_KEYS:
                del reported[next(iter(reported))]
                counters.add("findings.keys_forgotten")
            reported[finding.key] = finding.ts
            counters.add("findings.emitted")
            counters.add("findings." + finding.kind)
            passed.append(finding)
            if self._on_finding is not None:
                self._on_finding(finding)
        return passed


FlowCall = tuple[str, Callable[[FlowRecord], list[Finding]]]
FlowRoutes = dict[int, tuple[FlowCall, ...]]


def _flow_routes(detectors: Mapping[str, Detector]) -> tuple[tuple[FlowCall, ...], FlowRoutes]:
    """The detectors every flow goes to, and per responder port named in some `flow_ports`, the
    detectors a flow to that port goes to (in registry order, so findings keep their order)."""
    takers = [(n, d) for n, d in detectors.items() if getattr(d, "takes_flows", True)]
    ports: dict[str, frozenset[int] | None] = {n: getattr(d, "flow_ports", None) for n, d in takers}
    calls: dict[str, Callable[[FlowRecord], list[Finding]]] = {n: d.on_flow for n, d in takers}
    everyone = tuple((n, calls[n]) for n, _ in takers if ports[n] is None)
    named = {p for wanted in ports.values() if wanted is not None for p in wanted}
    routes = {port: tuple((n, calls[n]) for n, _ in takers if (wanted := ports[n]) is None or port in wanted)
              for port in named}
    return everyone, routes


HintCall = tuple[str, Callable[[ProtoHint], list[Finding]]]
HintRoutes = tuple[dict[int, tuple[HintCall, ...]] | None, tuple[HintCall, ...]]


def _hint_routes(takers: Sequence[tuple[str, Callable[[ProtoHint], list[Finding]], frozenset[str] | None,
                                        frozenset[int] | None]], app: str) -> HintRoutes:
    """For hints of `app`: per destination port named in some `hint_ports`, the detectors such a hint
    goes to (None when no taker names ports), and the detectors a hint to any other port goes to."""
    wanted = [(n, call, ports) for n, call, apps, ports in takers if apps is None or app in apps]
    anywhere = tuple((n, call) for n, call, ports in wanted if ports is None)
    named = {p for _, _, ports in wanted if ports is not None for p in ports}
    if not named:
        return None, anywhere
    return {port: tuple((n, call) for n, call, ports in wanted if ports is None or port in ports)
            for port in named}, anywhere


def _type_problems(settings_type: type[Any], table: Mapping[str, Any]) -> list[str]:
    """Unknown keys and values whose type differs from the default's (an int is a fine float)."""
    defaults = {f.name: getattr(settings_type(), f.name) for f in fields(settings_type)}
    problems = []
    for key, value in table.items():
        if key not in defaults:
            problems.append(f"{key}: unknown key (known: {', '.join(defaults)})")
            continue
        default = defaults[key]
        if isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        elif isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        else:
            ok = isinstance(value, (int, float) if isinstance(default, float) else type(default))
        if not ok:
            problems.append(f"{key}: must be {type(default).__name__}, got {value!r}")
    return problems


def check_settings(settings_by_name: Mapping[str, Any]) -> list[str]:
    """Every problem of per-detector settings tables, without building anything (config validation)."""
    from agent.detectors import DETECTORS

    problems = [f"detectors.{n}: settings for an unknown detector (known: {', '.join(DETECTORS)})"
                for n in settings_by_name if n not in DETECTORS]
    for name, table in settings_by_name.items():
        module = DETECTORS.get(name)
        if module is None:
            continue
        if not isinstance(table, Mapping):
            problems.append(f"detectors.{name}: must be a table")
            continue
        found = _type_problems(module.Settings, table)
        if not found:
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
            found = module.Settings(**values).problems()
        problems += [f"detectors.{name}.{p}" for p in found]
    return problems


def build_detectors(settings_by_name: Mapping[str, Any], context: Context,
                    enabled: Iterable[str] | None = None) -> tuple[dict[str, Detector], list[str]]:
    """Construct the enabled detectors from the registry; returns them and every settings problem.

    `settings_by_name` maps a detector name to its Settings instance or a plain table of overrides;
    `enabled` (None: all in the registry) lists the detectors to build. A disabled detector is absent.
    """
    from agent.detectors import DETECTORS, ON_REQUEST  # the registry imports the detectors, which import us

    names = [n for n in DETECTORS if n not in ON_REQUEST] if enabled is None else list(enabled)
    built: dict[str, Detector] = {}
    problems = [f"detectors.{n}: unknown detector (known: {', '.join(DETECTORS)})"
                for n in names if n not in DETECTORS]
    problems += [f"detectors.{n}: settings for an unknown detector" for n in settings_by_name
                 if n not in DETECTORS]
    for name in names:
        module = DETECTORS.get(name)
        if module is None:
            continue
        given = settings_by_name.get(name)
        if isinstance(given, module.Settings):
            settings = given
        else:
            table = dict(given or {})
            found = _type_problems(module.Settings, table)
            if found:
                problems += [f"detectors.{name}.{p}" for p in found]
                continue
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
            settings = module.Settings(**values)
        found = [f"detectors.{name}.{p}" for p in settings.problems()]
        problems += found
        if not found:
            built[name] = module.make(settings, context)
    return built, problems
