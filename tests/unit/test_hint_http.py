"""agent.hints.http: request/response metadata and cleartext logins, never a password, however cut."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import SHARED_PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st
from tcpflows import tcp_flows

from agent.hints import http
from agent.hints.base import Fields, HintOptions

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
SECRET = "S3cretCanary"
UA = "InfusionPump/4.2 (ward7)"
DVWA, EMOTET = "http-cleartext-login.pcap", "malware-emotet-infection.pcap"


def _request(method: str = "GET", path: str = "/status", headers: str = "", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: pump7.ward.local:8080\r\nUser-Agent: {UA}\r\n"
    return (head + headers + length + "\r\n").encode() + body


def _response(status: int = 200, body: bytes = b"ok", headers: str = "") -> bytes:
    head = f"HTTP/1.1 {status} Whatever\r\nServer: lighttpd/1.4.59\r\nContent-Length: {len(body)}\r\n"
    return (head + headers + "\r\n").encode() + body


def _basic(user: str = "nurse1") -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{SECRET}".encode()).decode() + "\r\n"


def _form_post(body: bytes = b"username=nurse1&password=" + SECRET.encode() + b"&Login=Login") -> bytes:
    return _request("POST", "/login.php", "Content-Type: application/x-www-form-urlencoded\r\n", body)


def _feed(chunks: list[tuple[bytes, bool]], record_user: bool = False) -> list[Fields]:
    flow = http.start(HintOptions(record_user=record_user))
    found: list[Fields] = []
    for payload, from_a in chunks:
        found += flow.feed(payload, from_a)
    return found + flow.close()


def _logins(found: list[Fields]) -> list[Fields]:
    return [f for f in found if "login" in f]


def test_request_and_response_metadata() -> None:
    """Method, Host and User-Agent of a request; status and Server of its response."""
    assert _feed([(_request(), True), (_response(), False)]) == [
        {"http": "request", "method": "GET", "host": "pump7.ward.local:8080", "user_agent": UA},
        {"http": "response", "status": 200, "server": "lighttpd/1.4.59"}]


def test_basic_login_success_without_user_by_default() -> None:
    """A 200 answer to Basic credentials is a successful http_basic login, with no user name by default."""
    found = _feed([(_request(headers=_basic()), True), (_response(200), False)])
    assert _logins(found) == [{"login": "http_basic", "outcome": "success"}]
    assert "nurse1" not in json.dumps(found) and SECRET not in json.dumps(found)


def test_basic_login_failure_names_the_user_when_allowed() -> None:
    """A 401 answer is a failure; with record_user the decoded user name comes along, never the password."""
    found = _feed([(_request(headers=_basic()), True), (_response(401), False)], record_user=True)
    assert _logins(found) == [{"login": "http_basic", "outcome": "failure", "user": "nurse1"}]
    assert SECRET not in json.dumps(found)


def test_form_post_with_password_field_in_the_next_segment() -> None:
    """A urlencoded POST whose body comes in its own segment with a password field is an http_form login."""
    post = _form_post()
    head_end = post.index(b"\r\n\r\n") + 4
    found = _feed([(post[:head_end], True), (post[head_end:], True), (_response(302), False)])
    assert _logins(found) == [{"login": "http_form", "outcome": "unknown"}]
    assert "nurse1" not in json.dumps(found) and SECRET not in json.dumps(found)


def test_form_login_user_only_with_record_user() -> None:
    """With record_user the user field of the form is named, not the submit button nor the password."""
    found = _feed([(_form_post(), True), (_response(403), False)], record_user=True)
    assert _logins(found) == [{"login": "http_form", "outcome": "failure", "user": "nurse1"}]
    assert SECRET not in json.dumps(found)


def test_form_without_password_field_is_no_login() -> None:
    """A form POST with no password-like field is an ordinary request."""
    assert _logins(_feed([(_form_post(b"ward=7&bed=3"), True), (_response(), False)])) == []


def test_unanswered_login_is_reported_on_close() -> None:
    """A login whose response never comes is reported from close() with outcome unknown."""
    found = _feed([(_request(headers=_basic()), True)])
    assert _logins(found) == [{"login": "http_basic", "outcome": "unknown"}]


def test_keep_alive_pairs_requests_and_responses_across_bodies() -> None:
    """Content-Length and chunked bodies are skipped, so the second response decides the second request."""
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nHTTP/\r\n3\r\n1.1\r\n0\r\n"
               b"X-Trailer: 1\r\n\r\n")
    found = _feed([(_request() + _request(headers=_basic()), True),
                   (chunked + _response(401, b"HTTP/1.1 "), False)])
    assert [f.get("status") for f in found if f.get("http") == "response"] == [200, 401]
    assert _logins(found) == [{"login": "http_basic", "outcome": "failure"}]


def test_informational_and_head_responses() -> None:
    """A 100 Continue does not answer the request; a HEAD response has no body despite its length."""
    head_response = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    found = _feed([(_request("HEAD") + _request(headers=_basic()), True),
                   (b"HTTP/1.1 100 Continue\r\n\r\n" + head_response + _response(200), False)])
    assert [f.get("status") for f in found if "status" in f] == [100, 200, 200]
    assert _logins(found) == [{"login": "http_basic", "outcome": "success"}]


def test_retransmitted_head_segment_is_ignored() -> None:
    """The same head segment twice in a row (a retransmission) is read once."""
    post = _request(headers=_basic())
    found = _feed([(post[:30], True), (post[:30], True), (post[30:], True), (_response(), False)])
    assert [f.get("http") or f["login"] for f in found] == ["request", "response", "http_basic"]


def test_identical_body_segments_are_all_skipped() -> None:
    """Identical segments inside a body (zero-filled data) are body, not retransmissions."""
    body = bytes(3000)
    upload = _request("POST", "/upload", "Content-Type: application/octet-stream\r\nContent-Length: 3000\r\n")
    found = _feed([(upload, True), (body[:1000], True), (body[1000:2000], True), (body[2000:], True),
                   (_request(headers=_basic()), True), (_response(), False), (_response(), False)])
    assert [f.get("http") for f in found].count("request") == 2 and len(_logins(found)) == 1


def test_same_request_again_after_an_answer_is_read() -> None:
    """A client polling with identical requests gets each one read once the server has answered."""
    found = _feed([(_request(), True), (_response(), False), (_request(), True), (_response(), False)])
    assert [f.get("http") for f in found] == ["request", "response", "request", "response"]


def test_unprintable_or_odd_header_values_are_left_out() -> None:
    """A Host that is not a host name and a User-Agent with control bytes are not reported."""
    raw = b"GET / HTTP/1.1\r\nHost: evil host/<x>\r\nUser-Agent: a\x01b\r\n\r\n"
    assert _feed([(raw, True)]) == [{"http": "request", "method": "GET"}]


def test_upgrade_ends_the_flow() -> None:
    """101 Switching Protocols stops reading both directions."""
    flow = http.start(HintOptions())
    flow.feed(_request(headers="Upgrade: websocket\r\nConnection: Upgrade\r\n"), True)
    flow.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", False)
    assert flow.done and flow.feed(b"\x81\x85masked", True) == []


def test_connect_tunnel_ends_the_flow() -> None:
    """A CONNECT answered 200 turns the connection into an opaque tunnel: nothing more is read."""
    flow = http.start(HintOptions())
    flow.feed(b"CONNECT pacs.example.org:443 HTTP/1.1\r\nHost: pacs.example.org:443\r\n\r\n", True)
    flow.feed(b"HTTP/1.1 200 Connection established\r\n\r\n", False)
    assert flow.done and flow.feed(b"\x16\x03\x03\x00\x40" + bytes(64), False) == []


def test_accepts_request_lines_on_any_port() -> None:
    """A request line from the initiator on any port, also when the method comes in a segment of its own."""
    assert http.accepts("tcp", 50000, 8080, _request(), True)
    assert http.accepts("tcp", 50000, 80, b"POST ", True)
    assert http.accepts("tcp", 50000, 80, b"GET /index.ht", True)
    assert not http.accepts("tcp", 50000, 80, _request(), False)
    assert not http.accepts("udp", 50000, 1900, b"M-SEARCH * HTTP/1.1\r\n\r\n", True)
    assert not http.accepts("tcp", 50000, 554, b"OPTIONS rtsp://cam/ RTSP/1.0\r\n\r\n", True)
    assert not http.accepts("tcp", 50000, 22, b"SSH-2.0-OpenSSH_9.2\r\n", True)
    assert not http.accepts("tcp", 50000, 80, b"FOO ", True)


@pytest.mark.parametrize(("chunks"), [
    [(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True)],  # not a request line
    [(_request(), True), (b"220 ftp ready\r\n\r\n", False)],  # not a status line
    [(_request(headers="Content-Length: -5\r\n"), True)],  # a negative length
    [(_request(), True), (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False)],  # chunk
    [(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * http.MAX_HEAD, True)]])  # a head past the buffer
def test_garbage_is_refused(chunks: list[tuple[bytes, bool]]) -> None:
    """What cannot be HTTP/1.x raises ValueError."""
    with pytest.raises(ValueError):
        _feed(chunks)


def _exchange() -> list[tuple[bytes, bool]]:
    return [(_request(headers=_basic()) + _form_post(), True), (_response(401) + _response(302), False)]


def test_every_truncation_returns_or_raises_value_error_and_hides_the_secret() -> None:
    """The exchange cut at every offset, or with a byte damaged there, never leaks the password."""
    (ask, _), (answer, _) = _exchange()
    for end in range(len(ask) + 1):
        for damaged in (ask[:end], ask[:end] + b"\xff" + ask[end + 1:]):
            with contextlib.suppress(ValueError):
                found = _feed([(damaged, True), (answer[:end], False)], record_user=True)
                assert SECRET not in json.dumps(found)


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=80), st.booleans()), max_size=8))
def test_random_bytes_return_or_raise_value_error(chunks: list[tuple[bytes, bool]]) -> None:
    """Random segments after a real request line give fields, nothing, or ValueError."""
    with contextlib.suppress(ValueError):
        _feed([(b"POST /x HTTP/1.1\r\n", True), *chunks], record_user=True)


@FUZZ
@given(st.data())
def test_any_segmentation_gives_the_same_fields(data: st.DataObject) -> None:
    """The exchange cut at random offsets gives exactly the fields of the whole exchange."""
    chunks: list[tuple[bytes, bool]] = []
    for message, from_a in _exchange():
        cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=10)))
        chunks += [(message[a:b], from_a) for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    assert _feed(chunks, record_user=True) == _feed(_exchange(), record_user=True)


def hinted(capture: Path, record_user: bool = False) -> list[Fields]:
    """The HTTP hinter run over each TCP flow of a capture as the flow head would run it."""
    found: list[Fields] = []
    for a_port, b_port, segments in tcp_flows(capture):
        flow = None
        for payload, from_a in segments:
            if flow is None and http.accepts("tcp", a_port, b_port, payload, from_a):
                flow = http.start(HintOptions(record_user=record_user))
            if flow is not None and not flow.done:
                found += flow.feed(payload, from_a)
        found += flow.close() if flow is not None else []
    return found


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / DVWA).exists(), reason="shared captures absent")
def test_shared_dvwa_form_login_never_shows_the_password() -> None:
    """The DVWA POST username=admin&password=password is one http_form login; 'password' never appears."""
    found = hinted(SHARED_PCAPS / DVWA)
    assert _logins(found) == [{"login": "http_form", "outcome": "unknown"}]
    assert "password" not in json.dumps(found) and "admin" not in json.dumps(found)


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / DVWA).exists(), reason="shared captures absent")
def test_shared_dvwa_user_named_only_with_record_user() -> None:
    """With record_user the DVWA login names admin, and still never the password."""
    found = hinted(SHARED_PCAPS / DVWA, record_user=True)
    assert _logins(found) == [{"login": "http_form", "outcome": "unknown", "user": "admin"}]
    assert "password" not in json.dumps(found)


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_PCAPS / EMOTET).exists(), reason="shared captures absent")
def test_shared_emotet_hosts_agree_with_tshark() -> None:
    """Every HTTP-over-TCP request of the Emotet capture is read, with the Host tshark reads."""
    command = ["tshark", "-n", "-r", str(SHARED_PCAPS / EMOTET), "-Y", "http.request && tcp", "-T", "fields",
               "-e", "http.host"]
    expected = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    hosts = [f.get("host") for f in hinted(SHARED_PCAPS / EMOTET) if f.get("http") == "request"]
    assert sorted(map(str, hosts)) == sorted(expected)
    assert {"hangarlastik.com", "padreescapes.com", "sarture.com", "seo.udaipurkart.com"} <= set(expected)
