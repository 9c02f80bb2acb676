"""agent.hints.tls: hello metadata and JA4, however the hellos are cut, and no crash on garbage."""

from __future__ import annotations

import contextlib
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st
from tcpflows import tcp_flows

from agent.hints import tls
from agent.hints.base import Fields, HintOptions

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
GREASE_CIPHER, GREASE_EXT, GREASE_VERSION = 0x0A0A, 0x1A1A, 0x3A3A
# The worked example of FoxIO's JA4 specification (technical_details/JA4.md), in its original order.
SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014,
                0x009C, 0x009D, 0x002F, 0x0035]
SPEC_EXTENSIONS = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023, 0x0012,
                   0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
SPEC_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
SPEC_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
EMOTET, PLUG = "malware-emotet-infection.pcap", "iot-setup-tplink-hs110.pcap"


def _u16s(values: list[int]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def _ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def _record(handshake_type: int, body: bytes, record_version: int = 0x0301) -> bytes:
    message = bytes([handshake_type]) + len(body).to_bytes(3, "big") + body
    return b"\x16" + struct.pack("!HH", record_version, len(message)) + message


def _sni(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return struct.pack("!H", len(entry)) + entry


def _alpn(*names: bytes) -> bytes:
    listed = b"".join(bytes([len(n)]) + n for n in names)
    return struct.pack("!H", len(listed)) + listed


def _client_hello_body(ciphers: list[int], extensions: list[tuple[int, bytes]],
                       version: int = 0x0303) -> bytes:
    body = struct.pack("!H", version) + bytes(range(100, 132)) + b"\x20" + bytes(range(32))
    body += struct.pack("!H", 2 * len(ciphers)) + _u16s(ciphers) + b"\x01\x00"
    block = b"".join(_ext(kind, data) for kind, data in extensions)
    return body + struct.pack("!H", len(block)) + block


def _spec_extension(kind: int, name: bytes = b"ward-pacs.example.org") -> tuple[int, bytes]:
    data = {0x0000: _sni(name), 0x0010: _alpn(b"h2", b"http/1.1"),
            0x000D: struct.pack("!H", 2 * len(SPEC_SIGALGS)) + _u16s(SPEC_SIGALGS),
            0x002B: b"\x06" + _u16s([GREASE_VERSION, 0x0304, 0x0303])}
    return kind, data.get(kind, b"")


def spec_client_hello(name: bytes = b"ward-pacs.example.org") -> bytes:
    """The spec example's ClientHello, with GREASE values added where browsers put them."""
    extensions = [(GREASE_EXT, b""), *(_spec_extension(k, name) for k in SPEC_EXTENSIONS), (0x2A2A, b"\x00")]
    return _record(1, _client_hello_body([GREASE_CIPHER, *SPEC_CIPHERS], extensions))


def server_hello(cipher: int = 0x1301, supported: int | None = 0x0304) -> bytes:
    body = struct.pack("!H", 0x0303) + bytes(range(200, 232)) + b"\x00" + struct.pack("!H", cipher) + b"\x00"
    block = _ext(0x002B, struct.pack("!H", supported)) if supported is not None else b""
    return _record(2, body + struct.pack("!H", len(block)) + block, record_version=0x0303)


def _feed(chunks: list[tuple[bytes, bool]]) -> tuple[list[Fields], bool]:
    flow = tls.start(HintOptions())
    found: list[Fields] = []
    for payload, from_a in chunks:
        found += flow.feed(payload, from_a)
    return found + flow.close(), flow.done


def test_client_hello_fields() -> None:
    """SNI, offered versions (GREASE dropped), cipher count and ALPN come from the ClientHello."""
    found, _ = _feed([(spec_client_hello(), True)])
    assert found == [{"tls": "client_hello", "sni": "ward-pacs.example.org", "versions": ["TLS1.3", "TLS1.2"],
                      "ciphers": 15, "alpn": ["h2", "http/1.1"], "ja4": SPEC_JA4}]


def test_ja4_matches_the_specification_example() -> None:
    """The JA4 of the specification's worked example is t13d1516h2_8daaf6152771_e5627efa2ab1."""
    assert tls.ja4(0x0304, True, SPEC_CIPHERS, SPEC_EXTENSIONS, b"h2", SPEC_SIGALGS) == SPEC_JA4


def test_ja4_without_signature_algorithms_hashes_the_extensions_alone() -> None:
    """Without signature algorithms the extension list is hashed with no underscore (spec: 6d807ffa2a79)."""
    assert tls.ja4(0x0304, True, SPEC_CIPHERS, SPEC_EXTENSIONS, b"h2", []).endswith("_6d807ffa2a79")


@pytest.mark.parametrize(("alpn", "chars"), [(b"h2", "h2"), (b"http/1.1", "h1"), (b"h", "hh"), (b"", "00"),
                                             (b"\xab", "ab"), (b"\xab\xcd", "ad"), (b"0\xab", "3b"),
                                             (b"01\xab\xcd", "3d"), (b"0\xab\xcd1", "01")])
def test_ja4_alpn_characters(alpn: bytes, chars: str) -> None:
    """The ALPN part follows the spec, hex digits when an end byte is not ASCII alphanumeric."""
    assert tls.ja4(0x0303, False, [0x002F], [0x0010], alpn, [])[8:10] == chars


def test_ja4_with_nothing_offered_uses_zero_hashes() -> None:
    """No ciphers and no extensions give 000000000000 in parts b and c."""
    assert tls.ja4(0x0301, False, [], [], b"", []) == "t10i000000_000000000000_000000000000"


def test_legacy_version_without_supported_versions() -> None:
    """Without the supported_versions extension the hello's own version is offered."""
    found, _ = _feed([(_record(1, _client_hello_body([0x002F, 0x0035], [], version=0x0301)), True)])
    assert found[0]["versions"] == ["TLS1.0"] and found[0]["alpn"] == []
    assert str(found[0]["ja4"]).startswith("t10i020000_") and "sni" not in found[0]


def test_server_hello_gives_the_chosen_version_and_cipher() -> None:
    """supported_versions in the ServerHello names TLS 1.3; the flow is done after both hellos."""
    found, done = _feed([(spec_client_hello(), True), (server_hello(0x1302), False)])
    assert found[1] == {"tls": "server_hello", "version": "TLS1.3", "cipher": "0x1302"} and done


def test_server_hello_without_extension_uses_its_legacy_version() -> None:
    """A TLS 1.2 ServerHello names its own version."""
    found, _ = _feed([(spec_client_hello(), True), (server_hello(0xC02F, supported=None), False)])
    assert found[1] == {"tls": "server_hello", "version": "TLS1.2", "cipher": "0xc02f"}


def test_hello_split_byte_by_byte() -> None:
    """A ClientHello arriving one byte per segment gives the same fields as in one segment."""
    hello = spec_client_hello()
    assert _feed([(hello[i:i + 1], True) for i in range(len(hello))]) == _feed([(hello, True)])


def test_hello_fragmented_over_two_records() -> None:
    """A handshake message split across two TLS records is joined."""
    message = spec_client_hello()[5:]
    records = b"".join(b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
                       for part in (message[:100], message[100:]))
    assert _feed([(records, True)])[0] == _feed([(spec_client_hello(), True)])[0]


def test_retransmitted_segment_is_ignored() -> None:
    """A segment repeated by a TCP retransmission does not corrupt the hello."""
    hello = spec_client_hello()
    found, _ = _feed([(hello[:90], True), (hello[:90], True), (hello[90:], True)])
    assert found[0]["ja4"] == SPEC_JA4


def test_unprintable_server_name_is_left_out() -> None:
    """An SNI that is not a host name is not reported, but still counts as present in JA4."""
    found, _ = _feed([(spec_client_hello(b"evil\x00name <script>"), True)])
    assert "sni" not in found[0] and str(found[0]["ja4"]).startswith("t13d")


def test_server_name_entry_of_another_type_is_skipped() -> None:
    """Only a host_name (type 0) entry of the SNI list is read; others before it are passed over."""
    entries = b"\x01" + struct.pack("!H", 3) + b"abc" + b"\x00" + struct.pack("!H", 9) + b"pacs.ward"
    body = _client_hello_body([0x1301], [(0x0000, struct.pack("!H", len(entries)) + entries)])
    found, _ = _feed([(_record(1, body), True)])
    assert found[0]["sni"] == "pacs.ward"


def test_server_alert_ends_the_flow_quietly() -> None:
    """A server that answers with an alert gives nothing more, and the flow is done."""
    found, done = _feed([(spec_client_hello(), True), (b"\x15\x03\x03\x00\x02\x02\x28", False)])
    assert len(found) == 1 and done


def test_accepts_a_client_hello_on_any_port() -> None:
    """Detection is by the ClientHello record from the initiator, not by port."""
    hello = spec_client_hello()
    assert tls.accepts("tcp", 51000, 8883, hello, True)
    assert not tls.accepts("tcp", 51000, 443, hello, False)
    assert not tls.accepts("udp", 51000, 443, hello, True)
    assert not tls.accepts("tcp", 51000, 443, server_hello(), True)
    assert not tls.accepts("tcp", 51000, 443, b"GET / HTTP/1.1\r\n\r\n", True)


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello from the client
    b"\x16\x09\x01\x00\x05\x01\x00\x00\x01\x00",  # not TLS major version 3
    b"\x17\x03\x03\x00\x02ab",  # application data before the hello
    b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00"])  # a hello whose body is cut short
def test_garbage_is_refused(garbage: bytes) -> None:
    """Records that cannot be a client's first flight raise ValueError."""
    with pytest.raises(ValueError):
        tls.start(HintOptions()).feed(garbage, True)


def test_oversized_hello_is_refused() -> None:
    """A hello announcing more than MAX_HELLO bytes is refused instead of buffered."""
    header = b"\x16\x03\x01\x40\x00\x01" + (tls.MAX_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(ValueError):
        tls.start(HintOptions()).feed(header, True)


def test_every_truncation_returns_or_raises_value_error() -> None:
    """Both hellos cut at every offset give fields, nothing, or ValueError."""
    for message, from_a in ((spec_client_hello(), True), (server_hello(), False)):
        for end in range(len(message) + 1):
            cut = message[:end - 1] + b"\xff" if end else b""
            for payload in (message[:end], cut, message[:5] + message[end:]):
                with contextlib.suppress(ValueError):
                    tls.start(HintOptions()).feed(payload, from_a)


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=64), st.booleans()), max_size=8))
def test_random_bytes_return_or_raise_value_error(chunks: list[tuple[bytes, bool]]) -> None:
    """Random segments in either direction give fields, nothing, or ValueError."""
    with contextlib.suppress(ValueError):
        _feed([(b"\x16\x03\x01" + chunks[0][0], True), *chunks[1:]] if chunks else [])


