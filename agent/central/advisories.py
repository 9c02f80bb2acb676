"""CSAF 2.0 security advisories: the parts that say which device versions are affected, and version ranges.

`parse(document)` reads one CSAF 2.0 JSON document (OASIS CSAF 2.0, as CISA publishes its ICS medical
advisories) into a plain `Advisory`: tracking id, title, release dates, the products of its product tree
and its vulnerabilities. `load(path)` reads a file or every *.json in a folder. No database here.

Products come from three places of the product tree, each leaf keeping its product id:
- branches: vendor > product_family/product_name > product_version/product_version_range (other branch
  categories are skipped through); the nearest vendor and the product names on the path are kept;
- full_product_names: a bare name (vendor: the tree's only vendor, if it has exactly one);
- relationships: a new product id for "component X installed on/default component of Y" that inherits
  X's vendor, product and versions and keeps Y's name as `platform`.

A product's status is the union over the vulnerabilities: affected (known_affected, first_affected,
last_affected), fixed (fixed, first_fixed) or not affected (known_not_affected). A product that no status
list names at all counts as affected: CISA lists products in the tree because they are affected, and
some of its documents leave them out of product_status (icsma-17-215-02).

Version texts are free text more often than clean ranges. `VersionSpec.parse` reads, as alternatives
joined by "|": vers: URIs (`vers:all/*`, `vers:generic/>=1.0|<2.3`), operators (`<= 9.33`, `>=6.0.0 |
<= 6.3.1`: a lower bound followed by an upper bound is one interval, as in vers), `2.3.6 and below`,
`A10 < A11` (from A10 up to A11), `Rev B-M` (letter revisions), wildcards (`1.X`, `12.2.x.x`) and exact
versions; parenthesised remarks and words that are no version (`model 35700BAX`, `Amingo`) are ignored.
Versions compare part by part (digits as numbers, letters as text, letters below numbers), missing parts
count as 0, so `1.52` == `1.52.0` and `N` == `N.00`. A wildcard compares only the parts before it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

Part = tuple[int, int | str]  # (0, letters) or (1, number): letters sort below numbers
_VER: Final = (r"v?(?:\d\w*(?:\.[\w*]+)*|[a-z](?:\.[\w*]+)+|[a-z]+\d\w*(?:\.[\w*]+)*)"
               r"(?:\s+[a-z]\d+\b(?!\.))?")
_VERSION: Final = re.compile(_VER, re.I)
_OP_VERSION: Final = re.compile(rf"(<=|>=|!=|<|>|=)?\s*({_VER}|[a-z](?![\w.]))", re.I)
_BETWEEN: Final = re.compile(rf"({_VER})\s*(<=|<)\s*({_VER})", re.I)
_AND_BELOW: Final = re.compile(rf"({_VER})\s+and\s+(?:below|prior|earlier|lower|older)", re.I)
_REVISIONS: Final = re.compile(r"(?:rev\.?\s*)?([a-z])\s*-\s*([a-z])\Z", re.I)
_PARENS: Final = re.compile(r"\([^()]*\)")
_AFFECTED: Final = ("known_affected", "first_affected", "last_affected")
_FIXED: Final = ("fixed", "first_fixed")


def version_parts(text: str) -> tuple[Part, ...] | None:
    """Comparable parts of a version text ('v22D28' -> 22, 'd', 28); None when it has none."""
    text = re.sub(r"^\s*(?:version|ver\.?|rev\.?|v)\s*(?=\w)", "", text.strip(), flags=re.I)
    parts: list[Part] = []
    for piece in re.findall(r"\d+|[a-z]+|\*", text.lower()):
        if piece in ("x", "*"):
            parts.append((2, "*"))
            break
        parts.append((1, int(piece)) if piece.isdigit() else (0, piece))
    return tuple(parts) or None


def compare(version: tuple[Part, ...], bound: tuple[Part, ...]) -> int:
    """-1, 0 or 1: version against a bound; a bound ending in a wildcard compares its prefix only."""
    if bound and bound[-1][0] == 2:
        bound = bound[:-1]
        version = version[:len(bound)]
    width = max(len(version), len(bound))
    left = version + ((1, 0),) * (width - len(version))
    right = bound + ((1, 0),) * (width - len(bound))
    return (left > right) - (left < right)


@dataclass(frozen=True, slots=True)
class Interval:
    """lower/upper: (inclusive, parts) or None for open; equal bounds make a single version."""

    lower: tuple[bool, tuple[Part, ...]] | None
    upper: tuple[bool, tuple[Part, ...]] | None

    def holds(self, version: tuple[Part, ...]) -> bool:
        if self.lower is not None:
            c = compare(version, self.lower[1])
            if c < 0 or (c == 0 and not self.lower[0]):
                return False
        if self.upper is not None:
            c = compare(version, self.upper[1])
            if c > 0 or (c == 0 and not self.upper[0]):
                return False
        return True


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """The versions a product entry covers: every version, a set of intervals, or nothing readable."""

    text: str
    every: bool = False
    intervals: tuple[Interval, ...] = ()
    excluded: tuple[tuple[Part, ...], ...] = ()

    @property
    def readable(self) -> bool:
        return self.every or bool(self.intervals)

    def contains(self, version: str) -> bool | None:
        """Whether the version is covered; None when the spec or the version cannot be read."""
        parts = version_parts(version)
        if not self.readable or parts is None:
            return None
        if any(compare(parts, bad) == 0 for bad in self.excluded):
            return False
        return self.every or any(i.holds(parts) for i in self.intervals)

    @classmethod
    def parse(cls, text: str) -> VersionSpec:
        """Read a CSAF product_version or product_version_range name (module docstring); never raises."""
        raw = " ".join(text.split())
        if raw.lower().startswith("vers:"):
            constraints = raw[5:].split("/", 1)[-1]
            if constraints.strip() in ("*", ""):
                return cls(raw, every=True)
            pieces = constraints.split("|")
        else:
            body = raw
            while _PARENS.search(body):
                body = _PARENS.sub(" ", body)
            pieces = body.split("(", 1)[0].split("|")
        intervals: list[Interval] = []
        excluded: list[tuple[Part, ...]] = []
        lower: tuple[bool, tuple[Part, ...]] | None = None
        for piece in (p.strip() for p in pieces):
            if piece.lower() in ("*", "all", "all versions"):
                return cls(raw, every=True)
            single = _single(piece)
            if single is not None:
                intervals.append(single)
                continue
            found = _OP_VERSION.match(piece)
            parts = version_parts(found.group(2)) if found else None
            if found is None or parts is None:
                continue
            op = found.group(1) or "="
            if op in (">", ">="):
                if lower is not None:
                    intervals.append(Interval(lower, None))
                lower = (op == ">=", parts)
            elif op in ("<", "<="):
                intervals.append(Interval(lower, (op == "<=", parts)))
                lower = None
            elif op == "!=":
                excluded.append(parts)
            else:
                intervals.append(Interval((True, parts), (True, parts)))
        if lower is not None:
            intervals.append(Interval(lower, None))
        return cls(raw, intervals=tuple(intervals), excluded=tuple(excluded))


def _single(piece: str) -> Interval | None:
    """The one-piece forms: 'Rev B-M', 'A10 < A11', '2.3.6 and below'."""
    if found := _REVISIONS.match(piece):
        return Interval((True, ((0, found.group(1).lower()),)), (True, ((0, found.group(2).lower()),)))
    if found := _BETWEEN.match(piece):
        low, high = version_parts(found.group(1)), version_parts(found.group(3))
        if low and high:
            return Interval((True, low), (found.group(2) == "<=", high))
    if (found := _AND_BELOW.match(piece)) and (high := version_parts(found.group(1))):
        return Interval(None, (True, high))
    return None


def find_versions(text: str) -> list[tuple[int, str]]:
    """(offset, token) of the version-looking tokens in free text: those with a digit."""
    return [(m.start(), m.group(0)) for m in _VERSION.finditer(text) if any(c.isdigit() for c in m.group(0))]


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    name: str  # the full product name
    vendor: str | None
    product: str  # product family and name on the branch path ("" when the tree has none)
    version: str | None = None  # the version branch's text
    spec: VersionSpec | None = None
    models: tuple[str, ...] = ()  # product_identification_helper model_numbers and skus
    platform: str | None = None  # a relationship's relates_to product name


@dataclass(frozen=True, slots=True)
class Remediation:
    category: str  # vendor_fix, mitigation, workaround, none_available, no_fix_planned
    details: str
    product_ids: tuple[str, ...]
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Vulnerability:
    cve: str | None
    title: str | None
    cvss: float | None  # the largest base score (v3 first, else v2)
    severity: str | None
    affected: tuple[str, ...]
    fixed: tuple[str, ...]
    not_affected: tuple[str, ...]
    remediations: tuple[Remediation, ...]


@dataclass(frozen=True, slots=True)
class Advisory:
    id: str  # document.tracking.id
    title: str
    version: str
    initial_release: float | None
    current_release: float | None
    products: dict[str, Product] = field(default_factory=dict)
    vulnerabilities: tuple[Vulnerability, ...] = ()
    source: str = ""

    @property
    def cves(self) -> list[str]:
        return sorted({v.cve for v in self.vulnerabilities if v.cve})

    @property
    def cvss_max(self) -> float | None:
        return max((v.cvss for v in self.vulnerabilities if v.cvss is not None), default=None)

    @property
    def severity(self) -> str | None:
        scored = [v for v in self.vulnerabilities if v.cvss is not None]
        return max(scored, key=lambda v: v.cvss or 0.0).severity if scored else None

    def status(self, product_id: str) -> str:
        """affected, fixed or not_affected (module docstring)."""
        named = {k: {p for v in self.vulnerabilities for p in getattr(v, k)}
                 for k in ("affected", "fixed", "not_affected")}
        for kind in ("affected", "fixed", "not_affected"):
            if product_id in named[kind]:
                return kind
        return "affected"


def parse(document: Any, source: str = "") -> Advisory:
    """One CSAF 2.0 document (parsed JSON); ValueError when it is no CSAF advisory."""
    if not isinstance(document, Mapping) or not isinstance(document.get("document"), Mapping):
        raise ValueError("not a CSAF document: no `document` object")
    meta = document["document"]
    tracking = meta.get("tracking")
    if not isinstance(tracking, Mapping) or not isinstance(tracking.get("id"), str) or not tracking["id"]:
        raise ValueError("not a CSAF document: no document.tracking.id")
    tree = document.get("product_tree")
    products = _products(tree if isinstance(tree, Mapping) else {})
    vulnerabilities = tuple(_vulnerability(v) for v in _list(document.get("vulnerabilities"))
                            if isinstance(v, Mapping))
    return Advisory(tracking["id"].strip(), _str(meta.get("title")) or tracking["id"],
                    _str(tracking.get("version")) or "", _time(tracking.get("initial_release_date")),
                    _time(tracking.get("current_release_date")), products, vulnerabilities, source)


def load(path: str | Path) -> list[Advisory]:
    """Advisories of a JSON file, or of every *.json in a folder (sorted); ValueError names a bad file."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    found = []
    for file in files:
        try:
            found.append(parse(json.loads(file.read_text(encoding="utf-8")), file.name))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from None
    return found


