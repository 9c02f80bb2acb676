"""agent.central.report, report_advisories, report_html and report_cli: data from a real Store, the page."""

from __future__ import annotations

import copy
import html
import itertools
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import report_demo_data
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central import report_cli, tracking
from agent.central.report import WEEK, band, report_data
from agent.central.report_html import render_html
from agent.central.report_svg import nice_max, ticks
from agent.central.store import Store
from agent.messages import Header, Message
from agent.records import Finding, FlowRecord
from agent.risks import assess, score

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_767_225_600.0
START = NOW - 12 * WEEK
EVIL = "<script>alert(1)</script>\"'><x-evil>"


class _Feed:
    """Messages into a real Store, one sequence number each."""

    def __init__(self, store: Store) -> None:
        self.store, self.seq = store, 0

    def send(self, kind: str, created: float, body: Any, sensor: str = "s1") -> None:
        self.seq += 1
        assert self.store.add(Message(Header(sensor, 1, self.seq, kind), created, body), 100, created + 1)

    def device(self, ts: float, mac: str, sensor: str = "s1", **fields: Any) -> None:
        record = {"type": "device", "mac": mac, "role": "infusion_pump", "vendor": "Baxter",
                  "hostname": mac[-2:], "ips": [{"ip": f"10.0.0.{int(mac[-2:], 16)}", "first_seen": ts,
                                                 "last_seen": ts}],
                  "services": {"offered": [], "used": []}, "clinical": {}, "software": {},
                  "first_seen": START, "last_seen": ts, **fields}
        record.setdefault("risks", assess(record))
        record.setdefault("risk_score", score(record["risks"]))
        self.send("devices", ts, {"mode": "delta", "devices": [record]}, sensor)

    def finding(self, kind: str, ts: float, key: str, sensor: str = "s1", **fields: Any) -> None:
        values: dict[str, Any] = {"kind": kind, "severity": "high", "ts": ts, "src_ip": "10.0.0.1",
                                  "src_port": None, "dst_ip": "10.0.0.2", "dst_port": 23, "proto": "tcp",
                                  "device": "02:00:00:00:00:01", "role": "clinical_workstation",
                                  "peer_role": "infusion_pump",
                                  "summary": f"{kind} seen", "evidence": {}, "key": key, **fields}
        self.send("findings", ts, [Finding(**values).to_dict()], sensor)

    def flows(self, ts: float, port: int, n: int = 1, b_ip: str = "10.0.0.20", proto: str = "tcp") -> None:
        record = FlowRecord(ts, ts + 1, proto, "10.0.0.5", 50000, b_ip, port, "02:00:00:00:00:05",
                            "02:00:00:00:00:20", (), 3, 3, 300, 300, "SA", "SA", "fin")
        self.send("flows", ts + 2, [record] * n)


TELNET = {"services": {"offered": [{"proto": "tcp", "port": 23, "app": "telnet"}], "used": [],
                       "cleartext_logins": [{"protocol": "telnet", "as": "server", "success": 1, "failure": 0,
                                             "unknown": 0}]},
          "software": {"tls_negotiated": ["TLS1.0"], "snmp_versions": ["v2c"]}}
HL7_6661 = {"services": {"offered": [{"proto": "tcp", "port": 6661, "app": "hl7"}], "used": []},
            "clinical": {"hl7": {"received": ["ORU^R01"]}}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "central.db")
    db.register("s1", "icu", "ab:cd")
    yield db
    db.close()


@pytest.fixture
def feed(store: Store) -> _Feed:
    return _Feed(store)


def _data(store: Store, weeks: int = 12, pairs: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The report of a store; `pairs` given: those instead of advisory tracking's."""
    return report_data(store.db, NOW, weeks, pairs=None if pairs is None else (lambda _conn: pairs))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    report_demo_data.fill(path, NOW, hostile=True).close()
    conn = sqlite3.connect(path)
    pairs = report_demo_data.advisory_pairs(NOW)
    data = report_data(conn, NOW, 12, pairs=lambda _conn: pairs)
    conn.close()
    return data


# ---- data ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (100, "critical"), (70, "critical"), (69.9, "high"), (40, "high"), (39, "medium"), (20, "medium"),
    (19, "low"), (1, "low"), (0, "none"), (None, "none")])
def test_band_thresholds(value: float | None, expected: str) -> None:
    """Scores fall into critical >= 70, high >= 40, medium >= 20, low >= 1, none."""
    assert band(value) == expected


