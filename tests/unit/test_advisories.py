"""agent.central.advisories: CSAF 2.0 product trees, statuses, scores and free-text version ranges."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central import advisories as csaf
from agent.central.advisories import VersionSpec

SHARED_ADVISORIES = Path(os.environ.get("WARD_SHARED_ADVISORIES", ROOT.parent / "shared" / "advisories"))
_ABSENT = pytest.mark.skipif(not SHARED_ADVISORIES.is_dir(), reason="../shared/advisories is absent")


def shared(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that reads ../shared/advisories: `shared`, and skipped when the folder is absent."""
    marked: Callable[..., None] = pytest.mark.shared(_ABSENT(test))
    return marked


def leaf(category: str, name: str, pid: str, full: str | None = None) -> dict[str, Any]:
    return {"category": category, "name": name, "product": {"name": full or name, "product_id": pid}}


def csaf_doc(tracking_id: str = "TEST-01", vendor: str = "Acme Medical Inc.",
             products: list[tuple[str, str, str, str]] | None = None, *, fixed: tuple[str, ...] = (),
             current: str = "2024-05-01T00:00:00Z", cvss: float = 7.5) -> dict[str, Any]:
    """A CSAF document: products are (product name, version category, version text, product id)."""
    products = products or [("Infuso 300 Pump", "product_version_range", "<= 2.4.1", "P1")]
    names: dict[str, list[dict[str, Any]]] = {}
    for product, category, version, pid in products:
        names.setdefault(product, []).append(leaf(category, version, pid, f"{product} {version}"))
    branches = [{"category": "product_name", "name": n, "branches": b} for n, b in names.items()]
    affected = [p[3] for p in products if p[3] not in fixed]
    return {
        "document": {"category": "csaf_security_advisory", "csaf_version": "2.0", "title": f"{vendor} test",
                     "tracking": {"id": tracking_id, "version": "2", "current_release_date": current,
                                  "initial_release_date": "2024-01-01T00:00:00Z"}},
        "product_tree": {"branches": [{"category": "vendor", "name": vendor, "branches": branches}]},
        "vulnerabilities": [{"cve": "CVE-2024-0001", "title": "hard-coded key",
                             "product_status": {"known_affected": affected, "fixed": list(fixed)},
                             "scores": [{"cvss_v3": {"baseScore": cvss, "baseSeverity": "HIGH"},
                                         "products": affected}],
                             "remediations": [{"category": "vendor_fix", "details": "update to 2.5",
                                               "product_ids": affected}]}],
    }


@shared
def test_every_shared_advisory_parses() -> None:
    """All 37 shared CISA advisories parse: 278 products, 138 vulnerabilities, each with a vendor."""
    found = csaf.load(SHARED_ADVISORIES)
    assert len(found) == 37
    assert sum(len(a.products) for a in found) == 278
    assert sum(len(a.vulnerabilities) for a in found) == 138
    assert all(p.vendor and p.product for a in found for p in a.products.values())


@shared
def test_shared_ids_match_file_names_and_status_ids_exist() -> None:
    """Each file is named by its tracking id, and every product id a status names is in its tree."""
    for advisory in csaf.load(SHARED_ADVISORIES):
        assert advisory.source == f"{advisory.id.lower()}.json"
        named = {p for v in advisory.vulnerabilities for p in v.affected + v.fixed + v.not_affected}
        assert named <= set(advisory.products)


@shared
def test_shared_scores_and_dates() -> None:
    """CVSS maxima and release dates come out as the README's table has them."""
    by_id = {a.id: a for a in csaf.load(SHARED_ADVISORIES)}
    assert by_id["ICSMA-19-164-01"].cvss_max == 10.0
    assert by_id["ICSMA-17-250-02A"].cvss_max == 3.7
    assert by_id["ICSMA-24-151-02"].cves == ["CVE-2024-1275"]
    assert by_id["ICSMA-17-017-02"].initial_release == 1484611200.0  # 2017-01-17T00:00:00Z


