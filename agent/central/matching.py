"""Which advisories apply to a device record, how sure we are, and the strings that say so.

A device record (agent.inventory) names its maker in `vendor` (the MAC's IEEE registration) and its
product and version, if at all, in free text: the host name, software strings (DHCP vendor class, HTTP
server and user agent, FTP banner, SSDP, LLDP system description, CDP platform and software, any new key
except the fingerprints in _NOT_PRODUCT) and clinical names (DICOM implementation versions, HL7
applications). `Matcher(advisories).match(device)` compares them with each advisory's products:

- vendor: the record's vendor or a product string names the advisory's vendor. Names are normalised
  (case, accents, punctuation, trailing "Inc", "GmbH", "Medical", "Healthcare" ...), parenthesised short
  names count ("Becton, Dickinson and Company (BD)"), "X and Y, Z" names every company, known aliases
  meet (Dräger = Draeger Medical, Hill-Rom = Hillrom = Welch Allyn), and a device made by a company
  that was bought is also the buyer's (Hillrom/Welch Allyn devices are Baxter's now), not the reverse.
  A vendor name may be a longer form of the advisory's ("Siemens Healthcare Diagnostics" for "Siemens");
  look-alikes that are other companies are kept apart (CONTEC CO., LTD. is not Contec Health).
- product: one product string holds an abbreviation the advisory gives in parentheses ("(CSM)") or a
  model code of letters and digits ("CMS8000"), or one of the name's model numbers with one of its name
  words ("Alaris ... 8015"), or 2 of 3 of the name's distinctive words (generic words like "pump",
  "monitor", "windows", vendor names and one-character words left out; a model number among them when
  the name has one). A name of digits only ("Windows 7" -> "7") names nothing.
- version: version-looking tokens of that same string (with a dot, after v/ver/version/fw/sw/rev, or
  'Rev M') compared with the product's version entries.

Confidence: vendor only -> low; vendor and product -> medium; vendor, product and a version inside an
affected entry (or an entry covering every version) -> high. A product match whose versions are all
outside the affected entries, or inside a fixed entry, is returned with `affected` False: the device
looks patched. Vendor-only matches are left out for a device that matched a product of any advisory of
that vendor: once we know what it is, the maker's other products are no evidence.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.central.advisories import Advisory, Product, find_versions

CONFIDENCES: Final = ("low", "medium", "high")
_NOT_PRODUCT: Final = frozenset({"tls_offered", "tls_negotiated", "tls_ja4", "dhcp_fingerprint", "smb1",
                                 "smb_dialect", "snmp_versions", "capabilities"})
_SUFFIXES: Final = frozenset({
    "inc", "incorporated", "corp", "corporation", "co", "company", "ltd", "limited", "llc", "gmbh", "mbh",
    "ag", "kg", "kgaa", "aa", "sa", "se", "plc", "bv", "nv", "srl", "spa", "oy", "ab", "as", "pty",
    "international", "intl", "medical", "healthcare", "health", "systems", "system", "technologies",
    "technology", "solutions", "group", "holding", "holdings", "mfg", "manufacturing", "diagnostics",
    "deutschland", "usa", "and", "the", "of"})
_ALIASES: Final = {
    "bd": "becton dickinson", "becton": "becton dickinson", "ge": "general electric",
    "drager": "draeger", "draegerwerk": "draeger", "hill rom": "hillrom", "welch allyn": "hillrom",
    "bbraun": "b braun", "b braun melsungen": "b braun", "koninklijke philips": "philips",
    # the same words, other companies
    "contec co ltd": "contec jp", "contec gmbh": "contec de", "contec health": "contec health",
    "change healthcare": "change healthcare", "fresenius vial": "fresenius kabi"}
_TRANSLIT: Final = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_PARENTS: Final = {"hillrom": ("baxter",)}  # bought: the buyer publishes for it now
_GENERIC: Final = frozenset({
    "unit", "units", "pump", "pumps", "monitor", "monitors", "monitoring", "system", "systems", "patient",
    "infusion", "wireless", "module", "modules", "software", "server", "web", "the", "and", "with", "for",
    "of", "series", "model", "number", "version", "versions", "device", "devices", "firmware", "only",
    "based", "all", "including", "wlan", "wifi", "wi", "fi", "windows"})
_VERSION_WORD: Final = re.compile(
    r"(?:\bv|\bver\.?|\bversion|\bfw|\bsw|\bfirmware|\bsoftware|\brev\.?|/)\s*$", re.I)
_STRONG: Final = re.compile(r"(?=.*[a-z])(?=.*\d)[a-z0-9]{4,}")  # CMS8000, MX40: a model code on its own
_REVISION: Final = re.compile(r"\brev(?:ision)?\.?\s+([a-z])\b", re.I)


@dataclass(frozen=True, slots=True)
class Match:
    advisory: str
    confidence: str  # low, medium, high
    affected: bool  # False: the product matched but its version is outside every affected entry
    products: tuple[str, ...]  # product ids of the matched entries (none for vendor only)
    version: str | None  # the version read from the device, when one was compared
    evidence: tuple[str, ...]


def vendor_keys(name: str | None, *, device: bool = False) -> frozenset[str]:
    """Normalised company keys of a vendor text; a device's also names the buyers of its maker."""
    keys = {k for n in _names(name) if (k := _key(n))}
    if device:
        keys |= {parent for k in keys for parent in _PARENTS.get(k, ())}
    return frozenset(keys)