def test_weeks_out_of_range_is_refused(store: Store) -> None:
    """weeks below 1 raises ValueError."""
    with pytest.raises(ValueError, match="weeks"):
        _data(store, weeks=0)


def test_empty_store_gives_zeros(store: Store) -> None:
    """An empty store yields zero counts, twelve empty weeks and an empty advisory section."""
    data = _data(store)
    assert data["summary"]["devices"] == 0 and data["findings"]["open"] == []
    assert data["trends"]["policy_violations"] == [0] * 12 and len(data["trends"]["weeks"]) == 12
    assert data["advisories"]["pairs"] == []


def test_demo_data_is_strict_json(demo: dict[str, Any]) -> None:
    """The data dict survives json.dumps without NaN or non-JSON types, and round-trips."""
    assert json.loads(json.dumps(demo, allow_nan=False)) == demo


def test_inventory_counts_roles_by_band(feed: _Feed, store: Store) -> None:
    """Each role's devices are counted in the band of their latest risk score."""
    feed.device(NOW - 3600, "02:00:00:00:00:0a", **TELNET)
    feed.device(NOW - 3600, "02:00:00:00:00:0b")
    feed.device(NOW - 3600, "02:00:00:00:00:0c", role="printer")
    by_role = {r["role"]: r for r in _data(store)["inventory"]["by_role"]}
    assert by_role["infusion_pump"]["devices"] == 2
    pumps = by_role["infusion_pump"]["bands"]
    assert pumps["critical"] == 1 and pumps["none"] == 1
    assert by_role["printer"]["bands"]["none"] == 1


def test_devices_not_seen_in_window_are_left_out(feed: _Feed, store: Store) -> None:
    """A device last seen before the report window is not in the inventory."""
    feed.device(START - WEEK, "02:00:00:00:00:0a", last_seen=START - WEEK)
    feed.device(NOW - 10, "02:00:00:00:00:0b")
    assert [d["mac"] for d in _data(store)["devices"]] == ["02:00:00:00:00:0b"]


def test_critical_trend_follows_device_history(feed: _Feed, store: Store) -> None:
    """A device critical from week 0 and fixed in week 5 counts as critical in weeks 0-4 only."""
    feed.device(START + 3600, "02:00:00:00:00:0a", last_seen=START + 3600, **TELNET)
    feed.device(START + 5 * WEEK + 3600, "02:00:00:00:00:0a", last_seen=NOW - 60)
    bands = _data(store)["trends"]["devices_by_band"]
    assert bands["critical"] == [1] * 5 + [0] * 7
    assert bands["none"] == [0] * 5 + [1] * 7


def test_departed_device_leaves_the_trend(feed: _Feed, store: Store) -> None:
    """A device whose last sighting is in week 2 is not counted from week 3 on."""
    feed.device(START + 3600, "02:00:00:00:00:0a", last_seen=START + 2 * WEEK + 10, **TELNET)
    assert _data(store)["trends"]["devices_by_band"]["critical"] == [1, 1, 1] + [0] * 9


def test_cleartext_clinical_flows_count_known_ports(feed: _Feed, store: Store) -> None:
    """Flows to 2575 and 104 count as HL7 and DICOM in their week; DICOM over TLS (2762) and UDP do not."""
    feed.flows(START + 100, 2575, n=3)
    feed.flows(START + WEEK + 100, 104, n=2)
    feed.flows(START + WEEK + 200, 2762, n=5)
    feed.flows(START + WEEK + 300, 104, n=4, proto="udp")
    trend = _data(store)["trends"]["cleartext_clinical_flows"]
    assert trend["by_protocol"]["HL7"][:2] == [3, 0] and trend["by_protocol"]["DICOM"][:2] == [0, 2]
    assert sum(trend["total"]) == 5


def test_cleartext_clinical_flows_follow_a_devices_hl7_port(feed: _Feed, store: Store) -> None:
    """Flows to a device's own HL7 port count when the device carries the cleartext clinical risk."""
    feed.device(NOW - 60, "02:00:00:00:00:14", role="hl7_engine", **HL7_6661)
    feed.flows(NOW - 3600, 6661, n=4, b_ip="10.0.0.20")
    feed.flows(NOW - 3600, 6661, n=9, b_ip="10.0.0.99")
    assert _data(store)["trends"]["cleartext_clinical_flows"]["by_protocol"]["HL7"][-1] == 4


