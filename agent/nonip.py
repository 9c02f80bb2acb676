"""Names for the ethertypes of frames that carry no IP, as they appear in the summary counters."""

from __future__ import annotations

from typing import Final

_NAMES: Final = {
    -1: "llc",
    -2: "wlan_management",
    -3: "wlan_control",
    -4: "wlan_protected",
    -5: "wlan_no_data",
    -6: "ppp_control",
    0x0806: "arp",
    0x8035: "rarp",
    0x88CC: "lldp",
    0x2000: "cdp",
    0x888E: "eapol",
    0x8809: "slow_protocols",
    0x88F7: "ptp",
    0x8863: "pppoe_discovery",
    0x8864: "pppoe_session",
    0x88E5: "macsec",
    0x8847: "mpls",
    0x890D: "tdls",
    0x9000: "loopback",
}


def ethertype_name(ethertype: int) -> str:
    """A short name for the ethertype, or its hex value (`0x88b5`) when it has none here."""
    return _NAMES.get(ethertype, f"0x{ethertype:04x}")
