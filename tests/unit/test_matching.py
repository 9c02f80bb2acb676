"""agent.central.matching: vendor names, product words and versions of device records against advisories."""

from __future__ import annotations

from typing import Any

import pytest
from test_advisories import SHARED_ADVISORIES, csaf_doc, shared

from agent.central import advisories as csaf
from agent.central.matching import Match, Matcher, product_strings, vendor_keys, vendors_meet


def device(vendor: str | None = "Acme Medical", hostname: str | None = None,
           **software: str) -> dict[str, Any]:
    return {"mac": "00:11:22:33:44:55", "vendor": vendor, "hostname": hostname,
            "software": {key: [value] for key, value in software.items()}}


def matcher(*docs: dict[str, Any]) -> Matcher:
    return Matcher([csaf.parse(d) for d in docs])


def only(matches: list[Match]) -> Match:
    assert len(matches) == 1, matches
    return matches[0]


@pytest.mark.parametrize(("device_vendor", "advisory_vendor"), [
    ("BAXTER HEALTHCARE CORP.", "Baxter"), ("Baxter International Inc", "Baxter"),
    ("B.Braun Melsungen AG", "B. Braun Medical"), ("Draeger Medical", "Dräger"),
    ("Drägerwerk AG & Co. KG aA", "Dräger"),
    ("Becton, Dickinson  and Company", "Becton, Dickinson and Company (BD)"),
    ("BD", "Becton, Dickinson and Company (BD)"), ("GE Healthcare", "General Electric (GE)"),
    ("Hill-Rom", "Hillrom"), ("Welch Allyn, Inc.", "Baxter"),
    ("Siemens Healthcare Diagnostics, Inc", "Siemens"),
    ("Baxter International Inc", "Hillrom and ELI, Baxter International Inc."),
    ("Medtronic Diabetes", "Medtronic"), ("FRESENIUS-VIAL", "Fresenius Kabi"),
])
def test_vendor_names_meet(device_vendor: str, advisory_vendor: str) -> None:
    """Case, accents, punctuation, legal suffixes, short names, aliases and buyers meet."""
    assert vendors_meet(vendor_keys(device_vendor, device=True), vendor_keys(advisory_vendor))


@pytest.mark.parametrize(("device_vendor", "advisory_vendor"), [
    ("CONTEC CO., LTD.", "Contec Health"), ("Contec GmbH", "Contec Health"),
    ("Fresenius Medical Care Deutschland GmbH", "Fresenius Kabi"), ("Baxter International Inc", "Hillrom"),
    ("General Electric Water & Process Technologies", "Change Healthcare"), ("Philips", "Siemens"),
])
def test_vendor_look_alikes_stay_apart(device_vendor: str, advisory_vendor: str) -> None:
    """Other companies with similar names, and a buyer's devices under the bought company, do not meet."""
    assert not vendors_meet(vendor_keys(device_vendor, device=True), vendor_keys(advisory_vendor))


def test_product_strings_skip_fingerprints() -> None:
    """Host name, software banners and clinical names are read; TLS/DHCP fingerprints are not."""
    record = device(hostname="pump-7", http_server="Infuso/2.4", tls_ja4="t13d_abc", dhcp_fingerprint="1,3,6")
    record["clinical"] = {"dicom": {"implementations": ["1.2.3 INFUSO_24"]},
                          "hl7": {"applications": ["INFUSO"]}}
    assert product_strings(record) == [("hostname", "pump-7"), ("http_server", "Infuso/2.4"),
                                       ("dicom_implementations", "1.2.3 INFUSO_24"),
                                       ("hl7_applications", "INFUSO")]


def test_vendor_only_is_low() -> None:
    """Only the maker matches: low confidence, no products, no version."""
    found = only(matcher(csaf_doc()).match(device(hostname="acme-box")))
    assert (found.confidence, found.affected, found.products, found.version) == ("low", True, (), None)


def test_vendor_and_product_without_version_is_medium() -> None:
    """Maker and product name but no version: medium."""
    found = only(matcher(csaf_doc()).match(device(dhcp_vendor_class="Acme Infuso 300")))
    assert (found.confidence, found.products, found.version) == ("medium", ("P1",), None)


def test_version_in_range_is_high() -> None:
    """Maker, product and a version inside the affected range: high, with the evidence strings."""
    found = only(matcher(csaf_doc()).match(device(http_server="Infuso 300 fw 2.4.0")))
    assert (found.confidence, found.affected, found.version) == ("high", True, "2.4.0")
    assert found.evidence[-1] == "version 2.4.0 in '<= 2.4.1'"


def test_version_outside_range_is_not_affected() -> None:
    """A version past every affected range: the match says the device is not affected."""
    found = only(matcher(csaf_doc()).match(device(http_server="Infuso 300 v2.5")))
    assert (found.confidence, found.affected, found.version) == ("high", False, "v2.5")