def test_policy_violations_are_counted_per_week(feed: _Feed, store: Store) -> None:
    """policy_violation findings count in the week of their ts; other kinds do not."""
    feed.finding("policy_violation", START + 10, "a")
    feed.finding("policy_violation", START + 20, "b")
    feed.finding("policy_violation", NOW - 10, "a")
    feed.finding("port_scan", NOW - 10, "c")
    trends = _data(store)["trends"]
    assert trends["policy_violations"] == [2] + [0] * 10 + [1]
    assert trends["findings"] == [2] + [0] * 10 + [2]


def test_open_findings_are_recent_and_deduplicated(feed: _Feed, store: Store) -> None:
    """Findings of the last 7 days are one entry per key with a count; older ones are not open."""
    feed.finding("brute_force", NOW - 8 * 86400, "old")
    feed.finding("brute_force", NOW - 3 * 86400, "k", severity="medium")
    feed.finding("brute_force", NOW - 86400, "k")
    opened = _data(store)["findings"]["open"]
    assert [(f["kind"], f["count"], f["severity"]) for f in opened] == [("brute_force", 2, "high")]


def test_health_findings_stay_out_of_the_ward_counts(feed: _Feed, store: Store) -> None:
    """capture_loss is open and listed by kind as health, but not counted against the ward."""
    feed.finding("capture_loss", NOW - 60, "h")
    feed.finding("port_scan", NOW - 60, "p")
    findings = _data(store)["findings"]
    assert {r["kind"]: r["health"] for r in findings["by_kind"]} == {"capture_loss": True, "port_scan": False}
    severity = {"critical": 0, "high": 1, "medium": 0, "low": 0, "info": 0}
    assert findings["by_ward"] == [{"ward": "icu", "open": 1, "severity": severity}]


def test_ward_is_the_site_or_the_sensor(feed: _Feed, store: Store) -> None:
    """A sensor's findings count under its site; a sensor without a site under its own id."""
    store.register("s2", None, "ef:01")
    feed.finding("port_scan", NOW - 60, "p")
    feed.finding("port_scan", NOW - 60, "p", sensor="s2")
    assert sorted(r["ward"] for r in _data(store)["findings"]["by_ward"]) == ["icu", "s2"]


def test_segmentation_groups_by_source_and_destination(feed: _Feed, store: Store) -> None:
    """Violations of the window are grouped by device, destination and port, most frequent first."""
    for i in range(3):
        feed.finding("policy_violation", NOW - 100 - i, f"k{i}")
    feed.finding("policy_violation", NOW - 50, "other", dst_port=80)
    seg = _data(store)["segmentation"]
    assert seg["total"] == 4 and seg["pairs"] == 2
    assert (seg["violations"][0]["dst_port"], seg["violations"][0]["count"]) == (23, 3)


# ---- advisories ----------------------------------------------------------------------------------

def _pair(mac: str, status: str, history: list[tuple[str, float]] | None = None,
          **extra: Any) -> dict[str, Any]:
    steps = [{"status": s, "ts": ts} for s, ts in history or []]
    return {"sensor": "s1", "mac": mac, "advisory": "ICSMA-20-170-04", "title": "Pumps", "cvss": 8.6,
            "status": status, "opened": steps[0]["ts"] if steps else START, "history": steps, **extra}


def test_time_to_mitigate_is_the_median_of_resolved_pairs(store: Store) -> None:
    """Pairs patched after 14 and 28 days give a median of 21 days, in the week they were resolved."""
    pairs = [_pair("02:00:00:00:00:0a", "patched", [("open", START), ("patched", START + 14 * 86400)]),
             _pair("02:00:00:00:00:0b", "mitigated", [("open", START), ("mitigated", START + 28 * 86400)]),
             _pair("02:00:00:00:00:0c", "open", [("open", START)])]
    adv = _data(store, pairs=pairs)["advisories"]
    assert adv["time_to_mitigate"]["median_days"] == 21.0 and adv["time_to_mitigate"]["resolved"] == 2
    assert adv["by_status"] == {"open": 1, "mitigated": 1, "patched": 1, "accepted": 0}


def test_open_pairs_per_week_follow_the_transitions(store: Store) -> None:
    """A pair opened in week 0 and patched in week 3 is open at the end of weeks 0-2."""
    steps = [("open", START + 60), ("patched", START + 3 * WEEK + 60)]
    pairs = [_pair("02:00:00:00:00:0a", "patched", steps)]
    data = _data(store, pairs=pairs)
    assert data["trends"]["open_advisory_pairs"] == [1, 1, 1] + [0] * 9
    assert data["trends"]["mitigation_days"][3] == 21.0


