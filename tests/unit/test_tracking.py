"""agent.central.tracking and advisories_cli: pairs open, move to patched/accepted/mitigated, with history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_advisories import SHARED_ADVISORIES, csaf_doc, shared

from agent.central import advisories_cli, report_advisories, tracking
from agent.central.store import Store
from agent.messages import Header, Message

T0 = 1_767_225_600.0
DAY = 86400.0
MAC = "00:11:22:33:44:55"


class Ward:
    """A collector database with one sensor, fed through the real Store API."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "central.db"
        self.store = Store(self.path)
        self.db = self.store.db
        self.seq = 0
        self.folder = folder

    def device(self, banner: str = "Infuso 300 fw 2.4.0", at: float = T0, mac: str = MAC,
               vendor: str = "Acme Medical", first: float = T0 - 30 * DAY) -> None:
        record = {"type": "device", "mac": mac, "vendor": vendor, "hostname": "pump-1",
                  "ips": [{"ip": "10.0.2.7", "first_seen": first, "last_seen": at}],
                  "software": {"http_server": [banner]}, "first_seen": first, "last_seen": at}
        self.send("devices", {"mode": "delta", "devices": [record]}, at)

    def violation(self, at: float) -> None:
        finding = {"kind": "policy_violation", "severity": "high", "ts": at, "src_ip": "10.0.9.9",
                   "dst_ip": "10.0.2.7", "dst_port": 80, "proto": "tcp", "device": "02:00:00:00:00:09",
                   "summary": "an unzoned host reached the pump", "evidence": {}, "key": "k"}
        self.send("findings", [finding], at)

    def send(self, kind: str, body: Any, at: float) -> None:
        self.seq += 1
        assert self.store.add(Message(Header("s1", 1, self.seq, kind), at, body), 100, at)

    def advisory(self, **changes: Any) -> Path:
        path = self.folder / f"adv{self.seq}-{len(list(self.folder.glob('*.json')))}.json"
        path.write_text(json.dumps(csaf_doc(**changes)), encoding="utf-8")
        tracking.import_path(self.db, path, now=T0)
        return path

    def pair(self) -> dict[str, Any]:
        rows = tracking.pairs(self.db, mac=MAC)
        assert len(rows) == 1, rows
        return rows[0]

    def steps(self) -> list[tuple[str | None, str, float]]:
        return [(s["previous"], s["status"], s["ts"]) for s in self.pair()["history"]]


@pytest.fixture
def ward(tmp_path: Path) -> Ward:
    w = Ward(tmp_path)
    w.advisory()
    return w


def zoned(_device: Any) -> str | None:
    return "infusion"


def test_affected_device_opens_a_pair(ward: Ward) -> None:
    """A device in the affected range opens a pair with its confidence, version and the time."""
    ward.device()
    assert tracking.evaluate(ward.db, T0 + 10)["open"] == 1
    pair = ward.pair()
    assert (pair["advisory"], pair["status"], pair["confidence"], pair["version"]) == (
        "TEST-01", "open", "high", "2.4.0")
    assert (pair["opened"], pair["status_ts"], pair["title"], pair["cvss"]) == (T0 + 10, T0 + 10,
                                                                                "Acme Medical Inc. test", 7.5)
    assert ward.steps() == [(None, "open", T0 + 10)]


def test_fixed_version_moves_the_pair_to_patched(ward: Ward) -> None:
    """A new device record with a version past the range makes the pair patched, kept in the history."""
    ward.device()
    tracking.evaluate(ward.db, T0 + 10)
    ward.device("Infuso 300 fw 2.5.0", at=T0 + DAY)
    assert tracking.evaluate(ward.db, T0 + DAY + 10)["patched"] == 1
    assert (ward.pair()["status"], ward.pair()["version"]) == ("patched", "2.5.0")
    assert ward.steps() == [(None, "open", T0 + 10), ("open", "patched", T0 + DAY + 10)]


def test_downgrade_reopens_a_patched_pair(ward: Ward) -> None:
    """A device seen again at an affected version is opened again."""
    ward.device()
    tracking.evaluate(ward.db, T0 + 10)
    ward.device("Infuso 300 fw 2.5.0", at=T0 + DAY)
    tracking.evaluate(ward.db, T0 + DAY)
    ward.device("Infuso 300 fw 2.3.0", at=T0 + 2 * DAY)
    tracking.evaluate(ward.db, T0 + 2 * DAY)
    assert [s[1] for s in ward.steps()] == ["open", "patched", "open"]


