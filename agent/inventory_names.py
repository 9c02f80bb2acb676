"""Hints that name devices and bind addresses to them: ARP, DHCP, mDNS, NBNS, SSDP, LLDP and CDP.

Part of the inventory's hint handling (agent.inventory_hints dispatches here). What a device says
about itself is trusted for its own names and addresses: an ARP sender's binding, a DHCP client's
hostname and fingerprint (and the address its server ACKs), mDNS answers, NBNS registrations,
LLDP/CDP system names and management addresses. Queries, which name someone else, are not used.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from agent.inventory_device import DeviceState
from agent.records import ProtoHint

if TYPE_CHECKING:
    from agent.inventory_hints import HintApplier

_MDNS_PORT: Final = 5353
_MAC: Final = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NBNS_OWN: Final = frozenset({"registration", "refresh", "status_response"})
_NBNS_GROUP_TYPES: Final = frozenset({0x1B, 0x1C, 0x1D, 0x1E, 0x01})


def text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def dhcp(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    f = hint.fields
    client_mac = text(f.get("client_mac")).lower()
    client = None
    if _MAC.match(client_mac):
        client = ap.owner.device(client_mac, None, False, hint.ts, hint.ts)
    if f.get("op") == "request":
        client = client or src
        if client is not None and (hostname := text(f.get("hostname"))):
            client.set_name("dhcp", hostname)
        ap.add(client, "dhcp_vendor_class", f.get("vendor_class"))
        params = f.get("parameter_list")
        if isinstance(params, list) and params and all(isinstance(p, int) for p in params):
            ap.add(client, "dhcp_fingerprint", ",".join(str(p) for p in params))
    elif (f.get("message_type") == "ACK" and client is not None and (ip := address(f.get("assigned_ip")))
          and not client.add_ip(ip, hint.ts, hint.ts)):
        ap.owner.counters.add("inventory.ips_dropped")


def address(value: Any) -> str:
    """A valid IP address in its canonical text, or ""."""
    return _canonical(value.strip()) if isinstance(value, str) else ""


@lru_cache(maxsize=4096)
def _canonical(value: str) -> str:
    """Parsing an address costs microseconds, and ARP and DHCP repeat the same few all day."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return ""


def arp(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    """An ARP sender states its own binding on the link: attributed whatever the address (not a probe)."""
    f = hint.fields
    mac, ip = text(f.get("sender_mac")).lower(), address(f.get("sender_ip"))
    device = ap.owner.device(mac, None, False, hint.ts, hint.ts) if _MAC.match(mac) else None
    if device is not None and ip and ip != "0.0.0.0" and not device.add_ip(ip, hint.ts, hint.ts):
        ap.owner.counters.add("inventory.ips_dropped")


def _own_addresses(ap: HintApplier, device: DeviceState | None, fields: dict[str, Any],
                   ts: float) -> None:
    """Addresses a neighbour advertisement gives for the sender itself (LLDP/CDP management)."""
    for key in ("management_addresses", "addresses"):
        values = fields.get(key)
        for value in values if isinstance(values, list) else []:
            ip = address(value)
            if device is not None and ip and not device.add_ip(ip, ts, ts):
                ap.owner.counters.add("inventory.ips_dropped")


def dns(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    """mDNS responses announce the sender's own names and addresses; unicast DNS names others."""
    f = hint.fields
    if src is None or not f.get("response") or _MDNS_PORT not in (hint.src_port, hint.dst_port):
        return
    answers = f.get("answers")
    for answer in answers if isinstance(answers, list) else []:
        name, _, address = str(answer).partition("=")
        if name.lower().endswith(".local") and address:
            src.set_name("mdns", name[:-len(".local")])
            if ap.owner.is_local(address) and not src.add_ip(address, hint.ts, hint.ts):
                ap.owner.counters.add("inventory.ips_dropped")


def nbns(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    """A NetBIOS name the sender registers, refreshes or lists about itself: its unique host name.

    Queries name someone else, and responses may come from a name server, so neither is used; group
    names (workgroup, browser elections) are not the host's.
    """
    f = hint.fields
    if src is None or text(f.get("nbns")) not in _NBNS_OWN or f.get("group") is True:
        return
    names, types, groups = f.get("names"), f.get("name_types"), f.get("group_names")
    if not isinstance(names, list):
        return
    kinds = [_nbns_type(t) for t in types] if isinstance(types, list) and len(types) == len(names) else []
    excluded = {g for g in groups if isinstance(g, str)} if isinstance(groups, list) else set()
    ranked = sorted((0 if kinds and kinds[i] == 0x20 else 1, i) for i, name in enumerate(names)
                    if isinstance(name, str) and not name.startswith("__") and name not in excluded
                    and not (kinds and kinds[i] in _NBNS_GROUP_TYPES))
    if ranked:
        src.set_name("nbns", str(names[ranked[0][1]]).strip())


def _nbns_type(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().strip("<>")
    try:
        return int(text, 16)
    except ValueError:
        return -1


def ssdp(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    ap.add(src, "ssdp_server", hint.fields.get("server"))
    ap.add(src, "ssdp_user_agent", hint.fields.get("user_agent"))


def lldp(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    f = hint.fields
    if src is not None and (name := text(f.get("system_name"))):
        src.set_name("lldp", name)
    ap.add(src, "lldp_description", f.get("system_description"))
    _own_addresses(ap, src, f, hint.ts)
    ap.add_all(src, "capabilities", _lower(f.get("capabilities")))


def cdp(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    f = hint.fields
    if src is not None and (name := text(f.get("device_id"))):
        src.set_name("cdp", name)
    ap.add(src, "cdp_platform", f.get("platform"))
    _own_addresses(ap, src, f, hint.ts)
    version = text(f.get("software_version"))
    ap.add(src, "cdp_software", version.splitlines()[0] if version else None)
    ap.add_all(src, "capabilities", _lower(f.get("capabilities")))


def _lower(values: Any) -> list[str]:
    items = values if isinstance(values, list) else [values]
    return [v.strip().lower() for v in items if isinstance(v, str)]
