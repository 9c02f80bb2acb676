"""What each kind of protocol hint teaches the inventory about its sender and receiver.

Hints are dispatched on their allow-listed field keys first (a login, a DICOM PDU, a TLS hello ...,
whatever hinter produced them), then on the hinter's name. Missing or ill-typed keys are ignored:
hinters evolve, the inventory must not fall over. Orientation: a hint's `src` sent the message and
`initiator` says whether it opened the flow, so the server side of a hint is `dst` when the sender
initiated and `src` otherwise. User names in login hints are never stored here. Naming and address
hints (ARP, DHCP, mDNS, NBNS, SSDP, LLDP, CDP) are handled in agent.inventory_names.

Cost: `apply` runs once per hint (a DNS-heavy ward makes one per message), so dispatch is one set
test for the common hints that carry none of the dispatch keys, and `add` returns early, without
touching the device, when the value is already known (most hints repeat what a device said before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from agent.inventory_device import DeviceState
from agent.inventory_names import arp, cdp, dhcp, dns, lldp, nbns, ssdp, text
from agent.records import Counters, ProtoHint

MAX_TEXT: Final = 160  # software strings are cut to this many characters
_SMB1_DIALECTS: Final = frozenset({"NT LM 0.12", "SMB1", "SMB 1", "NT LANMAN 1.0", "LANMAN2.1"})


class _Owner(Protocol):
    counters: Counters

    def device(self, mac: str | None, ip: str | None, local: bool, first: float,
               last: float) -> DeviceState | None: ...

    def is_local(self, ip: str | None) -> bool: ...


Handler = Callable[["HintApplier", ProtoHint, "DeviceState | None", "DeviceState | None"], None]


class HintApplier:
    """Applies hints to devices; holds the inventory only to create devices and count drops."""

    def __init__(self, owner: _Owner) -> None:
        self.owner = owner

    def apply(self, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
        fields = hint.fields
        handler = None if _KEYS.isdisjoint(fields) else _by_key(fields)
        if handler is None:
            handler = _BY_APP.get(hint.app)
        self._label_service(hint, src, dst)
        if handler is None:
            self.owner.counters.add("inventory.hints_unused")
            return
        handler(self, hint, src, dst)

    def add(self, device: DeviceState | None, key: str, value: Any, table: str = "software") -> None:
        """A text value under key in one of the device's bounded tables; drops are counted.

        Whitespace runs become one space and the text is cut at MAX_TEXT; booleans are no text.
        """
        if device is None:
            return
        if type(value) is not str:  # the common case first; then the exact rule for the others
            if not isinstance(value, str | int) or isinstance(value, bool):
                return
            value = str(value)
        values = getattr(device, table)
        known = values.get(key)
        if known is not None and value in known:  # what is stored is normalised, so this value is too
            return
        text = " ".join(value.split())[:MAX_TEXT]
        if text and not device.add_value(values, key, text):
            self.owner.counters.add("inventory.values_dropped")

    def add_all(self, device: DeviceState | None, key: str, values: Any, table: str = "software") -> None:
        for value in values if isinstance(values, list) else [values]:
            self.add(device, key, value, table)

    def _label_service(self, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
        """Name the server port of the hint's flow after the hinter, on both sides.

        The server port is the receiver's when the sender opened the flow, unless the other port is a
        lower well-known one (a DHCP reply opens its own flow from port 67 to 68).
        """
        proto = "tcp" if hint.proto == "tcp" else "udp" if hint.proto == "udp" else None
        if proto is None:
            return
        port, other = (hint.dst_port, hint.src_port) if hint.initiator else (hint.src_port, hint.dst_port)
        if 0 < other < 1024 and other < port:
            port = other
        if not port:
            return
        service = (proto, port)
        for device in (src, dst):
            if device is not None:
                device.set_app(service, hint.app)


def _sides(hint: ProtoHint, src: DeviceState | None,
           dst: DeviceState | None) -> tuple[DeviceState | None, DeviceState | None]:
    """(client, server) of the hint's flow."""
    return (src, dst) if hint.initiator else (dst, src)


