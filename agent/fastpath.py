"""The flow table's fast path (DESIGN.md section 1): known flows' packets on Ethernet, inlined by hand.

A mixin of FlowTable, which owns the columns it reads (see flows.py for their layout). It counts
IPv4 and IPv6 TCP/UDP packets of flows the table knows, under up to two VLAN tags, with a few
bytes read at fixed offsets and one dict lookup; everything else, and everything the decoder
would skip or treat specially, goes to FlowTable._slow. A new flow goes to FlowTable._account, and
the payload of a flow in its head (flowhead.py), once counted, to FlowTable._feed_head.
tests/unit/test_fast_path.py holds it to the general path, hints included.
"""

from __future__ import annotations

import struct
from typing import Final

from agent.decode import TCP, UDP, VLAN_TPIDS
from agent.expiry import US
from agent.flowhead import HEAD
from agent.tunnels import TUNNEL_PORTS

PKT_BITS: Final = 28  # a direction's packet count sits in the low bits of its counter, bytes above
HEADER_BYTES: Final = 80  # enough for Ethernet, two VLAN tags, IPv6 and the TCP flags
META_RECORDS: Final = struct.Struct("=IIII").iter_unpack  # next_batch's (sec, usec, offset, caplen)
# Untagged IPv4 at fixed offsets: ethertype, version and header length, total length, flags and
# fragment offset, protocol, the flow key (addresses and ports), TCP data offset and flags.
IPV4_FIELDS: Final = struct.Struct("!12xHBxH2xHxB2x12s8xBB").unpack_from
# IPv4 under one 802.1Q tag: the tag's two bytes (priority and VLAN id), then the same fields.
TAGGED_IPV4_FIELDS: Final = struct.Struct("!14x2sHBxH2xHxB2x12s8xBB").unpack_from


