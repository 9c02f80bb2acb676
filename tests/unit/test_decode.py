"""Tests for agent/decode.py: link types, encapsulations, flow keys and skip reasons."""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

from agent import decode
from agent.decode import (
    LLC,
    MAX_TUNNEL_DEPTH,
    OTHER,
    SKIP_REASONS,
    TCP,
    TUNNEL,
    UDP,
    decode_frame,
)
from agent.flowkeys import describe_key, reverse_key
from agent.flows import FlowSettings, FlowTable
from agent.fragments import Fragment
from agent.records import Counters, FlowRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import wardgen

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A4, B4 = "10.0.0.1", "10.0.0.2"
A6, B6 = "fd00::1", "fd00::2"
ETH = decode.DLT_EN10MB
RAW = decode.LINKTYPE_RAW


# --- helpers --------------------------------------------------------------------------------------

def _packed(addr: str) -> bytes:
    return ip_address(addr).packed


def _eth(ip_packet: bytes, vlans: tuple[int, ...] = (), pad: bool = True) -> bytes:
    """An Ethernet frame from MAC_A to MAC_B carrying ip_packet (IPv4 or IPv6 by its version)."""
    ethertype = wardgen.ETH_IP6 if ip_packet[0] >> 4 == 6 else wardgen.ETH_IP4
    return wardgen.ether(MAC_B, MAC_A, ethertype, ip_packet, vlans, pad)


def _tcp4(sport: int = 40000, dport: int = 443, flags: int = wardgen.ACK, payload: bytes = b"",
          src: str = A4, dst: str = B4, **ip_kw: object) -> bytes:
    return wardgen.ipv4(src, dst, 6, wardgen.tcp(sport, dport, 1, 1, flags, payload), **ip_kw)  # type: ignore[arg-type]


def _udp4(sport: int = 40000, dport: int = 53, payload: bytes = b"q", src: str = A4, dst: str = B4) -> bytes:
    return wardgen.ipv4(src, dst, 17, wardgen.udp(sport, dport, payload))


def _tcp6(sport: int = 40000, dport: int = 443, flags: int = wardgen.ACK, payload: bytes = b"",
          ext: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    return wardgen.ipv6(A6, B6, 6, wardgen.tcp(sport, dport, 1, 1, flags, payload), ext)


def _udp6(sport: int = 40000, dport: int = 53, payload: bytes = b"q") -> bytes:
    return wardgen.ipv6(A6, B6, 17, wardgen.udp(sport, dport, payload))


def _ports(sport: int, dport: int) -> bytes:
    return struct.pack("!HH", sport, dport)


def _tags(*vids: int) -> bytes:
    return b"".join(struct.pack("!H", v) for v in vids)


def _key4(sport: int, dport: int, *vids: int) -> bytes:
    return _packed(A4) + _packed(B4) + _ports(sport, dport) + _tags(*vids)


def _key6(sport: int, dport: int, *vids: int) -> bytes:
    return _packed(A6) + _packed(B6) + _ports(sport, dport) + _tags(*vids)


def _tagged(tpids: tuple[int, ...], tcis: tuple[int, ...], ethertype: int, payload: bytes) -> bytes:
    """An Ethernet frame with explicit TPIDs and full TCI words (PCP, DEI, VID)."""
    tags = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in zip(tpids, tcis, strict=True))
    frame = bytes.fromhex("02000000000b02000000000a") + tags + struct.pack("!H", ethertype) + payload
    return frame + bytes(max(0, 60 - len(frame)))


def _as_tuple(result: decode.Result) -> decode.Decoded:
    assert isinstance(result, tuple), result
    return result


# --- Ethernet, IPv4 and IPv6 ------------------------------------------------------------------------

def test_ipv4_tcp_key_is_src_dst_sport_dport() -> None:
    """An untagged IPv4 TCP frame is keyed by src address, dst address, src port, dst port."""
    table, key, *_ = _as_tuple(decode_frame(_eth(_tcp4(40000, 443)), ETH))
    assert (table, key) == (TCP, _key4(40000, 443))


def test_ipv4_udp_key_is_src_dst_sport_dport() -> None:
    """An untagged IPv4 UDP frame goes to the UDP table with the same key layout as TCP."""
    table, key, *_ = _as_tuple(decode_frame(_eth(_udp4(40001, 53)), ETH))
    assert (table, key) == (UDP, _key4(40001, 53))


def test_tcp_flags_are_the_flags_byte() -> None:
    """The TCP flags element is the header's flags byte (here SYN+ACK)."""
    result = _as_tuple(decode_frame(_eth(_tcp4(flags=wardgen.SYN | wardgen.ACK)), ETH))
    assert result[3] == 0x12


def test_udp_has_no_flags_and_no_inner_packet() -> None:
    """A plain UDP datagram reports flags 0 and no tunnelled packet."""
    result = _as_tuple(decode_frame(_eth(_udp4()), ETH))
    assert (result[3], result[5]) == (0, None)


def test_ethernet_macs_are_destination_then_source() -> None:
    """The MAC element is the frame's first 12 bytes: destination MAC then source MAC."""
    frame = _eth(_tcp4())
    assert _as_tuple(decode_frame(frame, ETH))[4] == bytes.fromhex("02000000000b02000000000a")


def test_ipv4_byte_count_is_total_length_not_padded_frame_length() -> None:
    """The IP-layer byte count of a padded 60-byte frame is the IPv4 total length (40 for bare TCP)."""
    frame = _eth(_tcp4())
    assert len(frame) == 60
    assert _as_tuple(decode_frame(frame, ETH))[2] == 40


def test_ipv4_byte_count_ignores_trailing_bytes_beyond_total_length() -> None:
    """Bytes after the IPv4 datagram (an Ethernet trailer, an FCS) are not counted."""
    frame = _eth(_udp4(payload=b"x" * 100)) + b"\xde\xad\xbe\xef"
    assert _as_tuple(decode_frame(frame, ETH))[2] == 20 + 8 + 100


def test_ipv6_byte_count_is_40_plus_payload_length() -> None:
    """The IP-layer byte count of IPv6 is 40 plus the payload length field, padding excluded."""
    packet = _udp6(payload=b"x" * 3)
    result = _as_tuple(decode_frame(_eth(packet) + bytes(20), ETH))
    assert result[2] == 40 + 8 + 3


def test_ipv6_tcp_key_is_src_dst_sport_dport() -> None:
    """IPv6 TCP keys are 16-byte src, 16-byte dst, then the ports."""
    table, key, *_ = _as_tuple(decode_frame(_eth(_tcp6(40000, 443)), ETH))
    assert (table, key) == (TCP, _key6(40000, 443))


def test_ipv6_udp_key_is_src_dst_sport_dport() -> None:
    """IPv6 UDP keys go to the UDP table with the same layout as IPv6 TCP."""
    table, key, *_ = _as_tuple(decode_frame(_eth(_udp6(5353, 53)), ETH))
    assert (table, key) == (UDP, _key6(5353, 53))


# --- VLAN tags ----------------------------------------------------------------------------------------

def test_single_8021q_tag_appends_the_vid_to_the_key() -> None:
    """One 802.1Q tag appends its 2-byte VLAN id to the key."""
    _, key, *_ = _as_tuple(decode_frame(_eth(_tcp4(), vlans=(30,)), ETH))
    assert key == _key4(40000, 443, 30)


