"""FTP control channel: that a cleartext login was tried and how it ended, never the password.

USER/PASS on TCP 21 (or a server whose first line is a "220" greeting naming FTP). Each PASS is one
attempt; its outcome is the next final reply: 2xx success, 4xx/5xx failure (530 "Login incorrect"),
1xx and 3xx (332, account needed) keep waiting. The argument of PASS is never looked at. A brute force gives
one login hint per attempt, at most MAX_ATTEMPTS per flow; the hinter then reports the bound once
({"ftp": "attempt_bound", "attempts": MAX_ATTEMPTS}) and stops. An anonymous login (USER anonymous or
ftp) is not a credential: it gives {"ftp": "anonymous", "outcome": ...} instead of a login hint.
The 220 greeting gives a software hint, {"ftp": "banner", "server": first MAX_TEXT printable chars}.
A successful "AUTH TLS" (234) ends the hints with {"ftp": "auth_tls"}: the rest is encrypted.

Roles come from the content, not the port: the side whose first line is a reply code is the server.
`LineReader` (one bounded line splitter per direction) is shared with the mail hinter.
"""

from __future__ import annotations

import re
from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "ftp"
PROTO: Final = "tcp"
PORT: Final = 21
MAX_LINE: Final = 1024
MAX_ATTEMPTS: Final = 32
MAX_TEXT: Final = 64
_REPLY: Final = re.compile(rb"^([1-5][0-9]{2})([ -]|$)")
_COMMAND: Final = re.compile(rb"^([A-Za-z]{3,4})(?: |$)")
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ANONYMOUS: Final = frozenset({"anonymous", "ftp"})


class LineReader:
    """Splits one direction of a text protocol into CRLF/LF lines; holds at most `limit` bytes of a line.

    A line longer than the limit, or one with control characters, is garbage (ValueError). `skip(n)`
    drops the next n bytes unread (an IMAP literal).
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._pending = bytearray()
        self._limit = limit
        self._skip = 0

    def feed(self, payload: bytes) -> None:
        self._pending += payload

    def skip(self, count: int) -> None:
        self._skip += count

    def next_line(self) -> bytes | None:
        """The next complete line without its line ending, or None until one has arrived."""
        if self._skip:
            dropped = min(self._skip, len(self._pending))
            del self._pending[:dropped]
            self._skip -= dropped
            if self._skip:
                return None
        end = self._pending.find(b"\n")
        if end < 0:
            if len(self._pending) > self._limit:
                raise ValueError("line longer than the bound")
            return None
        if end > self._limit:
            raise ValueError("line longer than the bound")
        line = bytes(self._pending[:end]).removesuffix(b"\r")
        del self._pending[:end + 1]
        if _CONTROL.search(line):
            raise ValueError("control character in a text protocol line")
        return line


def printable(raw: bytes, limit: int = MAX_TEXT) -> str:
    """Printable ASCII text of at most `limit` characters, or "" when `raw` is anything else."""
    text = raw.decode("latin-1")
    return text if 0 < len(text) <= limit and text.isascii() and text.isprintable() else ""


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """TCP port 21, or a first server line "220" that names FTP (and is not an SMTP greeting)."""
    if proto != "tcp":
        return False
    if PORT in (a_port, b_port):
        return True
    if payload[:4] not in (b"220 ", b"220-"):  # before reading the line: most flows' first payload is bulk
        return False
    first = payload.split(b"\n", 1)[0].upper()
    return b"FTP" in first and b"SMTP" not in first


def start(options: HintOptions) -> FtpFlow:
    return FtpFlow(options)


class FtpFlow:
    """Follows the USER/PASS exchanges of one FTP control connection."""

    def __init__(self, options: HintOptions) -> None:
        self.done = False
        self._record_user = options.record_user
        self._readers = {True: LineReader(), False: LineReader()}
        self._server_is_a: bool | None = None
        self._multiline = b""  # the code of a multi-line reply still open
        self._banner_seen = False
        self._user = ""
        self._anonymous = False
        self._pending = False  # a PASS waits for its reply
        self._auth = False  # an AUTH waits for its reply
        self._attempts = 0

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        reader = self._readers[from_a]
        reader.feed(payload)
        found: list[Fields] = []
        while not self.done and (line := reader.next_line()) is not None:
            if self._server_is_a is None:
                if not line:
                    continue
                self._server_is_a = from_a == bool(_REPLY.match(line))
            if from_a == self._server_is_a:
                self._reply(line, found)
            else:
                self._command(line)
        return found

    def close(self) -> list[Fields]:
        found = [self._login("unknown")] if self._pending and not self.done else []
        self._pending, self.done = False, True
        return found

    def _command(self, line: bytes) -> None:
        if not line:
            return
        match = _COMMAND.match(line)
        if match is None:
            raise ValueError("not an FTP command")
        verb = match[1].upper()
        if verb == b"USER":
            self._user = printable(line[5:].strip())
            self._anonymous = self._user.lower() in _ANONYMOUS
        elif verb == b"PASS":
            self._pending = True  # the argument is the secret: never read
        elif verb == b"AUTH":
            self._auth = True

    def _reply(self, line: bytes, found: list[Fields]) -> None:
        if self._multiline:
            if line[:4] == self._multiline + b" ":
                self._multiline = b""
                self._final(int(line[:3]), found)
            return
        match = _REPLY.match(line)
        if match is None:
            raise ValueError("not an FTP reply")
        code = int(match[1])
        if code == 220 and not self._banner_seen:
            self._banner_seen = True
            server = "".join(c for c in line[4:].decode("latin-1") if " " <= c <= "~").strip()[:MAX_TEXT]
            if server:
                found.append({"ftp": "banner", "server": server})
        if match[2] == b"-":
            self._multiline = match[1]
        else:
            self._final(code, found)

    def _final(self, code: int, found: list[Fields]) -> None:
        """A complete reply: it may settle a pending PASS or AUTH."""
        if self._auth:
            self._auth = False
            if code == 234:
                found.append({"ftp": "auth_tls"})
                self.done = True
                return
        if not self._pending or code // 100 in (1, 3):
            return
        self._pending = False
        found.append(self._login("success" if code // 100 == 2 else "failure"))
        self._attempts += 1
        if code // 100 == 2:
            self.done = True
        elif self._attempts == MAX_ATTEMPTS:
            found.append({"ftp": "attempt_bound", "attempts": MAX_ATTEMPTS})
            self.done = True

    def _login(self, outcome: str) -> Fields:
        if self._anonymous:
            return {"ftp": "anonymous", "outcome": outcome}
        fields: Fields = {"login": "ftp", "outcome": outcome}
        if self._record_user and self._user:
            fields["user"] = self._user
        return fields