@shared
def test_shared_most_version_texts_are_readable() -> None:
    """At least 95% of the shared version entries become a readable range (the rest are model names)."""
    specs = [p.spec for a in csaf.load(SHARED_ADVISORIES) for p in a.products.values() if p.spec]
    readable = sum(1 for s in specs if s.readable)
    assert readable / len(specs) >= 0.95, [s.text for s in specs if not s.readable]


@shared
def test_products_no_status_names_count_as_affected() -> None:
    """icsma-17-215-02 names one of its four products in product_status; all four count as affected."""
    advisory = csaf.load(SHARED_ADVISORIES / "icsma-17-215-02.json")[0]
    assert [advisory.status(p) for p in sorted(advisory.products)] == ["affected"] * 4


def test_branch_path_gives_vendor_product_and_version() -> None:
    """A leaf keeps the nearest vendor, the product names on its path and its version text."""
    doc = csaf_doc()
    name = {"category": "product_name", "name": "300", "branches": [leaf("product_version", "2.4", "P1")]}
    doc["product_tree"]["branches"][0]["branches"] = [{"category": "product_family", "name": "Infuso",
                                                       "branches": [name]}]
    product = csaf.parse(doc).products["P1"]
    assert (product.vendor, product.product, product.version) == ("Acme Medical Inc.", "Infuso 300", "2.4")


def test_full_product_names_take_the_only_vendor() -> None:
    """A full_product_names entry gets the tree's vendor when the tree has exactly one."""
    doc = csaf_doc()
    helper = {"model_numbers": ["IG-7"]}
    doc["product_tree"]["full_product_names"] = [{"name": "Infuso Gateway", "product_id": "G1",
                                                  "product_identification_helper": helper}]
    product = csaf.parse(doc).products["G1"]
    assert (product.vendor, product.product, product.models) == ("Acme Medical Inc.", "Infuso Gateway",
                                                                 ("IG-7",))


def test_relationship_inherits_the_component() -> None:
    """A relationship's product id carries the component's vendor and versions and the platform's name."""
    doc = csaf_doc(products=[("Infuso OS", "product_version_range", "< 3.0", "OS"),
                             ("Infuso 300 Pump", "product_version", "all", "HW")])
    full = {"name": "Infuso OS on 300", "product_id": "R1"}
    doc["product_tree"]["relationships"] = [{"category": "installed_on", "product_reference": "OS",
                                             "relates_to_product_reference": "HW", "full_product_name": full}]
    product = csaf.parse(doc).products["R1"]
    assert (product.product, product.platform, product.spec and product.spec.contains("2.9")) == (
        "Infuso OS", "Infuso 300 Pump", True)


def test_statuses_scores_and_remediations() -> None:
    """fixed and known_not_affected ids, the best CVSS (v2 when no v3) and remediation product ids."""
    doc = csaf_doc(products=[("Infuso 300 Pump", "product_version", "2.4", "P1"),
                             ("Infuso 300 Pump", "product_version", "2.5", "P2"),
                             ("Infuso Hub", "product_version", "1.0", "P3")], fixed=("P2",))
    vuln = doc["vulnerabilities"][0]
    vuln["product_status"] = {"known_affected": ["P1"], "fixed": ["P2"], "known_not_affected": ["P3"]}
    vuln["scores"] = [{"cvss_v2": {"baseScore": 9.3}, "products": ["P1"]}]
    advisory = csaf.parse(doc)
    assert [advisory.status(p) for p in ("P1", "P2", "P3")] == ["affected", "fixed", "not_affected"]
    assert (advisory.cvss_max, advisory.vulnerabilities[0].not_affected) == (9.3, ("P3",))
    assert advisory.vulnerabilities[0].remediations[0].product_ids == ("P1", "P3")


def test_dates_become_epoch_seconds() -> None:
    """Release dates with Z or an offset become epoch seconds; a bad date becomes None."""
    doc = csaf_doc(current="2024-05-01T02:00:00+02:00")
    doc["document"]["tracking"]["initial_release_date"] = "not a date"
    advisory = csaf.parse(doc)
    assert (advisory.initial_release, advisory.current_release) == (None, 1714521600.0)


