"""PostgreSQL for real: a private cluster the tests start (Debian's postgresql package, psycopg 3).

The store's unit tests run again on it; the db layer's error translation and reconnect are shown; and two
`central collect` processes with the same MQTT shared subscription group split 2,000 sealed messages
from a sensor through a real TLS mosquitto into one database, each message stored exactly once, also
when one of them is SIGKILLed mid-stream.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import MOSQUITTO, SITE, Broker, free_port
from unit.test_central_store import (  # noqa: F401  (the store's tests, with `target` overridden below)
    store,
    test_bad_device_rolls_the_whole_message_back,
    test_config_ack_ok_flag,
    test_count_beyond_int64_rolls_back,
    test_device_history_follows_arrival_order,
    test_device_history_grows_only_on_change,
    test_device_keeps_the_latest_record,
    test_finding_columns_and_record,
    test_flow_rows_keep_every_field,
    test_other_schema_version_is_refused,
    test_rejects_are_counted_per_reason_sensor_and_topic,
    test_reopening_keeps_the_data,
    test_same_message_is_stored_once,
    test_sensor_counts_flows,
    test_sensor_row_tracks_the_highest_boot_and_seq,
    test_status_document_with_text_only_is_kept_whole,
    test_status_message_sets_online,
    test_unknown_synchronous_mode_is_refused,
)

from agent import crypto, messages
from agent.central import cli
from agent.central import db as dbapi
from agent.central.store import Store
from agent.messages import Header, Message
from agent.records import FlowRecord

ROOT = Path(__file__).resolve().parents[2]
BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
SENSOR = "ward3-a"
COLLECTORS = ("collector-a", "collector-b")
GROUP = "central"
T0 = 1_767_225_600.0
PER_BATCH = 20
TOTAL = 2000


class Postgres:
    """initdb + pg_ctl in a private folder, on a free loopback port, trust auth for user `ward`; run as the
    postgres OS user when the tests run as root (initdb refuses root)."""

    def __init__(self) -> None:
        self.bin = Path(BINARIES[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="ward-pg-"))
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._names = itertools.count(1)
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")

    def start(self) -> None:
        data, log = self.dir / "data", self.dir / "server.log"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "ward", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        """Immediate shutdown (no checkpoint: the folder is removed anyway)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop",
                  check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://ward@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{next(self._names)}"
        admin = dbapi.connect(self.url())
        admin.execute(f"CREATE DATABASE {name}")
        admin.close()
        return self.url(name)

    def _run(self, *command: str, check: bool = True) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A running private PostgreSQL cluster for the session; stopped and removed afterwards."""
    if not BINARIES:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    pytest.importorskip("psycopg")
    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def target(postgres: Postgres) -> str:
    """A fresh PostgreSQL database: the imported store tests run on it."""
    return postgres.create_database()


def until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


# -- the db layer on PostgreSQL ------------------------------------------------------------------------


def test_postgres_schema_uses_64_bit_columns(target: str) -> None:
    """Times are double precision and counters bigint: an epoch time with microseconds survives."""
    db = Store(target)
    types = dict(db.query("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'flows'"))
    db.db.execute("INSERT INTO health VALUES (?, ?, ?, ?, ?)", ("s", 1, 1 << 40, T0 + 0.123456, "{}"))
    assert (types["first"], types["a_bytes"]) == ("double precision", "bigint")
    assert db.query("SELECT seq, ts FROM health") == [(1 << 40, T0 + 0.123456)]


def test_qmark_inside_literals_and_percent_signs_survive(target: str) -> None:
    """`?` in a quoted literal stays, `%` anywhere is literal, `?` outside becomes a parameter."""
    db = dbapi.connect(target)
    assert db.query("SELECT '?', '50%', ? || '%'", ("a",)) == [("?", "50%", "a%")]


def test_nul_in_text_is_a_data_error(target: str) -> None:
    """PostgreSQL refuses NUL in text: db.DataError, a ValueError, so ingest counts it as bad_payload."""
    db = dbapi.connect(target)
    db.execute("CREATE TABLE t(x TEXT)")
    with pytest.raises(dbapi.DataError):
        db.execute("INSERT INTO t VALUES (?)", ("a\x00b",))


def test_failed_transaction_rolls_back(target: str) -> None:
    """An exception inside transaction() leaves nothing behind."""
    db = dbapi.connect(target)
    db.execute("CREATE TABLE t(x BIGINT)")
    with pytest.raises(KeyError), db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        raise KeyError("x")
    assert db.query("SELECT COUNT(*) FROM t") == [(0,)]


def test_broken_connection_is_unavailable_then_reconnects(target: str) -> None:
    """A backend killed by the server: the next statement raises Unavailable, the one after reconnects."""
    kept = Store(target)
    pid = kept.query("SELECT pg_backend_pid()")[0][0]
    dbapi.connect(target).execute("SELECT pg_terminate_backend(?)", (pid,))
    with pytest.raises(dbapi.Unavailable):
        kept.seen("s1", 1, 1)
    assert not kept.seen("s1", 1, 1) and kept.query("SELECT pg_backend_pid()")[0][0] != pid


def test_unreachable_server_is_unavailable(postgres: Postgres) -> None:
    """Nothing listening: Unavailable (a ConnectionError), the URL's password never in the message."""
    url = f"postgresql://ward:secret@127.0.0.1:{free_port()}/x"
    with pytest.raises(dbapi.Unavailable) as refused:
        dbapi.connect(url, timeout=2)
    assert "secret" not in str(refused.value) and dbapi.redact(url).count("secret") == 0


