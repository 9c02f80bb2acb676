"""agent.hints.ftp: one hint per USER/PASS attempt, bounded, a banner hint, never the password."""

from __future__ import annotations

import pytest

from agent.hints import ftp
from agent.hints.base import Fields, HintOptions

Session = list[tuple[bool, bytes]]
BANNER = (False, b"220 ProFTPD Server (Ward NAS)\r\n")


def _run(session: Session, record_user: bool = False) -> list[Fields]:
    flow = ftp.start(HintOptions(record_user=record_user))
    found: list[Fields] = []
    for from_a, payload in session:
        if not flow.done:
            found += flow.feed(payload, from_a)
    return found + flow.close()


def _attempt(reply: bytes, user: bytes = b"nurse") -> Session:
    return [(True, b"USER " + user + b"\r\n"), (False, b"331 Password required\r\n"), (True, b"PASS pw\r\n"),
            (False, reply)]


def test_banner_and_successful_login() -> None:
    """The 220 greeting names the server software; 230 after PASS is a success, and the hinter is done."""
    flow = ftp.start(HintOptions(record_user=True))
    session = [BANNER, *_attempt(b"230 OK\r\n")]
    found = [hint for from_a, payload in session for hint in flow.feed(payload, from_a)]
    assert found == [{"ftp": "banner", "server": "ProFTPD Server (Ward NAS)"},
                     {"login": "ftp", "outcome": "success", "user": "nurse"}]
    assert flow.done


def test_multiline_banner_gives_its_first_line_only() -> None:
    """A 220- greeting: the printable ASCII of its first line, cut at MAX_TEXT characters."""
    greeting = b"220-Welcome \xe9to " + b"x" * 80 + b"\r\n Ward 7 only\r\n220 ready\r\n"
    [banner] = _run([(False, greeting)])
    assert banner == {"ftp": "banner", "server": ("Welcome to " + "x" * 80)[:ftp.MAX_TEXT]}


def test_every_failure_is_one_hint() -> None:
    """Three 530 answers give three failure hints."""
    found = _run([BANNER, *(_attempt(b"530 Login incorrect.\r\n") * 3)])
    assert found[1:] == [{"login": "ftp", "outcome": "failure"}] * 3


def test_attempts_are_bounded() -> None:
    """After MAX_ATTEMPTS attempts the bound is reported once and the hinter is done."""
    flow = ftp.start(HintOptions())
    found: list[Fields] = []
    for from_a, payload in [BANNER, *(_attempt(b"530 Login incorrect.\r\n") * (ftp.MAX_ATTEMPTS + 8))]:
        if not flow.done:
            found += flow.feed(payload, from_a)
    assert found.count({"login": "ftp", "outcome": "failure"}) == ftp.MAX_ATTEMPTS
    assert found[-1] == {"ftp": "attempt_bound", "attempts": ftp.MAX_ATTEMPTS} and flow.done


def test_retransmitted_reply_is_not_a_second_attempt() -> None:
    """A 530 seen twice (TCP retransmission) settles one PASS only."""
    session = [BANNER, *_attempt(b"530 Login incorrect.\r\n"), (False, b"530 Login incorrect.\r\n")]
    assert _run(session)[1:] == [{"login": "ftp", "outcome": "failure"}]


def test_account_request_keeps_waiting() -> None:
    """332 (account needed) after PASS does not settle it; the later 230 does."""
    session = [BANNER, *_attempt(b"332 Need account\r\n"), (True, b"ACCT ward\r\n"), (False, b"230 OK\r\n")]
    assert _run(session)[1:] == [{"login": "ftp", "outcome": "success"}]


def test_pass_without_reply_is_unknown() -> None:
    """A PASS whose reply never came gives 'unknown' at close."""
    assert _run([BANNER, *_attempt(b"")])[1:] == [{"login": "ftp", "outcome": "unknown"}]


def test_anonymous_login_is_no_credential() -> None:
    """USER anonymous gives an 'anonymous' hint, not a cleartext login."""
    assert _run([BANNER, *_attempt(b"230 Guest login ok\r\n", user=b"anonymous")], record_user=True)[1:] == [
        {"ftp": "anonymous", "outcome": "success"}]


def test_auth_tls_ends_the_hints() -> None:
    """A 234 answer to AUTH TLS: the rest is encrypted, the hinter says so and stops."""
    flow = ftp.start(HintOptions())
    flow.feed(BANNER[1], False)
    flow.feed(b"AUTH TLS\r\n", True)
    assert flow.feed(b"234 Proceed with negotiation.\r\n", False) == [{"ftp": "auth_tls"}] and flow.done


def test_server_on_side_a_is_found_by_its_reply_codes() -> None:
    """Roles come from the content: reply codes from side a make side a the server."""
    session = [(not from_a, payload) for from_a, payload in [BANNER, *_attempt(b"530 No\r\n")]]
    assert _run(session)[1:] == [{"login": "ftp", "outcome": "failure"}]


@pytest.mark.parametrize("session", [
    [(False, b"HTTP/1.1 200 OK\r\n")],
    [BANNER, (True, b"\x16\x03\x01\x02\x00\r\n")],
    [BANNER, (True, b"USER " + b"x" * ftp.MAX_LINE)],
    [BANNER, (True, b"1234 not a command\r\n")],
])
def test_garbage_is_refused(session: Session) -> None:
    """A non-FTP reply, binary bytes, an over-long line or a non-command is a parse error."""
    with pytest.raises(ValueError):
        _run(session)


def test_accepts_port_21_or_an_ftp_greeting() -> None:
    """Port 21, or a 220 greeting naming FTP on another port; an SMTP greeting is not FTP."""
    assert ftp.accepts("tcp", 40000, 21, b"USER x\r\n", True)
    assert ftp.accepts("tcp", 40000, 2121, b"220 (vsFTPd 3.0.3) FTP\r\n", False)
    assert not ftp.accepts("tcp", 40000, 2525, b"220 mail.example ESMTP FTP-free\r\n", False)
    assert not ftp.accepts("udp", 40000, 21, b"", True)
