"""The risk report as one self-contained HTML page: inline CSS, inline SVG charts, no script at all.

`render_html(data)` turns agent.central.report's data into the page. Every value from the data is
treated as hostile (host names and vendors come off the network) and escaped on the way out; cells go
through `_cell`, which escapes anything that is not markup this module built (`_Html`). A Content
Security Policy forbids every script, remote load and form as a second line of defence. Charts come
with a data table (in a <details>) so the numbers are readable without the picture.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent.central.report_svg import esc, legend, line_chart, stacked_bars

BAND_COLOURS: Final = {"critical": "#b91c1c", "high": "#ea580c", "medium": "#ca8a04", "low": "#65a30d",
                       "none": "#94a3b8"}
SEVERITY_COLOURS: Final = {"critical": "#b91c1c", "high": "#ea580c", "medium": "#ca8a04", "low": "#65a30d",
                           "info": "#64748b"}
STATUS_COLOURS: Final = {"open": "#b91c1c", "mitigated": "#2563eb", "patched": "#15803d",
                         "accepted": "#64748b"}
ROLE_LABELS: Final = {
    "imaging_modality": "Imaging modality", "pacs": "PACS", "dicom_workstation": "Reading workstation",
    "hl7_engine": "HL7 interface engine", "infusion_pump": "Infusion pump",
    "patient_monitor": "Patient monitor", "clinical_workstation": "Clinical workstation",
    "network_infrastructure": "Network device", "printer": "Printer", "iot_other": "IoT device",
    "unknown": "Unidentified"}
_ROWS: Final = 30  # rows shown in the long tables; the JSON has them all
_DEVICE_ROWS: Final = 15  # rows of the wide tables (riskiest devices, segmentation)
_CSP: Final = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
               "form-action 'none'")
_CSS: Final = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#0f172a;
background:#f1f5f9}
header{background:#0f172a;color:#f8fafc;padding:20px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#cbd5e1}main{max-width:1200px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:16px 20px;margin:16px 0}
h2{margin:0 0 4px;font-size:18px}h3{margin:12px 0 4px;font-size:15px}.lead{margin:0 0 10px;color:#475569}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 14px}
.card b{display:block;font-size:26px;line-height:1.2}.card span{color:#475569;font-size:12px}
.card.alert b{color:#b91c1c}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:8px 24px}
figure{margin:8px 0}figcaption{font-weight:600;margin-bottom:4px}
svg.chart{width:100%;height:auto;max-width:560px}
.legend{list-style:none;margin:2px 0 6px;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e2e8f0;vertical-align:top;
overflow-wrap:break-word}
th{background:#f8fafc;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
caption{text-align:left;color:#475569;padding:2px 0 4px}details{margin:2px 0 8px}
summary{cursor:pointer;color:#1d4ed8;font-size:12px}
.pill{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:12px;font-weight:600;
white-space:nowrap}
.muted{color:#64748b}.note{background:#f8fafc;border-left:3px solid #94a3b8;padding:8px 12px}
ul.risks{margin:0;padding-left:16px;min-width:300px}
.dev{max-width:220px;overflow-wrap:anywhere}code{font-size:11px;white-space:nowrap}dt{font-weight:600}
dd{margin:0 0 6px 16px}
@media print{body{background:#fff}section{break-inside:avoid;border:none}details{display:block}}
"""


class _Html(str):
    """Markup built here from escaped parts: `_cell` passes it through unchanged."""


def render_html(data: Mapping[str, Any]) -> str:
    """The whole page for report_data()'s dict."""
    body = [_header(data), "<main>", _summary(data), _trends(data), _inventory(data), _advisories(data),
            _findings(data), _segmentation(data), _sensors(data), _definitions(data), "</main>"]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(_CSP)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>Ward network risk report {esc(_day(data["generated"]))}</title><style>{_CSS}</style>'
            f'</head><body>{"".join(body)}</body></html>\n')


# ---- sections ------------------------------------------------------------------------------------