def vendors_meet(device_keys: Iterable[str], advisory_keys: Iterable[str]) -> bool:
    """Equal keys, or the advisory's key is the leading words of the device's."""
    device_keys = list(device_keys)
    return any(d == a or d.startswith(a + " ") for a in advisory_keys for d in device_keys)


def product_strings(device: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, text) pairs of a device record that may name its product and version."""
    found: list[tuple[str, str]] = []
    if isinstance(device.get("hostname"), str):
        found.append(("hostname", device["hostname"]))
    software = device.get("software")
    if isinstance(software, Mapping):
        for key, values in software.items():
            if key not in _NOT_PRODUCT:
                found += [(str(key), v) for v in _texts(values)]
    clinical = device.get("clinical")
    if isinstance(clinical, Mapping):
        for kind, key in (("dicom", "implementations"), ("hl7", "applications")):
            section = clinical.get(kind)
            if isinstance(section, Mapping):
                found += [(f"{kind}_{key}", v) for v in _texts(section.get(key))]
    return found


@dataclass(frozen=True, slots=True)
class _Entry:
    product: Product
    affected: bool  # else fixed or not affected
    words: frozenset[str]
    aliases: frozenset[str]


class Matcher:
    """Advisories indexed for matching many device records."""

    def __init__(self, advisories: Sequence[Advisory]) -> None:
        self._advisories: list[tuple[Advisory, frozenset[str], list[_Entry]]] = []
        brands = {w for k in list(_ALIASES) + list(_ALIASES.values()) for w in k.split()}
        phrases = set(_ALIASES) | set(_ALIASES.values())
        for advisory in advisories:
            vendors = {p.vendor for p in advisory.products.values() if p.vendor}
            keys = frozenset(k for v in vendors for k in vendor_keys(v))
            phrases |= keys | {k for v in vendors for n in _names(v) if (k := _key(n, alias=False))}
            drop = brands | {w for k in keys for w in k.split()}
            entries = [_Entry(p, advisory.status(p.product_id) == "affected", *_product_words(p, drop))
                       for p in advisory.products.values()]
            self._advisories.append((advisory, keys, entries))
        self._phrases = [p.split() for p in sorted(phrases) if len(p.replace(" ", "")) >= 2]

    def match(self, device: Mapping[str, Any]) -> list[Match]:
        """Every advisory whose vendor meets the device's; vendor-only ones left out as the docstring says."""
        name = device.get("vendor") if isinstance(device.get("vendor"), str) else None
        own = vendor_keys(name, device=True)
        strings = [(source, text, _tokens(text)) for source, text in product_strings(device)]
        named = [(source, text, frozenset(k for p in self._phrases if _phrase(p, tokens)
                                          for k in vendor_keys(" ".join(p), device=True)))
                 for source, text, tokens in strings]
        found: list[Match] = []
        for advisory, keys, entries in self._advisories:
            if vendors_meet(own, keys):
                vendor = f"vendor {name!r} ~ {_vendor_names(advisory)!r}"
            else:
                vendor = next((f"{source} {text!r} names {_vendor_names(advisory)!r}"
                               for source, text, said in named if vendors_meet(said, keys)), "")
            if vendor:
                found.append(_product_match(advisory.id, entries, strings, vendor))
        identified = {m.advisory for m in found if m.confidence != "low"}
        makers = {k for a, keys, _ in self._advisories if a.id in identified for k in keys}
        lows = {a.id for a, keys, _ in self._advisories if keys & makers}
        return [m for m in found if m.confidence != "low" or m.advisory not in lows]


def _product_match(advisory: str, entries: list[_Entry], strings: list[tuple[str, str, list[str]]],
                   vendor: str) -> Match:
    """The best product match over the device's strings; versions come from the string that names the
    product, else from the device's other strings that share one of its words ("Alaris ... 9.19")."""
    best: Match | None = None
    for source, text, tokens in strings:
        hits = [e for e in entries if _names_product(e, tokens)]
        if not hits:
            continue
        words = {w for e in hits for w in e.words | e.aliases}
        evidence: tuple[str, ...] = (vendor, f"{source} {text!r} names {hits[0].product.product!r}")
        versions = _versions(text, words)
        if not versions:
            for other, other_text, other_tokens in strings:
                if other_text != text and words & set(other_tokens) \
                        and (more := _versions(other_text, words)):
                    versions += more
                    evidence += (f"version from {other} {other_text!r}",)
        candidate = _judge(advisory, hits, list(dict.fromkeys(versions)), evidence)
        if best is None or _rank(candidate) > _rank(best):
            best = candidate
    return best or Match(advisory, "low", True, (), None, (vendor,))


