"""Hints from Ethernet frames that carry no IP: ARP bindings and LLDP/CDP neighbour advertisements.

The flow table hands over only frames it already found to be ARP, LLDP or 802.3/LLC, so this
costs nothing on IP traffic. Every ARP frame gives a hint (the inventory learns address bindings
from them and the detectors look for sweeps and spoofing). A switch repeats its LLDP and CDP
advertisements every 30-60 s: an advertisement identical to the last one from the same MAC is
skipped (at most MAX_SENDERS remembered, counted when the memory is full).
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable
from typing import Final

from agent.decode import VLAN_TPIDS
from agent.hints import cdp, lldp
from agent.hints.base import Fields
from agent.records import Counters, ProtoHint

ARP: Final = 0x0806
CDP_SNAP_TYPE: Final = 0x2000  # decode.py walks 802.3 LLC/SNAP and reports the SNAP protocol id
MAX_SENDERS: Final = 1024
_ARP_OPS: Final = {1: "request", 2: "reply"}


class FrameHints:
    """Reads the non-IP frames the flow table passes on; emits ProtoHints."""

    def __init__(self, on_hint: Callable[[ProtoHint], object], counters: Counters) -> None:
        self._on_hint = on_hint
        self._counters = counters
        self._last_advert: dict[str, int] = {}

    def feed(self, frame: bytes, ethertype: int, t: int) -> None:
        """One Ethernet frame whose type (after VLAN tags and any LLC/SNAP header) is `ethertype`."""
        at = 12
        while int.from_bytes(frame[at:at + 2], "big") in VLAN_TPIDS:
            at += 4
        payload = frame[at + 2:]
        src_mac, dst_mac = frame[6:12].hex(":"), frame[:6].hex(":")
        try:
            if ethertype == ARP:
                self._arp(payload, src_mac, dst_mac, t)
            elif ethertype == lldp.ETHERTYPE:
                self._advert(lldp.NAME, lldp.parse, payload, src_mac, dst_mac, t)
            elif ethertype == CDP_SNAP_TYPE and payload[:8] == cdp.SNAP_HEADER:
                self._advert(cdp.NAME, cdp.parse, payload[8:], src_mac, dst_mac, t)
        except ValueError:
            self._counters.add("hints.malformed." + _name(ethertype))

    def _arp(self, payload: bytes, src_mac: str, dst_mac: str, t: int) -> None:
        if len(payload) < 28 or payload[:6] != b"\x00\x01\x08\x00\x06\x04":
            raise ValueError("not Ethernet/IPv4 ARP")
        op = int.from_bytes(payload[6:8], "big")
        sender_ip, target_ip = socket.inet_ntoa(payload[14:18]), socket.inet_ntoa(payload[24:28])
        fields: Fields = {"arp": _ARP_OPS.get(op, str(op)), "sender_mac": payload[8:14].hex(":"),
                          "sender_ip": sender_ip, "target_ip": target_ip,
                          "gratuitous": sender_ip == target_ip}
        if op == 2:
            fields["target_mac"] = payload[18:24].hex(":")
        self._emit("arp", "arp", src_mac, sender_ip, dst_mac, target_ip, fields, t)

    def _advert(self, name: str, parse: Callable[[bytes], Fields], payload: bytes, src_mac: str,
                dst_mac: str, t: int) -> None:
        digest = zlib.crc32(payload)
        key = name + src_mac
        if self._last_advert.get(key) == digest:
            self._counters.add("hints.repeated." + name)
            return
        fields = parse(payload)
        if key not in self._last_advert and len(self._last_advert) >= MAX_SENDERS:
            self._counters.add("hints.senders_forgotten")
            self._last_advert.pop(next(iter(self._last_advert)))
        self._last_advert[key] = digest
        self._emit(name, name, src_mac, None, dst_mac, None, fields, t)

    def _emit(self, app: str, proto: str, src_mac: str, src_ip: str | None, dst_mac: str,
              dst_ip: str | None, fields: Fields, t: int) -> None:
        self._counters.add("hints." + app)
        self._on_hint(ProtoHint(t / 1_000_000, app, proto, src_mac, src_ip, 0, dst_mac, dst_ip, 0, True,
                                fields))


def _name(ethertype: int) -> str:
    return {ARP: "arp", lldp.ETHERTYPE: lldp.NAME}.get(ethertype, cdp.NAME)


FRAME_TYPES: Final = frozenset({ARP, lldp.ETHERTYPE, CDP_SNAP_TYPE})
