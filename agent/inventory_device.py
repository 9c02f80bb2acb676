"""One device's inventory state, and the plain `device` record built from it.

The state is mutable and private to the inventory; what leaves it is a fresh, JSON-serialisable dict
with every list sorted, so that two runs over the same records give byte-identical output. Every
collection is bounded (MAX_* below); a value that does not fit is dropped and counted by the
inventory, never an older one replaced, so a device's record stops changing once it is full.

Every change of content (anything a record shows except timestamps) goes through `mark_changed()`,
which flags the device for the next delta and drops what is cached from the content: its sorted
services, clinical and software sections (detectors ask for a record per flow; sorting them again
each time was most of its cost) and its role and risk assessment (cached by agent.inventory). So
`record()` sorts and agent.inventory classifies only after a change; each record is still a new
set of dicts and lists, so whoever edits one cannot alter the cache or another record.

Vendors come from the IEEE registry bundled with netaddr (pure Python, MA-L and IAB). A MAC whose
locally-administered bit is set (random or virtual) has no registry entry and is marked as such.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final, NamedTuple

from netaddr import EUI  # type: ignore[import-untyped]
from netaddr.core import AddrFormatError, NotRegisteredError  # type: ignore[import-untyped]

MAX_IPS: Final = 16
MAX_SERVICES: Final = 64
MAX_VALUES: Final = 8  # per software key, per clinical list
MAX_PEERS: Final = 16
LOCALLY_ADMINISTERED: Final = "(locally administered)"
# Hostname sources, most trusted first: what the device says it is beats what others call it.
NAME_SOURCES: Final = ("dhcp", "mdns", "nbns", "lldp", "cdp")

Service = tuple[str, int]  # (proto, port)


_IAB_OUIS: Final = ("00:50:c2", "40:d8:55")  # IEEE IAB blocks: the organisation depends on 36 bits


def vendor_of(mac: str) -> str | None:
    """The registered organisation of a MAC's OUI, LOCALLY_ADMINISTERED, or None when unknown."""
    if mac.startswith("ip:"):
        return None
    try:
        first = int(mac[:2], 16)
    except ValueError:
        return None
    if first & 0x02:
        return LOCALLY_ADMINISTERED
    prefix = mac[:8].lower()
    return _organisation(mac.lower() if prefix in _IAB_OUIS else prefix)


@lru_cache(maxsize=4096)
def _organisation(prefix: str) -> str | None:
    """Registry lookup (tens of µs in netaddr), cached per OUI."""
    try:
        eui = EUI(prefix + ":00:00:00" if len(prefix) == 8 else prefix)
        registration = eui.iab.registration() if eui.is_iab() else eui.oui.registration()
        return str(registration.org).strip() or None
    except (NotRegisteredError, AddrFormatError, IndexError, ValueError):
        return None


class Assessment(NamedTuple):
    """A device's role and risks as agent.inventory computed them under `rules` (a RoleRules)."""

    rules: object
    role: str
    confidence: float
    evidence: tuple[str, ...]
    risks: tuple[dict[str, Any], ...]
    risk_score: int


class _Content(NamedTuple):
    """The sorted sections of a device's record, kept until its content changes; never handed out."""

    hostname: str | None
    services: dict[str, list[dict[str, Any]]]  # kind -> entries, each a flat dict
    clinical: dict[str, dict[str, list[str]]]  # protocol -> key -> values
    software: dict[str, list[str]]