def _header(data: Mapping[str, Any]) -> str:
    w, s = data["window"], data["summary"]
    return (f'<header><h1>Ward network risk report</h1><p>Generated {esc(_when(data["generated"]))} '
            f'&middot; {esc(w["weeks"])} weeks, {esc(_day(w["start"]))} to {esc(_day(w["end"]))} &middot; '
            f'{esc(s["sensors"])} sensors on {esc(s["wards"])} wards</p></header>')


def _summary(data: Mapping[str, Any]) -> str:
    s, t, adv = data["summary"], data["trends"], data["advisories"]
    crit, clear = t["devices_by_band"]["critical"], t["cleartext_clinical_flows"]["total"]
    policy, ttm = t["policy_violations"], adv["time_to_mitigate"]["median_days"]
    cards = [(s["devices"], "devices seen", False),
             (s["critical_devices"], f"devices at critical risk (first week: {crit[0]})",
              s["critical_devices"] > 0),
             (s["open_findings"], f"open findings (last {data['window']['open_days']} days)", False),
             (policy[-1], f"policy violations last week (first week: {policy[0]})", False),
             (clear[-1], f"cleartext clinical flows last week (first week: {clear[0]})", False),
             (s["devices_with_open_advisories"], "devices with open advisories",
              s["devices_with_open_advisories"] > 0),
             ("\u2013" if ttm is None else f"{ttm:g} d", "median time to mitigate", False)]
    return '<div class="cards">' + "".join(
        f'<div class="card{" alert" if alert else ""}"><b>{esc(value)}</b><span>{esc(label)}</span></div>'
        for value, label, alert in cards) + "</div>"


def _trends(data: Mapping[str, Any]) -> str:
    t, adv = data["trends"], data["advisories"]
    labels = [w["label"] for w in t["weeks"]]
    bands, clear = t["devices_by_band"], t["cleartext_clinical_flows"]["by_protocol"]
    figures = [
        _figure("trend-risk", "Devices at critical and high risk, per week",
                "Devices in the critical (score 70 or more) and high (40 to 69) bands at the end of each "
                "week.", labels, [("critical", bands["critical"], BAND_COLOURS["critical"]),
                                  ("high", bands["high"], BAND_COLOURS["high"])]),
        _figure("trend-clear", "Cleartext clinical flows per week",
                "TCP flows carrying HL7 or DICOM without TLS.", labels,
                [("HL7", clear["HL7"], "#7c3aed"), ("DICOM", clear["DICOM"], "#0f766e")]),
        _figure("trend-policy", "Segmentation policy violations per week",
                "policy_violation findings raised each week, and all security findings.", labels,
                [("violations", t["policy_violations"], "#b91c1c"),
                 ("all findings", t["findings"], "#94a3b8")]),
    ]
    if adv["pairs"]:
        figures.append(_figure("trend-adv", "Open device-advisory pairs per week",
                               "Pairs whose status was open at the end of each week.", labels,
                               [("open pairs", t["open_advisory_pairs"], STATUS_COLOURS["open"])]))
        figures.append(_figure("trend-ttm", "Time to mitigate, in days",
                               "Median days from open to mitigated or patched, over the pairs resolved each "
                               "week (no point: nothing resolved that week).", labels,
                               [("median days", t["mitigation_days"], STATUS_COLOURS["patched"]),
                                ("pairs resolved", t["mitigated"], STATUS_COLOURS["mitigated"])]))
    else:
        why = f": {adv['error']}" if adv["error"] else " yet."
        figures.append(f'<figure><figcaption>Advisories: time to mitigate</figcaption>'
                       f'<p class="note">No advisory tracking data{esc(why)}</p></figure>')
    return _section("trends", "Weekly trends", "Is the risk going down? One point per week of the report "
                    "window.", _Html(f'<div class="grid">{"".join(figures)}</div>'))