def test_racing_stores_keep_one_copy(target: str) -> None:
    """Two connections add the same message while one transaction is open: stored once, one duplicate."""
    first, second = Store(target), Store(target)
    first.register("s1", None, "")
    body = [FlowRecord(T0, T0 + 1, "tcp", "10.0.0.1", 1, "10.0.0.2", 2, None, None, (), 1, 1, 60, 60, "S",
                       "SA", "fin")]
    message = Message(Header("s1", 1, 7, "flows"), T0, body)
    with first.db.transaction():  # hold the first copy's row lock while the second tries
        first.db.execute("INSERT INTO messages VALUES ('s1', 1, 7, 'flows', 0, 0, 0)")
        first.db.execute("INSERT INTO flows(sensor, boot, seq) VALUES ('s1', 1, 7)")
        pid = first.query("SELECT pg_backend_pid()")[0][0]
        racer = _Thread(lambda: second.add(message, 100, T0))
        assert until(lambda: bool(first.query("SELECT 1 FROM pg_locks WHERE NOT granted AND pid <> ?", pid)),
                     10)
    assert racer.result(10) is False
    assert (second.count("messages"), second.count("flows"), second.sensors()[0]["duplicates"]) == (1, 1, 1)


class _Thread:
    """Run a call in a thread; result() waits and returns it (or raises what it raised)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        import threading

        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=lambda: self._outcome.append(_capture(call)), daemon=True)
        self._thread.start()

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


def _capture(call: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, call()
    except Exception as exc:
        return False, exc


# -- the command line ------------------------------------------------------------------------------------


def _config(root: Path, db: str) -> Path:
    """A loadable collector.toml (files that only need to exist are empty) with collector.db = `db`."""
    for name in ("ca.crt", "c.crt", "c.key"):
        (root / name).write_text("")
    crypto.write_keypair(root / "keys", "collector")
    crypto.write_keypair(root / "s1", "sensor")
    path = root / "collector.toml"
    path.write_text(f"""[broker]\nhost = "127.0.0.1"\nca = "ca.crt"\ncert = "c.crt"\nkey = "c.key"
[collector]\nkeys = "keys"\ndb = "{db}"\n[sensors]\ns1 = "s1/sensor.pub"\n""")
    return path


def test_config_db_may_be_a_postgresql_url(tmp_path: Path) -> None:
    """collector.db = "postgresql://..." is taken as it is (no folder to check)."""
    url = "postgresql://ward@db.example/central"
    assert cli.load_config(_config(tmp_path, url)).db == url


def test_db_option_overrides_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--db wins over collector.db; a relative file is relative to the working folder, not the config's."""
    path = _config(tmp_path, "no/such/folder/central.db")
    assert cli.load_config(path, db="postgresql://ward@db/c").db == "postgresql://ward@db/c"
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert cli.load_config(path, db="here.db").db == tmp_path / "work" / "here.db"


