"""cleartext_credentials: a login sent in the clear (telnet, FTP, POP3/IMAP, SNMP, MQTT, HTTP Basic/form).

The login hinters emit {"login": protocol, "outcome": success | failure | unknown} once per login,
never the secret, and the user name only when the site switched `hints.record_user` on. One finding
per (client, server, protocol): the engine's de-duplication keeps it to one per suppression window,
so a brute force of thirty attempts is one cleartext finding (the attempts are brute_force's job).
A successful login is high (a working secret crossed the ward in the clear), anything else medium.
The user name, when the hint carried it, goes into the evidence only, never into the sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.detectors.base import Context, Device
from agent.detectors.bruteforce import LOGIN_APPS
from agent.detectors.common import describe, make_finding
from agent.records import Finding, FlowRecord, ProtoHint

NAME: Final = "cleartext_credentials"
PROTOCOLS: Final = {"telnet": "Telnet", "ftp": "FTP", "pop3": "POP3", "imap": "IMAP",
                    "snmp": "SNMP community", "mqtt": "MQTT", "http_basic": "HTTP Basic",
                    "http_form": "HTTP form"}
_OUTCOMES: Final = {"success": "succeeded", "failure": "failed", "unknown": "outcome unknown"}


@dataclass(frozen=True, slots=True)
class Settings:
    ignore: tuple[str, ...] = ()  # login protocols a site accepts in the clear (e.g. "snmp")

    def problems(self) -> list[str]:
        unknown = [p for p in self.ignore if p not in PROTOCOLS]
        known = ", ".join(PROTOCOLS)
        return [f"ignore: unknown protocol {', '.join(unknown)} (known: {known})"] if unknown else []


def make(settings: Settings, context: Context) -> CredentialsDetector:
    return CredentialsDetector(settings, context)


class CredentialsDetector:
    """One finding per cleartext login hint; the engine de-duplicates by (client, server, protocol)."""

    hint_apps: Final = LOGIN_APPS  # the engine hands this detector only these hints
    takes_flows: Final = False  # ... and no flows
    takes_devices: Final = False  # ... nor device deltas

    def __init__(self, settings: Settings, context: Context) -> None:
        self._ignore = frozenset(settings.ignore)
        self._context = context

    def on_flow(self, flow: FlowRecord) -> list[Finding]:
        return []

    def on_hint(self, hint: ProtoHint) -> list[Finding]:
        fields = hint.fields
        login = fields.get("login")
        if not isinstance(login, str) or login in self._ignore or hint.src_ip is None or hint.dst_ip is None:
            return []
        if hint.initiator:
            client, client_port, server, port, mac = hint.src_ip, hint.src_port, hint.dst_ip, hint.dst_port, \
                hint.src_mac
        else:
            client, client_port, server, port, mac = hint.dst_ip, hint.dst_port, hint.src_ip, hint.src_port, \
                hint.dst_mac
        outcome = fields.get("outcome")
        outcome = outcome if isinstance(outcome, str) and outcome in _OUTCOMES else "unknown"
        name = PROTOCOLS.get(login, login)
        summary = (f"Cleartext {name} login ({_OUTCOMES[str(outcome)]}) from "
                   f"{describe(self._context, client)} to {describe(self._context, server)}:{port}")
        evidence: dict[str, object] = {"protocol": login, "outcome": outcome}
        user = fields.get("user")
        if isinstance(user, str):
            evidence["user"] = user
        severity = "high" if outcome == "success" else "medium"
        return [make_finding(self._context, "cleartext_credentials", severity, hint.ts, client, server,
                             summary, evidence, f"cleartext_credentials:{client}->{server}:{login}",
                             src_port=client_port, dst_port=port, proto=hint.proto, device=mac,
                             clinical=False)]

    def on_device(self, device: Device) -> list[Finding]:
        return []

    def tick(self, now: float) -> list[Finding]:
        return []
