"""agent.hints.mail: POP3 and IMAP logins (plain and SASL), outcomes, never the password."""

from __future__ import annotations

import base64
import json

import pytest

from agent.hints import mail
from agent.hints.base import Fields, HintOptions

Session = list[tuple[bool, bytes]]
POP3_HELLO = (False, b"+OK POP3 ready\r\n")
IMAP_HELLO = (False, b"* OK IMAP4rev1 ready\r\n")


def _run(session: Session, record_user: bool = False) -> list[Fields]:
    flow = mail.start(HintOptions(record_user=record_user))
    found: list[Fields] = []
    for from_a, payload in session:
        if not flow.done:
            found += flow.feed(payload, from_a)
    return found + flow.close()


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_pop3_user_pass_success() -> None:
    """USER/PASS answered +OK is a successful pop3 login; the user only with record_user."""
    session = [POP3_HELLO, (True, b"USER nurse\r\n"), (False, b"+OK\r\n"), (True, b"PASS hunter2\r\n"),
               (False, b"+OK Logged in\r\n")]
    assert _run(session) == [{"login": "pop3", "outcome": "success"}]
    found = _run(session, record_user=True)
    assert found == [{"login": "pop3", "outcome": "success", "user": "nurse"}]
    assert "hunter2" not in json.dumps(found)


def test_pop3_apop_is_not_cleartext() -> None:
    """APOP sends a digest, not a password: no login hint."""
    session = [(False, b"+OK <1.2@ward>\r\n"), (True, b"APOP nurse 0123abcd\r\n"), (False, b"+OK\r\n")]
    assert _run(session) == []


def test_pop3_auth_login_reads_the_user_from_base64() -> None:
    """AUTH LOGIN: user and password each after a '+ ' challenge; the user decoded, the password not kept."""
    session = [POP3_HELLO, (True, b"AUTH LOGIN\r\n"), (False, b"+ VXNlcm5hbWU6\r\n"),
               (True, _b64(b"nurse") + b"\r\n"), (False, b"+ UGFzc3dvcmQ6\r\n"),
               (True, _b64(b"hunter2") + b"\r\n"), (False, b"-ERR no\r\n")]
    assert _run(session, record_user=True) == [{"login": "pop3", "outcome": "failure", "user": "nurse"}]


def test_pop3_auth_plain_initial_response() -> None:
    """AUTH PLAIN with its credentials on the command line counts at once."""
    session = [POP3_HELLO, (True, b"AUTH PLAIN " + _b64(b"\0nurse\0hunter2") + b"\r\n"), (False, b"+OK\r\n")]
    assert _run(session, record_user=True) == [{"login": "pop3", "outcome": "success", "user": "nurse"}]


def test_cancelled_sasl_is_no_attempt() -> None:
    """A SASL exchange cancelled with '*' before its secret part gives nothing."""
    session = [POP3_HELLO, (True, b"AUTH LOGIN\r\n"), (False, b"+ VXNlcm5hbWU6\r\n"), (True, b"*\r\n"),
               (False, b"-ERR cancelled\r\n")]
    assert _run(session) == []


def test_pop3_multiline_answers_are_skipped() -> None:
    """A CAPA list (even with a '+OK' line inside) does not settle the PASS that follows."""
    session = [POP3_HELLO, (True, b"CAPA\r\nUSER nurse\r\nPASS x\r\n"),
               (False, b"+OK\r\n-ERR\r\n+OK\r\n.\r\n"), (False, b"+OK\r\n-ERR denied\r\n")]
    assert _run(session) == [{"login": "pop3", "outcome": "failure"}]


def test_pop3_stls_ends_the_hints() -> None:
    """STLS accepted: the rest is encrypted."""
    session = [POP3_HELLO, (True, b"STLS\r\n"), (False, b"+OK Begin TLS\r\n"), (True, b"\x16\x03\x01")]
    assert _run(session) == [{"pop3": "stls"}]


