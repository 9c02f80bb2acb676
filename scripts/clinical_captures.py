#!/usr/bin/env python3
"""Real DICOM and HL7/MLLP traffic between network namespaces, captured with tcpdump (synthetic patients).

    sudo .venv/bin/python scripts/clinical_captures.py --out tests/captures

Each host is its own network namespace with its own MAC, plugged by a veth pair into a bridge in a
"switch" namespace; tcpdump on the bridge (promiscuous, so it sees every frame like a mirror port)
writes dicom-workflow.pcap and hl7-mllp.pcap. The DICOM side is pynetdicom (a storage and
query/retrieve SCP as the PACS; a CT modality doing C-ECHO, C-STORE and one association the PACS
rejects; a reading workstation doing a study-root C-FIND). The HL7 side is plain sockets: an MLLP
sender and an interface engine that answers every message with an ACK (MSA|AA). Every patient is
the canary below, which the PHI tests look for. Namespaces are removed on exit, even on failure,
and any left over by a killed run are removed first, so the script can be run again at will.
The script re-runs itself inside a namespace (`--role NAME`) to play one host.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association
    from pynetdicom.events import EventHandlerType

PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "CANARY^PATIENT^ZZQX", "MRN-CANARY-7731", "19010203"
SWITCH = "wcap-sw"
HOSTS = {  # namespace suffix: (address, MAC)
    "pacs": ("10.77.0.10", "02:77:00:00:00:10"), "ct": ("10.77.0.11", "02:77:00:00:00:11"),
    "ws": ("10.77.0.12", "02:77:00:00:00:12"), "engine": ("10.77.0.20", "02:77:00:00:00:20"),
    "his": ("10.77.0.21", "02:77:00:00:00:21"),
}
PACS_AE, MODALITY_AE, WORKSTATION_AE, UNKNOWN_AE = "PACS_MAIN", "CT_SCANNER_01", "READ_WS_3", "NO_SUCH_AE"
DICOM_PORT, MLLP_PORT = 11112, 2575
VERIFICATION, CT_STORAGE = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"  # public SOP class UIDs
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
START, END = b"\x0b", b"\x1c\x0d"


def hl7_message(kind: str, control: str, sep: str = "|", enc: str = "^~\\&") -> bytes:
    """An HL7 v2.5 message (ADT^A01 or ORU^R01) about the canary patient, with the given separators."""
    c = enc[0]
    app, facility = ("ADT_FEED", "WARD_7") if kind.startswith("ADT") else ("LAB_ANALYZER", "CORE_LAB")
    name = PATIENT_NAME.replace("^", c)
    segments = [
        sep.join(["MSH", enc, app, facility, "INTERFACE_ENG", "MAIN_HOSP", "20260102103000", "",
                  kind.replace("^", c), control, "P", "2.5"]),
        sep.join(["PID", "1", "", f"{PATIENT_ID}{c}{c}{c}MAIN_HOSP{c}MR", "", name, "", BIRTH_DATE, "F"]),
    ]
    if kind.startswith("ADT"):
        segments.insert(1, sep.join(["EVN", "A01", "20260102103000"]))
        segments.append(sep.join(["PV1", "1", "I", f"WARD7{c}12{c}1"]))
    else:
        segments.append(sep.join(["OBR", "1", control, "", f"718-7{c}Hemoglobin{c}LN"]))
        segments.append(sep.join(["OBX", "1", "NM", f"718-7{c}Hemoglobin{c}LN", "", "13.2", "g/dL"]))
        segments.append(sep.join(["OBX", "2", "TX", "NOTE", "",
                                  f"Checked {name} {PATIENT_ID} born {BIRTH_DATE}"]))
    return START + "\r".join(segments).encode() + b"\r" + END


def hl7_ack(message: bytes) -> bytes:
    """The engine's ACK (MSA|AA) to one framed message, in the message's own separators."""
    msh = message.strip(START + END).split(b"\r")[0].decode("ascii")
    sep, enc = msh[3], msh[4:8]
    fields = msh.split(sep)
    trigger = fields[8].split(enc[0])[1] if enc[0] in fields[8] else ""
    header = sep.join(["MSH", enc, fields[4], fields[5], fields[2], fields[3], "20260102103001", "",
                       f"ACK{enc[0]}{trigger}", "ACK" + fields[9], "P", "2.5"])
    return START + f"{header}\rMSA{sep}AA{sep}{fields[9]}\r".encode() + END


def _sh(*command: str, check: bool = True) -> None:
    subprocess.run(command, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _in(host: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", f"wcap-{host}", *command]


def _remove_namespaces() -> None:
    for name in [SWITCH, *(f"wcap-{host}" for host in HOSTS)]:
        if Path("/run/netns", name).exists():
            _sh("ip", "netns", "del", name, check=False)


def _build_network() -> None:
    for name in [SWITCH, *(f"wcap-{host}" for host in HOSTS)]:
        _sh("ip", "netns", "add", name)
        for key in ("all", "default"):  # no IPv6 chatter (router solicitations, MLD) in the captures
            _sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        _sh("ip", "-n", name, "link", "set", "lo", "up")
    _sh("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")  # no own IGMP
    _sh("ip", "-n", SWITCH, "link", "set", "br0", "up")
    for host, (address, mac) in HOSTS.items():
        _sh("ip", "-n", SWITCH, "link", "add", f"sw-{host}", "type", "veth", "peer", "name", "eth0",
            "netns", f"wcap-{host}")
        _sh("ip", "-n", SWITCH, "link", "set", f"sw-{host}", "master", "br0", "up")
        _sh("ip", "-n", f"wcap-{host}", "link", "set", "eth0", "address", mac, "up")
        _sh("ip", "-n", f"wcap-{host}", "addr", "add", f"{address}/24", "dev", "eth0")


@contextlib.contextmanager
def _capture(path: Path) -> Iterator[None]:
    """tcpdump on the bridge, full frames, for the duration of the block."""
    command = ["ip", "netns", "exec", SWITCH, "tcpdump", "-i", "br0", "-s", "0", "-U", "-Z", "root", "-n",
               "-w", str(path), "not ip6"]
    dump = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None
        line = dump.stderr.readline()  # "listening on br0 ..." once the capture runs
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        time.sleep(0.3)
        yield
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)


@contextlib.contextmanager
def _server(host: str, role: str) -> Iterator[None]:
    """A server role running in its namespace until the block ends (it stops when its stdin closes)."""
    command = _in(host, sys.executable, __file__, "--role", role)
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{role} did not start")
        yield
        process.stdin.close()
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _client(host: str, role: str) -> None:
    subprocess.run(_in(host, sys.executable, __file__, "--role", role), check=True, timeout=120)


def generate(out: Path) -> None:
    """Both captures into `out`; the namespaces exist only while this runs."""
    if os.geteuid() != 0 or not shutil.which("tcpdump"):
        raise SystemExit("needs root (network namespaces) and tcpdump")
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` cleans up on kill too
    _remove_namespaces()
    try:
        _build_network()
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            with _capture(work / "dicom-workflow.pcap"), _server("pacs", "pacs"):
                _client("ct", "modality")
                _client("ws", "workstation")
            with _capture(work / "hl7-mllp.pcap"), _server("engine", "engine"):
                _client("his", "sender")
            for name in ("dicom-workflow.pcap", "hl7-mllp.pcap"):
                shutil.copyfile(work / name, out / name)
    finally:
        _remove_namespaces()


# --- the hosts (run inside their namespace) ---------------------------------------------------------

def _ct_image(number: int) -> Dataset:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(CT_STORAGE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=["ward-canary-image", str(number)])
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    ds.PatientSex = "F"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["ward-canary-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["ward-canary-series"])
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.InstanceNumber = "20260102", "103000", "CT", number
    ds.AccessionNumber, ds.StudyDescription = "ACC-CANARY-1", "CT HEAD canary"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(number, number + 128))
    return ds


def _role_pacs() -> None:
    from pydicom.dataset import Dataset
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    stored: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.dataset)
        return 0x0000

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        wanted = str(event.identifier.get("PatientName", ""))
        for ds in {str(d.StudyInstanceUID): d for d in stored}.values():
            if wanted in ("", "*", str(ds.PatientName)):
                answer = Dataset()
                answer.QueryRetrieveLevel = "STUDY"
                for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
                                "StudyDate", "AccessionNumber", "StudyDescription"):
                    setattr(answer, keyword, getattr(ds, keyword))
                yield 0xFF00, answer

    ae = AE(ae_title=PACS_AE)
    ae.require_called_aet = True  # an unknown called AE title is rejected (A-ASSOCIATE-RJ)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(STUDY_FIND)
    handlers: list[EventHandlerType] = [(evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find)]
    server = ae.start_server((HOSTS["pacs"][0], DICOM_PORT), block=False, evt_handlers=handlers)
    print("ready", flush=True)
    sys.stdin.read()
    if server is not None:
        server.shutdown()


def _associate(calling: str, called: str, context: str) -> Association:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(context)
    return ae.associate(HOSTS["pacs"][0], DICOM_PORT, ae_title=called)


def _role_modality() -> None:
    echo = _associate(MODALITY_AE, PACS_AE, VERIFICATION)
    assert echo.is_established and echo.send_c_echo().Status == 0
    echo.release()
    store = _associate(MODALITY_AE, PACS_AE, CT_STORAGE)
    assert store.is_established
    for number in (1, 2):
        assert store.send_c_store(_ct_image(number)).Status == 0
    store.release()
    refused = _associate(MODALITY_AE, UNKNOWN_AE, CT_STORAGE)
    assert refused.is_rejected


def _role_workstation() -> None:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel, query.PatientName, query.StudyInstanceUID = "STUDY", PATIENT_NAME, ""
    query.PatientID = query.StudyDate = ""
    find = _associate(WORKSTATION_AE, PACS_AE, STUDY_FIND)
    assert find.is_established
    statuses = [status.Status for status, _ in find.send_c_find(query, STUDY_FIND) if status]
    assert statuses == [0xFF00, 0x0000], statuses
    find.release()


def _role_engine() -> None:
    """The interface engine: one connection at a time, an ACK for every framed message."""
    with socket.create_server((HOSTS["engine"][0], MLLP_PORT)) as listener:
        print("ready", flush=True)
        while True:
            readable, _, _ = select.select([listener, sys.stdin], [], [])
            if sys.stdin in readable and not sys.stdin.readline():
                return
            if listener not in readable:
                continue
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(10)
                buffer = b""
                while chunk := connection.recv(4096):
                    buffer += chunk
                    while (end := buffer.find(END)) >= 0:
                        connection.sendall(hl7_ack(buffer[:end + len(END)]))
                        buffer = buffer[end + len(END):]


def _send(messages: list[bytes], pieces: int = 1) -> None:
    """One MLLP connection: each message (in `pieces` separate TCP writes), then wait for its ACK."""
    with socket.create_connection((HOSTS["engine"][0], MLLP_PORT), timeout=10) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for message in messages:
            step = -(-len(message) // pieces)
            for at in range(0, len(message), step):
                connection.sendall(message[at:at + step])
                if pieces > 1:
                    time.sleep(0.05)
            reply = b""
            while END not in reply:
                chunk = connection.recv(4096)
                if not chunk:
                    raise ConnectionError("the engine closed the connection before its ACK")
                reply += chunk
            assert b"\rMSA" in reply and b"AA" in reply, reply


def _role_sender() -> None:
    _send([hl7_message("ADT^A01^ADT_A01", "CTRL0001"), hl7_message("ORU^R01^ORU_R01", "CTRL0002")])
    _send([hl7_message("ADT^A01^ADT_A01", "CTRL0003", sep="#", enc="$~\\&")])
    _send([hl7_message("ORU^R01^ORU_R01", "CTRL0004")], pieces=6)


ROLES = {"pacs": _role_pacs, "modality": _role_modality, "workstation": _role_workstation,
         "engine": _role_engine, "sender": _role_sender}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/captures"))
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        ROLES[args.role]()
    else:
        generate(args.out)
        for name in ("dicom-workflow.pcap", "hl7-mllp.pcap"):
            print(f"{args.out / name}: {(args.out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