def _inventory(data: Mapping[str, Any]) -> str:
    segments = [(name, BAND_COLOURS[name]) for name in BAND_COLOURS]
    rows = [(_role(r["role"]), [r["bands"].get(name, 0) for name, _ in segments])
            for r in data["inventory"]["by_role"]]
    chart = stacked_bars("inv-roles", "Devices by role and risk band",
                         "One bar per device role, split by risk band.", rows, segments)
    table = _table(["Role", "Devices", *(n for n, _ in segments)],
                   [[label, sum(v), *v] for label, v in rows], numeric=range(1, 7))
    devices = [[d["ward"], _device(d), _Html("<br>".join(esc(ip) for ip in d["ips"])), _role(d["role"]),
                d["vendor"] or "", _pill(f'{d["risk_score"]:g} {d["band"]}', BAND_COLOURS.get(d["band"])),
                _risks(d["risks"]), d["open_advisories"] or ""]
               for d in data["devices"][:_DEVICE_ROWS] if d["risk_score"]]
    caption = f"Top {len(devices)} of {len(data['devices'])} devices by risk score."
    body = (f'<div class="grid"><figure><figcaption>Devices by role and risk band</figcaption>'
            f'{legend(segments)}{chart}</figure><div>{table}</div></div><h3>Riskiest devices</h3>'
            + _table(["Ward", "Device", "Address", "Role", "Vendor", "Risk", "Why", "Open advisories"],
                     devices, numeric=[7], caption=caption))
    return _section("inventory", "Inventory by role and risk", "Every device seen in the report window, "
                    "its role as the sensors classified it, and its hygiene risk score (0-100).", _Html(body))


def _advisories(data: Mapping[str, Any]) -> str:
    adv = data["advisories"]
    lead = "Published vulnerabilities (CSAF advisories) matched to devices, and where each pair stands."
    if not adv["pairs"]:
        why = adv["error"] or "no device matches a published advisory"
        return _section("advisories", "Devices with advisories", lead,
                        _Html(f'<p class="note">No device-advisory pairs: {esc(why)}.</p>'))
    segments = [(s, STATUS_COLOURS[s]) for s in STATUS_COLOURS]
    bars = [(s, [adv["by_status"].get(s, 0) if s == name else 0 for name, _ in segments])
            for s, _ in segments]
    chart = stacked_bars("adv-status", "Device-advisory pairs by status", "Pairs per tracking status.", bars,
                         segments)
    per_advisory = [[_Html(f'<b>{esc(a["advisory"])}</b><br>{esc(a["title"])}'), _cvss(a["cvss"]),
                     a["devices"], *(a["status"].get(s, 0) for s, _ in segments),
                     "" if a["median_days_to_mitigate"] is None else a["median_days_to_mitigate"]]
                    for a in adv["by_advisory"][:_ROWS]]
    open_rows = [[d["ward"], _device(d), _role(d["role"]),
                  _Html("<br>".join(_advisory(a) for a in d["advisories"] if a["status"] == "open"))]
                 for d in adv["devices"] if d["status"].get("open")][:_ROWS]
    accepted = [[p["ward"], _device(p), p["advisory"], _when(p["status_ts"]), p["reason"]]
                for p in adv["pairs"] if p["status"] == "accepted"][:_ROWS]
    ttm = adv["time_to_mitigate"]
    caption = f'{len(adv["devices"])} devices, {len(adv["pairs"])} pairs'
    if ttm["median_days"] is not None:
        caption += f'; {ttm["resolved"]} mitigated or patched after a median of {ttm["median_days"]:g} days'
    table = _table(["Advisory", "CVSS", "Devices", *(s for s, _ in segments), "Median days"], per_advisory,
                   numeric=range(1, 8), caption=caption + ".")
    body = (f'<figure><figcaption>Device-advisory pairs by status</figcaption>{chart}</figure>{table}'
            '<h3>Devices with open advisories</h3>'
            + _table(["Ward", "Device", "Role", "Open advisories"], open_rows)
            + "<h3>Accepted risks</h3>" + _table(["Ward", "Device", "Advisory", "Since", "Reason"], accepted))
    return _section("advisories", "Devices with advisories", lead, _Html(body))