def test_device_already_fixed_opens_nothing(ward: Ward) -> None:
    """A device first seen at a fixed version gets no pair."""
    ward.device("Infuso 300 fw 2.6")
    tracking.evaluate(ward.db, T0)
    assert tracking.pairs(ward.db) == []


def test_accept_needs_a_reason_and_keeps_it(ward: Ward) -> None:
    """A person accepts a pair with a reason; the reason and the person are in the pair and its history."""
    ward.device()
    tracking.evaluate(ward.db, T0)
    with pytest.raises(ValueError, match="reason"):
        tracking.accept(ward.db, MAC, "TEST-01", "  ", "alice")
    assert tracking.accept(ward.db, MAC.upper(), "TEST-01", "isolated bench unit", "alice", now=T0 + 5) == 1
    pair = ward.pair()
    assert (pair["status"], pair["reason"], pair["actor"], pair["status_ts"]) == (
        "accepted", "isolated bench unit", "alice", T0 + 5)
    assert ward.pair()["history"][-1]["reason"] == "isolated bench unit"


def test_accept_of_an_unknown_pair_changes_nothing(ward: Ward) -> None:
    """Accepting a pair that does not exist returns 0."""
    assert tracking.accept(ward.db, MAC, "NOPE-1", "why", "alice") == 0


def test_accepted_stays_until_patched(ward: Ward) -> None:
    """Evaluation leaves an accepted pair alone, but a fixed version still makes it patched."""
    ward.device()
    tracking.evaluate(ward.db, T0)
    tracking.accept(ward.db, MAC, "TEST-01", "bench", "alice", now=T0 + 1)
    tracking.evaluate(ward.db, T0 + 2, zone_of=zoned)
    assert ward.pair()["status"] == "accepted"
    ward.device("Infuso 300 fw 2.5.0", at=T0 + 3)
    tracking.evaluate(ward.db, T0 + 4)
    assert [s[1] for s in ward.steps()] == ["open", "accepted", "patched"]


def test_zone_without_violations_mitigates(ward: Ward) -> None:
    """In a policy zone with no policy_violation in the window, an open pair becomes mitigated."""
    ward.device()
    counts = tracking.evaluate(ward.db, T0, zone_of=zoned)
    assert (counts["open"], counts["mitigated"]) == (1, 1)
    assert (ward.pair()["status"], ward.pair()["actor"]) == ("mitigated", "rule")


def test_violation_keeps_the_pair_open(ward: Ward) -> None:
    """A policy_violation towards the device within the window keeps it open."""
    ward.device()
    ward.violation(T0 - DAY)
    tracking.evaluate(ward.db, T0, zone_of=zoned)
    assert ward.pair()["status"] == "open"


def test_old_violation_does_not_count(ward: Ward) -> None:
    """A violation older than the window does not stop the mitigation."""
    ward.device()
    ward.violation(T0 - 8 * DAY)
    tracking.evaluate(ward.db, T0, zone_of=zoned)
    assert ward.pair()["status"] == "mitigated"


def test_new_device_is_not_mitigated_yet(ward: Ward) -> None:
    """A device first seen less than the window ago is not yet proven quiet."""
    ward.device(first=T0 - DAY)
    tracking.evaluate(ward.db, T0, zone_of=zoned)
    assert ward.pair()["status"] == "open"


def test_violation_after_mitigation_reopens(ward: Ward) -> None:
    """A rule mitigation opens again when a violation appears, with the count as the reason."""
    ward.device()
    tracking.evaluate(ward.db, T0, zone_of=zoned)
    ward.violation(T0 + DAY)
    tracking.evaluate(ward.db, T0 + DAY + 1, zone_of=zoned)
    assert [s[1] for s in ward.steps()] == ["open", "mitigated", "open"]
    assert ward.pair()["reason"] == "1 policy_violation findings in 7 days"