def test_version_listed_as_fixed_is_not_affected() -> None:
    """A version that product_status lists as fixed is not affected."""
    doc = csaf_doc(products=[("Infuso 300", "product_version_range", "vers:generic/<3.0", "P1"),
                             ("Infuso 300", "product_version", "2.6.1", "P2")], fixed=("P2",))
    found = only(matcher(doc).match(device(http_server="Infuso 300 2.6.1")))
    assert found.affected is False
    assert found.evidence[-1] == "version 2.6.1 listed as fixed ('Infuso 300 2.6.1')"


def test_every_version_entry_is_high_without_a_version() -> None:
    """An entry covering every version makes a product match high even when no version is seen."""
    doc = csaf_doc(products=[("Infuso 300 Pump", "product_version_range", "vers:all/*", "P1")])
    assert only(matcher(doc).match(device(hostname="infuso-300"))).confidence == "high"


def test_version_comes_from_a_sibling_string() -> None:
    """When the naming string has no version, one from another string sharing a product word counts."""
    found = only(matcher(csaf_doc()).match(device(dhcp_vendor_class="Acme Infuso 300",
                                                  http_server="Infuso-WebUI/2.3.9")))
    assert (found.confidence, found.version) == ("high", "2.3.9")


def test_other_model_of_the_product_family_is_no_product_match() -> None:
    """Infuso 500 is not the advisory's Infuso 300: the model number must match."""
    assert only(matcher(csaf_doc()).match(device(http_server="Infuso 500 v2.0"))).confidence == "low"


def test_abbreviation_in_parentheses_names_the_product() -> None:
    """An advisory's '(CSM)' is enough to name its product."""
    doc = csaf_doc(products=[("Connex Spot Monitor (CSM)", "product_version_range", "< 1.52", "P1")])
    assert only(matcher(doc).match(device(dhcp_vendor_class="CSM 1.40"))).confidence == "high"


def test_vendor_named_in_a_string_counts() -> None:
    """A Wi-Fi module's MAC names another maker; a banner naming the advisory's vendor still matches."""
    record = device(vendor="Silex Technology", http_server="Acme Infuso 300 2.1")
    found = only(matcher(csaf_doc()).match(record))
    assert (found.confidence, found.evidence[0]) == ("high", "http_server 'Acme Infuso 300 2.1' names "
                                                             "'Acme Medical Inc.'")


def test_no_vendor_no_match() -> None:
    """The right product name from another maker's device matches nothing."""
    assert matcher(csaf_doc()).match(device(vendor="Globex", http_server="Infuso 300 v2.0")) == []


def test_identified_device_drops_vendor_only_matches() -> None:
    """Once a device matched one of its maker's products, the maker's other advisories are not listed."""
    other = csaf_doc("TEST-02", products=[("Vitalis Monitor", "product_version_range", "< 9", "V1")])
    found = matcher(csaf_doc(), other).match(device(http_server="Infuso 300 v2.0"))
    assert [(m.advisory, m.confidence) for m in found] == [("TEST-01", "high")]


def test_product_of_only_generic_words_never_matches_alone() -> None:
    """'Windows 7' under a device maker has no distinctive word, so it never names a product."""
    doc = csaf_doc(products=[("Windows 7", "product_version_range", "vers:all/*", "W7")])
    assert only(matcher(doc).match(device(http_user_agent="Windows 7 Service Pack 1"))).confidence == "low"


@shared
def test_shared_alaris_pc_unit_under_ge_does_not_match_a_bd_pump() -> None:
    """GE Healthcare's 'Alaris PC Unit' entry (icsma-20-343-01) does not reach a BD Alaris pump."""
    found = Matcher(csaf.load(SHARED_ADVISORIES)).match(
        device("Becton, Dickinson  and Company", http_server="Alaris PC Unit 8015 v9.19"))
    assert "ICSMA-20-343-01" not in {m.advisory for m in found}
    assert {m.advisory: m.confidence for m in found} == {
        "ICSMA-17-017-02": "high", "ICSMA-20-170-06": "high", "ICSMA-23-194-01": "high"}


@shared
def test_shared_cms8000_matches_both_of_its_advisories() -> None:
    """The Contec CMS8000 is in two advisories under two product names; both match."""
    found = Matcher(csaf.load(SHARED_ADVISORIES)).match(
        device("(locally administered)", dhcp_vendor_class="Contec Health CMS8000"))
    assert {m.advisory: m.confidence for m in found} == {"ICSMA-22-244-01": "high", "ICSMA-25-030-01": "high"}


def test_dicom_uid_is_no_version() -> None:
    """An implementation class UID next to the product name is not read as its version."""
    record = device(dhcp_vendor_class="Acme Infuso 300")
    record["clinical"] = {"dicom": {"implementations": ["1.2.840.113619.6.5 INFUSO"]}}
    assert only(matcher(csaf_doc()).match(record)).confidence == "medium"