def _products(tree: Mapping[str, Any]) -> dict[str, Product]:
    products: dict[str, Product] = {}
    for product in _walk(_list(tree.get("branches")), None, (), None):
        products.setdefault(product.product_id, product)
    vendors = {p.vendor for p in products.values()}
    only_vendor = vendors.pop() if len(vendors) == 1 else None
    for entry in _list(tree.get("full_product_names")):
        if isinstance(entry, Mapping) and _str(entry.get("product_id")):
            name = _str(entry.get("name")) or ""
            products.setdefault(entry["product_id"], Product(entry["product_id"], name, only_vendor, name,
                                                             models=_models(entry)))
    for rel in _list(tree.get("relationships")):
        full = rel.get("full_product_name") if isinstance(rel, Mapping) else None
        if not isinstance(full, Mapping) or not _str(full.get("product_id")):
            continue
        component = products.get(str(rel.get("product_reference")))
        platform = products.get(str(rel.get("relates_to_product_reference")))
        name = _str(full.get("name")) or ""
        if component is None:
            products.setdefault(full["product_id"], Product(full["product_id"], name, only_vendor, name))
            continue
        products.setdefault(full["product_id"], Product(
            full["product_id"], name, component.vendor, component.product, component.version, component.spec,
            component.models, (platform.product or platform.name) if platform else None))
    return products