def test_manual_mitigation_survives_violations(ward: Ward) -> None:
    """A person's mitigation stays when the rule would not hold."""
    ward.device()
    tracking.evaluate(ward.db, T0)
    assert tracking.mitigate(ward.db, MAC, "TEST-01", "unplugged from the LAN", "bob", now=T0 + 1) == 1
    ward.violation(T0 + 2)
    tracking.evaluate(ward.db, T0 + 3, zone_of=lambda _d: None)
    assert (ward.pair()["status"], ward.pair()["actor"]) == ("mitigated", "bob")


def test_match_that_vanishes_is_not_affected(ward: Ward) -> None:
    """When the device record stops naming the vendor at all, the open pair becomes not_affected."""
    ward.device()
    tracking.evaluate(ward.db, T0)
    ward.device(at=T0 + 1, vendor="Globex")
    tracking.evaluate(ward.db, T0 + 2)
    assert ward.pair()["status"] == "not_affected"


def test_since_limits_the_devices_read(ward: Ward) -> None:
    """evaluate(since=...) reads only device records stored at or after that time."""
    ward.device(at=T0)
    assert tracking.evaluate(ward.db, T0 + 1, since=T0 + 1)["devices"] == 0


def test_reimport_keeps_the_newer_revision(ward: Ward) -> None:
    """An older revision of a stored advisory is skipped; a newer one replaces it."""
    old = ward.folder / "old.json"
    old.write_text(json.dumps(csaf_doc(current="2020-01-01T00:00:00Z", cvss=1.0)), encoding="utf-8")
    assert tracking.import_path(ward.db, old) == []
    new = ward.folder / "new.json"
    new.write_text(json.dumps(csaf_doc(current="2025-01-01T00:00:00Z", cvss=9.0)), encoding="utf-8")
    assert [a.id for a in tracking.import_path(ward.db, new)] == ["TEST-01"]
    assert ward.db.query("SELECT cvss FROM advisories") == [(9.0,)]


