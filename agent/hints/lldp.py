"""LLDP (IEEE 802.1AB, ethertype 0x88cc): what a switch, phone or device says about itself.

A frame-level parser, not a flow hinter: `parse` takes the bytes after the Ethernet type. It reads
chassis id and port id (with their subtypes), port description, system name, the first line of
the system description, the enabled capabilities, management addresses, the 802.1 port VLAN id and
the LLDP-MED inventory strings (hardware, firmware and software revision, manufacturer, model;
never the serial number or asset id). Text is made printable and cut to MAX_TEXT characters.
"""

from __future__ import annotations

import socket
from typing import Final

from agent.hints.base import Fields

NAME: Final = "lldp"
ETHERTYPE: Final = 0x88CC
MAX_TEXT: Final = 200
MAX_TLVS: Final = 64
MAX_ADDRESSES: Final = 8
_CHASSIS_SUBTYPES: Final = {1: "chassis_component", 2: "interface_alias", 3: "port_component", 4: "mac",
                            5: "network_address", 6: "interface_name", 7: "local"}
_PORT_SUBTYPES: Final = {1: "interface_alias", 2: "port_component", 3: "mac", 4: "network_address",
                         5: "interface_name", 6: "agent_circuit_id", 7: "local"}
_CAPABILITIES: Final = ("other", "repeater", "bridge", "wlan_ap", "router", "telephone", "docsis", "station",
                        "c_vlan", "s_vlan", "tpmr")
_TEXT_TLVS: Final = {4: "port_description", 5: "system_name", 6: "system_description"}
_MED_INVENTORY: Final = {5: "hardware_revision", 6: "firmware_revision", 7: "software_revision",
                         9: "manufacturer", 10: "model"}
_OUI_8021: Final = b"\x00\x80\xc2"
_OUI_MED: Final = b"\x00\x12\xbb"


def parse(payload: bytes) -> Fields:
    """The allow-listed TLVs of one LLDPDU; ValueError if the mandatory TLVs are missing or cut."""
    tlvs = _tlvs(payload)
    if [t for t, _ in tlvs[:3]] != [1, 2, 3]:
        raise ValueError("LLDPDU does not start with chassis id, port id and TTL")
    fields: Fields = {}
    addresses: list[str] = []
    for kind, value in tlvs:
        if kind in (1, 2):
            _id(fields, "chassis" if kind == 1 else "port", value)
        elif kind == 3 and len(value) < 2:
            raise ValueError("LLDP TTL cut short")
        elif kind in _TEXT_TLVS and (text := _text(value)):
            fields.setdefault(_TEXT_TLVS[kind], text)
        elif kind == 7:
            if len(value) != 4:
                raise ValueError("LLDP capabilities TLV has the wrong length")
            enabled = int.from_bytes(value[2:4], "big")
            fields["capabilities"] = [n for bit, n in enumerate(_CAPABILITIES) if enabled >> bit & 1]
        elif kind == 8:
            _management(addresses, value)
        elif kind == 127:
            _organisational(fields, value)
    if addresses:
        fields["management_addresses"] = addresses
    return fields


def _tlvs(payload: bytes) -> list[tuple[int, bytes]]:
    """(type, value) pairs up to the End TLV or the end of the payload."""
    found: list[tuple[int, bytes]] = []
    at = 0
    while at < len(payload) and len(found) < MAX_TLVS:
        if at + 2 > len(payload):
            raise ValueError("LLDP TLV header cut short")
        header = int.from_bytes(payload[at:at + 2], "big")
        kind, length = header >> 9, header & 0x1FF
        if kind == 0:
            break
        value = payload[at + 2:at + 2 + length]
        if len(value) != length:
            raise ValueError("LLDP TLV runs past the frame")
        found.append((kind, value))
        at += 2 + length
    return found


def _id(fields: Fields, which: str, value: bytes) -> None:
    if len(value) < 2:
        raise ValueError(f"LLDP {which} id too short")
    subtype, data = value[0], value[1:]
    names = _CHASSIS_SUBTYPES if which == "chassis" else _PORT_SUBTYPES
    if names.get(subtype) == "mac" and len(data) == 6:
        text = data.hex(":")
    elif names.get(subtype) == "network_address":
        text = _address(data[0], data[1:])
    else:
        text = _text(data)
    if text and f"{which}_id" not in fields:
        fields[f"{which}_id"] = text
        fields[f"{which}_id_subtype"] = names.get(subtype, str(subtype))


def _management(addresses: list[str], value: bytes) -> None:
    """Management address TLV: address string length (subtype byte included), subtype, address."""
    if len(value) < 2 or not 2 <= value[0] <= 32 or len(value) < 1 + value[0]:
        raise ValueError("bad LLDP management address")
    text = _address(value[1], value[2:1 + value[0]])
    if text and text not in addresses and len(addresses) < MAX_ADDRESSES:
        addresses.append(text)


def _organisational(fields: Fields, value: bytes) -> None:
    if len(value) < 4:
        raise ValueError("LLDP organisation-specific TLV too short")
    oui, subtype, data = value[:3], value[3], value[4:]
    if oui == _OUI_8021 and subtype == 1 and len(data) == 2:
        fields["port_vlan"] = int.from_bytes(data, "big")
    elif oui == _OUI_MED and subtype in _MED_INVENTORY and (text := _text(data)):
        fields.setdefault(_MED_INVENTORY[subtype], text)


def _address(family: int, data: bytes) -> str:
    """An IANA address family number and address as text: IPv4, IPv6, 802 MAC, else empty."""
    if family == 1 and len(data) == 4:
        return socket.inet_ntoa(data)
    if family == 2 and len(data) == 16:
        return socket.inet_ntop(socket.AF_INET6, data)
    if family == 6 and len(data) == 6:
        return data.hex(":")
    return ""


def _text(data: bytes) -> str:
    """The first line of a text value, other control characters as '?', cut to MAX_TEXT."""
    line = data.decode("utf-8", "replace").strip().splitlines()[:1]
    return "".join(c if c.isprintable() else "?" for c in line[0].strip()[:MAX_TEXT]) if line else ""
