"""POP3 and IMAP: that a cleartext login was tried and how it ended, never the password.

POP3 (TCP 110): USER/PASS answered by +OK/-ERR; AUTH PLAIN and AUTH LOGIN (RFC 5034). APOP sends
no cleartext password and gives nothing. IMAP (TCP 143): `tag LOGIN user pass` and `tag AUTHENTICATE
PLAIN|LOGIN` (with or without an initial response), answered by `tag OK` (success) or `tag NO/BAD`
(failure). Each attempt gives {"login": "pop3"|"imap", "outcome": ...}, plus "user" only with
record_user (a LOGIN user sent as an IMAP literal is not recorded). A SASL exchange counts once its
secret part was sent; "*" cancels it. Base64 SASL data is decoded only to read the user name, only
when record_user is on. At most MAX_ATTEMPTS per flow, then {"<proto>": "attempt_bound", ...}.
A successful STLS/STARTTLS gives {"pop3": "stls"} / {"imap": "starttls"} and ends the hints; an IMAP
PREAUTH greeting ends them with nothing to say.

The protocol and the server side come from the first line seen (a "+OK"/"-ERR" or "* " greeting, or
a client command), not from the port. IMAP literals ({n}) are skipped unread on both sides.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from typing import Final

from agent.hints.base import Fields, HintOptions
from agent.hints.ftp import LineReader, printable

NAME: Final = "mail"
PROTO: Final = "tcp"
PORTS: Final = frozenset({110, 143})
MAX_ATTEMPTS: Final = 32
MAX_PENDING: Final = 8
_POP3_VERBS: Final = frozenset({b"USER", b"PASS", b"APOP", b"AUTH", b"CAPA", b"STLS", b"QUIT", b"STAT",
                                b"LIST", b"RETR", b"UIDL", b"TOP", b"NOOP", b"RSET", b"DELE"})  # to detect
_POP3_VERB: Final = re.compile(rb"^[A-Z]{3,4}$")
_IMAP_OPENERS: Final = frozenset({b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"AUTHENTICATE", b"LOGIN",
                                  b"ID"})  # what a client may send before logging in
_TAG: Final = rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5e-\x7a\x7c-\x7e]+"
_IMAP_COMMAND: Final = re.compile(rb"^(" + _TAG + rb") ([A-Za-z]+)(?: (.*))?$")
_IMAP_STATUS: Final = re.compile(rb"^(" + _TAG + rb") (OK|NO|BAD)(?: |$)", re.IGNORECASE)
_LITERAL: Final = re.compile(rb"\{([0-9]{1,9})\+?\}$")
_ATOM_OR_QUOTED: Final = re.compile(rb'^(?:"((?:[^"\\]|\\.)*)"|([^\s"{(){}]+))(?: |$)')


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """TCP 110 or 143, or a POP3 / IMAP greeting on any port."""
    if proto != "tcp":
        return False
    return bool(PORTS & {a_port, b_port}) or payload.startswith((b"+OK ", b"* OK ", b"* PREAUTH "))


def start(options: HintOptions) -> MailFlow:
    return MailFlow(options)


class _Session:
    """What POP3 and IMAP share: the attempt count, the SASL state and the login hint."""

    login = ""

    def __init__(self, record_user: bool) -> None:
        self.done = False
        self._record_user = record_user
        self._attempts = 0
        self._user = ""
        self._mechanism = b""  # PLAIN or LOGIN while an authentication exchange is open
        self._step = 0  # SASL lines the client has sent in it
        self._turn = False  # the server sent "+": the next client line is SASL data

    def _open_sasl(self, mechanism: bytes, initial: bytes | None) -> None:
        self._mechanism, self._step, self._turn = mechanism, 0, False
        if initial is not None:
            self._sasl(b"" if initial == b"=" else initial)

    def _sasl(self, line: bytes) -> None:
        """One client SASL line: only the user part is ever decoded, and only with record_user."""
        self._turn = False
        if line == b"*":
            self._mechanism = b""
            return
        if self._record_user and self._step == 0:
            data = base64.b64decode(line, validate=True)
            if self._mechanism == b"PLAIN":
                parts = data.split(b"\0")
                if len(parts) != 3:
                    raise ValueError("bad SASL PLAIN message")
                data = parts[1]
            self._user = printable(data)
        self._step += 1

    def _sasl_sent_secret(self) -> bool:
        return bool(self._mechanism) and self._step >= (1 if self._mechanism == b"PLAIN" else 2)

    def _result(self, success: bool, found: list[Fields]) -> None:
        fields: Fields = {"login": self.login, "outcome": "success" if success else "failure"}
        if self._record_user and self._user:
            fields["user"] = self._user
        found.append(fields)
        self._attempts += 1
        if success:
            self.done = True
        elif self._attempts == MAX_ATTEMPTS:
            found.append({self.login: "attempt_bound", "attempts": MAX_ATTEMPTS})
            self.done = True

    def _unknown(self) -> Fields:
        fields: Fields = {"login": self.login, "outcome": "unknown"}
        if self._record_user and self._user:
            fields["user"] = self._user
        return fields


class _Pop3(_Session):
    login = "pop3"

    def __init__(self, record_user: bool) -> None:
        super().__init__(record_user)
        self._greeted = False
        self._body = False  # inside a multi-line response, until "."
        self._queue: deque[tuple[bytes, bool]] = deque()  # commands waiting: (verb, multi-line answer)

    def client(self, line: bytes) -> int:
        if self._turn:
            self._sasl(line)
            return 0
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        if not _POP3_VERB.match(verb):
            raise ValueError("not a POP3 command")
        if len(self._queue) == MAX_PENDING:
            raise ValueError("too many POP3 commands without an answer")
        arguments = argument.split()
        if verb == b"USER":
            self._user = printable(argument.strip()) if self._record_user else ""
        elif verb == b"AUTH" and arguments and arguments[0].upper() in (b"PLAIN", b"LOGIN"):
            self._open_sasl(arguments[0].upper(), arguments[1] if len(arguments) > 1 else None)
        multi = verb in (b"CAPA", b"RETR", b"TOP") or (verb in (b"AUTH", b"LIST", b"UIDL") and not arguments)
        self._queue.append((verb, multi))
        return 0

    def server(self, line: bytes, found: list[Fields]) -> int:
        if self._body:
            self._body = line != b"."
            return 0
        ok = line.startswith(b"+OK")
        if not (ok or line.startswith(b"-ERR")):
            if self._greeted and self._mechanism and (line == b"+" or line.startswith(b"+ ")):
                self._turn = True
                return 0
            raise ValueError("not a POP3 response")
        if not self._greeted:
            self._greeted = True
            return 0
        verb, multi = self._queue.popleft() if self._queue else (b"", False)
        self._body = ok and multi
        if verb == b"PASS" or (verb == b"AUTH" and self._sasl_sent_secret()):
            self._result(ok, found)
        elif verb == b"STLS" and ok:
            found.append({"pop3": "stls"})
            self.done = True
        if verb == b"AUTH":
            self._mechanism = b""
        return 0

    def close(self) -> list[Fields]:
        waiting = {verb for verb, _ in self._queue}
        if b"PASS" in waiting or (b"AUTH" in waiting and self._sasl_sent_secret()):
            return [self._unknown()]
        return []


class _Imap(_Session):
    login = "imap"

    def __init__(self, record_user: bool) -> None:
        super().__init__(record_user)
        self._greeted = False
        self._pending: dict[bytes, bytes] = {}  # tag -> LOGIN / AUTHENTICATE / STARTTLS
        self._auth_tag = b""
        self._continued = {True: False, False: False}  # a line goes on after a literal (by is_server)

    def client(self, line: bytes) -> int:
        if self._continued[False]:
            return self._literal(line, False)
        if self._turn:
            self._sasl(line)
            return 0
        match = _IMAP_COMMAND.match(line)
        if match is None:
            raise ValueError("not an IMAP command")
        tag, command, arguments = match[1], match[2].upper(), match[3] or b""
        if command in (b"LOGIN", b"AUTHENTICATE", b"STARTTLS"):
            if len(self._pending) == MAX_PENDING:
                raise ValueError("too many IMAP commands without an answer")
            self._pending[tag] = command
        if command == b"LOGIN" and self._record_user:
            user = _ATOM_OR_QUOTED.match(arguments)
            self._user = printable((user[1] or user[2]).replace(b"\\", b"")) if user else ""
        elif command == b"AUTHENTICATE":
            words = arguments.split()
            mechanism = words[0].upper() if words else b""
            if mechanism in (b"PLAIN", b"LOGIN"):
                self._auth_tag = tag
                self._open_sasl(mechanism, words[1] if len(words) > 1 else None)
        return self._literal(line, False)

    def server(self, line: bytes, found: list[Fields]) -> int:
        if self._continued[True]:
            return self._literal(line, True)
        if not self._greeted:
            if not line.startswith((b"* OK", b"* PREAUTH", b"* BYE")):
                raise ValueError("not an IMAP greeting")
            self._greeted = True
            self.done = line.startswith(b"* PREAUTH")
            return 0
        if line == b"+" or line.startswith(b"+ "):
            self._turn = self._auth_tag in self._pending and bool(self._mechanism)
            return 0
        if line.startswith(b"* "):
            return self._literal(line, True)
        match = _IMAP_STATUS.match(line)
        if match is None:
            raise ValueError("not an IMAP response")
        command = self._pending.pop(match[1], b"")
        ok = match[2].upper() == b"OK"
        if command == b"LOGIN" or (command == b"AUTHENTICATE" and self._sasl_sent_secret()):
            self._result(ok, found)
        elif command == b"STARTTLS" and ok:
            found.append({"imap": "starttls"})
            self.done = True
        if command == b"AUTHENTICATE":
            self._mechanism, self._turn = b"", False
        return 0

    def close(self) -> list[Fields]:
        waiting = set(self._pending.values())
        if b"LOGIN" in waiting or (b"AUTHENTICATE" in waiting and self._sasl_sent_secret()):
            return [self._unknown()]
        return []

    def _literal(self, line: bytes, is_server: bool) -> int:
        """Bytes of a literal announced at the end of `line`, to skip unread; the line goes on after it."""
        literal = _LITERAL.search(line)
        self._continued[is_server] = literal is not None
        return int(literal[1]) if literal else 0


def _detect(line: bytes, record_user: bool) -> tuple[_Pop3 | _Imap, bool]:
    """The session for a flow's first line, and whether that line came from the server."""
    if line.startswith((b"+OK", b"-ERR")):
        return _Pop3(record_user), True
    if line.startswith(b"* "):
        return _Imap(record_user), True
    if line.partition(b" ")[0].upper() in _POP3_VERBS:
        return _Pop3(record_user), False
    command = _IMAP_COMMAND.match(line)
    if command and command[2].upper() in _IMAP_OPENERS:
        return _Imap(record_user), False
    raise ValueError("neither POP3 nor IMAP")


class MailFlow:
    """Follows the logins of one POP3 or IMAP connection."""

    def __init__(self, options: HintOptions) -> None:
        self.done = False
        self._record_user = options.record_user
        self._readers = {True: LineReader(), False: LineReader()}
        self._server_is_a = True
        self._session: _Pop3 | _Imap | None = None

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        reader = self._readers[from_a]
        reader.feed(payload)
        found: list[Fields] = []
        while not self.done and (line := reader.next_line()) is not None:
            if self._session is None:
                if not line:
                    continue
                self._session, from_server = _detect(line, self._record_user)
                self._server_is_a = from_a == from_server
            if from_a == self._server_is_a:
                skip = self._session.server(line, found)
            else:
                skip = self._session.client(line)
            reader.skip(skip)
            self.done = self._session.done
        return found

    def close(self) -> list[Fields]:
        found = self._session.close() if self._session is not None and not self.done else []
        self.done = True
        return found