class DeviceState:
    """What the inventory knows about one device; mutated only by agent.inventory and its hint code."""

    __slots__ = ("_content", "apps", "assessment", "changed", "dicom", "first_seen", "hl7", "hl7_senders",
                 "ip_total", "ips", "key", "last_seen", "logins", "names", "offered", "reported_at",
                 "reported_last", "software", "used", "vendor")

    def __init__(self, key: str, ts: float) -> None:
        self.key = key
        self.vendor = vendor_of(key)
        self.first_seen = ts
        self.last_seen = ts
        self.ips: dict[str, list[float]] = {}  # address -> [first_seen, last_seen]
        self.ip_total = 0  # distinct addresses ever attributed, including those that did not fit
        self.names: dict[str, str] = {}  # source -> name
        self.offered: set[Service] = set()
        self.used: set[Service] = set()
        self.apps: dict[Service, str] = {}  # (proto, port) -> application named by a hint
        self.software: dict[str, set[str]] = {}
        self.dicom: dict[str, set[str]] = {}
        self.hl7: dict[str, set[str]] = {}
        self.hl7_senders: set[str] = set()
        self.logins: dict[tuple[str, str], list[int]] = {}  # (protocol, "client"|"server") -> [ok, failed, ?]
        self.changed = True  # something a delta must carry (not merely last_seen)
        self.assessment: Assessment | None = None  # cached by agent.inventory, dropped on any change
        self._content: _Content | None = None  # the record's sorted sections, dropped on any change
        self.reported_at = float("-inf")
        self.reported_last = float("-inf")

    def mark_changed(self) -> None:
        """The content changed: the next delta carries the device, and its role and risks are stale."""
        self.changed = True
        self.assessment = None
        self._content = None

    def add_ip(self, ip: str, first: float, last: float) -> bool:
        """Note an address seen between first and last; False when the history was full."""
        seen = self.ips.get(ip)
        if seen is not None:
            if last > seen[1]:
                seen[1] = last
            if first < seen[0]:
                seen[0] = first
            return True
        self.ip_total += 1
        if len(self.ips) >= MAX_IPS:
            return False
        self.ips[ip] = [first, last]
        self.mark_changed()
        return True

    def add_value(self, table: dict[str, set[str]], key: str, value: str) -> bool:
        """Add a text value under key in a bounded table; False when it did not fit."""
        values = table.get(key)
        if values is None:
            values = table[key] = set()
        if value in values:
            return True
        if len(values) >= MAX_VALUES:
            return False
        values.add(value)
        self.mark_changed()
        return True

    def add_service(self, services: set[Service], service: Service) -> bool:
        if service in services:
            return True
        if len(services) >= MAX_SERVICES:
            return False
        services.add(service)
        self.mark_changed()
        return True

    def set_app(self, service: Service, app: str) -> None:
        """Name the application a hint saw on one of the device's ports; a full table keeps what it has."""
        if self.apps.get(service) != app and len(self.apps) < MAX_SERVICES:
            self.apps[service] = app
            self.mark_changed()

    def add_hl7_sender(self, peer: str) -> None:
        """Note a peer that sent this device HL7 messages (bounded)."""
        if peer not in self.hl7_senders and len(self.hl7_senders) < MAX_PEERS:
            self.hl7_senders.add(peer)
            self.mark_changed()

    def set_name(self, source: str, name: str) -> None:
        if name and self.names.get(source) != name:
            self.names[source] = name
            self.mark_changed()

    def count_login(self, protocol: str, side: str, outcome: str) -> None:
        counts = self.logins.setdefault((protocol, side), [0, 0, 0])
        counts[{"success": 0, "failure": 1}.get(outcome, 2)] += 1
        self.mark_changed()

    @property
    def hostname(self) -> str | None:
        for source in NAME_SOURCES:
            if source in self.names:
                return self.names[source]
        return None

    def record(self) -> dict[str, Any]:
        """The device record without role and risks (agent.inventory adds those), all of it new."""
        content = self._content
        if content is None:
            content = self._content = self._sections()
        return {
            "type": "device", "mac": self.key,
            "ips": [{"ip": ip, "first_seen": seen[0], "last_seen": seen[1]}
                    for ip, seen in sorted(self.ips.items())],
            "vendor": self.vendor, "hostname": content.hostname,
            "role": "unknown", "role_confidence": 0.0, "role_evidence": [],
            "services": {kind: [dict(entry) for entry in entries]
                         for kind, entries in content.services.items()},
            "clinical": {protocol: {key: list(values) for key, values in table.items()}
                         for protocol, table in content.clinical.items()},
            "software": {key: list(values) for key, values in content.software.items()},
            "risks": [], "risk_score": 0,
            "first_seen": self.first_seen, "last_seen": self.last_seen,
        }

    def _sections(self) -> _Content:
        """What the record shows besides addresses and times, sorted (the costly part of a record)."""
        software = {key: sorted(values) for key, values in sorted(self.software.items()) if values}
        return _Content(self.hostname, self._services(), self._clinical(), software)

    def _services(self) -> dict[str, list[dict[str, Any]]]:
        def listing(services: set[Service]) -> list[dict[str, Any]]:
            return [{"proto": proto, "port": port, "app": self.apps.get((proto, port))}
                    for proto, port in sorted(services, key=lambda s: (str(s[0]), s[1]))]

        services = {"offered": listing(self.offered), "used": listing(self.used)}
        if self.logins:
            services["cleartext_logins"] = [
                {"protocol": protocol, "as": side, "success": c[0], "failure": c[1], "unknown": c[2]}
                for (protocol, side), c in sorted(self.logins.items())]
        return services

    def _clinical(self) -> dict[str, dict[str, list[str]]]:
        clinical: dict[str, dict[str, list[str]]] = {}
        if self.dicom:
            clinical["dicom"] = {key: sorted(values) for key, values in sorted(self.dicom.items())}
        if self.hl7 or self.hl7_senders:
            hl7 = {key: sorted(values) for key, values in sorted(self.hl7.items())}
            if self.hl7_senders:
                hl7["senders"] = sorted(self.hl7_senders)
            clinical["hl7"] = hl7
        return clinical
