"""Cisco Discovery Protocol: what a Cisco switch, router or IP phone says about itself.

A frame-level parser, not a flow hinter: `parse` takes the bytes after the 802.2 LLC/SNAP header
(AA AA 03 00 00 0C 20 00), starting at the CDP version byte. It reads device id, addresses, port
id, capabilities, the first line of the software version, platform, native VLAN and management
addresses. Text is made printable and cut to MAX_TEXT characters; at most MAX_ADDRESSES addresses,
unspecified ones (0.0.0.0, ::, as switches send before they have an address) left out.
"""

from __future__ import annotations

import socket
from typing import Final

from agent.hints.base import Fields

NAME: Final = "cdp"
SNAP_HEADER: Final = b"\xaa\xaa\x03\x00\x00\x0c\x20\x00"
MAX_TEXT: Final = 200
MAX_TLVS: Final = 64
MAX_ADDRESSES: Final = 8
_CAPABILITIES: Final = ("router", "bridge", "source_route_bridge", "switch", "host", "igmp", "repeater",
                        "phone", "remote_managed", "camera", "mac_relay")
_TEXT_TLVS: Final = {0x01: "device_id", 0x03: "port_id", 0x05: "software_version", 0x06: "platform"}
_ADDRESS_TLVS: Final = {0x02: "addresses", 0x16: "management_addresses"}
_IPV6_PROTOCOL: Final = b"\xaa\xaa\x03\x00\x00\x00\x86\xdd"


def parse(payload: bytes) -> Fields:
    """The allow-listed TLVs of one CDP packet; ValueError if it is not CDP v1/v2 or is cut."""
    if len(payload) < 4 or payload[0] not in (1, 2):
        raise ValueError("not a CDP version 1 or 2 header")
    fields: Fields = {"cdp_version": payload[0]}
    at, count = 4, 0
    while at < len(payload) and count < MAX_TLVS:
        if at + 4 > len(payload):
            raise ValueError("CDP TLV header cut short")
        kind = int.from_bytes(payload[at:at + 2], "big")
        length = int.from_bytes(payload[at + 2:at + 4], "big")
        if length < 4 or at + length > len(payload):
            raise ValueError("CDP TLV length out of bounds")
        _tlv(fields, kind, payload[at + 4:at + length])
        at, count = at + length, count + 1
    return fields


def _tlv(fields: Fields, kind: int, value: bytes) -> None:
    if kind in _TEXT_TLVS:
        if text := _text(value):
            fields.setdefault(_TEXT_TLVS[kind], text)
    elif kind in _ADDRESS_TLVS:
        if addresses := _addresses(value):
            fields.setdefault(_ADDRESS_TLVS[kind], addresses)
    elif kind == 0x04:
        if len(value) != 4:
            raise ValueError("CDP capabilities TLV has the wrong length")
        bits = int.from_bytes(value, "big")
        fields["capabilities"] = [name for bit, name in enumerate(_CAPABILITIES) if bits >> bit & 1]
    elif kind == 0x0A:
        if len(value) != 2:
            raise ValueError("CDP native VLAN TLV has the wrong length")
        fields["native_vlan"] = int.from_bytes(value, "big")


def _addresses(value: bytes) -> list[str]:
    """An address list: count, then (protocol type, protocol, address) entries; IPv4 and IPv6 kept."""
    if len(value) < 4:
        raise ValueError("CDP address list cut short")
    found: list[str] = []
    at = 4
    for _ in range(int.from_bytes(value[:4], "big")):
        if at + 2 > len(value) or at + 4 + value[at + 1] > len(value):
            raise ValueError("CDP address entry cut short")
        protocol = value[at + 2:at + 2 + value[at + 1]]
        at += 2 + value[at + 1]
        length = int.from_bytes(value[at:at + 2], "big")
        address = value[at + 2:at + 2 + length]
        if len(address) != length:
            raise ValueError("CDP address cut short")
        at += 2 + length
        text = _address(protocol, address)
        if text not in ("", "0.0.0.0", "::") and text not in found and len(found) < MAX_ADDRESSES:
            found.append(text)
    return found


def _address(protocol: bytes, address: bytes) -> str:
    if protocol == b"\xcc" and len(address) == 4:
        return socket.inet_ntoa(address)
    if protocol == _IPV6_PROTOCOL and len(address) == 16:
        return socket.inet_ntop(socket.AF_INET6, address)
    return ""


def _text(data: bytes) -> str:
    """The first line of a text value, other control characters as '?', cut to MAX_TEXT."""
    line = data.decode("utf-8", "replace").strip().splitlines()[:1]
    return "".join(c if c.isprintable() else "?" for c in line[0].strip()[:MAX_TEXT]) if line else ""