def _http(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    if hint.fields.get("http") == "request":
        ap.add(src, "http_user_agent", hint.fields.get("user_agent"))
    else:
        ap.add(src, "http_server", hint.fields.get("server"))


def _tls(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    f = hint.fields
    if f.get("tls") == "client_hello":
        ap.add_all(src, "tls_offered", f.get("versions", []))
        ap.add(src, "tls_ja4", f.get("ja4"))
    elif f.get("tls") == "server_hello":
        for device in (src, dst):
            ap.add(device, "tls_negotiated", f.get("version"))


def _smb(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    f = hint.fields
    if f.get("smb") == "negotiate_request":
        dialects = f.get("dialects")
        offered = isinstance(dialects, list) and any(str(d) in _SMB1_DIALECTS for d in dialects)
        if f.get("smb1_offered") is True or offered:
            ap.add(src, "smb1", "offered")
    else:  # a negotiate response, or an SMB1 session seen without its negotiation
        dialect = f.get("dialect")
        smb1 = f.get("smb1") is True or str(dialect) in _SMB1_DIALECTS
        for device in (src, dst):
            ap.add(device, "smb_dialect", dialect)
            if smb1:
                ap.add(device, "smb1", "negotiated")


def _login(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    f = hint.fields
    protocol, outcome = text(f.get("login")), text(f.get("outcome"))
    if not protocol:
        return
    client, server = _sides(hint, src, dst)
    for device, side in ((client, "client"), (server, "server")):
        if device is not None:
            device.count_login(protocol, side, outcome)
            if protocol == "snmp":
                ap.add(device, "snmp_versions", f.get("version"))


def _ftp(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    if hint.fields.get("ftp") == "banner":
        ap.add(_sides(hint, src, dst)[1], "ftp_banner", hint.fields.get("server"))


def _dicom(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    """Requester = SCU (calling AE, services asked for); acceptor = SCP (called AE, services accepted)."""
    f = hint.fields
    implementation = " ".join(text(f.get(k)) for k in ("implementation_uid", "implementation_version"))
    implementation = implementation.strip()
    if f.get("dicom") == "associate_rq":
        ap.add(src, "ae_titles_scu", f.get("calling_ae"), "dicom")
        ap.add(dst, "ae_titles_scp", f.get("called_ae"), "dicom")
        ap.add_all(src, "services_used", f.get("services", []), "dicom")
        ap.add(src, "implementations", implementation, "dicom")
    elif f.get("dicom") == "associate_ac":
        ap.add_all(src, "services_provided", f.get("accepted_services", []), "dicom")
        ap.add(src, "implementations", implementation, "dicom")
    elif f.get("dicom") == "associate_rj":
        ap.add(dst, "rejected_by_peer", f.get("reason", "rejected"), "dicom")


def _hl7(ap: HintApplier, hint: ProtoHint, src: DeviceState | None, dst: DeviceState | None) -> None:
    """The sender owns MSH-3/4, the receiver MSH-5/6; a non-ACK message makes the sender a peer."""
    f = hint.fields
    kind = "^".join(text(f.get("message_type")).split("^")[:2])
    ap.add(src, "applications", f.get("sending_app"), "hl7")
    ap.add(src, "facilities", f.get("sending_facility"), "hl7")
    ap.add(dst, "applications", f.get("receiving_app"), "hl7")
    ap.add(dst, "facilities", f.get("receiving_facility"), "hl7")
    ap.add(src, "versions", f.get("version"), "hl7")
    if kind:
        ap.add(src, "sent", kind, "hl7")
        ap.add(dst, "received", kind, "hl7")
    if kind.startswith("ACK"):
        ap.add(src, "acks_sent", f.get("ack_code") or "?", "hl7")
    elif dst is not None and kind:
        dst.add_hl7_sender(hint.src_ip or hint.src_mac or "?")


_BY_KEY: Final[tuple[tuple[str, Handler], ...]] = (
    ("login", _login), ("arp", arp), ("dicom", _dicom), ("tls", _tls), ("http", _http), ("smb", _smb),
    ("nbns", nbns), ("ssdp", ssdp), ("ftp", _ftp), ("system_name", lldp), ("chassis_id", lldp),
    ("device_id", cdp))
_KEYS: Final = frozenset(key for key, _ in _BY_KEY)
_BY_APP: Final[dict[str, Handler]] = {
    "arp": arp, "dhcp": dhcp, "dns": dns, "mdns": dns, "hl7": _hl7, "lldp": lldp, "cdp": cdp, "nbns": nbns,
    "ssdp": ssdp}


def _by_key(fields: dict[str, Any]) -> Handler | None:
    """The handler of the first dispatch key (in _BY_KEY order) among the hint's fields."""
    for key, handler in _BY_KEY:
        if key in fields:
            return handler
    return None
