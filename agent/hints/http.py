"""HTTP/1.x on any port: method, Host and User-Agent of requests, status and Server of responses.

Cleartext logins are recorded as such, never their secret: a request with `Authorization: Basic`
gives an `http_basic` login whose outcome the response status decides (401/403 failure, 2xx/3xx
success); a urlencoded form POST with a field named like a password gives an `http_form` login
(failure on 401/403, otherwise unknown: a form login answers 200 or a redirect either way). The user
name is decoded only when policy allows it; the password and the form body never leave this module.
Heads are buffered up to MAX_HEAD, form bodies up to MAX_FORM; other bodies are skipped unread
(Content-Length or chunked). Requests on a keep-alive connection are paired with responses in order.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from typing import Final
from urllib.parse import unquote_plus

from agent.hints.base import Fields, HintOptions

NAME: Final = "http"
PROTO: Final = "tcp"
HEAD_PACKETS: Final = 8  # a login form often follows a page load on the same connection (flowhead.py)
MAX_HEAD: Final = 16384
MAX_FORM: Final = 4096
MAX_PENDING: Final = 32
MIN_REPEAT: Final = 8  # a head segment this long repeated at once is taken for a retransmission
_REQUEST_LINE: Final = re.compile(rb"([A-Z][A-Z_-]{1,19}) [!-~]+ HTTP/1\.[0-9]")
_TARGET: Final = re.compile(rb"[!-~]{0,8192}")
_VERSION: Final = re.compile(rb"HTTP/1\.[0-9]")
_METHODS: Final = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT"})
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[0-9] ([1-5][0-9][0-9])(?: .*)?")
_HOST: Final = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,255}$")
_PRINTABLE: Final = re.compile(r"^[\x20-\x7e]+$")
_USER_FIELD: Final = re.compile(r"(?:^|[\[.])(?:j_|login_|user_)?(?:user(?:_?name)?|login|e-?mail|uname|usr|"
                                r"user_?id|account|log)(?:\]|$)")
_FORM: Final = "application/x-www-form-urlencoded"


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """The initiator opens with an HTTP/1.x request line, whatever the port: a whole one, or the start
    of one with a common method (some clients send "POST " in a segment of its own)."""
    if proto != "tcp" or not from_a:
        return False
    end = payload.find(b"\n", 0, MAX_HEAD)
    if end >= 0:
        return _REQUEST_LINE.fullmatch(payload[:end].rstrip(b"\r")) is not None
    method, space, rest = payload.partition(b" ")
    target, space_2, version = rest.partition(b" ")
    version = version.rstrip(b"\r")
    version_ok = not space_2 or b"HTTP/1.".startswith(version) or _VERSION.fullmatch(version) is not None
    return bool(space) and method in _METHODS and _TARGET.fullmatch(target) is not None and version_ok


def start(options: HintOptions) -> HttpFlow:
    return HttpFlow(options)


class _Request:
    """A request awaiting its response: what the response decides about it."""

    __slots__ = ("login", "method", "user")

    def __init__(self, method: str) -> None:
        self.method, self.login, self.user = method, "", ""


class _Stream:
    """One direction's bytes: heads, then bodies skipped by length or by chunks, or kept for a form."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skip = 0
        self.chunked = ""  # "", "size" or "trailer"
        self.form: _Request | None = None
        self.form_left = 0
        self.stopped = False
        self.last = b""

    def accept(self, payload: bytes) -> bool:
        """Take a segment unless reading has stopped or it repeats the last one outside a body (a TCP
        retransmission: bodies may well hold identical segments, heads do not)."""
        in_body = bool(self.skip or self.chunked or self.form)
        repeated = not in_body and len(payload) >= MIN_REPEAT and payload == self.last
        self.last = payload
        if self.stopped or repeated:
            return False
        self.buffer += payload
        return True

    def skip_body(self) -> bool:
        """Consume body bytes; True when the buffer now starts at a head (or is empty)."""
        buffer = self.buffer
        while buffer:
            if self.skip:
                taken = min(self.skip, len(buffer))
                del buffer[:taken]
                self.skip -= taken
            elif self.chunked:
                end = buffer.find(b"\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD:
                        raise ValueError("HTTP chunk line longer than the buffer")
                    return False
                line = bytes(buffer[:end]).strip()
                del buffer[:end + 1]
                if self.chunked == "trailer":
                    self.chunked = "trailer" if line else ""
                elif line:
                    size = _length(line.split(b";")[0].decode("latin-1"), 16)
                    self.chunked, self.skip = ("size", size + 2) if size else ("trailer", 0)
            else:
                return True
        return not (self.skip or self.chunked)

    def head(self) -> bytes | None:
        """The next whole head (without its blank line), leading blank lines dropped."""
        while self.buffer and self.buffer[0] in b"\r\n":
            del self.buffer[:1]
        buffer = self.buffer
        bare, crlf = buffer.find(b"\n\n"), buffer.find(b"\n\r\n")  # two finds: far quicker than a regex
        if bare < 0 and crlf < 0:
            if len(buffer) > MAX_HEAD:
                raise ValueError("HTTP head longer than the buffer")
            return None
        at, end = (bare, bare + 2) if crlf < 0 or 0 <= bare < crlf else (crlf, crlf + 3)
        head = bytes(buffer[:at - 1 if at and buffer[at - 1] == 13 else at])  # without the line's \r
        del buffer[:end]
        return head

    def body(self, headers: dict[str, str], to_close: bool) -> None:
        """Set up skipping of the body after a head. Without a length, a response runs to the close
        (`to_close`: nothing more to read here) and a request has no body."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked = "size"
        elif "content-length" in headers:
            self.skip = _length(headers["content-length"])
        elif to_close:
            self.stopped = True


class HttpFlow:
    """Requests from side a and responses from side b of one connection."""

    def __init__(self, options: HintOptions) -> None:
        self.done = False
        self._record_user = options.record_user
        self._client, self._server = _Stream(), _Stream()
        self._pending: deque[_Request] = deque()

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        stream, other = (self._client, self._server) if from_a else (self._server, self._client)
        other.last = b""  # the other side spoke: the same request again is a new one, not a retransmission
        found: list[Fields] = []
        if stream.accept(payload):
            self._read(stream, from_a, found)
        self.done = self._client.stopped and self._server.stopped
        return found

    def close(self) -> list[Fields]:
        found = [self._login(request, "unknown") for request in self._pending if request.login]
        self._pending.clear()
        return found

    def _read(self, stream: _Stream, from_a: bool, found: list[Fields]) -> None:
        while not stream.stopped:
            if stream.form is not None:
                if len(stream.buffer) < stream.form_left:
                    return
                self._form(stream.form, bytes(stream.buffer[:stream.form_left]), found)
                del stream.buffer[:stream.form_left]
                stream.form = None
            if not stream.skip_body():
                return
            head = stream.head()
            if head is None:
                return
            found.extend(self._request(head) if from_a else self._response(head))

    def _request(self, head: bytes) -> list[Fields]:
        line, headers = _parse_head(head)
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            raise ValueError("not an HTTP/1.x request line")
        request = _Request(match[1].decode())
        found: list[Fields] = []
        if len(self._pending) == MAX_PENDING:  # responses are not seen: give up waiting for the oldest
            oldest = self._pending.popleft()
            found += [self._login(oldest, "unknown")] if oldest.login else []
        self._pending.append(request)
        fields: Fields = {"http": "request", "method": request.method}
        host, agent = headers.get("host", ""), _text(headers.get("user-agent", ""), 256)
        if _HOST.match(host):
            fields["host"] = host
        if agent:
            fields["user_agent"] = agent
        found.insert(0, fields)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            request.login, request.user = "http_basic", self._basic_user(credentials.strip())
        self._client.body(headers, to_close=False)
        form = (request.method == "POST" and not self._client.chunked and self._client.skip
                and headers.get("content-type", "").lower().startswith(_FORM))
        if form:
            self._client.form, self._client.form_left = request, min(self._client.skip, MAX_FORM)
            self._client.skip -= self._client.form_left
        return found

    def _response(self, head: bytes) -> list[Fields]:
        line, headers = _parse_head(head)
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise ValueError("not an HTTP/1.x status line")
        status = int(match[1])
        fields: Fields = {"http": "response", "status": status}
        server = _text(headers.get("server", ""), 128)
        if server:
            fields["server"] = server
        found = [fields]
        if status == 101:  # switched to another protocol: nothing more to read as HTTP
            self._client.stopped = self._server.stopped = True
        if status < 200:
            return found
        request = self._pending.popleft() if self._pending else None
        if request is not None and request.login:
            found.append(self._login(request, _outcome(request.login, status)))
        if request is not None and request.method == "CONNECT" and status < 300:  # a tunnel from here on
            self._client.stopped = self._server.stopped = True
            return found
        if not (status in (204, 304) or (request is not None and request.method == "HEAD")):
            self._server.body(headers, to_close=True)
        return found

    def _form(self, request: _Request, body: bytes, found: list[Fields]) -> None:
        """A form with a password field makes its request a login; its user field only if policy allows."""
        names = [(unquote_plus(n.decode("latin-1")).lower(), v) for n, _, v in
                 (pair.partition(b"=") for pair in body.split(b"&"))]
        if request.login or not any("pass" in name or "pwd" in name for name, _ in names):
            return
        request.login = "http_form"
        if self._record_user:
            values = ((n, unquote_plus(v.decode("latin-1"))) for n, v in names if _USER_FIELD.search(n))
            users = (_text(v, 64) for n, v in values if v.lower() != n)  # not a "Login=Login" button
            request.user = next((u for u in users if u), "")
        if request not in self._pending:  # already answered (or given up on): report it now
            found.append(self._login(request, "unknown"))

    def _basic_user(self, credentials: str) -> str:
        if not self._record_user:
            return ""
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return ""
        return _text(decoded.partition(b":")[0].decode("latin-1"), 64)

    def _login(self, request: _Request, outcome: str) -> Fields:
        fields: Fields = {"login": request.login, "outcome": outcome}
        if self._record_user and request.user:
            fields["user"] = request.user
        request.login = ""
        return fields


def _parse_head(head: bytes) -> tuple[bytes, dict[str, str]]:
    """The first line and the headers (lower-case names; the first of a repeated header wins)."""
    first, _, rest = head.partition(b"\n")
    headers: dict[str, str] = {}
    for line in rest.decode("latin-1").split("\n") if rest else ():
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers.setdefault(name.strip().lower(), value.strip())
    return first.rstrip(b"\r"), headers


def _length(value: str, base: int = 10) -> int:
    """A Content-Length (or, in base 16, a chunk size); ValueError unless plain digits."""
    digits = "0123456789abcdefABCDEF"[:10 if base == 10 else 22]
    if not value or len(value) > 15 or value.strip(digits):
        raise ValueError("bad HTTP body length")
    return int(value, base)


def _outcome(login: str, status: int) -> str:
    if status in (401, 403):
        return "failure"
    return "success" if login == "http_basic" and 200 <= status < 400 else "unknown"


def _text(value: str, limit: int) -> str:
    value = value.strip()[:limit]
    return value if _PRINTABLE.match(value) else ""