def test_vlan_pcp_and_dei_bits_are_not_part_of_the_key() -> None:
    """Priority (PCP) and drop-eligible (DEI) bits of the TCI do not change the key."""
    frame = _tagged((0x8100,), (0xF000 | 0x1000 | 30,), 0x0800, _tcp4())
    assert _as_tuple(decode_frame(frame, ETH))[1] == _key4(40000, 443, 30)


def test_vlan_tagged_byte_count_is_still_the_ip_total_length() -> None:
    """The VLAN tag is not counted: the byte count stays the IPv4 total length."""
    assert _as_tuple(decode_frame(_eth(_tcp4(payload=b"abc"), vlans=(30,)), ETH))[2] == 43


def test_qinq_two_tags_append_outer_vid_first() -> None:
    """802.1ad (0x88a8) outer + 802.1Q inner: both VIDs appended, the outer one first."""
    frame = _eth(_tcp4(), vlans=(1000, 120))
    assert frame[12:14] == b"\x88\xa8"
    assert _as_tuple(decode_frame(frame, ETH))[1] == _key4(40000, 443, 1000, 120)


def test_tpid_9100_is_a_vlan_tag() -> None:
    """The pre-standard QinQ TPID 0x9100 is walked like 0x8100 and 0x88a8."""
    frame = _tagged((0x9100, 0x8100), (7, 8), 0x0800, _udp4())
    assert _as_tuple(decode_frame(frame, ETH))[1] == _key4(40000, 53, 7, 8)


def test_four_vlan_tags_are_accepted() -> None:
    """MAX_VLAN_TAGS (4) stacked tags still decode, with all four VIDs in the key."""
    frame = _tagged((0x88A8, 0x8100, 0x8100, 0x8100), (1, 2, 3, 4), 0x0800, _udp4())
    assert _as_tuple(decode_frame(frame, ETH))[1] == _key4(40000, 53, 1, 2, 3, 4)


def test_five_vlan_tags_are_too_many() -> None:
    """A fifth stacked tag makes the frame skipped as too_many_vlan_tags."""
    frame = _tagged((0x88A8,) + (0x8100,) * 4, (1, 2, 3, 4, 5), 0x0800, _udp4())
    assert decode_frame(frame, ETH) == "too_many_vlan_tags"


def test_non_ip_frame_behind_a_vlan_tag_returns_its_ethertype() -> None:
    """ARP inside an 802.1Q tag is reported by the inner ethertype."""
    payload = wardgen.arp(1, MAC_A, A4, "00:00:00:00:00:00", B4)
    assert decode_frame(wardgen.ether(wardgen.BROADCAST, MAC_A, 0x0806, payload, (30,)), ETH) == 0x0806


# --- IPv4 options and fragments ---------------------------------------------------------------------

def test_ipv4_options_key_like_without_options() -> None:
    """An IPv4 header with options (IHL > 5) gives the same key as one without."""
    plain = _as_tuple(decode_frame(_eth(_tcp4()), ETH))
    with_options = _as_tuple(decode_frame(_eth(_tcp4(options=b"\x94\x04\x00\x00" * 3)), ETH))
    assert (with_options[0], with_options[1], with_options[3]) == (plain[0], plain[1], plain[3])


def test_ipv4_options_are_counted_in_the_byte_count() -> None:
    """The byte count of an IPv4 packet with 12 bytes of options is its total length, options included."""
    assert _as_tuple(decode_frame(_eth(_tcp4(options=bytes(12))), ETH))[2] == 20 + 12 + 20


def _ipv4_fragments(proto: int = 17) -> list[bytes]:
    l4 = wardgen.udp(40000, 53, b"z" * 3000) if proto == 17 else wardgen.icmp(8, 0, b"z" * 3000)
    return wardgen.fragment(A4, B4, proto, l4, ident=77)


def test_ipv4_first_fragment_is_a_fragment_of_its_datagram() -> None:
    """The first IPv4 fragment (offset 0, more fragments) waits for its datagram, head included."""
    first = _ipv4_fragments()[0]
    fragment = decode_frame(_eth(first), ETH)
    assert isinstance(fragment, Fragment)
    assert (fragment.offset, fragment.more, fragment.proto, fragment.iplen) == (0, True, 17, len(first))
    assert fragment.payload == first[20:]


def test_fragments_of_one_datagram_share_its_identity() -> None:
    """Every fragment of a datagram names the same datagram; the last one says no more follow."""
    fragments = [decode_frame(_eth(f), ETH) for f in _ipv4_fragments()]
    assert all(isinstance(f, Fragment) for f in fragments)
    assert len({f.datagram for f in fragments if isinstance(f, Fragment)}) == 1
    assert [f.more for f in fragments if isinstance(f, Fragment)][-1] is False


def test_ipv4_non_first_fragment_is_fragment() -> None:
    """Every IPv4 fragment with a non-zero offset is a Fragment at that offset."""
    later = _ipv4_fragments()[1:]
    assert later
    results = [decode_frame(_eth(f), ETH) for f in later]
    assert all(isinstance(r, Fragment) and r.offset > 0 for r in results)


def test_ipv4_fragment_offset_high_bits_count() -> None:
    """A fragment whose offset lies only in the high byte of the field is a Fragment too."""
    frag = wardgen.ipv4(A4, B4, 17, b"z" * 16, df=False, frag_offset=256 * 8)
    assert frag[6] & 0x1F and not frag[7]
    result = decode_frame(_eth(frag), ETH)
    assert isinstance(result, Fragment) and result.offset == 256 * 8


def test_ipv4_df_bit_alone_is_not_a_fragment() -> None:
    """The don't-fragment bit does not make a packet a fragment."""
    assert _as_tuple(decode_frame(_eth(_tcp4(df=True)), ETH))[0] == TCP


# --- IPv6 extension headers ---------------------------------------------------------------------------

_HBH = (0, b"\x05\x02\x00\x00")  # router alert
_ROUTING = (43, b"\x04\x00" + bytes(4))  # segments left 0
_DEST = (60, b"\x01\x0c" + bytes(12))  # PadN spanning two units


@pytest.mark.parametrize("ext", [(_HBH,), (_ROUTING,), (_DEST,), (_HBH, _ROUTING, _DEST)],
                         ids=["hop-by-hop", "routing", "destination", "all-three"])
def test_ipv6_extension_headers_are_skipped_to_the_transport(ext: tuple[tuple[int, bytes], ...]) -> None:
    """Hop-by-hop, routing and destination options headers are walked; ports and flags still found."""
    packet = _tcp6(flags=wardgen.SYN, ext=ext)
    table, key, count, flags, *_ = _as_tuple(decode_frame(_eth(packet), ETH))
    assert (table, key, count, flags) == (TCP, _key6(40000, 443), len(packet), wardgen.SYN)