def test_sensors_command_reads_postgresql(store: Store, target: str,  # noqa: F811  (the fixture)
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`central sensors --db postgresql://...` lists what the store holds."""
    store.add(Message(Header("s1", 1, 1, "health"), T0, {"cpu": 0.1}), 100, T0)
    assert cli.main(["central", "sensors", "--db", target, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert (row["id"], row["site"], row["messages"], row["last_seq"]) == ("s1", "ward3", 1, 1)


# -- two collectors, one shared subscription, one database -----------------------------------------------


class Collector:
    """One `ward-agent central collect` process with its own certificate, sharing GROUP and the database."""

    def __init__(self, broker: Broker, root: Path, cn: str, url: str) -> None:
        self.cn, self.url, self.log = cn, url, root / f"{cn}.log"
        cert, key = broker.cert(cn)
        self.config = root / f"{cn}.toml"
        self.config.write_text(f"""
[broker]
host = "127.0.0.1"
port = {broker.port}
ca = "{broker.ca}"
cert = "{cert}"
key = "{key}"
keepalive = 10
share_group = "{GROUP}"
[collector]
keys = "keys"
db = "unused.db"
stats_interval = 1
[sensors]
{SENSOR} = {{ key = "{SENSOR}/sensor.pub", site = "{SITE}" }}
""")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        before = self._text().count("collector_subscribed")
        with self.log.open("ab") as log:
            command = [sys.executable, "-m", "agent", "central", "collect", "--config", str(self.config),
                       "--db", self.url]
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
        assert until(lambda: self._text().count("collector_subscribed") > before, 30), self._text()[-3000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(30)
        self.process = None
        return code

    def stored(self) -> list[int]:
        """Messages stored per run of the process: the last stats line of each run (killed runs included)."""
        runs: list[int] = []
        for line in self._text().splitlines():
            event = _json_line(line)
            if event.get("event") == "collector_started":
                runs.append(0)
            elif event.get("event") in ("collector_stats", "collector_stopped") and runs:
                runs[-1] = int(event["ingest"].get("stored", 0))
        return runs

    def _text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _json_line(line: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        event = json.loads(line)
        if isinstance(event, dict):
            return event
    return {}


class Cluster:
    """The broker, the keys, the database and the two collectors of one test."""

    def __init__(self, broker: Broker, root: Path, url: str) -> None:
        self.broker, self.url, self.root = broker, url, root
        crypto.write_keypair(root / "keys", "collector")  # every member of the group holds the same key
        crypto.write_keypair(root / SENSOR, "sensor")
        self.sensor_key = crypto.load_signing_key(root / SENSOR / "sensor.key")
        self.collector_pub = crypto.load_encryption_key(root / "keys" / "collector.pub")
        self.collectors = [Collector(broker, root, cn, url) for cn in COLLECTORS]
        self.db = dbapi.connect(url)

    def seal(self, seq: int) -> bytes:
        header = Header(SENSOR, 1, seq, "flows")
        body = [_flow(seq * PER_BATCH + i) for i in range(PER_BATCH)]
        payload = messages.encode_payload(Message(header, T0 + seq, body))
        return crypto.seal(payload, messages.encode_header(header), self.sensor_key, self.collector_pub)

    def count(self, table: str) -> int:
        return int(self.db.query(f"SELECT COUNT(*) FROM {table}")[0][0])

    def publish(self, seqs: range) -> Callable[[], set[int]]:
        """Publish sealed batches `seqs` at QoS 1 without waiting; a function giving the set of PUBACK codes
        once every one of them was acknowledged (empty until then)."""
        peer = self.broker.client(SENSOR)
        assert peer.connected() is not None
        topic = messages.topic(SITE, SENSOR, "flows")
        mids = {peer.client.publish(topic, self.seal(seq), qos=1).mid for seq in seqs}
        assert len(mids) == len(seqs)

        def codes() -> set[int]:
            acked = {e[1]: e[2].value for e in peer.wait_for(lambda ev: True, 0) if e[0] == "puback"}
            return set(acked.values()) if mids <= set(acked) else set()
        return codes

    def exactly_once(self, total: int) -> dict[str, int]:
        """Database figures; asserts every batch is stored once with all its flow rows."""
        batches = self.db.query("SELECT seq, COUNT(*) FROM flows GROUP BY seq")
        figures = {"messages": self.count("messages"), "flows": self.count("flows"),
                   "batches_with_flows": len(batches), "duplicates": self.db.query(
                       "SELECT duplicates FROM sensors WHERE id = ?", (SENSOR,))[0][0]}
        assert figures["messages"] == total and figures["flows"] == total * PER_BATCH
        assert sorted(seq for seq, _ in batches) == list(range(total))
        assert {n for _, n in batches} == {PER_BATCH}
        return figures


@pytest.fixture
def cluster(postgres: Postgres, tmp_path: Path) -> Iterator[Cluster]:
    """A TLS mosquitto whose ACL gives collector-a and collector-b the collector's rights, and a fresh
    database; collectors left running are killed afterwards."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto is not installed")
    broker = Broker.create(tmp_path / "broker", cns=("collector", *COLLECTORS, SENSOR),  # collector: start-up
                           collectors=COLLECTORS)
    broker.start()
    made = Cluster(broker, tmp_path, postgres.create_database())
    try:
        yield made
    finally:
        for collector in made.collectors:
            if collector.process is not None:
                collector.process.kill()
                collector.process.wait(10)
        made.db.close()
        broker.close_clients()
        broker.kill()


