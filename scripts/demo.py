#!/usr/bin/env python3
"""The main job end to end on one machine (the README's first command runs this through demo.sh).

    generated ward capture -> ward-agent replay --uplink -> local TLS mosquitto -> collector
    -> SQLite -> HTML report

Everything is made fresh under --workdir (default build/demo): a small PKI (CA, broker, the sensor
`demo-sensor` and the collector), the sensor's and the collector's key pairs, a mosquitto
configuration with client certificates and per-sensor ACLs on a free loopback port, the agent's
and the collector's TOML. mosquitto and the collector run as child processes and are stopped at
the end, also on failure. The replay waits until the broker and the collector have everything;
the script then checks that the collector stored every flow the replay reported, and prints the
paths of the records, the database and the report.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
BIN: Final = Path(sys.executable).parent
SENSOR: Final = "demo-sensor"
SITE: Final = "ward3"


def run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tls(port: int, ca: Path, timeout: float = 15.0) -> None:
    """Until the broker completes a TLS handshake (no client certificate: it then drops us)."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"mosquitto did not come up on port {port}")


@contextmanager
def child(cmd: Sequence[str | Path], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def prepare(work: Path, port: int) -> None:
    """PKI, keys, broker, agent and collector configuration under `work`."""
    pki = work / "pki"
    run(sys.executable, ROOT / "scripts" / "broker_pki.py", pki, "ca")
    run(sys.executable, ROOT / "scripts" / "broker_pki.py", pki, "server")
    run(sys.executable, ROOT / "scripts" / "broker_pki.py", pki, "client", SENSOR, "collector")
    run(sys.executable, ROOT / "scripts" / "broker_conf.py", work / "broker", "--pki", pki, "--port",
        str(port), "--persistence", "--user", getpass.getuser())  # it reads the 0600 server key as us
    run(BIN / "ward-agent", "keys", "init", "--role", "sensor", "--dir", work / "sensor-keys")
    run(BIN / "ward-agent", "keys", "init", "--role", "collector", "--dir", work / "collector-keys")
    shutil.copy(work / "collector-keys" / "collector.pub", work / "sensor-keys" / "collector.pub")
    (work / "sensors").mkdir()
    shutil.copy(work / "sensor-keys" / "sensor.pub", work / "sensors" / f"{SENSOR}.pub")
    (work / "agent.toml").write_text(f"""\
[uplink]
enabled = true
site = "{SITE}"
sensor_id = "{SENSOR}"
state_dir = "{work / 'sensor-state'}"
keys_dir = "{work / 'sensor-keys'}"
broker_port = {port}
ca_file = "{pki / 'ca.crt'}"
cert_file = "{pki / 'clients' / f'{SENSOR}.crt'}"
key_file = "{pki / 'clients' / f'{SENSOR}.key'}"
""")
    (work / "collector.toml").write_text(f"""\
[broker]
host = "127.0.0.1"
port = {port}
ca = "{pki / 'ca.crt'}"
cert = "{pki / 'clients' / 'collector.crt'}"
key = "{pki / 'clients' / 'collector.key'}"

[collector]
keys = "{work / 'collector-keys'}"
db = "{work / 'central.db'}"
sensor_keys = "{work / 'sensors'}"
sensor_site = "{SITE}"
stats_interval = 5
""")


def stored_flows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM flows").fetchone()[0])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--capture", type=Path, help="replay this capture instead of the generated sample")
    args = ap.parse_args(argv)
    work: Path = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    capture = args.capture or work / "ward-sample.pcap"
    if args.capture is None:
        run(sys.executable, ROOT / "scripts" / "wardgen.py", "sample", capture)
    port = free_port()
    prepare(work, port)
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with child([mosquitto, "-c", work / "broker" / "mosquitto.conf"], work / "mosquitto.log"):
        wait_tls(port, work / "pki" / "ca.crt")
        with child([BIN / "ward-agent", "central", "collect", "--config", work / "collector.toml"],
                   work / "collector.log"):
            replay = subprocess.run([str(BIN / "ward-agent"), "replay", str(capture), "--uplink", "--config",
                                     str(work / "agent.toml"), "--emit", str(work / "records.jsonl"),
                                     "--report", "-"], check=False)
            if replay.returncode != 0:
                print(f"demo: the replay failed (exit {replay.returncode}); logs in {work}", file=sys.stderr)
                return replay.returncode
            summary = json.loads((work / "records.jsonl").read_text().splitlines()[-1])
            deadline = time.monotonic() + 30
            while stored_flows(work / "central.db") < summary["flows"] and time.monotonic() < deadline:
                time.sleep(0.2)
    stored = stored_flows(work / "central.db")
    print(f"collector stored {stored} of {summary['flows']} flows in {work / 'central.db'}")
    if stored != summary["flows"]:
        print(f"demo: flows missing at the collector; logs in {work}", file=sys.stderr)
        return 1
    advisories = ROOT.parent / "shared" / "advisories"
    if advisories.is_dir():  # real CISA advisories beside the clone: match them against the inventory
        run(BIN / "ward-agent", "central", "advisories", "import", advisories, "--db", work / "central.db")
    report = work / "report.html"
    records = (json.loads(line) for line in (work / "records.jsonl").read_text().splitlines())
    newest = max(record.get("last", 0) for record in records)
    run(BIN / "ward-agent", "central", "report", "--db", work / "central.db", "--out", report,
        "--now", str(int(newest) + 60))  # the report's weeks end with the capture, not today
    print(f"records: {work / 'records.jsonl'}")
    print(f"report:  {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
