"""The conditions a role rule may set, each compiled once at load into a check on a device record.

A check returns None when its condition does not hold, otherwise a short human-readable detail of
what matched ("" for the negative *_none conditions, which have nothing to show). Text lists match
when any entry matches; `dicom_provides_all` needs every pattern. Service and message-type patterns
are shell-style (`storage:*`, `ORU*`); hostname, vendor class and software entries are regular
expressions, searched case-insensitively; vendor entries are case-insensitive substrings.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

Check = Callable[[Mapping[str, Any]], str | None]
Builder = Callable[[Any], tuple[Check | None, str | None]]
_SERVICE: Final = re.compile(r"^(tcp|udp)/[0-9]{1,5}$")


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return value
    return None


def _section(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        value = (value.get(key) or {}) if isinstance(value, dict) else {}
    return value


def _list(record: Mapping[str, Any], *path: str) -> list[Any]:
    value = _section(record, *path)
    return value if isinstance(value, list) else []


def _software(record: Mapping[str, Any], key: str | None = None) -> list[str]:
    software = _section(record, "software")
    if not isinstance(software, dict):
        return []
    keys = [key] if key else sorted(software)
    return [str(v) for k in keys for v in (software.get(k) or [])]


def _services(record: Mapping[str, Any], kind: str) -> list[str]:
    entries = _list(record, "services", kind)
    return [f"{s.get('proto')}/{s.get('port')}" for s in entries if isinstance(s, dict)]


def _hl7_types(record: Mapping[str, Any], key: str) -> list[str]:
    return [str(t) for t in _list(record, "clinical", "hl7", key) if not str(t).startswith("ACK")]


def _regexes(describe: str, values: Callable[[Mapping[str, Any]], list[str]]) -> Builder:
    def build(value: Any) -> tuple[Check | None, str | None]:
        patterns = _strings(value)
        if patterns is None:
            return None, f"must be a non-empty list of regular expressions, got {value!r}"
        try:
            regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        except re.error as exc:
            return None, f"bad regular expression: {exc}"

        def check(record: Mapping[str, Any]) -> str | None:
            hit = next((v for v in values(record) if regex.search(v)), None)
            return None if hit is None else f"{describe} {hit!r}"
        return check, None
    return build


def _vendor(value: Any) -> tuple[Check | None, str | None]:
    needles = _strings(value)
    if needles is None:
        return None, f"must be a non-empty list of vendor name fragments, got {value!r}"
    lowered = tuple(n.lower() for n in needles)

    def check(record: Mapping[str, Any]) -> str | None:
        vendor = str(record.get("vendor") or "")
        return f"vendor {vendor!r}" if vendor and any(n in vendor.lower() for n in lowered) else None
    return check, None


def _ports(describe: str, kind: str) -> Builder:
    def build(value: Any) -> tuple[Check | None, str | None]:
        wanted = _strings(value)
        if wanted is None or not all(_SERVICE.match(w) for w in wanted):
            return None, f"must be a non-empty list like [\"tcp/9100\", \"udp/161\"], got {value!r}"

        def check(record: Mapping[str, Any]) -> str | None:
            hits = sorted(set(wanted) & set(_services(record, kind)))
            return f"{describe} {', '.join(hits)}" if hits else None
        return check, None
    return build


def _patterns(describe: str, values: Callable[[Mapping[str, Any]], list[str]], mode: str) -> Builder:
    """Shell-style patterns over a list: mode any, all (every pattern matched), none, or only."""
    def build(value: Any) -> tuple[Check | None, str | None]:
        patterns = _strings(value)
        if patterns is None:
            return None, f"must be a non-empty list of patterns, got {value!r}"
        compiled = [re.compile(fnmatch.translate(p)) for p in patterns]

        def check(record: Mapping[str, Any]) -> str | None:
            items = values(record)
            hits = sorted({i for i in items if any(c.match(i) for c in compiled)})
            if mode == "none":
                return None if hits else ""
            if mode == "all" and not all(any(c.match(i) for i in items) for c in compiled):
                return None
            if mode == "only" and (not items or len(hits) != len(set(items))):
                return None
            return f"{describe} {', '.join(hits)}" if hits else None
        return check, None
    return build


def _minimum(describe: str, count: Callable[[Mapping[str, Any]], int]) -> Builder:
    def build(value: Any) -> tuple[Check | None, str | None]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return None, f"must be a positive integer, got {value!r}"

        def check(record: Mapping[str, Any]) -> str | None:
            n = count(record)
            return f"{describe} {n}" if n >= value else None
        return check, None
    return build


def _hl7_acks(value: Any) -> tuple[Check | None, str | None]:
    if value is not True:
        return None, f"must be true (leave it out otherwise), got {value!r}"

    def check(record: Mapping[str, Any]) -> str | None:
        codes = _list(record, "clinical", "hl7", "acks_sent")
        return f"sends HL7 ACKs ({', '.join(map(str, codes))})" if codes else None
    return check, None


def _dicom(key: str) -> Callable[[Mapping[str, Any]], list[str]]:
    return lambda record: [str(s) for s in _list(record, "clinical", "dicom", key)]


CONDITIONS: Final[dict[str, Builder]] = {
    "vendor": _vendor,
    "hostname": _regexes("hostname", lambda r: [str(r["hostname"])] if r.get("hostname") else []),
    "dhcp_vendor_class": _regexes("DHCP vendor class", lambda r: _software(r, "dhcp_vendor_class")),
    "software": _regexes("software", _software),
    "capabilities": _patterns("advertises", lambda r: _software(r, "capabilities"), "any"),
    "offers": _ports("offers", "offered"),
    "uses": _ports("uses", "used"),
    "min_ips": _minimum("addresses behind one MAC:", lambda r: len(_list(r, "ips"))),
    "dicom_uses": _patterns("DICOM SCU of", _dicom("services_used"), "any"),
    "dicom_uses_none": _patterns("", _dicom("services_used"), "none"),
    "dicom_provides": _patterns("DICOM SCP of", _dicom("services_provided"), "any"),
    "dicom_provides_all": _patterns("DICOM SCP of", _dicom("services_provided"), "all"),
    "dicom_provides_none": _patterns("", _dicom("services_provided"), "none"),
    "hl7_sends": _patterns("sends HL7", lambda r: _hl7_types(r, "sent"), "any"),
    "hl7_sends_only": _patterns("sends only HL7", lambda r: _hl7_types(r, "sent"), "only"),
    "hl7_receives": _patterns("receives HL7", lambda r: _hl7_types(r, "received"), "any"),
    "hl7_senders_min": _minimum("HL7 senders:", lambda r: len(_list(r, "clinical", "hl7", "senders"))),
    "hl7_acks": _hl7_acks,
}
NEGATIVE: Final = frozenset({"dicom_uses_none", "dicom_provides_none"})
