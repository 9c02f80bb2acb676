"""IEEE 802.11 data frames as a mirror or monitor interface delivers them (raw, radiotap or PPI).

Only what flow accounting needs: where the LLC payload starts and which MACs are the real source
and destination. Management, control, null and encrypted frames carry no IP we can see.
"""

from __future__ import annotations

from typing import Final

WLAN_MANAGEMENT: Final = -2
WLAN_CONTROL: Final = -3
WLAN_PROTECTED: Final = -4
WLAN_NO_DATA: Final = -5

Payload = tuple[int, bytes]  # offset of the LLC header, destination MAC + source MAC


def data_payload(frame: bytes, at: int) -> Payload | int | str:
    """The LLC payload of an 802.11 data frame at `at`, a WLAN_* code, or a skip reason."""
    if len(frame) < at + 24:
        return "truncated_link"
    fc0, fc1 = frame[at], frame[at + 1]
    kind, subtype = (fc0 >> 2) & 3, fc0 >> 4
    if kind == 0:
        return WLAN_MANAGEMENT
    if kind != 2:
        return WLAN_CONTROL
    if subtype & 4:  # null function, CF-ack/poll only: no payload
        return WLAN_NO_DATA
    if fc1 & 0x40:
        return WLAN_PROTECTED
    ds = fc1 & 3
    qos = subtype & 8
    header = 24 + (6 if ds == 3 else 0) + (2 if qos else 0) + (4 if qos and fc1 & 0x80 else 0)
    addr1, addr2, addr3 = frame[at + 4:at + 10], frame[at + 10:at + 16], frame[at + 16:at + 22]
    if ds == 0:
        dst, src = addr1, addr2
    elif ds == 1:  # to the distribution system: addr1 is the BSSID
        dst, src = addr3, addr2
    elif ds == 2:  # from the distribution system: addr2 is the BSSID
        dst, src = addr1, addr3
    else:
        dst, src = addr3, frame[at + 24:at + 30]
    if len(frame) < at + header:
        return "truncated_link"
    return at + header, dst + src


def radiotap_length(frame: bytes) -> int:
    """Length of the radiotap header that precedes the 802.11 frame."""
    return frame[2] | frame[3] << 8
