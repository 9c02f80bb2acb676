"""DHCPv4: who a client says it is (hostname, vendor class, parameter-request fingerprint).

Read from BOOTP messages on UDP 67/68: message type (53), hostname (12), vendor class (60),
parameter request list (55, the fingerprint), client id (61), requested address (50), server id
(54), and the address a server assigns (yiaddr) with the client hardware address.
"""

from __future__ import annotations

import re
import socket
from typing import Final

from agent.hints.base import DatagramFlow, Fields, HintOptions

NAME: Final = "dhcp"
PROTO: Final = "udp"
_MAGIC: Final = b"\x63\x82\x53\x63"
_TYPES: Final = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE",
                 8: "INFORM"}
_PRINTABLE: Final = re.compile(r"^[\x20-\x7e]{1,64}$")


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    return proto == "udp" and {a_port, b_port} <= {67, 68}


def start(options: HintOptions) -> DatagramFlow:
    return _FLOW


def parse(message: bytes) -> Fields:
    """The allow-listed fields of one BOOTP/DHCP message; ValueError if it is not one."""
    if len(message) < 240 or message[236:240] != _MAGIC or message[1] != 1 or message[2] != 6:
        raise ValueError("not an Ethernet DHCP message")
    fields: Fields = {"op": "request" if message[0] == 1 else "reply", "client_mac": message[28:34].hex(":")}
    if message[16:20] != bytes(4):
        fields["assigned_ip"] = socket.inet_ntoa(message[16:20])
    at = 240
    while at < len(message) and message[at] != 255:
        code = message[at]
        if code == 0:
            at += 1
            continue
        if at + 2 > len(message) or at + 2 + message[at + 1] > len(message):
            raise ValueError("DHCP option runs past the message")
        value = message[at + 2:at + 2 + message[at + 1]]
        _option(fields, code, value)
        at += 2 + len(value)
    return fields


def _option(fields: Fields, code: int, value: bytes) -> None:
    if code == 53 and len(value) == 1:
        fields["message_type"] = _TYPES.get(value[0], str(value[0]))
    elif code in (12, 60):
        text = value.decode("ascii", "replace").rstrip("\x00")
        if _PRINTABLE.match(text):
            fields["hostname" if code == 12 else "vendor_class"] = text
    elif code == 55:
        fields["parameter_list"] = list(value)
    elif code == 61 and value:
        fields["client_id"] = value.hex(":")
    elif code in (50, 54) and len(value) == 4:
        fields["requested_ip" if code == 50 else "server_id"] = socket.inet_ntoa(value)


_FLOW: Final = DatagramFlow(parse)  # holds no per-flow state: shared by every flow