@pytest.mark.parametrize("document", [None, [], {"document": {}}, {"document": {"tracking": {"id": ""}}},
                                      {"document": {"tracking": {"id": 7}}}])
def test_not_csaf_is_a_value_error(document: Any) -> None:
    """A document without document.tracking.id is refused with ValueError."""
    with pytest.raises(ValueError, match="not a CSAF document"):
        csaf.parse(document)


def test_load_names_the_bad_file(tmp_path: Path) -> None:
    """load() of a folder with a broken file raises ValueError naming that file."""
    (tmp_path / "a.json").write_text(json.dumps(csaf_doc()), encoding="utf-8")
    (tmp_path / "b.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match=r"b\.json"):
        csaf.load(tmp_path)


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("vers:generic/>=1.0|<2.3", ["1.0", "2.2.9"], ["0.9", "2.3", "3"]),
    ("vers:all/*", ["0.1", "B.02"], []),
    ("<7.6.2", ["7.6.1", "7.5"], ["7.6.2", "8"]),
    ("<= 9.33", ["9.33", "9.5"], ["9.34", "10.0"]),
    ("2.3.6 and  below", ["2.3.6", "1.0"], ["2.3.7"]),
    (">= 6.0.0 | <= 6.3.1", ["6.0.0", "6.3.1"], ["5.9", "6.3.2"]),
    ("A10 < A11", ["A10", "A10.5"], ["A11", "A9"]),
    ("Rev B-M", ["B", "J", "M"], ["A", "N"]),
    ("1.X", ["1.0", "1.99.3"], ["2.0", "0.9"]),
    ("<= 11.x", ["11.9", "3"], ["12.0"]),
    ("<=N", ["M.04", "N.00"], ["N.01", "P"]),
    ("<= U61 |<= L81", ["U55", "L80"], ["U62"]),
    ("v8.x model 35700BAX2", ["8.01.00", "v8.2"], ["9.1", "7.9"]),
    ("9.13 | 9.19 | 9.33 | 12.1", ["9.19", "12.1.0"], ["9.20", "12.1.1"]),
    ("<= 3.0 D15", ["3.0 D14"], ["3.0 D16"]),
    ("vers:generic/<3.0|!=2.5", ["2.4"], ["2.5", "3.0"]),
])
def test_version_ranges(text: str, inside: list[str], outside: list[str]) -> None:
    """Range texts as CSAF and CISA write them cover exactly the versions they mean."""
    spec = VersionSpec.parse(text)
    assert [spec.contains(v) for v in inside] == [True] * len(inside)
    assert [spec.contains(v) for v in outside] == [False] * len(outside)


def test_unreadable_version_texts_say_so() -> None:
    """A spec with no version in it, or a version without digits or letters, answers None."""
    assert VersionSpec.parse("Protiva Carestation View").contains("1.0") is None
    assert VersionSpec.parse("<= 2.0").contains("--") is None


def test_find_versions_gives_offsets() -> None:
    """Version-looking tokens with a digit are found with their offsets; words are not."""
    assert csaf.find_versions("Alaris PC Unit v9.19 B.06.12") == [(15, "v9.19"), (21, "B.06.12")]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=20))
def test_version_spec_never_raises(text: str, version: str) -> None:
    """Any text parses into a spec, and any version answers True, False or None."""
    assert VersionSpec.parse(text).contains(version) in (True, False, None)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_parse_garbage_raises_only_value_error(document: Any) -> None:
    """Random JSON parses or raises ValueError, never anything else."""
    with contextlib.suppress(ValueError):
        csaf.parse(document)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["product_tree", "vulnerabilities"]), _JSON, max_size=2))
def test_parse_odd_trees_never_fail(parts: dict[str, Any]) -> None:
    """A valid document header with garbage product tree or vulnerabilities still parses."""
    doc = {"document": {"tracking": {"id": "X-1"}}, **parts}
    assert csaf.parse(doc).id == "X-1"
