"""DICOM upper layer (PS3.8) on any port: who associates with whom for which services, never a patient.

Only the association PDUs are read: A-ASSOCIATE-RQ (AE titles, abstract syntax UIDs mapped to service
names, implementation class UID and version name), A-ASSOCIATE-AC (which offered services were
accepted), A-ASSOCIATE-RJ and A-ABORT (result, source, reason). A-RELEASE ends the hint. P-DATA-TF
PDUs carry the data sets (patient name, ID, images): their bytes are counted off and skipped, never
copied or looked at. Association PDUs may be split across TCP segments; they are buffered up to
MAX_PDU bytes. SOP class UIDs are public standard identifiers, not patient data; any text that is not
a well-formed UID or AE title is left out.
"""

from __future__ import annotations

import re
import struct
from typing import Final

from agent.hints.base import Fields, HintOptions

NAME: Final = "dicom"
PROTO: Final = "tcp"
MAX_PDU: Final = 65536
_HEADER: Final = 6
_RQ, _AC, _RJ, _PDATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = range(1, 8)
_FIXED: Final = 68  # protocol version, reserved, called AE, calling AE, 32 reserved bytes
_UID: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AE: Final = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash (PS3.5 AE)
_VERSION_NAME: Final = re.compile(r"^[\x20-\x7e]{1,16}$")
_MAX_UID: Final = 64

_EXACT: Final = {"1.2.840.10008.1.1": "verification", "1.2.840.10008.5.1.4.31": "worklist_find",
                 "1.2.840.10008.3.1.2.3.3": "mpps", "1.2.840.10008.1.20.1": "storage_commitment"}
_STORAGE: Final = "1.2.840.10008.5.1.4.1.1."
_QUERY_RETRIEVE: Final = "1.2.840.10008.5.1.4.1.2."
_QR_OPS: Final = {"1": "qr_find", "2": "qr_move", "3": "qr_get"}
# Storage SOP classes by the component after 1.2.840.10008.5.1.4.1.1 (PS3.4 annex B / PS3.6 annex A).
_FAMILIES: Final = {"2": "ct", "3": "us", "4": "mr", "5": "nm", "6": "us", "7": "sc", "9": "waveform",
                    "11": "pr", "12": "xa", "20": "nm", "77": "vl", "88": "sr", "104": "encapsulated",
                    "128": "pt", "130": "pt", "481": "rt"}  # pr: presentation state, vl: visible light
_X_RAY: Final = {"": "cr", "1": "dx", "2": "mg", "3": "dx"}  # 1.1 DX, 1.2 mammography, 1.3 intra-oral

_RJ_RESULTS: Final = {1: "rejected_permanent", 2: "rejected_transient"}
_RJ_SOURCES: Final = {1: "service_user", 2: "service_provider_acse", 3: "service_provider_presentation"}
_RJ_REASONS: Final = {
    1: {1: "no_reason_given", 2: "application_context_not_supported", 3: "calling_ae_not_recognized",
        7: "called_ae_not_recognized"},
    2: {1: "no_reason_given", 2: "protocol_version_not_supported"},
    3: {1: "temporary_congestion", 2: "local_limit_exceeded"}}
_ABORT_SOURCES: Final = {0: "service_user", 2: "service_provider"}
_ABORT_REASONS: Final = {0: "not_specified", 1: "unrecognized_pdu", 2: "unexpected_pdu",
                         4: "unrecognized_pdu_parameter", 5: "unexpected_pdu_parameter",
                         6: "invalid_pdu_parameter_value"}


REGISTERED_PORTS: Final = frozenset({104, 11112})


def accepts(proto: str | int, a_port: int, b_port: int, payload: bytes, from_a: bool) -> bool:
    """The initiator's first bytes are an A-ASSOCIATE-RQ header with printable AE titles, any port;
    on the registered DICOM ports a header cut short in its first segment is enough."""
    if proto != "tcp" or not from_a or payload[:2] != b"\x01\x00"[:len(payload)]:
        return False
    if len(payload) < 10:
        return b_port in REGISTERED_PORTS
    length = struct.unpack_from("!I", payload, 2)[0]
    if not _FIXED <= length <= MAX_PDU - _HEADER or not payload[7] & 1:
        return False
    return all(0x20 <= byte <= 0x7e or byte == 0 for byte in payload[10:42])


def start(options: HintOptions) -> DicomFlow:
    return DicomFlow()


def service(uid: str) -> str:
    """The service name an abstract syntax UID stands for ("other" when it is none we name)."""
    if uid in _EXACT:
        return _EXACT[uid]
    if uid.startswith(_STORAGE):
        return "storage:" + _family(uid[len(_STORAGE):].split("."))
    if uid.startswith(_QUERY_RETRIEVE):
        parts = uid[len(_QUERY_RETRIEVE):].split(".")
        if len(parts) == 2 and parts[1] in _QR_OPS:
            return _QR_OPS[parts[1]]
    return "other"


def _family(parts: list[str]) -> str:
    first, second = parts[0], parts[1] if len(parts) > 1 else ""
    if first == "1":
        return _X_RAY.get(second, "other")
    if first == "13" and second == "1" and len(parts) > 2:  # X-ray 3D angiography/craniofacial, breast tomo
        return "xa" if parts[2] in ("1", "2") else "mg"
    return _FAMILIES.get(first, "other")


