"""agent.hints.telnet: login prompts, keystrokes and verdicts; the password is never kept."""

from __future__ import annotations

import pytest

from agent.hints import telnet
from agent.hints.base import Fields, HintOptions

Session = list[tuple[bool, bytes]]


def _run(session: Session, record_user: bool = False) -> list[Fields]:
    flow = telnet.start(HintOptions(record_user=record_user))
    found: list[Fields] = []
    for from_a, payload in session:
        if not flow.done:
            found += flow.feed(payload, from_a)
    return found + flow.close()


def _attempt(user: bytes, password: bytes, verdict: bytes) -> Session:
    """One login in character mode: the user echoed key by key, the password not echoed."""
    session: Session = [(False, b"\r\nlogin: ")]
    for key in user + b"\r":
        session += [(True, bytes([key])), (False, bytes([key]))]
    session += [(False, b"\nPassword: "), *[(True, bytes([key])) for key in password], (True, b"\r\0")]
    return [*session, (False, verdict)]


def test_failure_then_success() -> None:
    """'Login incorrect' ends the first attempt, a shell prompt after the second is success."""
    session = _attempt(b"nurse", b"wrong1", b"\r\nLogin incorrect\r\n")
    session += _attempt(b"nurse", b"right2", b"\r\n$ ")
    assert _run(session) == [{"login": "telnet", "outcome": "failure"},
                             {"login": "telnet", "outcome": "success"}]


def test_authentication_failed_is_a_failure() -> None:
    """A device that answers 'Authentication failed' reports a failed login."""
    assert _run(_attempt(b"admin", b"x", b"\r\n% Authentication failed\r\n")) == [
        {"login": "telnet", "outcome": "failure"}]


def test_last_login_wins_over_failed_login_notice() -> None:
    """'Last failed login' notices after a good login do not turn it into a failure."""
    verdict = b"\r\nLast failed login: Mon from 10.0.0.9\r\nLast login: Tue from 10.0.0.8\r\n"
    assert _run(_attempt(b"admin", b"x", verdict))[0]["outcome"] == "success"


def test_close_before_the_verdict_is_unknown() -> None:
    """A password sent and the flow closed before any verdict gives 'unknown'."""
    assert _run(_attempt(b"nurse", b"pw", b"\r\n")) == [{"login": "telnet", "outcome": "unknown"}]


def test_no_password_no_login() -> None:
    """A login prompt answered with a user name only is no credential sent."""
    assert _run([(False, b"login: "), (True, b"nurse\r\n"), (False, b"\r\nPassword:")]) == []


def test_user_name_is_assembled_from_keystrokes() -> None:
    """Backspace edits the name and telnet commands inside the keystrokes are stripped."""
    session = [(False, b"Username: "), (True, b"nx\x7f"), (True, b"u\xff\xfd\x01rs"), (True, b"e\r\n"),
               (False, b"Password: "), (True, b"pw\r\n"), (False, b"\r\nWelcome\r\n")]
    assert _run(session, record_user=True) == [{"login": "telnet", "outcome": "success", "user": "nurse"}]


def test_over_long_user_name_is_not_recorded() -> None:
    """A user name beyond MAX_USER characters is left out, the login still counts."""
    found = _run(_attempt(b"u" * (telnet.MAX_USER + 1), b"pw", b"\r\n# "), record_user=True)
    assert found == [{"login": "telnet", "outcome": "success"}]


def test_password_prompt_alone_counts() -> None:
    """A device asking only for a password still shows a cleartext login."""
    assert _run([(False, b"Password: "), (True, b"1234\r\n"), (False, b"\r\nrouter> ")]) == [
        {"login": "telnet", "outcome": "success"}]


def test_server_on_side_a_is_found_by_its_prompt() -> None:
    """Roles come from who prompts: a flow seen from its middle (server as side a) still works."""
    attempt = _attempt(b"nurse", b"pw", b"\r\nLogin incorrect\r\n")
    session = [(not from_a, payload) for from_a, payload in attempt]
    assert _run(session, record_user=True) == [{"login": "telnet", "outcome": "failure", "user": "nurse"}]


def test_attempts_are_bounded() -> None:
    """After MAX_ATTEMPTS failures the hinter reports the bound once and is done."""
    flow = telnet.start(HintOptions())
    found: list[Fields] = []
    for _ in range(telnet.MAX_ATTEMPTS + 5):
        for from_a, payload in _attempt(b"root", b"guess", b"\r\nLogin incorrect\r\n"):
            if not flow.done:
                found += flow.feed(payload, from_a)
    assert found.count({"login": "telnet", "outcome": "failure"}) == telnet.MAX_ATTEMPTS
    assert found[-1] == {"telnet": "attempt_bound", "attempts": telnet.MAX_ATTEMPTS} and flow.done


@pytest.mark.parametrize("payload", [b"\xff\x10", b"\xff\xfa\x18" + b"x" * (telnet.MAX_SUBNEGOTIATION + 1)])
def test_bad_telnet_commands_are_refused(payload: bytes) -> None:
    """IAC with a non-command byte, or a subnegotiation without its end, is a parse error."""
    with pytest.raises(ValueError):
        telnet.start(HintOptions()).feed(payload, False)


def test_accepts_port_23_or_option_negotiation() -> None:
    """Port 23 or a leading IAC WILL/WONT/DO/DONT; not plain text elsewhere, not UDP."""
    assert telnet.accepts("tcp", 40000, 23, b"", True)
    assert telnet.accepts("tcp", 40000, 2323, b"\xff\xfd\x18", False)
    assert not telnet.accepts("tcp", 40000, 2323, b"login: ", False)
    assert not telnet.accepts("udp", 40000, 23, b"\xff\xfd\x18", False)