def test_ipv6_authentication_header_length_is_in_four_byte_units() -> None:
    """An AH (51) header is skipped by (length + 2) * 4 bytes, not in 8-byte units."""
    udp = wardgen.udp(40000, 53, b"q")
    ah = struct.pack("!BBH", 17, 4, 0) + bytes(20)  # 24 bytes: (4 + 2) * 4
    header = struct.pack("!IHBB", 0x60000000, len(ah) + len(udp), 51, 64) + _packed(A6) + _packed(B6)
    packet = header + ah + udp
    assert _as_tuple(decode_frame(_eth(packet), ETH))[1] == _key6(40000, 53)


def _ipv6_fragments() -> list[bytes]:
    return wardgen.fragment(A6, B6, 17, wardgen.udp(40000, 53, b"z" * 3000), ident=9)


def test_ipv6_first_fragment_is_a_fragment_of_its_datagram() -> None:
    """An IPv6 fragment header with offset 0: the fragment carries the head of the datagram's payload."""
    first = _ipv6_fragments()[0]
    assert first[6] == 44
    fragment = decode_frame(_eth(first), ETH)
    assert isinstance(fragment, Fragment)
    assert (fragment.offset, fragment.more, fragment.proto) == (0, True, 17)
    assert fragment.payload[:4] == (40000).to_bytes(2, "big") + (53).to_bytes(2, "big")


def test_ipv6_later_fragments_are_fragment() -> None:
    """IPv6 fragments with a non-zero offset are Fragments at that offset."""
    later = _ipv6_fragments()[1:]
    assert later
    results = [decode_frame(_eth(f), ETH) for f in later]
    assert all(isinstance(r, Fragment) and r.offset > 0 for r in results)


def test_ipv6_fragment_after_hop_by_hop_is_still_found() -> None:
    """A later fragment behind a hop-by-hop header is still recognised as a Fragment."""
    packet = wardgen.ipv6(A6, B6, 17, b"z" * 16, [_HBH, wardgen.ipv6_fragment(1448, False, 3)])
    result = decode_frame(_eth(packet), ETH)
    assert isinstance(result, Fragment) and (result.offset, result.more) == (1448, False)


def test_ipv6_eight_extension_headers_are_accepted() -> None:
    """MAX_IPV6_EXT_HEADERS (8) destination options headers in a row still reach the transport."""
    packet = _tcp6(ext=(_DEST,) * decode.MAX_IPV6_EXT_HEADERS)
    assert _as_tuple(decode_frame(_eth(packet), ETH))[1] == _key6(40000, 443)


def test_ipv6_nine_extension_headers_are_a_bad_header() -> None:
    """One extension header more than MAX_IPV6_EXT_HEADERS gives bad_ipv6_header."""
    packet = _tcp6(ext=(_DEST,) * (decode.MAX_IPV6_EXT_HEADERS + 1))
    assert decode_frame(_eth(packet), ETH) == "bad_ipv6_header"


# --- ICMP --------------------------------------------------------------------------------------------

def _icmp4(type_: int, code: int = 0, src: str = A4, dst: str = B4) -> bytes:
    return wardgen.ipv4(src, dst, 1, wardgen.icmp(type_, code, struct.pack("!HH", 1, 1) + b"ping"))


def _icmp6(type_: int, code: int = 0, src: str = A6, dst: str = B6) -> bytes:
    return wardgen.ipv6(src, dst, 58, wardgen.icmpv6(type_, code, struct.pack("!HH", 1, 1) + b"ping"))


def test_icmp_key_is_proto_src_dst_type_code() -> None:
    """ICMP goes to the OTHER table keyed by protocol 1, src, dst, type and code."""
    table, key, *_ = _as_tuple(decode_frame(_eth(_icmp4(8)), ETH))
    assert (table, key) == (OTHER, b"\x01" + _packed(A4) + _packed(B4) + b"\x08\x00")


def test_icmp_echo_request_and_reply_keys_are_each_others_reverse() -> None:
    """An echo reply is keyed with the request's type, so its key is the request key reversed."""
    request = _as_tuple(decode_frame(_eth(_icmp4(8)), ETH))
    reply = _as_tuple(decode_frame(_eth(_icmp4(0, src=B4, dst=A4)), ETH))
    assert reply[1] == reverse_key(OTHER, request[1])
    assert request[1] == reverse_key(OTHER, reply[1])


def test_icmp_timestamp_reply_pairs_with_its_request() -> None:
    """ICMP timestamp reply (14) maps to the request type (13) like echo does."""
    request = _as_tuple(decode_frame(_eth(_icmp4(13)), ETH))
    reply = _as_tuple(decode_frame(_eth(_icmp4(14, src=B4, dst=A4)), ETH))
    assert reply[1] == reverse_key(OTHER, request[1])


def test_icmp_type_and_code_are_in_the_key() -> None:
    """Destination unreachable type 3 code 1 ends the key with bytes 03 01."""
    _, key, *_ = _as_tuple(decode_frame(_eth(_icmp4(3, 1)), ETH))
    assert key[-2:] == b"\x03\x01"


def test_icmp_different_codes_are_different_flows() -> None:
    """Two ICMP messages differing only in code get different keys."""
    one = _as_tuple(decode_frame(_eth(_icmp4(3, 1)), ETH))[1]
    three = _as_tuple(decode_frame(_eth(_icmp4(3, 3)), ETH))[1]
    assert one != three


def test_icmpv6_echo_request_and_reply_keys_are_each_others_reverse() -> None:
    """ICMPv6 echo reply (129) is keyed with the request type (128): the reverse of the request key."""
    request = _as_tuple(decode_frame(_eth(_icmp6(128)), ETH))
    reply = _as_tuple(decode_frame(_eth(_icmp6(129, src=B6, dst=A6)), ETH))
    assert request[1] == b"\x3a" + _packed(A6) + _packed(B6) + b"\x80\x00"
    assert reply[1] == reverse_key(OTHER, request[1])


def test_icmpv6_neighbour_advert_pairs_with_solicitation() -> None:
    """ICMPv6 neighbour advertisement (136) takes the solicitation type (135)."""
    _, key, *_ = _as_tuple(decode_frame(_eth(_icmp6(136, src=B6, dst=A6)), ETH))
    assert key[-2:] == b"\x87\x00"


def test_icmp_with_vlan_tag_appends_vid_after_type_and_code() -> None:
    """An ICMP key on a tagged frame ends with type, code, then the VLAN id."""
    _, key, *_ = _as_tuple(decode_frame(_eth(_icmp4(8), vlans=(30,)), ETH))
    assert key[-4:] == b"\x08\x00" + _tags(30)


# --- other IP protocols and non-IP frames -------------------------------------------------------------

@pytest.mark.parametrize("proto", [132, 50, 89, 103])
def test_other_ipv4_protocol_key_is_proto_src_dst(proto: int) -> None:
    """IPv4 protocols other than TCP/UDP/ICMP (SCTP, ESP, OSPF, PIM) are keyed by proto, src, dst."""
    packet = wardgen.ipv4(A4, B4, proto, bytes(16))
    table, key, count, flags, _, inner, _ = _as_tuple(decode_frame(_eth(packet), ETH))
    assert (table, key, count, flags, inner) == (OTHER, bytes([proto]) + _packed(A4) + _packed(B4), 36, 0,
                                                 None)