def test_pair_without_history_uses_opened_and_status_ts(store: Store) -> None:
    """Without history, a patched pair is open from `opened` until `status_ts`."""
    pair = {"sensor": "s1", "mac": "02:00:00:00:00:0a", "advisory": "X-1", "status": "patched",
            "opened": START, "status_ts": START + 7 * 86400}
    adv = _data(store, pairs=[pair])["advisories"]
    assert adv["pairs"][0]["advisory"] == "X-1" and adv["time_to_mitigate"]["median_days"] == 7.0


def test_pairs_with_unknown_status_are_ignored(store: Store) -> None:
    """A pair whose status is not open/mitigated/patched/accepted is dropped."""
    assert _data(store, pairs=[_pair("02:00:00:00:00:0a", "fixed?")])["advisories"]["pairs"] == []


def test_devices_count_their_open_advisories(feed: _Feed, store: Store) -> None:
    """A device's open_advisories counts its open pairs only."""
    feed.device(NOW - 60, "02:00:00:00:00:0a")
    pairs = [_pair("02:00:00:00:00:0a", "open"), _pair("02:00:00:00:00:0a", "accepted", advisory="Y")]
    data = _data(store, pairs=pairs)
    assert data["devices"][0]["open_advisories"] == 1 and data["summary"]["devices_with_open_advisories"] == 1


def test_failing_tracking_read_leaves_an_empty_section(store: Store) -> None:
    """A reader that hits missing tables gives available False with the error, and the rest of the report."""

    def reader(c: Any) -> list[Mapping[str, Any]]:
        return list(c.execute("SELECT * FROM advisory_pairs_v9", ()).fetchall())

    data = report_data(store.db, NOW, 12, pairs=reader)
    assert data["advisories"]["available"] is False and "advisory_pairs_v9" in data["advisories"]["error"]
    assert data["trends"]["open_advisory_pairs"] == [0] * 12


def test_missing_tracking_tables_leave_an_empty_section(store: Store) -> None:
    """With advisory tracking's tables absent, the default reader fails softly and says why."""
    adv = _data(store)["advisories"]
    assert adv["available"] is False and "advisory" in adv["error"] and adv["pairs"] == []


def test_real_tracking_tables_are_read(feed: _Feed, store: Store) -> None:
    """Pairs and history in advisory tracking's own tables reach the report through tracking.pairs."""
    tracking.create_tables(store.db)
    feed.device(NOW - 60, "02:00:00:00:00:0a")
    opened, patched = START + 86400, START + 11 * 86400
    pair = ("s1", "02:00:00:00:00:0a", "ICSMA-20-170-04")
    store.db.execute("INSERT INTO advisory_pairs(sensor, mac, advisory, status, confidence, opened, "
                     "status_ts, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (*pair, "patched", "high", opened, patched, patched))
    for n, (status, ts) in enumerate((("open", opened), ("patched", patched)), 1):
        store.db.execute("INSERT INTO advisory_history(sensor, mac, advisory, n, ts, status) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (*pair, n, ts, status))
    adv = _data(store)["advisories"]
    assert adv["available"] is True and adv["by_status"]["patched"] == 1
    assert adv["time_to_mitigate"]["median_days"] == 10.0 and adv["devices"][0]["hostname"] == "0a"


# ---- HTML ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "top", "step"), [(0, 1, 0.2), (3, 5, 1), (12, 20, 5), (33, 50, 10),
                                                   (87, 100, 20), (1117, 2000, 500), (2.2, 2.5, 0.5)])
def test_chart_scale_is_round(value: float, top: float, step: float) -> None:
    """A chart's scale ends at the next 1, 2, 2.5 or 5 x 10^k and its gridlines are round steps."""
    grid = ticks(nice_max(value))
    assert grid[-1] == top and all(b - a == pytest.approx(step) for a, b in itertools.pairwise(grid))


def test_page_has_every_section_and_chart(demo: dict[str, Any]) -> None:
    """The page has the seven sections and nine SVG charts, each with a title and a description."""
    page = render_html(demo)
    for ident in ("trends", "inventory", "advisories", "findings", "segmentation", "sensors", "definitions"):
        assert f'<section id="{ident}"' in page
    charts = re.findall(r"<svg .*?</svg>", page)
    assert len(charts) == 9 and all("<title id=" in c and "<desc id=" in c for c in charts)