def _judge(advisory: str, hits: list[_Entry], versions: list[str], evidence: tuple[str, ...]) -> Match:
    """An entry listing the version as fixed or not affected wins over an affected range that covers it."""
    affected = [e for e in hits if e.affected]
    ids = tuple(e.product.product_id for e in hits)
    for version in versions:
        for entry in (e for e in hits if not e.affected):
            if entry.product.spec is not None and entry.product.spec.contains(version):
                return Match(advisory, "high", False, ids, version,
                             (*evidence, f"version {version} listed as fixed ({entry.product.name!r})"))
    for entry in affected:
        spec = entry.product.spec
        if spec is not None and spec.every:
            return Match(advisory, "high", True, ids, versions[0] if versions else None,
                         (*evidence, f"{entry.product.name!r}: every version affected"))
        for version in versions:
            if spec is not None and spec.contains(version):
                return Match(advisory, "high", True, ids, version,
                             (*evidence, f"version {version} in {spec.text!r}"))
    specs = [e.product.spec for e in affected]
    if versions and affected and all(s is not None and s.readable for s in specs):
        ranges = " | ".join(s.text for s in specs if s is not None)
        return Match(advisory, "high", False, ids, versions[0],
                     (*evidence, f"version {versions[0]} outside the affected {ranges!r}"))
    return Match(advisory, "medium", True, ids, versions[0] if versions else None, evidence)


def _rank(match: Match) -> tuple[int, int]:
    return CONFIDENCES.index(match.confidence), int(match.affected)


def _names_product(entry: _Entry, tokens: list[str]) -> bool:
    """An abbreviation or model code alone; else a model number with a name word; else 2/3 of the words
    (a model number among them when the product has one). Words of digits only never name a product."""
    bag = set(tokens) | {a + b for a, b in itertools.pairwise(tokens)}
    if entry.aliases & bag or any(w in bag for w in entry.words if _STRONG.fullmatch(w)):
        return True
    if all(w.isdigit() for w in entry.words):
        return False
    hit = {w for w in entry.words
           if w in bag or (len(w) >= 4 and any(w in t for t in bag if len(t) > len(w)))}
    models = {w for w in entry.words if any(c.isdigit() for c in w)}
    if models and not models & hit:
        return False
    if models & hit and any(len(w) >= 3 and w.isalpha() for w in hit):
        return True
    return len(hit) >= math.ceil(2 * len(entry.words) / 3)


def _product_words(product: Product, drop: set[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(distinctive words of the product name, abbreviations and model numbers that name it alone)."""
    name = _fold(product.product or product.name)
    aliases = {t for inner in re.findall(r"\(([^()]*)\)", name) for t in _tokens(inner)
               if len(_tokens(inner)) == 1 and len(t) >= 3 and t not in _GENERIC}
    aliases |= {"".join(_tokens(m)) for m in product.models if len("".join(_tokens(m))) >= 3}
    words = {t for t in _tokens(re.sub(r"\([^()]*\)", " ", name))
             if len(t) > 1 and t not in _GENERIC and t not in drop}
    return frozenset(words), frozenset(aliases)


def _versions(text: str, product_words: set[str]) -> list[str]:
    found = []
    for start, version in find_versions(text):
        if "".join(_tokens(version)) in product_words or version.lower().lstrip("v") in product_words \
                or version.count(".") >= 5:  # a DICOM UID or another OID, no version
            continue
        if ("." in version or re.match(r"v\d|[a-z]\d\d+\Z|\d+[a-z]\d+\Z", version, re.I)
                or _VERSION_WORD.search(text[:start])):
            found.append(version)
    found += [m.group(1) for m in _REVISION.finditer(text)]
    return list(dict.fromkeys(found))


def _vendor_names(advisory: Advisory) -> str:
    return ", ".join(sorted({p.vendor for p in advisory.products.values() if p.vendor}))


def _phrase(words: list[str], tokens: list[str]) -> bool:
    n = len(words)
    return n > 0 and any(tokens[i:i + n] == words for i in range(len(tokens) - n + 1))


def _names(name: str | None) -> list[str]:
    """The folded name, its parenthesised short names, and each company of an 'X and Y, Z' list."""
    if not name:
        return []
    text = _fold(name)
    names = [m for m in re.findall(r"\(([^()]*)\)?", text) if m.strip()]
    text = re.sub(r"\([^()]*\)?", " ", text)
    return [*names, text, *re.split(r",|;|&|/|\s+-\s+|\band\b", text)]


def _key(name: str, alias: bool = True) -> str:
    words = re.findall(r"[a-z0-9]+", name)
    whole = " ".join(words)
    if alias and whole in _ALIASES:
        return _ALIASES[whole]
    while words and words[-1] in _SUFFIXES:
        words.pop()
    key = " ".join(words)
    if len(key.replace(" ", "")) < 2:
        return ""
    return _ALIASES.get(key, key) if alias else key


def _fold(text: str) -> str:
    text = text.lower().translate(_TRANSLIT)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", _fold(text))


def _texts(values: Any) -> list[str]:
    return [v for v in (values if isinstance(values, list) else [values]) if isinstance(v, str) and v]