def test_other_ipv6_protocol_key_is_proto_src_dst() -> None:
    """IPv6 ESP (50) is keyed by 50, src, dst in the OTHER table."""
    packet = wardgen.ipv6(A6, B6, 50, bytes(16))
    table, key, *_ = _as_tuple(decode_frame(_eth(packet), ETH))
    assert (table, key) == (OTHER, b"\x32" + _packed(A6) + _packed(B6))


def test_other_protocol_needs_no_transport_bytes() -> None:
    """An IPv4 packet of an unknown protocol with no payload still decodes."""
    assert _as_tuple(decode_frame(_eth(wardgen.ipv4(A4, B4, 132, b"")), ETH))[0] == OTHER


def test_arp_returns_the_ethertype_int() -> None:
    """An ARP frame returns the int 0x0806."""
    payload = wardgen.arp(1, MAC_A, A4, "00:00:00:00:00:00", B4)
    assert decode_frame(wardgen.ether(wardgen.BROADCAST, MAC_A, 0x0806, payload), ETH) == 0x0806


def test_llc_frame_returns_minus_one() -> None:
    """An 802.3 frame (length field < 0x600, LLC/STP) returns LLC (-1)."""
    frame = wardgen.ether("01:80:c2:00:00:00", MAC_A, 0x0026, b"\x42\x42\x03" + bytes(35))
    assert decode_frame(frame, ETH) == LLC == -1


def test_other_ethertype_is_returned_as_int() -> None:
    """LLDP (0x88cc) returns its ethertype."""
    assert decode_frame(wardgen.ether("01:80:c2:00:00:0e", MAC_A, 0x88CC, bytes(40)), ETH) == 0x88CC


def test_ip_with_a_bad_version_nibble() -> None:
    """An ethertype-IPv4 payload whose version nibble is 5 gives bad_ip_version."""
    packet = bytearray(_tcp4())
    packet[0] = 0x55
    assert decode_frame(_eth(bytes(packet)), ETH) == "bad_ip_version"


# --- link types -----------------------------------------------------------------------------------------

def test_unsupported_linktype() -> None:
    """A link type outside SUPPORTED_LINKTYPES (147, USER0) is skipped as unsupported_link."""
    assert 147 not in decode.SUPPORTED_LINKTYPES
    assert decode_frame(_eth(_tcp4()), 147) == "unsupported_link"


def test_sll_decodes_like_ethernet_with_the_source_mac() -> None:
    """Linux cooked (113): same key as Ethernet; MACs are six zero bytes then the source address."""
    table, key, count, flags, macs, _, _ = _as_tuple(decode_frame(wardgen.sll(_tcp4(), addr=MAC_A), 113))
    assert (table, key, count, flags) == (TCP, _key4(40000, 443), 40, wardgen.ACK)
    assert macs == bytes(6) + _packed_mac(MAC_A)


def _packed_mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def test_sll_without_a_six_byte_address_has_no_macs() -> None:
    """An SLL header whose address length is not 6 yields an empty MAC element."""
    frame = struct.pack("!HHH8sH", 0, 772, 0, bytes(8), 0x0800) + _udp4()
    assert _as_tuple(decode_frame(frame, 113))[4] == b""


def test_sll_ipv6() -> None:
    """SLL carrying IPv6 gives the IPv6 key."""
    assert _as_tuple(decode_frame(wardgen.sll(_udp6()), 113))[1] == _key6(40000, 53)


def test_sll_arp_returns_ethertype() -> None:
    """SLL carrying ARP returns 0x0806."""
    payload = wardgen.arp(1, MAC_A, A4, "00:00:00:00:00:00", B4)
    assert decode_frame(wardgen.sll(payload, 0x0806), 113) == 0x0806


def _sll2(payload: bytes, ethertype: int, addr_len: int = 6) -> bytes:
    return (struct.pack("!HHIHBB", ethertype, 0, 3, 1, 0, addr_len) + _packed_mac(MAC_A) + b"\0\0"
            + payload)


def test_sll2_decodes_with_the_source_mac() -> None:
    """Linux cooked v2 (276): protocol first, MAC from the address field."""
    table, key, _, _, macs, _, _ = _as_tuple(decode_frame(_sll2(_tcp4(), 0x0800), 276))
    assert (table, key, macs) == (TCP, _key4(40000, 443), bytes(6) + _packed_mac(MAC_A))


def test_sll2_without_a_six_byte_address_has_no_macs() -> None:
    """An SLL2 header with address length 0 yields an empty MAC element."""
    assert _as_tuple(decode_frame(_sll2(_udp6(), 0x86DD, addr_len=0), 276))[4] == b""


@pytest.mark.parametrize("linktype", [12, 14, 101, 228, 229])
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_raw_ip_linktypes(linktype: int, family: str) -> None:
    """Raw IP link types decode by the version nibble and carry no MACs."""
    packet, expected = (_tcp4(), _key4(40000, 443)) if family == "v4" else (_tcp6(), _key6(40000, 443))
    table, key, count, _, macs, _, _ = _as_tuple(decode_frame(packet, linktype))
    assert (table, key, count, macs) == (TCP, expected, len(packet), b"")


@pytest.mark.parametrize("order", ["<", ">"])
def test_null_loopback_ipv4_either_byte_order(order: str) -> None:
    """BSD NULL (0) with AF_INET written by a little- or big-endian host decodes IPv4."""
    frame = struct.pack(order + "I", 2) + _udp4()
    assert _as_tuple(decode_frame(frame, 0))[1] == _key4(40000, 53)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("af", [24, 28, 30])
def test_null_loopback_ipv6_families(af: int, order: str) -> None:
    """BSD NULL with the BSD AF_INET6 values 24, 28 and 30 in either byte order decodes IPv6."""
    frame = struct.pack(order + "I", af) + _udp6()
    assert _as_tuple(decode_frame(frame, 0))[1] == _key6(40000, 53)


def test_null_loopback_via_wardgen_helper() -> None:
    """wardgen.loopback() frames (little-endian family) decode on linktype 0."""
    assert _as_tuple(decode_frame(wardgen.loopback(_tcp6()), 0))[1] == _key6(40000, 443)


@pytest.mark.parametrize("af,packet", [(2, "v4"), (24, "v6")])
def test_loop_linktype_is_big_endian(af: int, packet: str) -> None:
    """OpenBSD LOOP (108) carries the family in network byte order."""
    ip = _tcp4() if packet == "v4" else _tcp6()
    assert _as_tuple(decode_frame(struct.pack(">I", af) + ip, 108))[0] == TCP


def test_mpls_single_label_carrying_ipv4() -> None:
    """An MPLS unicast frame (0x8847) with one bottom-of-stack label decodes the IPv4 inside."""
    label = struct.pack("!I", (100 << 12) | 0x100 | 64)
    frame = wardgen.ether(MAC_B, MAC_A, 0x8847, label + _tcp4())
    assert _as_tuple(decode_frame(frame, ETH))[1] == _key4(40000, 443)


def test_mpls_label_stack_carrying_ipv4() -> None:
    """A two-label MPLS stack is walked to the bottom-of-stack bit."""
    labels = struct.pack("!II", (100 << 12) | 64, (200 << 12) | 0x100 | 64)
    frame = wardgen.ether(MAC_B, MAC_A, 0x8848, labels + _udp4(), vlans=(5,))
    assert _as_tuple(decode_frame(frame, ETH))[1] == _key4(40000, 53, 5)