def _walk(branches: list[Any], vendor: str | None, names: tuple[str, ...],
          version: str | None) -> Iterator[Product]:
    for branch in branches:
        if not isinstance(branch, Mapping):
            continue
        category, name = _str(branch.get("category")) or "", _str(branch.get("name")) or ""
        b_vendor, b_names, b_version = vendor, names, version
        if category == "vendor":
            b_vendor = name
        elif category in ("product_family", "product_name"):
            b_names = (*names, name)
        elif category in ("product_version", "product_version_range"):
            b_version = name
        leaf = branch.get("product")
        if isinstance(leaf, Mapping) and _str(leaf.get("product_id")):
            spec = VersionSpec.parse(b_version) if b_version is not None else None
            yield Product(leaf["product_id"], _str(leaf.get("name")) or " ".join(b_names), b_vendor,
                          " ".join(b_names), b_version, spec, _models(leaf))
        yield from _walk(_list(branch.get("branches")), b_vendor, b_names, b_version)


def _models(product: Mapping[str, Any]) -> tuple[str, ...]:
    helper = product.get("product_identification_helper")
    if not isinstance(helper, Mapping):
        return ()
    return tuple(m for key in ("model_numbers", "skus") for m in _list(helper.get(key)) if isinstance(m, str))


def _vulnerability(entry: Mapping[str, Any]) -> Vulnerability:
    status = entry.get("product_status")
    status = status if isinstance(status, Mapping) else {}

    def ids(keys: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for k in keys for p in _list(status.get(k)) if isinstance(p, str)))

    best: tuple[float, str | None] | None = None
    for score in _list(entry.get("scores")):
        for key in ("cvss_v3", "cvss_v2"):
            cvss = score.get(key) if isinstance(score, Mapping) else None
            base = cvss.get("baseScore") if isinstance(cvss, Mapping) else None
            if isinstance(base, int | float) and not isinstance(base, bool) \
                    and (best is None or base > best[0]):
                best = (float(base), _str(cvss.get("baseSeverity")) if isinstance(cvss, Mapping) else None)
    remediations = tuple(
        Remediation(_str(r.get("category")) or "", _str(r.get("details")) or "",
                    tuple(p for p in _list(r.get("product_ids")) if isinstance(p, str)), _str(r.get("url")))
        for r in _list(entry.get("remediations")) if isinstance(r, Mapping))
    return Vulnerability(_str(entry.get("cve")), _str(entry.get("title")), best[0] if best else None,
                         best[1] if best else None, ids(_AFFECTED), ids(_FIXED), ids(("known_not_affected",)),
                         remediations)


def _time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None
