"""Flow key layout (built by decode.py and the fast path in flows.py): reversal, description, and
the FlowRecord a finished flow becomes.

TCP, UDP and tunnel keys: `src ip + dst ip + src port + dst port`, then two bytes per VLAN id.
Other protocols: the protocol number first, then the addresses, the ICMP type and code when it is
ICMP, then the VLAN ids. Address width follows from the length (at most MAX_VLAN_TAGS tags).
"""

from __future__ import annotations

import socket
from typing import Final

from agent.decode import OTHER, TCP
from agent.records import FlowRecord, make_record

_FLAG_LETTERS: Final = (("S", 0x02), ("F", 0x01), ("R", 0x04), ("P", 0x08), ("A", 0x10), ("U", 0x20),
                        ("E", 0x40), ("C", 0x80))


def flag_letters(flags: int) -> str:
    """TCP flags as letters in the fixed order S F R P A U E C."""
    return "".join(letter for letter, bit in _FLAG_LETTERS if flags & bit)


_FLAG_STRINGS: Final = tuple(flag_letters(flags) for flags in range(256))
_NO_MAC: Final = bytes(6)
_ntoa: Final = socket.inet_ntoa


def address(raw: bytes) -> str:
    """Text form of a 4- or 16-byte address."""
    return socket.inet_ntoa(raw) if len(raw) == 4 else socket.inet_ntop(socket.AF_INET6, raw)


def flow_record(table: int, a_key: bytes, first: float, last: float, packets: tuple[int, int],
                octets: tuple[int, int], flags: tuple[int, int], macs: bytes, end: str) -> FlowRecord:
    """The record of a finished flow; `macs` is a's MAC then b's, zeros where none was seen."""
    if len(a_key) == 12 and table != OTHER:  # untagged IPv4 TCP or UDP, most flows: describe_key inlined
        proto: str | int = "tcp" if table == TCP else "udp"
        a_text, b_text = _ntoa(a_key[:4]), _ntoa(a_key[4:8])
        a_port, b_port = a_key[8] << 8 | a_key[9], a_key[10] << 8 | a_key[11]
        vlans: tuple[int, ...] = ()
    else:
        proto, a_ip, a_port, b_ip, b_port, vlans = describe_key(table, a_key)
        a_text, b_text = address(a_ip), address(b_ip)
    a_mac, b_mac = macs[:6], macs[6:]
    tcp = table == TCP
    return make_record(FlowRecord, (
        first, last, proto, a_text, a_port, b_text, b_port,
        None if a_mac == _NO_MAC else a_mac.hex(":"), None if b_mac == _NO_MAC else b_mac.hex(":"),
        vlans, packets[0], packets[1], octets[0], octets[1],
        _FLAG_STRINGS[flags[0]] if tcp else "", _FLAG_STRINGS[flags[1]] if tcp else "", end,
    ))


def reverse_key(table: int, key: bytes) -> bytes:
    """The key of the opposite direction of the same flow."""
    if table == OTHER:
        head, rest = key[:1], key[1:]
        width = _other_addr_width(key)
        src, dst, tail = rest[:width], rest[width:2 * width], rest[2 * width:]
        return head + dst + src + tail
    width = 4 if (len(key) - 12) < 24 else 16
    src, dst = key[:width], key[width:2 * width]
    sport, dport = key[2 * width:2 * width + 2], key[2 * width + 2:2 * width + 4]
    return dst + src + dport + sport + key[2 * width + 4:]


def _other_addr_width(key: bytes) -> int:
    fixed = 3 if key[0] in (1, 58) else 1
    return 4 if (len(key) - fixed - 8) < 24 else 16


PROTO_NAMES: Final = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}


def describe_key(table: int, key: bytes) -> tuple[str | int, bytes, int, bytes, int, tuple[int, ...]]:
    """Split a key back into (proto, a address, a port, b address, b port, VLAN ids)."""
    if table == OTHER:
        proto = key[0]
        width = _other_addr_width(key)
        at = 1 + 2 * width
        src, dst = key[1:1 + width], key[1 + width:at]
        a_port = b_port = 0
        if proto == 1 or proto == 58:
            a_port, b_port, at = key[at], key[at + 1], at + 2
        name: str | int = PROTO_NAMES.get(proto, proto)
    else:
        width = 4 if len(key) < 36 else 16
        at = 2 * width + 4
        src, dst = key[:width], key[width:2 * width]
        a_port = key[at - 4] << 8 | key[at - 3]
        b_port = key[at - 2] << 8 | key[at - 1]
        name = "tcp" if table == TCP else "udp"  # TUNNEL keys are UDP keys
    if at == len(key):
        return name, src, a_port, dst, b_port, ()
    return name, src, a_port, dst, b_port, tuple(key[i] << 8 | key[i + 1] for i in range(at, len(key), 2))