class DicomFlow:
    """Follows the PDUs of one association, both directions, reading only the association PDUs."""

    def __init__(self) -> None:
        self.done = False
        self._buffers = {True: bytearray(), False: bytearray()}
        self._skip = {True: 0, False: 0}  # bytes of a P-DATA-TF PDU still to pass over, per direction
        self._contexts: dict[int, str] = {}  # presentation context id -> abstract syntax, from the RQ

    def feed(self, payload: bytes, from_a: bool) -> list[Fields]:
        found: list[Fields] = []
        view = memoryview(payload)
        buffer = self._buffers[from_a]
        while view and not self.done:
            skip = self._skip[from_a]
            if skip:
                passed = min(skip, len(view))
                self._skip[from_a] = skip - passed
                view = view[passed:]
                continue
            if len(buffer) < _HEADER:
                take = min(_HEADER - len(buffer), len(view))
                buffer += view[:take]
                view = view[take:]
                if len(buffer) < _HEADER:
                    break
            kind, length = _header(buffer)
            if kind == _PDATA:  # the data set is skipped unread
                buffer.clear()
                self._skip[from_a] = length
                continue
            take = min(_HEADER + length - len(buffer), len(view))
            buffer += view[:take]
            view = view[take:]
            if len(buffer) == _HEADER + length:
                found += self._pdu(kind, bytes(buffer[_HEADER:]))
                buffer.clear()
        return found

    def close(self) -> list[Fields]:
        return []

    def _pdu(self, kind: int, body: bytes) -> list[Fields]:
        if kind == _RQ:
            return [self._associate_rq(body)]
        if kind == _AC:
            return [self._associate_ac(body)]
        self.done = True
        if kind == _RJ:
            source = body[2]
            return [{"dicom": "associate_rj", "result": _RJ_RESULTS.get(body[1], str(body[1])),
                     "source": _RJ_SOURCES.get(source, str(source)),
                     "reason": _RJ_REASONS.get(source, {}).get(body[3], str(body[3]))}]
        if kind == _ABORT:
            return [{"dicom": "abort", "source": _ABORT_SOURCES.get(body[2], str(body[2])),
                     "reason": _ABORT_REASONS.get(body[3], str(body[3]))}]
        return []  # A-RELEASE-RQ or -RP: the association is over

    def _associate_rq(self, body: bytes) -> Fields:
        fields: Fields = {"dicom": "associate_rq"}
        for key, raw in (("calling_ae", body[20:36]), ("called_ae", body[4:20])):
            title = raw.decode("latin-1").strip(" \x00")
            if _AE.match(title):
                fields[key] = title
        syntaxes: list[str] = []
        for item, value in _items(body[_FIXED:]):
            if item == 0x20 and len(value) >= 4:
                for sub, uid in _items(value[4:]):
                    abstract = _uid(uid) if sub == 0x30 else ""
                    if abstract:
                        self._contexts[value[0]] = abstract
                        if abstract not in syntaxes:
                            syntaxes.append(abstract)
            elif item == 0x50:
                fields.update(_user_information(value))
        fields["services"] = sorted({service(uid) for uid in syntaxes})
        fields["abstract_syntaxes"] = syntaxes
        return fields

    def _associate_ac(self, body: bytes) -> Fields:
        fields: Fields = {"dicom": "associate_ac"}
        accepted: set[str] = set()
        for item, value in _items(body[_FIXED:]):
            if item == 0x21 and len(value) >= 4 and value[2] == 0 and value[0] in self._contexts:
                accepted.add(service(self._contexts[value[0]]))
            elif item == 0x50:
                fields.update(_user_information(value))
        fields["accepted_services"] = sorted(accepted)
        return fields


def _header(buffer: bytearray) -> tuple[int, int]:
    kind, length = buffer[0], struct.unpack_from("!I", buffer, 2)[0]
    if not _RQ <= kind <= _ABORT:
        raise ValueError(f"not a DICOM PDU type: {kind:#x}")
    if kind in (_RQ, _AC) and not _FIXED <= length <= MAX_PDU - _HEADER:
        raise ValueError("A-ASSOCIATE PDU length out of range")
    if kind in (_RJ, _RELEASE_RQ, _RELEASE_RP, _ABORT) and length != 4:
        raise ValueError("fixed-size DICOM PDU with a wrong length")
    return kind, length


def _items(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, value) items of a variable field; ValueError if one runs past the end."""
    items: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise ValueError("truncated DICOM item header")
        length = struct.unpack_from("!H", data, at + 2)[0]
        if at + 4 + length > len(data):
            raise ValueError("DICOM item runs past its PDU")
        items.append((data[at], data[at + 4:at + 4 + length]))
        at += 4 + length
    return items


def _user_information(value: bytes) -> Fields:
    """Implementation class UID and version name; user identity and other sub-items are not read."""
    fields: Fields = {}
    for sub, data in _items(value):
        if sub == 0x52 and (uid := _uid(data)):
            fields["implementation_uid"] = uid
        elif sub == 0x55:
            name = data.decode("latin-1").strip(" \x00")
            if _VERSION_NAME.match(name):
                fields["implementation_version"] = name
    return fields


def _uid(raw: bytes) -> str:
    """A UID (digits and dots, at most 64 characters, trailing NUL padding dropped), or ""."""
    text = raw.rstrip(b"\x00 ").decode("latin-1")
    return text if len(text) <= _MAX_UID and _UID.match(text) else ""
