"""One device's inventory state, and the plain `device` record built from it.

The state is mutable and private to the inventory; what leaves it is a fresh, JSON-serialisable dict
with every list sorted, so that two runs over the same records give byte-identical output. Every
collection is bounded (MAX_* below); a value that does not fit is dropped and counted by the
inventory, never an older one replaced, so a device's record stops changing once it is full.

Vendors come from the IEEE registry bundled with netaddr (pure Python, MA-L and IAB). A MAC whose
locally-administered bit is set (random or virtual) has no registry entry and is marked as such.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

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


class DeviceState:
    """What the inventory knows about one device; mutated only by agent.inventory and its hint code."""

    __slots__ = ("apps", "changed", "dicom", "first_seen", "hl7", "hl7_senders", "ip_total", "ips", "key",
                 "last_seen", "logins", "names", "offered", "reported_at", "reported_last", "software",
                 "used", "vendor")

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
        self.reported_at = float("-inf")
        self.reported_last = float("-inf")

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
        self.changed = True
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
        self.changed = True
        return True

    def add_service(self, services: set[Service], service: Service) -> bool:
        if service in services:
            return True
        if len(services) >= MAX_SERVICES:
            return False
        services.add(service)
        self.changed = True
        return True

    def set_name(self, source: str, name: str) -> None:
        if name and self.names.get(source) != name:
            self.names[source] = name
            self.changed = True

    def count_login(self, protocol: str, side: str, outcome: str) -> None:
        counts = self.logins.setdefault((protocol, side), [0, 0, 0])
        counts[{"success": 0, "failure": 1}.get(outcome, 2)] += 1
        self.changed = True

    @property
    def hostname(self) -> str | None:
        for source in NAME_SOURCES:
            if source in self.names:
                return self.names[source]
        return None

    def record(self) -> dict[str, Any]:
        """The device record without role and risks (agent.inventory adds those)."""
        return {
            "type": "device", "mac": self.key,
            "ips": [{"ip": ip, "first_seen": seen[0], "last_seen": seen[1]}
                    for ip, seen in sorted(self.ips.items())],
            "vendor": self.vendor, "hostname": self.hostname,
            "role": "unknown", "role_confidence": 0.0, "role_evidence": [],
            "services": self._services(),
            "clinical": self._clinical(),
            "software": {key: sorted(values) for key, values in sorted(self.software.items()) if values},
            "risks": [], "risk_score": 0,
            "first_seen": self.first_seen, "last_seen": self.last_seen,
        }

    def _services(self) -> dict[str, Any]:
        def listing(services: set[Service]) -> list[dict[str, Any]]:
            return [{"proto": proto, "port": port, "app": self.apps.get((proto, port))}
                    for proto, port in sorted(services, key=lambda s: (str(s[0]), s[1]))]

        services: dict[str, Any] = {"offered": listing(self.offered), "used": listing(self.used)}
        if self.logins:
            services["cleartext_logins"] = [
                {"protocol": protocol, "as": side, "success": c[0], "failure": c[1], "unknown": c[2]}
                for (protocol, side), c in sorted(self.logins.items())]
        return services

    def _clinical(self) -> dict[str, Any]:
        clinical: dict[str, Any] = {}
        if self.dicom:
            clinical["dicom"] = {key: sorted(values) for key, values in sorted(self.dicom.items())}
        if self.hl7 or self.hl7_senders:
            hl7: dict[str, Any] = {key: sorted(values) for key, values in sorted(self.hl7.items())}
            if self.hl7_senders:
                hl7["senders"] = sorted(self.hl7_senders)
            clinical["hl7"] = hl7
        return clinical