@FUZZ
@given(st.sampled_from([1, 2]), st.binary(max_size=200), st.booleans())
def test_random_hello_bodies_return_or_raise_value_error(kind: int, body: bytes, from_a: bool) -> None:
    """Well-framed hello messages with random bodies give fields, nothing, or ValueError."""
    with contextlib.suppress(ValueError):
        _feed([(_record(kind, body), from_a)])


@FUZZ
@given(st.data())
def test_any_segmentation_gives_the_same_fields(data: st.DataObject) -> None:
    """Both hellos cut at random offsets give exactly the fields of the whole hellos."""
    chunks: list[tuple[bytes, bool]] = []
    for message, from_a in ((spec_client_hello(), True), (server_hello(), False)):
        cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=10)))
        chunks += [(message[a:b], from_a) for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    assert _feed(chunks) == _feed([(spec_client_hello(), True), (server_hello(), False)])


def hinted(capture: Path) -> dict[int, list[Fields]]:
    """The TLS hinter run over each TCP flow of a capture as the flow head would run it, by client port."""
    results: dict[int, list[Fields]] = {}
    for a_port, b_port, segments in tcp_flows(capture):
        flow = None
        for payload, from_a in segments:
            if flow is None and tls.accepts("tcp", a_port, b_port, payload, from_a):
                flow = tls.start(HintOptions())
            if flow is not None and not flow.done:
                results.setdefault(a_port, []).extend(flow.feed(payload, from_a))
    return results


def _tshark_hellos(capture: Path) -> dict[int, dict[str, str]]:
    fields = ["tcp.srcport", "tcp.dstport", "tls.handshake.type", "tls.handshake.extensions_server_name",
              "tls.handshake.ciphersuite", "tls.handshake.extensions_alpn_str"]
    command = ["tshark", "-n", "-r", str(capture), "-Y", "tls.handshake.type <= 2", "-T", "fields"]
    out = subprocess.run([*command, *[a for f in fields for a in ("-e", f)]], capture_output=True, text=True,
                         check=True).stdout
    hellos: dict[int, dict[str, str]] = {}
    for line in out.splitlines():
        sport, dport, kinds, sni, ciphers, alpn = line.split("\t")
        hello = "server" if kinds.split(",")[0] == "2" else "client"
        port = int(dport) if hello == "server" else int(sport)
        hellos.setdefault(port, {}).update({f"{hello}_sni": sni, f"{hello}_ciphers": ciphers,
                                            f"{hello}_alpn": alpn})
    return hellos


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / EMOTET).exists(), reason="shared captures absent")
def test_shared_windows_hellos_agree_with_tshark() -> None:
    """Each Emotet-capture hello: SNI, cipher count, ALPN and chosen cipher agree with tshark."""
    capture = SHARED_PCAPS / EMOTET
    ours, theirs = hinted(capture), _tshark_hellos(capture)
    assert len(theirs) == 30 and set(theirs) <= set(ours)
    for port, expected in theirs.items():
        client = ours[port][0]
        assert client["sni"] == expected["client_sni"] and client["versions"] == ["TLS1.2"]
        assert client["ciphers"] == len(expected["client_ciphers"].split(","))
        assert client["alpn"] == [a for a in expected["client_alpn"].split(",") if a]
        if "server_ciphers" in expected:
            assert ours[port][1] == {"tls": "server_hello", "version": "TLS1.2",
                                     "cipher": expected["server_ciphers"]}


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / EMOTET).exists(), reason="shared captures absent")
def test_shared_windows_ja4_matches_the_reference_implementation() -> None:
    """Windows' TLS 1.2 hello without ALPN has the JA4 FoxIO's reference tests give it (latest.pcapng)."""
    found = hinted(SHARED_PCAPS / EMOTET)
    assert "t12d190800_d83cc789557e_7af1ed941c26" in {f[0]["ja4"] for f in found.values()}


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / PLUG).exists(), reason="shared captures absent")
def test_shared_smart_plug_offers_tls10_without_a_name() -> None:
    """The TP-Link plug's cloud TLS on port 50443: TLS 1.0, no SNI, 46 ciphers, server picks 0xc013."""
    found = hinted(SHARED_PCAPS / PLUG)
    client, server = found[34988]
    assert (client["versions"], client["ciphers"], "sni" in client) == (["TLS1.0"], 46, False)
    assert str(client["ja4"]).startswith("t10i4604") and server["cipher"] == "0xc013"
