"""Telnet: that someone logged in over cleartext and whether it worked, never the password.

The server prompts "login:" (or "Username:") and then "Password:"; the client's keystrokes come one
per segment (character mode, echoed by the server) or a line at a time (linemode). Telnet commands
(IAC ...) are stripped on both sides. The user name is assembled from the keystrokes between the
login prompt and CR/LF, and kept only with record_user. Password keystrokes are dropped as they come:
only the CR/LF that ends them is looked for. An attempt is a password line sent. Its outcome is
"success" on "Last login" (checked first); "failure" on "incorrect", "authentication/login failed",
"denied", "invalid" or a new login or password prompt; else "success" on "Welcome" or a shell prompt
("$ ", "# ", "> ", "% ") at the end of what the server sent; "unknown" from close(). The server is
the side that sent the first prompt. At most MAX_ATTEMPTS per flow, then
{"telnet": "attempt_bound", "attempts": MAX_ATTEMPTS}.
"""

from __future__ import annotations

import re
from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "telnet"
PROTO: Final = "tcp"
PORT: Final = 23
HEAD_PACKETS: Final = 64  # a login typed one key per segment takes ~30 client segments (flowhead.py)
MAX_ATTEMPTS: Final = 32
MAX_USER: Final = 64
MAX_TEXT: Final = 512  # server text kept to find a prompt or a verdict
MAX_SUBNEGOTIATION: Final = 1024
_IAC, _SB, _SE = 0xFF, 0xFA, 0xF0
_OPTION_COMMANDS: Final = frozenset({0xFB, 0xFC, 0xFD, 0xFE})  # WILL WONT DO DONT
_LOGIN: Final = re.compile(r"(login|username|user name)\s*:\s*$")
_PASSWORD: Final = re.compile(r"password\s*:\s*$")
_FAILURE: Final = re.compile(r"incorrect|(authentication|login) failed|denied|invalid"
                             r"|(login|username|user name|password)\s*:\s*$")
_SUCCESS: Final = re.compile(r"welcome|[$#>%] ?$")
_IDLE, _USER, _PASS, _VERDICT = range(4)


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """TCP 23, or a first payload that opens with a telnet option negotiation (IAC WILL/WONT/DO/DONT)."""
    if proto != "tcp":
        return False
    negotiation = len(payload) >= 3 and payload[0] == _IAC and payload[1] in _OPTION_COMMANDS
    return PORT in (a_port, b_port) or negotiation


def start(options: HintOptions) -> TelnetFlow:
    return TelnetFlow(options)


class _Unescaper:
    """Strips telnet commands from one direction, keeping its state across segments."""

    def __init__(self) -> None:
        self._state = 0  # 0 data, 1 after IAC, 2 option byte due, 3 in SB, 4 IAC in SB
        self._sb_length = 0

    def data(self, payload: bytes) -> bytes:
        if self._state == 0 and _IAC not in payload:
            return payload
        out = bytearray()
        for byte in payload:
            state = self._state
            if state == 0:
                if byte == _IAC:
                    self._state = 1
                else:
                    out.append(byte)
            elif state == 1:
                if byte == _IAC:
                    out.append(byte)
                    self._state = 0
                elif byte < _SE:
                    raise ValueError("IAC followed by a byte that is no telnet command")
                elif byte in _OPTION_COMMANDS:
                    self._state = 2
                elif byte == _SB:
                    self._state, self._sb_length = 3, 0
                else:
                    self._state = 0
            elif state == 2:
                self._state = 0
            else:
                self._sb_length += 1
                if self._sb_length > MAX_SUBNEGOTIATION:
                    raise ValueError("telnet subnegotiation without an end")
                if state == 4:
                    self._state = 0 if byte == _SE else 3
                elif byte == _IAC:
                    self._state = 4
        return bytes(out)


def _judge(text: str) -> bool | None:
    """Whether the server's words after a password mean success, failure, or not yet known (None)."""
    if "last login" in text:
        return True
    if _FAILURE.search(text):
        return False
    return True if _SUCCESS.search(text) else None


class TelnetFlow:
    """Follows the login dialogue of one telnet connection."""

    def __init__(self, options: HintOptions) -> None:
        self.done = False
        self._record_user = options.record_user
        self._unescapers = {True: _Unescaper(), False: _Unescaper()}
        self._server_is_a: bool | None = None
        self._text = {True: "", False: ""}  # recent server text, per side until the server is known
        self._state = _IDLE
        self._user = bytearray()
        self._user_too_long = False
        self._attempts = 0

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        data = self._unescapers[from_a].data(payload)
        found: list[Fields] = []
        if not data or self.done:
            return found
        if self._server_is_a is None or from_a == self._server_is_a:
            self._server_text(data, from_a, found)
        else:
            self._keystrokes(data, found)
        return found

    def close(self) -> list[Fields]:
        found = [self._login("unknown")] if self._state == _VERDICT and not self.done else []
        self.done = True
        return found

    def _server_text(self, data: bytes, from_a: bool, found: list[Fields]) -> None:
        text = (self._text[from_a] + data.decode("latin-1").replace("\0", "").lower())[-MAX_TEXT:]
        self._text[from_a] = text
        if self._state == _VERDICT:
            success = _judge(text)
            if success is None:
                return
            self._verdict(success, found)
            if self.done:
                return
        if _PASSWORD.search(text):
            self._prompted(from_a, _PASS)
        elif _LOGIN.search(text):
            self._prompted(from_a, _USER)

    def _prompted(self, from_a: bool, state: int) -> None:
        self._server_is_a = from_a
        self._text = {True: "", False: ""}
        self._state = state
        if state == _USER:
            self._user.clear()
            self._user_too_long = False

    def _keystrokes(self, data: bytes, found: list[Fields]) -> None:
        for byte in data:
            if self._state == _USER:
                self._user_key(byte)
            elif self._state == _PASS and byte in b"\r\n":
                self._state = _VERDICT  # the password itself was never stored
                self._text = {True: "", False: ""}

    def _user_key(self, byte: int) -> None:
        if byte in b"\r\n":
            self._state = _IDLE
        elif byte in (0x08, 0x7F):
            if self._user:
                self._user.pop()
        elif 0x20 <= byte < 0x7F:
            if len(self._user) < MAX_USER:
                self._user.append(byte)
            else:
                self._user_too_long = True

    def _verdict(self, success: bool, found: list[Fields]) -> None:
        found.append(self._login("success" if success else "failure"))
        self._attempts += 1
        self._state = _IDLE
        if success:
            self.done = True
        elif self._attempts == MAX_ATTEMPTS:
            found.append({"telnet": "attempt_bound", "attempts": MAX_ATTEMPTS})
            self.done = True

    def _login(self, outcome: str) -> Fields:
        fields: Fields = {"login": "telnet", "outcome": outcome}
        if self._record_user and self._user and not self._user_too_long:
            fields["user"] = self._user.decode("ascii")
        return fields