def test_pop3_attempts_are_bounded() -> None:
    """After MAX_ATTEMPTS failed passwords the bound is reported once."""
    attempt = [(True, b"USER a\r\nPASS b\r\n"), (False, b"+OK\r\n-ERR\r\n")]
    session = [POP3_HELLO, *(attempt * (mail.MAX_ATTEMPTS + 3))]
    found = _run(session)
    assert found.count({"login": "pop3", "outcome": "failure"}) == mail.MAX_ATTEMPTS
    assert found[-1] == {"pop3": "attempt_bound", "attempts": mail.MAX_ATTEMPTS}


def test_imap_login_with_quoted_user() -> None:
    """A LOGIN answered by its tag's OK is a success; untagged lines and other tags do not settle it."""
    session = [IMAP_HELLO, (True, b'a1 CAPABILITY\r\na2 LOGIN "nurse" "pw x"\r\n'),
               (False, b"* CAPABILITY IMAP4rev1\r\na1 OK done\r\n"),
               (False, b"a2 OK [CAPABILITY X] Logged in\r\n")]
    assert _run(session, record_user=True) == [{"login": "imap", "outcome": "success", "user": "nurse"}]


def test_imap_login_with_literals() -> None:
    """Literals are skipped unread: a LOGIN whose user and password are literals still gets its outcome."""
    session = [IMAP_HELLO, (True, b"a1 LOGIN {5}\r\n"), (False, b"+ go\r\n"), (True, b"nurse {7}\r\n"),
               (False, b"+ go\r\n"), (True, b"a9 OK x\r\n"), (False, b"a1 NO [AUTHENTICATIONFAILED] no\r\n")]
    assert _run(session, record_user=True) == [{"login": "imap", "outcome": "failure"}]


def test_imap_authenticate_plain_with_initial_response() -> None:
    """AUTHENTICATE PLAIN with SASL-IR is one attempt, settled by its tag."""
    session = [IMAP_HELLO, (True, b"x AUTHENTICATE PLAIN " + _b64(b"\0nurse\0pw") + b"\r\n"),
               (False, b"x NO\r\n")]
    assert _run(session, record_user=True) == [{"login": "imap", "outcome": "failure", "user": "nurse"}]


def test_imap_starttls_and_preauth_end_the_hints() -> None:
    """STARTTLS accepted gives a hint and stops; a PREAUTH greeting stops with nothing."""
    assert _run([IMAP_HELLO, (True, b"t STARTTLS\r\n"), (False, b"t OK go\r\n")]) == [{"imap": "starttls"}]
    assert _run([(False, b"* PREAUTH welcome\r\n"), (True, b"a LOGIN x y\r\n"), (False, b"a OK\r\n")]) == []


def test_login_without_answer_is_unknown() -> None:
    """A LOGIN sent and never answered gives 'unknown' at close."""
    assert _run([IMAP_HELLO, (True, b"a LOGIN nurse pw\r\n")]) == [{"login": "imap", "outcome": "unknown"}]


@pytest.mark.parametrize("session", [
    [(False, b"220 smtp ready\r\n")],
    [(False, b"* OK hi\r\n"), (False, b"junk reply\r\n")],
    [(True, b"(bad tag\r\n")],
    [POP3_HELLO, (True, b"AUTH PLAIN !!notbase64\r\n")],
])
def test_garbage_is_refused(session: Session) -> None:
    """A foreign greeting, a malformed IMAP line or bad base64 SASL data is a parse error."""
    with pytest.raises(ValueError):
        _run(session, record_user=True)


def test_accepts_ports_or_greetings() -> None:
    """Ports 110 and 143, or a POP3/IMAP greeting on any port."""
    assert mail.accepts("tcp", 40000, 110, b"USER x\r\n", True)
    assert mail.accepts("tcp", 40000, 143, b"a LOGIN x y\r\n", True)
    assert mail.accepts("tcp", 40000, 1143, b"* OK ready\r\n", False)
    assert not mail.accepts("tcp", 40000, 8080, b"GET / HTTP/1.1\r\n", True)