class EthernetFastPath:
    """FlowTable's `_ingest_ethernet`; the attributes and methods below are FlowTable's."""

    _now: int
    _tick: int
    _tables: tuple[dict[bytes, int], ...]
    _count: list[int]
    _flags: list[int]
    _last: list[int]

    def _clock(self, t: int, now: int) -> int:
        raise NotImplementedError

    def _slow(self, frame: bytes, t: int) -> None:
        raise NotImplementedError

    def _account(self, table: int, key: bytes, iplen: int, tcp_flags: int, macs: bytes, t: int,
                 segment: bytes = b"") -> None:
        raise NotImplementedError

    def _feed_head(self, j: int, table: int, segment: bytes, t: int) -> None:
        raise NotImplementedError

    def _ingest_ethernet(self, pk: bytes, meta: bytes) -> None:
        """The fast path, inlined by hand: IPv4 or IPv6 TCP/UDP on known flows, under up to two VLAN tags.

        IPv4, untagged or under one 802.1Q tag (most of the traffic), is read with one struct
        unpack and has its own copy of the steps; the rest is read byte by byte. Whatever the
        decoder would skip or treat specially (IPv4 options, IPv6 extension headers, fragments,
        tagged priorities, tunnel ports, a TCP header not wholly inside the packet) takes `slow`.
        """
        now, tick, slow, account = self._now, self._tick, self._slow, self._account
        tcp_get, udp_get, feed_head = self._tables[TCP].get, self._tables[UDP].get, self._feed_head
        count, flags, last, head = self._count, self._flags, self._last, HEAD
        for sec, usec, off, cl in META_RECORDS(meta):
            t = sec * US + usec
            if not now <= t < tick:
                t = self._clock(t, now)
                tick = self._tick
            now = t
            if cl < 54:
                slow(pk[off:off + cl], t)
                continue
            e, v, n, g, p, k, h, f = IPV4_FIELDS(pk, off)
            o = 14  # where the IP header starts
            if e == 0x8100 and cl >= 58:  # one 802.1Q tag: IPv4 under it at offset 18
                tg, e, v, n, g, p, k, h, f = TAGGED_IPV4_FIELDS(pk, off)
                if tg[0] < 16:  # priority 0: the tag's bytes are the VLAN id, the key's last two
                    k += tg
                    o = 18
                else:
                    e = 0  # the general steps below send it to slow
            if e == 0x0800 and v == 69 and not g & 0x3FFF and n > 33:
                if p == 6:
                    h = h >> 2 & 60
                    if not 20 <= h <= cl - o - 20 or h > n - 20:  # a bad or cut header: decode counts it
                        slow(pk[off:off + cl], t)
                        continue
                    j = tcp_get(k)
                    if j is not None and not f & 7:
                        if j >= head:  # a flow in its head (flowhead.py): payload to the hinters
                            j -= head
                            if n > 20 + h:
                                count[j] += n << PKT_BITS | 1
                                flags[j] |= f
                                last[j] = t
                                end = o + n if o + n < cl else cl  # the IP length, unless cut short
                                feed_head(j, TCP, pk[off + o + 20:off + end], t)
                                continue
                        count[j] += n << PKT_BITS | 1
                        flags[j] |= f
                        last[j] = t
                    else:
                        end = o + n if o + n < cl else cl  # the IP length, unless cut short
                        account(TCP, k, n, f, pk[off:off + 12], t, pk[off + o + 20:off + end])
                    continue
                if p == 17:
                    j = udp_get(k)
                    if j is not None:
                        if j >= head:  # a flow in its head (flowhead.py)
                            j -= head
                            count[j] += n << PKT_BITS | 1
                            last[j] = t
                            end = o + n if o + n < cl else cl  # the IP length, unless cut short
                            feed_head(j, UDP, pk[off + o + 20:off + end], t)
                            continue
                        count[j] += n << PKT_BITS | 1
                        last[j] = t
                    elif k[8] << 8 | k[9] in TUNNEL_PORTS or k[10] << 8 | k[11] in TUNNEL_PORTS:
                        slow(pk[off:off + cl], t)
                    else:
                        end = o + n if o + n < cl else cl  # the IP length, unless cut short
                        account(UDP, k, n, 0, pk[off:off + 12], t, pk[off + o + 20:off + end])
                    continue
            else:  # the same steps with the IP header at offset o and the VLAN ids in tg
                d = pk[off:off + (cl if cl < HEADER_BYTES else HEADER_BYTES)]
                o, tg, e = 14, b"", d[12] << 8 | d[13]
                if e in VLAN_TPIDS and d[14] < 16:  # priority 0: the tag's bytes are the VLAN id
                    o, tg, e = 18, d[14:16], d[16] << 8 | d[17]
                    if e in VLAN_TPIDS and d[18] < 16:
                        o, tg, e = 22, d[14:16] + d[18:20], d[20] << 8 | d[21]
                if (e == 0x0800 and cl >= o + 40 and d[o] == 69 and not (d[o + 6] & 63 or d[o + 7])
                        and (d[o + 2] or d[o + 3] > 33)):
                    p, at, n, k = d[o + 9], o + 20, d[o + 2] << 8 | d[o + 3], d[o + 12:o + 24] + tg
                elif e == 0x86DD and cl >= o + 60 and d[o] >> 4 == 6:
                    p, at, n, k = d[o + 6], o + 40, 40 + (d[o + 4] << 8 | d[o + 5]), d[o + 8:o + 44] + tg
                else:
                    p = 0
                if p == 6:
                    h = d[at + 12] >> 2 & 60
                    if not 20 <= h <= cl - at or h > n - at + o:
                        slow(pk[off:off + cl], t)
                        continue
                    f = d[at + 13]
                    j = tcp_get(k)
                    if j is not None and not f & 7:
                        if j >= head:
                            j -= head
                            if n > at - o + h:
                                count[j] += n << PKT_BITS | 1
                                flags[j] |= f
                                last[j] = t
                                end = o + n if o + n < cl else cl  # the IP length, unless cut short
                                feed_head(j, TCP, pk[off + at:off + end], t)
                                continue
                        count[j] += n << PKT_BITS | 1
                        flags[j] |= f
                        last[j] = t
                    else:
                        end = o + n if o + n < cl else cl  # the IP length, unless cut short
                        account(TCP, k, n, f, d[:12], t, pk[off + at:off + end])
                    continue
                if p == 17 and n >= at - o + 8:
                    j = udp_get(k)
                    if j is not None:
                        if j >= head:
                            j -= head
                            count[j] += n << PKT_BITS | 1
                            last[j] = t
                            end = o + n if o + n < cl else cl  # the IP length, unless cut short
                            feed_head(j, UDP, pk[off + at:off + end], t)
                            continue
                        count[j] += n << PKT_BITS | 1
                        last[j] = t
                    elif (d[at] << 8 | d[at + 1] in TUNNEL_PORTS
                          or d[at + 2] << 8 | d[at + 3] in TUNNEL_PORTS):
                        slow(pk[off:off + cl], t)
                    else:
                        end = o + n if o + n < cl else cl  # the IP length, unless cut short
                        account(UDP, k, n, 0, d[:12], t, pk[off + at:off + end])
                    continue
            slow(pk[off:off + cl], t)
        self._now = now