def _findings(data: Mapping[str, Any]) -> str:
    f = data["findings"]
    segments = [(s, SEVERITY_COLOURS[s]) for s in SEVERITY_COLOURS]
    charts = []
    for ident, name, key in (("find-kind", "Open findings by kind", "kind"),
                             ("find-ward", "Open findings by ward", "ward")):
        rows = [(str(r[key]), [r["severity"].get(s, 0) for s, _ in segments]) for r in f["by_" + key]
                if not r.get("health")]
        table = _table([key.title(), "Open", *(s for s, _ in segments)],
                       [[label, sum(v), *v] for label, v in rows], numeric=range(1, 7))
        chart = (stacked_bars(ident, name, f"{name}, split by severity.", rows, segments) if rows
                 else '<p class="note">None.</p>')
        charts.append(f'<figure><figcaption>{esc(name)}</figcaption>{legend(segments)}{chart}'
                      f'<details><summary>Data table</summary>{table}</details></figure>')
    listing = [[_pill(x["severity"], SEVERITY_COLOURS.get(x["severity"])), x["kind"], x["ward"],
                _when(x["last"]), x["count"], x["summary"]] for x in f["open"] if not x["health"]][:_ROWS]
    body = (f'<div class="grid">{"".join(charts)}</div><h3>Open findings, most severe first</h3>'
            + _table(["Severity", "Kind", "Ward", "Last seen", "Times", "Summary"], listing, numeric=[4]))
    lead = (f"Findings raised again within the last {data['window']['open_days']} days, one per problem (the "
            "sensors de-duplicate by key). Sensor health findings are listed under Sensors.")
    return _section("findings", "Open findings by kind and by ward", lead, _Html(body))


def _segmentation(data: Mapping[str, Any]) -> str:
    seg = data["segmentation"]
    rows = [[v["ward"], _Html(f'{esc(v["src_ip"])}<br><span class="muted">{esc(_role(v["role"]))}</span>'),
             _Html(f'{esc(v["dst_ip"])}:{esc(v["dst_port"])}/{esc(v["proto"])}<br><span class="muted">'
                   f'{esc(_role(v["peer_role"]) if v["peer_role"] else "")}</span>'),
             _pill(v["severity"], SEVERITY_COLOURS.get(v["severity"])), v["count"], _when(v["last"]),
             v["summary"]] for v in seg["violations"][:_DEVICE_ROWS]]
    caption = (f'{seg["total"]} violations in the window between {seg["pairs"]} source-destination pairs, '
               "the most frequent first.")
    table = _table(["Ward", "Source", "Destination", "Severity", "Times", "Last seen", "Summary"], rows,
                   numeric=[4], caption=caption)
    return _section("segmentation", "Segmentation violations", "Flows the segmentation policy does not "
                    "allow (policy_violation findings).", _Html(table))


def _sensors(data: Mapping[str, Any]) -> str:
    rows = [[s["sensor"], s["ward"], {True: "online", False: "offline"}.get(s["online"], "unknown"),
             _when(s["last_seen"]), s["messages"], s["flows"]] for s in data["sensors"]]
    health = [[_pill(x["severity"], SEVERITY_COLOURS.get(x["severity"])), x["kind"], x["sensor"],
               _when(x["last"]), x["count"], x["summary"]] for x in data["findings"]["open"] if x["health"]]
    body = (_table(["Sensor", "Ward", "Status", "Last message", "Messages", "Flows"], rows, numeric=[4, 5])
            + "<h3>Sensor health findings</h3>"
            + _table(["Severity", "Kind", "Sensor", "Last seen", "Times", "Summary"], health, numeric=[4]))
    return _section("sensors", "Sensors", "The sensors that report to this collector.", _Html(body))