def _flow(i: int) -> FlowRecord:
    return FlowRecord(T0 + i * 0.01, T0 + i * 0.01 + 0.5, "tcp", f"10.3.{i // 200 % 256}.{i % 200 + 1}",
                      40000 + i % 20000, "10.3.0.250", 2575, "02:00:00:00:00:01", "02:00:00:00:00:fa", (),
                      6, 4, 900, 400, "SPA", "SPA", "fin")


def test_two_collectors_share_the_stream_and_store_each_message_once(cluster: Cluster) -> None:
    """2,000 batches through one shared subscription: both collectors store some, together each once."""
    for collector in cluster.collectors:
        collector.start()
    began = time.monotonic()
    codes = cluster.publish(range(TOTAL))
    assert until(lambda: cluster.count("messages") >= TOTAL, 120)
    elapsed = time.monotonic() - began
    assert until(lambda: bool(codes()), 30) and codes() == {0}
    assert [c.stop() for c in cluster.collectors] == [0, 0]
    figures = cluster.exactly_once(TOTAL)
    shares = [sum(c.stored()) for c in cluster.collectors]
    print(f"\nshared subscription, 2 collectors, PostgreSQL: {figures}, stored per collector {shares}, "
          f"{TOTAL} batches in {elapsed:.1f} s")
    assert all(n > 0 for n in shares) and sum(shares) == TOTAL
    assert not (cluster.root / "unused.db").exists()  # --db overrode collector.db


def test_collector_killed_mid_stream_still_stores_each_message_once(cluster: Cluster) -> None:
    """SIGKILL one member after 1,000 batches, publish 1,000 more: the survivor stores only its share, as
    mosquitto 2.0 keeps routing to the dead member's persistent session (eclipse-mosquitto#2662); once it
    is restarted, its session delivers the rest and every batch is stored exactly once."""
    first, second = cluster.collectors
    for collector in cluster.collectors:
        collector.start()
    half = TOTAL // 2
    codes = cluster.publish(range(half))
    assert until(lambda: cluster.count("messages") >= half // 5, 60)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    at_kill = cluster.count("messages")
    assert until(lambda: bool(codes()), 60) and codes() == {0}
    codes = cluster.publish(range(half, TOTAL))
    assert until(lambda: bool(codes()), 60) and codes() == {0}  # the broker accepted every message
    until(lambda: cluster.count("messages") >= TOTAL, 15)
    without_first = cluster.count("messages")
    later = cluster.db.query("SELECT COUNT(*) FROM messages WHERE seq >= ?", (half,))[0][0]
    first.start()
    assert until(lambda: cluster.count("messages") >= TOTAL, 120)
    assert [c.stop() for c in cluster.collectors] == [0, 0]
    figures = cluster.exactly_once(TOTAL)
    print(f"\nkill 1 of 2 collectors after {at_kill} stored: {without_first} stored 15 s after the last "
          "PUBACK "
          f"({later} of the {half} published after the kill); after its restart {figures}; stored per run: "
          f"killed member {first.stored()}, survivor {second.stored()}")
    assert at_kill < half and 0 < later < half, "mosquitto no longer routes to a dead member: update the docs"