def test_mpls_without_bottom_of_stack_is_malformed() -> None:
    """Sixteen MPLS labels without a bottom-of-stack bit give malformed."""
    labels = struct.pack("!I", (100 << 12) | 64) * 17
    assert decode_frame(wardgen.ether(MAC_B, MAC_A, 0x8847, labels + _udp4()), ETH) == "malformed"


def _pppoe(ppp_proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHH", 0x11, 0, 0x1234, len(payload) + 2, ppp_proto) + payload


def test_pppoe_session_carrying_ipv4() -> None:
    """A PPPoE session frame (0x8864) with PPP protocol 0x0021 decodes the IPv4 inside."""
    packet = _tcp4()
    table, key, count, *_ = _as_tuple(decode_frame(wardgen.ether(MAC_B, MAC_A, 0x8864, _pppoe(0x21, packet)),
                                                   ETH))
    assert (table, key, count) == (TCP, _key4(40000, 443), len(packet))


def test_pppoe_session_carrying_ipv6() -> None:
    """PPP protocol 0x0057 carries IPv6."""
    frame = wardgen.ether(MAC_B, MAC_A, 0x8864, _pppoe(0x57, _udp6()))
    assert _as_tuple(decode_frame(frame, ETH))[1] == _key6(40000, 53)


def test_pppoe_session_control_frame_is_non_ip() -> None:
    """A PPPoE session frame carrying LCP (0xc021) is non-IP PPP control traffic."""
    frame = wardgen.ether(MAC_B, MAC_A, 0x8864, _pppoe(0xC021, bytes(10)))
    assert decode_frame(frame, ETH) == decode.PPP_OTHER


def test_tso_total_length_zero_counts_the_captured_length() -> None:
    """IPv4 total length 0 (TCP segmentation offload) counts the captured IP bytes instead."""
    packet = bytearray(_tcp4(payload=b"d" * 3000))
    packet[2:4] = b"\0\0"
    table, key, count, *_ = _as_tuple(decode_frame(_eth(bytes(packet)), ETH))
    assert (table, key, count) == (TCP, _key4(40000, 443), len(packet))


# --- tunnels ----------------------------------------------------------------------------------------------

_INNER_A, _INNER_B = "192.168.1.1", "192.168.1.2"


def _inner_tcp() -> bytes:
    return _tcp4(1234, 80, src=_INNER_A, dst=_INNER_B)


def test_ip_in_ip_outer_flow_and_inner_decode() -> None:
    """IP-in-IP (4): the outer OTHER flow keyed 4+src+dst, element 5 the inner packet's decode."""
    inner = _inner_tcp()
    outer = wardgen.ipv4(A4, B4, 4, inner)
    table, key, count, _, _, nested, _ = _as_tuple(decode_frame(_eth(outer), ETH))
    assert (table, key, count) == (OTHER, b"\x04" + _packed(A4) + _packed(B4), len(outer))
    assert nested == decode_frame(inner, RAW)
    assert _as_tuple(nested)[0] == TCP


def test_ipv6_in_ipv4_outer_flow_and_inner_decode() -> None:
    """6in4 (41): the outer OTHER flow, element 5 the IPv6 packet's decode."""
    inner = _udp6()
    table, key, _, _, _, nested, _ = _as_tuple(decode_frame(_eth(wardgen.ipv4(A4, B4, 41, inner)), ETH))
    assert (table, key[:1]) == (OTHER, b"\x29")
    assert nested == decode_frame(inner, RAW)


def _gre(ethertype: int, payload: bytes, flags: int = 0, extra: bytes = b"") -> bytes:
    return struct.pack("!BBH", flags, 0, ethertype) + extra + payload


def test_gre_carrying_ipv4() -> None:
    """GRE (47) with protocol 0x0800: outer OTHER flow, inner IPv4 decode as element 5."""
    inner = _inner_tcp()
    frame = _eth(wardgen.ipv4(A4, B4, 47, _gre(0x0800, inner)))
    table, key, _, _, _, nested, _ = _as_tuple(decode_frame(frame, ETH))
    assert (table, key) == (OTHER, b"\x2f" + _packed(A4) + _packed(B4))
    assert nested == decode_frame(inner, RAW)


def test_gre_with_key_and_sequence_is_skipped_correctly() -> None:
    """GRE key and sequence-number flags each add 4 bytes before the payload."""
    inner = _inner_tcp()
    gre = _gre(0x0800, inner, flags=0x30, extra=bytes(8))
    nested = _as_tuple(decode_frame(_eth(wardgen.ipv4(A4, B4, 47, gre)), ETH))[5]
    assert nested == decode_frame(inner, RAW)


def test_gre_transparent_ethernet_bridging() -> None:
    """GRE 0x6558 carries a whole Ethernet frame: element 5 is that frame's decode, VLANs included."""
    inner = wardgen.ether(MAC_A, MAC_B, 0x0800, _inner_tcp(), (42,))
    nested = _as_tuple(decode_frame(_eth(wardgen.ipv4(A4, B4, 47, _gre(0x6558, inner))), ETH))[5]
    assert nested == decode_frame(inner, ETH)
    assert _as_tuple(nested)[4] == inner[:12]


def test_pptp_acknowledgement_carries_no_packet() -> None:
    """A PPTP enhanced-GRE packet with no payload (an acknowledgement) gives no inner packet."""
    gre = struct.pack("!BBH", 0x30, 0x01, 0x880B) + bytes(8)
    assert _as_tuple(decode_frame(_eth(wardgen.ipv4(A4, B4, 47, gre)), ETH))[5] is None


def _vxlan(inner: bytes, flags: int = 0x08, sport: int = 55555, dport: int = 4789) -> bytes:
    return wardgen.ipv4(A4, B4, 17, wardgen.udp(sport, dport, struct.pack("!BxxxI", flags, 100 << 8) + inner))


def test_vxlan_outer_flow_is_a_tunnel_with_the_inner_decode() -> None:
    """VXLAN (UDP 4789): table TUNNEL with the UDP key layout, element 5 the inner Ethernet decode."""
    inner = wardgen.ether(MAC_A, MAC_B, 0x0800, _inner_tcp())
    packet = _vxlan(inner)
    table, key, count, flags, _, nested, _ = _as_tuple(decode_frame(_eth(packet), ETH))
    assert (table, key, count, flags) == (TUNNEL, _key4(55555, 4789), len(packet), 0)
    assert nested == decode_frame(inner, ETH)


def test_vxlan_from_the_tunnel_port_is_a_tunnel() -> None:
    """A VXLAN packet whose source port is 4789 is decapsulated too."""
    inner = wardgen.ether(MAC_A, MAC_B, 0x0800, _inner_tcp())
    assert _as_tuple(decode_frame(_eth(_vxlan(inner, sport=4789, dport=55555)), ETH))[0] == TUNNEL


def test_vxlan_without_the_i_flag_has_no_inner_packet() -> None:
    """UDP 4789 without the VXLAN I flag stays in the tunnel table (chosen by port) with no inner packet."""
    inner = wardgen.ether(MAC_A, MAC_B, 0x0800, _inner_tcp())
    table, *_, nested, _ = _as_tuple(decode_frame(_eth(_vxlan(inner, flags=0)), ETH))
    assert (table, nested) == (TUNNEL, None)


def test_vxlan_inner_arp_is_the_inner_ethertype() -> None:
    """VXLAN carrying ARP: the tunnel flow, with the int 0x0806 as element 5."""
    inner = wardgen.ether(wardgen.BROADCAST, MAC_B, 0x0806, wardgen.arp(1, MAC_B, _INNER_A, "0:0:0:0:0:0",
                                                                         _INNER_B))
    result = _as_tuple(decode_frame(_eth(_vxlan(inner)), ETH))
    assert (result[0], result[5]) == (TUNNEL, 0x0806)


def test_vxlan_with_truncated_inner_frame_keeps_the_outer_flow() -> None:
    """A VXLAN packet whose inner frame is cut short still yields the outer flow; element 5 is the reason."""
    inner = wardgen.ether(MAC_A, MAC_B, 0x0800, _inner_tcp())[:20]
    result = _as_tuple(decode_frame(_eth(_vxlan(inner), pad=False), ETH))
    assert (result[0], result[5]) == (TUNNEL, "truncated_ipv4")


def test_geneve_carrying_ethernet() -> None:
    """GENEVE (UDP 6081) with protocol 0x6558 decapsulates the inner Ethernet frame."""
    inner = wardgen.ether(MAC_A, MAC_B, 0x0800, _inner_tcp())
    geneve = struct.pack("!BBHI", 0, 0, 0x6558, 100 << 8)
    packet = wardgen.ipv4(A4, B4, 17, wardgen.udp(55555, 6081, geneve + inner))
    result = _as_tuple(decode_frame(_eth(packet), ETH))
    assert (result[0], result[5]) == (TUNNEL, decode_frame(inner, ETH))


def test_tunnels_are_followed_at_most_max_tunnel_depth_levels() -> None:
    """IP-in-IP nested three deep is decapsulated MAX_TUNNEL_DEPTH (2) levels, no further."""
    packet = _inner_tcp()
    for _ in range(3):
        packet = wardgen.ipv4(A4, B4, 4, packet)
    level = _as_tuple(decode_frame(_eth(packet), ETH))
    for _ in range(MAX_TUNNEL_DEPTH):
        level = _as_tuple(level[5])
        assert level[0] == OTHER
    assert level[5] is None


def test_truncated_gtp_u_header_keeps_the_outer_udp_flow() -> None:
    """A UDP 2152 datagram whose GTP-U optional header is cut short still yields the outer flow."""
    packet = wardgen.ipv4(A4, B4, 17, wardgen.udp(2152, 2152, b"\x32\xff\x00\x04\x00\x00\x00\x01"))
    result = decode_frame(packet, RAW)
    assert isinstance(result, tuple)
    assert result[1] == _key4(2152, 2152)


# --- truncation and skip reasons ---------------------------------------------------------------------

_V4_OPTS = _eth(_tcp4(options=bytes(8)))
_TCP_OPTS = wardgen.ipv4(A4, B4, 6, wardgen.tcp(40000, 443, 1, 1, wardgen.SYN, options=bytes(20)))
_V6_FRAG = _eth(_ipv6_fragments()[0])
_V6_HBH = _eth(_tcp6(ext=(_HBH,)))

# (case id, frame, link type, expected skip reason)
_TRUNCATIONS: list[tuple[str, Callable[[], bytes], int, str]] = [
    ("ethernet-header", lambda: _eth(_tcp4())[:13], ETH, "truncated_link"),
    ("empty-frame", lambda: b"", ETH, "truncated_link"),
    ("vlan-tag", lambda: _eth(_tcp4(), (30,))[:16], ETH, "truncated_link"),
    ("second-vlan-tag", lambda: _eth(_tcp4(), (30, 40))[:20], ETH, "truncated_link"),
    ("ipv4-nothing", lambda: _eth(_tcp4())[:14], ETH, "truncated_ipv4"),
    ("ipv4-header", lambda: _eth(_tcp4())[:14 + 19], ETH, "truncated_ipv4"),
    ("ipv4-options", lambda: _V4_OPTS[:14 + 27], ETH, "truncated_ipv4"),
    ("ipv6-header", lambda: _eth(_tcp6(), pad=False)[:14 + 39], ETH, "truncated_ipv6"),
    ("ipv6-fragment-header", lambda: _V6_FRAG[:14 + 47], ETH, "truncated_ipv6"),
    ("ipv6-ext-header-length", lambda: _V6_HBH[:14 + 41], ETH, "truncated_ipv6"),
    ("tcp-header", lambda: _eth(_tcp4(), pad=False)[:14 + 20 + 13], ETH, "truncated_l4"),
    ("tcp-options", lambda: _eth(_TCP_OPTS, pad=False)[:14 + 20 + 39], ETH, "truncated_l4"),
    ("udp-header", lambda: _eth(_udp4(), pad=False)[:14 + 20 + 7], ETH, "truncated_l4"),
    ("icmp-header", lambda: _eth(_icmp4(8), pad=False)[:14 + 20 + 1], ETH, "truncated_l4"),
    ("ipv6-tcp-header", lambda: _tcp6()[:40 + 13], RAW, "truncated_l4"),
    ("raw-empty", lambda: b"", RAW, "truncated_ipv4"),
    ("mpls-label", lambda: wardgen.ether(MAC_B, MAC_A, 0x8847, b"", pad=False) + b"\x00\x06", ETH,
     "truncated_link"),
    ("sll-header", lambda: wardgen.sll(_tcp4())[:15], 113, "truncated_link"),
    ("sll2-header", lambda: _sll2(_tcp4(), 0x0800)[:19], 276, "truncated_link"),
    ("null-family", lambda: b"\x02\x00\x00", 0, "truncated_link"),
    ("loop-family", lambda: b"\x00\x00\x00", 108, "truncated_link"),
    ("null-ipv4", lambda: struct.pack("<I", 2) + _tcp4()[:10], 0, "truncated_ipv4"),
]


@pytest.mark.parametrize(("make", "linktype", "reason"), [c[1:] for c in _TRUNCATIONS],
                         ids=[c[0] for c in _TRUNCATIONS])
def test_truncated_frames_give_their_skip_reason(make: Callable[[], bytes], linktype: int,
                                                 reason: str) -> None:
    """A frame cut short at each layer returns that layer's documented skip reason."""
    assert reason in SKIP_REASONS
    assert decode_frame(make(), linktype) == reason


def test_tcp_data_offset_below_five_is_a_bad_header() -> None:
    """A TCP data offset under 5 (a header shorter than 20 bytes) is skipped as bad_tcp_header."""
    packet = bytearray(_tcp4())
    packet[20 + 12] = 4 << 4
    assert decode_frame(_eth(bytes(packet)), ETH) == "bad_tcp_header"


def test_ipv4_ihl_below_five_is_a_bad_header() -> None:
    """An IPv4 header length under 20 bytes gives bad_ipv4_header."""
    packet = bytearray(_tcp4())
    packet[0] = 0x44
    assert decode_frame(_eth(bytes(packet)), ETH) == "bad_ipv4_header"


def test_ipv4_total_length_below_header_length_is_a_bad_header() -> None:
    """An IPv4 total length smaller than the header length gives bad_ipv4_header."""
    packet = bytearray(_tcp4())
    packet[2:4] = (10).to_bytes(2, "big")
    assert decode_frame(_eth(bytes(packet)), ETH) == "bad_ipv4_header"


def test_every_truncation_of_a_valid_frame_is_a_documented_result() -> None:
    """Cutting a QinQ IPv6 TCP frame anywhere before the TCP flags yields only SKIP_REASONS strings."""
    frame = _eth(_tcp6(ext=(_HBH, _DEST)), (30, 40), pad=False)
    assert isinstance(decode_frame(frame, ETH), tuple)
    for n in range(len(frame) - 6):  # decode needs the TCP header up to its flags byte only
        result = decode_frame(frame[:n], ETH)
        assert isinstance(result, str) and result in SKIP_REASONS, (n, result)


def test_ipv6_ethertype_with_nothing_after_it_is_truncated_ipv6() -> None:
    """An Ethernet frame with ethertype IPv6 cut right after the ethertype gives truncated_ipv6."""
    assert decode_frame(_eth(_tcp6(), pad=False)[:14], ETH) == "truncated_ipv6"


def test_cut_inside_an_ipv6_extension_header_body_is_truncated_ipv6() -> None:
    """A hop-by-hop header cut after its first 4 bytes is an IPv6-layer truncation."""
    assert decode_frame(_tcp6(ext=(_HBH,))[:40 + 4], RAW) == "truncated_ipv6"


# --- reverse_key and describe_key -----------------------------------------------------------------------

def _packet(family: str, proto: str, forward: bool) -> bytes:
    """A packet of the given family and protocol, from a to b (forward) or b to a."""
    a, b = (A4, B4) if family == "v4" else (A6, B6)
    src, dst = (a, b) if forward else (b, a)
    sport, dport = (40000, 443) if forward else (443, 40000)
    build = wardgen.ipv4 if family == "v4" else wardgen.ipv6
    if proto == "tcp":
        return build(src, dst, 6, wardgen.tcp(sport, dport, 1, 1, wardgen.ACK))
    if proto == "udp":
        return build(src, dst, 17, wardgen.udp(sport, dport, b"x"))
    if proto == "icmp":
        if family == "v4":
            return build(src, dst, 1, wardgen.icmp(8 if forward else 0, 0, bytes(8)))
        return build(src, dst, 58, wardgen.icmpv6(128 if forward else 129, 0, bytes(8)))
    return build(src, dst, 132, bytes(12))


_EXPECTED: dict[tuple[str, str], tuple[str | int, int, int]] = {  # name, a port, b port (forward)
    ("v4", "tcp"): ("tcp", 40000, 443), ("v6", "tcp"): ("tcp", 40000, 443),
    ("v4", "udp"): ("udp", 40000, 443), ("v6", "udp"): ("udp", 40000, 443),
    ("v4", "icmp"): ("icmp", 8, 0), ("v6", "icmp"): ("icmp6", 128, 0),  # type and code stand for ports
    ("v4", "other"): (132, 0, 0), ("v6", "other"): (132, 0, 0),
}


@pytest.mark.parametrize("vlans", [(), (30,), (1000, 120)], ids=["untagged", "one-tag", "two-tags"])
@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp", "other"])
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_reverse_key_is_the_key_of_the_opposite_direction(family: str, proto: str,
                                                          vlans: tuple[int, ...]) -> None:
    """reverse_key of a packet's key is the key of the packet going the other way, and an involution."""
    forward = _as_tuple(decode_frame(_eth(_packet(family, proto, True), vlans), ETH))
    backward = _as_tuple(decode_frame(_eth(_packet(family, proto, False), vlans), ETH))
    assert reverse_key(forward[0], forward[1]) == backward[1]
    assert reverse_key(backward[0], reverse_key(forward[0], forward[1])) == forward[1]


@pytest.mark.parametrize("vlans", [(), (30,), (1000, 120)], ids=["untagged", "one-tag", "two-tags"])
@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp", "other"])
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_describe_key_round_trips(family: str, proto: str, vlans: tuple[int, ...]) -> None:
    """describe_key splits a key into proto, addresses, ports and VLAN ids; the reverse swaps the sides."""
    table, key, *_ = _as_tuple(decode_frame(_eth(_packet(family, proto, True), vlans), ETH))
    a, b = (A4, B4) if family == "v4" else (A6, B6)
    name, a_port, b_port = _EXPECTED[family, proto]
    assert describe_key(table, key) == (name, _packed(a), a_port, _packed(b), b_port, vlans)
    if proto == "icmp":  # the type and code are not ports: they stay in place when reversed
        a_port, b_port = b_port, a_port
    reversed_ = describe_key(table, reverse_key(table, key))
    assert reversed_ == (name, _packed(b), b_port, _packed(a), a_port, vlans)


def test_describe_key_of_a_tunnel_key_is_udp() -> None:
    """A TUNNEL key describes as a UDP key."""
    inner = wardgen.ether(MAC_A, MAC_B, 0x0800, _inner_tcp())
    table, key, *_ = _as_tuple(decode_frame(_eth(_vxlan(inner), (7,)), ETH))
    assert describe_key(table, key) == ("udp", _packed(A4), 55555, _packed(B4), 4789, (7,))


def test_reverse_key_with_four_vlan_tags_keeps_the_tags() -> None:
    """Reversing a v4 key with the maximum of four VLAN ids swaps only addresses and ports."""
    key = _key4(1, 2, 1, 2, 3, 4)
    assert reverse_key(TCP, key) == _packed(B4) + _packed(A4) + _ports(2, 1) + _tags(1, 2, 3, 4)


# --- agreement with the fast path in flows.py -----------------------------------------------------------

def _random_v4_frame(rng: random.Random, tagged: bool) -> bytes:
    src = ".".join(str(rng.randrange(256)) for _ in range(4))
    dst = ".".join(str(rng.randrange(256)) for _ in range(4))
    sport, dport = rng.randrange(65536), rng.randrange(65536)
    payload = rng.randbytes(rng.choice((0, 1, 7, 100, 1400)))
    if rng.random() < 0.5:
        l4 = wardgen.tcp(sport, dport, rng.getrandbits(32), rng.getrandbits(32), rng.randrange(256), payload)
        packet = wardgen.ipv4(src, dst, 6, l4, ttl=rng.randrange(1, 256), ident=rng.randrange(65536),
                              df=rng.random() < 0.5)
    else:
        packet = wardgen.ipv4(src, dst, 17, wardgen.udp(sport, dport, payload), df=rng.random() < 0.5)
    vlans = (rng.randrange(4096),) if tagged else ()
    return _eth(packet, vlans)


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tagged"])
def test_decode_key_equals_the_fast_path_slice(tagged: bool) -> None:
    """For random Ethernet IPv4 TCP/UDP frames, decode's key is the slice the flows.py fast path takes."""
    rng = random.Random(20260101 + tagged)
    for _ in range(2000):
        frame = _random_v4_frame(rng, tagged)
        result = _as_tuple(decode_frame(frame, ETH))
        fast = frame[30:42] + frame[14:16] if tagged else frame[26:38]
        assert result[1] == fast, frame.hex()
        total = frame[16 + 4 * tagged:18 + 4 * tagged]
        assert result[2] == int.from_bytes(total, "big")


def _run_table(frames: list[bytes], fast_path: bool) -> tuple[list[FlowRecord], dict[str, int]]:
    records: list[FlowRecord] = []
    counters = Counters()
    table = FlowTable(FlowSettings(), records.append, counters, linktype=ETH, fast_path=fast_path)
    packets, meta = b"", b""
    for i, frame in enumerate(frames):
        meta += struct.pack("=IIII", 1_767_225_600, i, len(packets), len(frame))
        packets += frame
    table.ingest(packets, meta)
    table.flush()
    return records, counters.values


def test_fast_path_skips_ipv4_total_length_below_header_like_decode() -> None:
    """A known TCP flow's packet with IPv4 total length 10 is skipped by the fast path as by decode."""
    good = _eth(_tcp4(payload=b"x" * 20))
    bad = bytearray(good)
    bad[16:18] = (10).to_bytes(2, "big")
    assert _run_table([good, bytes(bad)], fast_path=True) == _run_table([good, bytes(bad)], fast_path=False)


def test_fast_path_decapsulates_gtp_u_after_an_echo_on_the_same_ports() -> None:
    """GTP-U echo then G-PDUs on one 5-tuple give the same records with or without the fast path."""
    echo = struct.pack("!BBHIHBB", 0x32, 0x01, 4, 0, 1, 0, 0)
    g_pdu = struct.pack("!BBHI", 0x30, 0xFF, 40, 7) + _inner_tcp()
    frames = [_eth(wardgen.ipv4(A4, B4, 17, wardgen.udp(2152, 2152, gtp))) for gtp in (echo, g_pdu, g_pdu)]
    assert _run_table(frames, fast_path=True) == _run_table(frames, fast_path=False)


# --- more link layers: 802.11, PPP, 802.3 LLC/SNAP, 802.1ah -------------------------------------------

def _wlan(fc: bytes, body: bytes = b"") -> bytes:
    addrs = bytes.fromhex("0200000000aa" "020000000001" "020000000002")
    return fc + b"\0\0" + addrs + b"\0\0" + body


def test_wlan_data_frame_to_the_ap_gives_source_and_destination_macs() -> None:
    """An 802.11 frame to the distribution system: addr2 is the source, addr3 the destination."""
    frame = wardgen.wlan_data(_tcp4(), src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    result = _as_tuple(decode_frame(frame, decode.DLT_IEEE802_11))
    assert result[0] == TCP and result[4] == bytes.fromhex("020000000002" "020000000001")


@pytest.mark.parametrize(("fc", "code"), [
    (b"\x80\x00", decode.dot11.WLAN_MANAGEMENT),  # beacon
    (b"\xd4\x00", decode.dot11.WLAN_CONTROL),  # ACK
    (b"\x48\x01", decode.dot11.WLAN_NO_DATA),  # null function
    (b"\x88\x41", decode.dot11.WLAN_PROTECTED),  # QoS data, protected
])
def test_wlan_frames_without_visible_ip_are_named(fc: bytes, code: int) -> None:
    """Management, control, null and encrypted 802.11 frames count as named non-IP frames."""
    assert decode_frame(_wlan(fc, bytes(40)), decode.DLT_IEEE802_11) == code


def test_radiotap_header_is_skipped_by_its_length() -> None:
    """Radiotap's own length field says where the 802.11 frame starts."""
    frame = b"\0\0\x0c\0" + bytes(8) + wardgen.wlan_data(_tcp4())
    assert _as_tuple(decode_frame(frame, decode.DLT_IEEE802_11_RADIO))[0] == TCP


def test_ppp_with_a_compressed_protocol_field() -> None:
    """PPP without address/control and with a one-byte protocol (0x21) still carries IPv4."""
    assert _as_tuple(decode_frame(b"\x21" + _tcp4(), decode.DLT_PPP))[0] == TCP


def test_ppp_control_protocol_is_non_ip() -> None:
    """PPP LCP (0xc021) is counted as PPP control, not as a skipped frame."""
    assert decode_frame(b"\xff\x03\xc0\x21" + bytes(10), decode.DLT_PPP) == decode.PPP_OTHER


def test_ieee802_3_llc_snap_carries_ip() -> None:
    """An 802.3 frame (length field) with LLC/SNAP and ethertype 0x0800 is an IP packet."""
    packet = _tcp4()
    payload = b"\xaa\xaa\x03\0\0\0\x08\x00" + packet
    frame = bytes.fromhex("020000000002" "020000000001") + len(payload).to_bytes(2, "big") + payload
    assert _as_tuple(decode_frame(frame, ETH))[0] == TCP


def test_provider_backbone_frame_uses_the_customer_frame() -> None:
    """802.1ah: the B-tag goes into the key, the I-tag is skipped, the customer MACs are used."""
    customer = bytes.fromhex("02000000000c" "02000000000d") + b"\x08\x00" + _tcp4()
    frame = wardgen.ether(MAC_B, MAC_A, 0x88E7, b"\0\0\0\x05" + customer, vlans=())
    result = _as_tuple(decode_frame(frame, ETH))
    assert result[0] == TCP and result[4] == bytes.fromhex("02000000000c" "02000000000d")


# --- more tunnels: L2TP, PPTP, MPLS in GRE, EtherIP, CAPWAP ----------------------------------------

def _inner_of(frame: bytes) -> object:
    return _as_tuple(decode_frame(frame, ETH))[5]


def test_l2tp_control_message_carries_no_packet() -> None:
    """An L2TP control message (T bit) keeps its tunnel flow and carries no inner packet."""
    control = struct.pack("!HHHHH", 0xC802, 12, 1, 0, 0) + bytes(4)
    frame = _eth(wardgen.ipv4(A4, B4, 17, wardgen.udp(1701, 1701, control)))
    assert _as_tuple(decode_frame(frame, ETH))[0] == TUNNEL and _inner_of(frame) is None


def test_l2tp_data_with_length_and_sequence_fields() -> None:
    """L2TPv2 data with the L and S bits set: the PPP frame after them is decoded."""
    header = struct.pack("!HHHHHH", 0x4802, 0, 1, 2, 0, 0)
    frame = _eth(wardgen.ipv4(A4, B4, 17, wardgen.udp(1701, 1701, header + b"\xff\x03\x00\x21" + _tcp4())))
    assert _as_tuple(_inner_of(frame))[0] == TCP


def test_capwap_fragment_is_not_rebuilt() -> None:
    """A fragmented CAPWAP data message (F bit) yields no inner packet."""
    header = (0x00100080).to_bytes(4, "big") + bytes(4)
    frame = _eth(wardgen.ipv4(A4, B4, 17, wardgen.udp(5247, 5247, header + bytes(40))))
    assert _inner_of(frame) is None


def test_capwap_native_80211_payload() -> None:
    """CAPWAP data with the T bit carries an 802.11 frame, decoded as such."""
    header = (0x00100100).to_bytes(4, "big") + bytes(4)
    frame = _eth(wardgen.ipv4(A4, B4, 17, wardgen.udp(5247, 5247, header + wardgen.wlan_data(_tcp4()))))
    assert _as_tuple(_inner_of(frame))[0] == TCP