def _definitions(data: Mapping[str, Any]) -> str:
    bands = ", ".join(f'{b["name"]} {b["min"]} or more' for b in data["bands"] if b["min"] > 0)
    ports = ", ".join(f"{name} {port}" for port, name in
                      data["trends"]["cleartext_clinical_flows"]["ports"].items())
    items = [("Risk bands", f"Of the device risk score (0-100): {bands}, none 0. One weakness weighs at most "
              "40, so high takes two weaknesses and critical three."),
             ("Open finding", f"Raised again within the last {data['window']['open_days']} days."),
             ("Ward", "The sensor's site."),
             ("Cleartext clinical flow", f"A TCP flow to {ports}, or to an HL7/DICOM service of a device "
              "with the cleartext_clinical_protocol risk."),
             ("Time to mitigate", "Days from a device-advisory pair's opening to its first mitigated or "
              "patched state.")]
    body = "<dl>" + "".join(f"<dt>{esc(t)}</dt><dd>{esc(d)}</dd>" for t, d in items) + "</dl>"
    return _section("definitions", "Definitions", "", _Html(body))


# ---- pieces --------------------------------------------------------------------------------------

def _section(ident: str, title: str, lead: str, body: _Html) -> str:
    return (f'<section id="{ident}" aria-labelledby="{ident}-h"><h2 id="{ident}-h">{esc(title)}</h2>'
            + (f'<p class="lead">{esc(lead)}</p>' if lead else "") + f"{body}</section>")


def _figure(ident: str, title: str, desc: str, labels: Sequence[str],
            series: Sequence[tuple[str, Sequence[float | None], str]]) -> str:
    rows = [[label, *("" if s[1][i] is None else s[1][i] for s in series)] for i, label in enumerate(labels)]
    table = _table(["Week of", *(name for name, _, _ in series)], rows, numeric=range(1, len(series) + 1))
    return (f'<figure><figcaption>{esc(title)}</figcaption>{legend([(n, c) for n, _, c in series])}'
            f'{line_chart(ident, title, desc, labels, series)}<details><summary>Data table</summary>{table}'
            '</details></figure>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] | range = (),
           caption: str = "") -> str:
    if not rows:
        return f'<p class="muted">{esc(caption)} None.</p>' if caption else '<p class="muted">None.</p>'
    num = set(numeric)

    def cls(i: int) -> str:
        return ' class="n"' if i in num else ""

    head = "".join(f'<th scope="col"{cls(i)}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_cell(v)}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    return value if isinstance(value, _Html) else esc(value)


def _pill(text: str, colour: str | None) -> _Html:
    return _Html(f'<span class="pill" style="background:{esc(colour or "#64748b")}">{esc(text)}</span>')


def _advisory(a: Mapping[str, Any]) -> str:
    text = f'{_pill(a["status"], STATUS_COLOURS.get(a["status"]))} <b>{esc(a["advisory"])}</b> '
    text += esc(a["title"])
    if a.get("cvss") is not None:
        text += f' <span class="muted">CVSS {esc(a["cvss"])}</span>'
    if a.get("reason"):
        text += f' <span class="muted">({esc(a["reason"])})</span>'
    return text


def _cvss(score: Any) -> _Html:
    if not isinstance(score, int | float):
        return _Html("")
    colour = "#b91c1c" if score >= 9 else "#ea580c" if score >= 7 else "#ca8a04" if score >= 4 else "#65a30d"
    return _pill(f"{score:g}", colour)


def _device(d: Mapping[str, Any]) -> _Html:
    name = d.get("hostname") or d.get("mac")
    return _Html(f'<div class="dev">{esc(name)}</div><code class="muted">{esc(d.get("mac"))}</code>')


def _risks(risks: Sequence[Mapping[str, Any]]) -> _Html:
    items = "".join(f'<li>{esc(r.get("summary") or r.get("id"))}</li>' for r in risks)
    return _Html(f'<ul class="risks">{items}</ul>')


def _role(role: Any) -> str:
    return ROLE_LABELS.get(str(role), str(role or "unknown"))


def _when(ts: Any) -> str:
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return "\u2013"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(ts: Any) -> str:
    return _when(ts)[:10]