def test_page_loads_nothing_and_runs_nothing(demo: dict[str, Any]) -> None:
    """No script element, no src/href attribute, no URL but the SVG namespace; a CSP forbids scripts."""
    page = render_html(demo)
    assert "<script" not in page.lower() and not re.search(r"<[a-z][^>]*\s(src|href)=", page)
    assert set(re.findall(r"\w+://[^\s\"'<]*", page)) == {"http://www.w3.org/2000/svg"}
    assert "default-src &#x27;none&#x27;; style-src" in page


def test_hostile_host_name_is_escaped(demo: dict[str, Any]) -> None:
    """The demo's injection host name appears only escaped."""
    page = render_html(demo)
    assert report_demo_data.HOSTILE not in page
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in page


def test_every_data_string_is_escaped(feed: _Feed, store: Store) -> None:
    """Hostile text in device, finding and advisory fields never reaches the page as markup."""
    feed.device(NOW - 60, "02:00:00:00:00:0a", hostname=EVIL, vendor=EVIL, role=EVIL, **TELNET)
    feed.finding(EVIL, NOW - 60, EVIL, summary=EVIL, severity=EVIL)
    feed.finding("policy_violation", NOW - 60, "p", summary=EVIL, role=EVIL, peer_role=EVIL, src_ip=EVIL)
    feed.finding("capture_loss", NOW - 60, "h", summary=EVIL)
    pair = _pair("02:00:00:00:00:0a", "accepted", title=EVIL, reason=EVIL, advisory=EVIL, confidence=EVIL)
    page = render_html(_data(store, pairs=[pair]))
    assert "<x-evil>" not in page and "<script>" not in page
    assert page.count("&lt;x-evil&gt;") >= 8


@pytest.fixture(scope="module")
def one_device(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = Store(tmp_path_factory.mktemp("one") / "one.db")
    _Feed(store).device(NOW - 60, "02:00:00:00:00:0a", **TELNET)
    data = _data(store)
    store.close()
    return data


@settings(max_examples=80, deadline=None)
@given(name=st.text(min_size=1, max_size=40))
def test_any_host_name_is_escaped(one_device: dict[str, Any], name: str) -> None:
    """Whatever a host name holds, it shows escaped and adds no tag or quote to the page."""
    base = render_html(one_device)
    data = copy.deepcopy(one_device)
    data["devices"][0]["hostname"] = name
    page = render_html(data)
    assert html.escape(name, quote=True) in page
    for char in "<>\"'":
        assert page.count(char) == base.count(char)


def test_empty_report_renders(store: Store) -> None:
    """A report of an empty store renders, saying there is no advisory data."""
    page = render_html(_data(store))
    assert "No device-advisory pairs" in page and "None." in page


# ---- demo story and CLI ---------------------------------------------------------------------------

def test_demo_trends_go_down(demo: dict[str, Any]) -> None:
    """In the demo, critical devices, policy violations and cleartext DICOM fall over the twelve weeks."""
    t = demo["trends"]
    assert t["devices_by_band"]["critical"][0] > 3 * t["devices_by_band"]["critical"][-1]
    assert sum(t["policy_violations"][:6]) > 3 * sum(t["policy_violations"][6:])
    assert t["cleartext_clinical_flows"]["by_protocol"]["DICOM"][8:] == [0, 0, 0, 0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.central.report_cli", "central", "report", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_cli_json_matches_report_data(feed: _Feed, store: Store, tmp_path: Path) -> None:
    """--format json prints report_data's dict for the same --now and --weeks."""
    feed.device(NOW - 60, "02:00:00:00:00:0a", **TELNET)
    done = _cli("--db", str(tmp_path / "central.db"), "--format", "json", "--now", str(NOW), "--weeks", "4")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(_data(store, weeks=4)))


def test_cli_writes_the_page_and_prints_its_path(store: Store, tmp_path: Path) -> None:
    """--out FILE writes the HTML page and prints the path; the database file is left unchanged."""
    store.close()
    path, out = tmp_path / "central.db", tmp_path / "report.html"
    before = path.read_bytes()
    done = _cli("--db", str(path), "--out", str(out), "--now", str(NOW))
    assert done.returncode == 0 and done.stdout.strip() == str(out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>") and path.read_bytes() == before


@pytest.mark.parametrize(("args", "status"), [(["--db", "/nonexistent/x.db"], report_cli.EX_NOINPUT),
                                              (["--db", "/dev/null", "--weeks", "0"], report_cli.EX_USAGE)])
def test_cli_refusals(args: list[str], status: int) -> None:
    """A missing database exits 66 and --weeks 0 exits 64, each with a message."""
    done = _cli(*args)
    assert done.returncode == status and "ward-agent central report" in done.stderr