def test_bad_file_stores_nothing(ward: Ward) -> None:
    """A folder with one broken file stores none of its advisories."""
    folder = ward.folder / "batch"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(csaf_doc("OTHER-1")), encoding="utf-8")
    (folder / "b.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"b\.json"):
        tracking.import_path(ward.db, folder)
    assert ward.db.query("SELECT id FROM advisories") == [("TEST-01",)]


def test_products_table_lists_statuses(ward: Ward) -> None:
    """advisory_products holds each product with its vendor, version text and status."""
    assert ward.db.query("SELECT advisory, product_id, vendor, version, status FROM advisory_products") == [
        ("TEST-01", "P1", "Acme Medical Inc.", "<= 2.4.1", "affected")]


def test_report_reads_the_pairs(ward: Ward) -> None:
    """The report's advisory section reads pairs(), with time to mitigate from the history."""
    ward.device()
    tracking.evaluate(ward.db, T0)
    tracking.mitigate(ward.db, MAC, "TEST-01", "VLAN 40", "bob", now=T0 + 2 * DAY)
    section = report_advisories.gather(ward.db, [{"sensor": "s1", "mac": MAC}], [T0, T0 + 7 * DAY])
    assert (section["available"], section["by_status"]["mitigated"]) == (True, 1)
    assert section["time_to_mitigate"]["median_days"] == 2.0


def test_cli_import_evaluate_list_accept(ward: Ward, capsys: pytest.CaptureFixture[str]) -> None:
    """The commands import, evaluate, list (table and JSON) and accept through one database."""
    ward.device()
    ward.store.close()
    db = str(ward.path)
    source = ward.folder / "more.json"
    source.write_text(json.dumps(csaf_doc("TEST-02")), encoding="utf-8")
    assert advisories_cli.main(["advisories", "import", str(source), "--db", db]) == 0
    assert advisories_cli.main(["advisories", "evaluate", "--db", db]) == 0
    assert advisories_cli.main(["advisories", "accept", "--db", db, "--device", MAC, "--advisory", "TEST-02",
                                "--reason", "spare unit", "--by", "carol"]) == 0
    capsys.readouterr()
    assert advisories_cli.main(["advisories", "list", "--db", db, "--device", MAC, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["advisory"], r["status"]) for r in rows) == [("TEST-01", "open"),
                                                                  ("TEST-02", "accepted")]
    assert advisories_cli.main(["advisories", "list", "--db", db]) == 0
    assert "TEST-02" in capsys.readouterr().out


def test_cli_evaluate_with_a_policy(ward: Ward) -> None:
    """evaluate --policy: a device in one of the policy's zones, quiet for the window, is mitigated;
    a policy file that is refused exits 78."""
    ward.device()
    ward.store.close()
    policy = ward.folder / "policy.toml"
    policy.write_text('[zones.infusion]\ncidrs = ["10.0.2.0/24"]\n', encoding="utf-8")
    db = str(ward.path)
    assert advisories_cli.main(["advisories", "evaluate", "--db", db, "--policy", str(policy),
                                "--now", str(T0)]) == 0
    policy.write_text('[zones.infusion]\ncidrs = ["not a network"]\n', encoding="utf-8")
    assert advisories_cli.main(["advisories", "evaluate", "--db", db, "--policy", str(policy)]) == 78
    store = Store(ward.path)
    assert [(p["status"], p["reason"]) for p in tracking.pairs(store.db)] == [
        ("mitigated", "in zone infusion, no policy violation in 7 days")]
    store.close()


def test_cli_exit_statuses(tmp_path: Path) -> None:
    """No database: 66; a file that is not CSAF: 65; no such pair: 66."""
    missing = str(tmp_path / "none.db")
    assert advisories_cli.main(["advisories", "list", "--db", missing]) == 66
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    db = str(tmp_path / "c.db")
    assert advisories_cli.main(["advisories", "import", str(bad), "--db", db]) == 65
    assert advisories_cli.main(["advisories", "accept", "--db", db, "--device", MAC, "--advisory", "X",
                                "--reason", "r", "--by", "me"]) == 66


@shared
def test_scenario_finds_the_right_devices(tmp_path: Path) -> None:
    """Scenario ward: affected devices found with the expected confidence, fixed and unrelated ones not."""
    import advisory_scenario

    result = advisory_scenario.run(tmp_path / "scenario.db", SHARED_ADVISORIES)
    names = {d[0]: d[3] for d in advisory_scenario.DEVICES}
    found = {(names[p["mac"]], p["advisory"]): p["confidence"] for p in result["before"]}
    philips = ("17-255-01", "18-156-01", "18-233-01", "18-312-01", "20-254-01", "21-187-01", "21-322-02")
    assert found == {
        ("alaris-pcu-11", "ICSMA-17-017-02"): "high", ("alaris-pcu-11", "ICSMA-20-170-06"): "high",
        ("alaris-pcu-11", "ICSMA-23-194-01"): "high", ("b450-bed3", "ICSMA-20-023-01"): "high",
        ("cms8000", "ICSMA-22-244-01"): "high", ("cms8000", "ICSMA-25-030-01"): "high",
        ("csm-bay4", "ICSMA-21-152-01"): "high", ("csm-bay4", "ICSMA-24-151-02"): "high",
        ("delta-bed9", "ICSMA-19-022-01"): "high", ("medfusion-3500", "ICSMA-17-250-02A"): "low",
        ("mx40-bed12", "ICSMA-17-255-01"): "high", ("spacestation-1", "ICSMA-20-296-02"): "high",
        ("spectrum-07", "ICSMA-20-170-04"): "high", ("spectrum-07", "ICSMA-22-251-01"): "high",
        **{("philips-gw", f"ICSMA-{a}"): "low" for a in philips}}
    assert (result["advisories"], result["products"], result["vulnerabilities"]) == (37, 278, 138)


@shared
def test_scenario_statuses_follow_the_evidence(tmp_path: Path) -> None:
    """Zone without violations: mitigated; violation: open; fixed version: patched; person: accepted."""
    import advisory_scenario

    result = advisory_scenario.run(tmp_path / "scenario.db", SHARED_ADVISORIES)
    names = {d[0]: d[3] for d in advisory_scenario.DEVICES}
    status = {(names[p["mac"]], p["advisory"]): p["status"] for p in result["after"]}
    assert status[("spectrum-07", "ICSMA-20-170-04")] == "mitigated"
    assert status[("spacestation-1", "ICSMA-20-296-02")] == "open"
    assert status[("csm-bay4", "ICSMA-21-152-01")] == status[("csm-bay4", "ICSMA-24-151-02")] == "patched"
    assert result["accepted"] == 7 and status[("philips-gw", "ICSMA-18-233-01")] == "accepted"
    assert (result["second"]["devices"], result["second"]["patched"]) == (1, 2)
