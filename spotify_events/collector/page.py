"""The completeness page: the delivery report as one HTML page a person reads.

A pure function from the report document (:func:`~.report.build_report`, the same
JSON ``GET /v1/report`` serves) to HTML, so any process that can build the report —
the single collector, a delivery worker — serves the same page. No scripts, no
external assets, no build step: inline CSS only, so it works air-gapped and under a
``default-src 'none'`` content security policy; ``<meta http-equiv="refresh">``
reloads it. Producer-supplied strings (service, host, SDK version, drop reasons,
incident details) are hostile: every value goes through :func:`html.escape`.

Two parts:

* an event type x hour grid, each cell coloured by its state, worst first:
  ``lost`` (numbers past the grace period that never arrived), ``dropped`` (dropped
  or rejected at the producer or the collector), ``open`` (the hour is not closed,
  or numbers are still within the grace period), ``complete`` (closed, nothing
  missing). Hovering shows the counts (``title``); tapping opens them (``<details>``).
* producers (worst first) with service, host, SDK version, last seen, lag (page
  time minus the newest event time the producer delivered), incidents, and their
  gap ranges one tap away; then producers grouped by service and SDK version.

Above both, when there are any, the incidents no producer row shows: what the
collector found wrong in its own data directory (a damaged part file moved aside).

Bounded: at most ``max_hours`` hour columns (the newest), ``max_types`` grid rows
(types with buckets first: a client can name any type in a rejected event) and
``max_producers`` producer (and service and version) rows, :data:`MAX_LIST` lines per
producer drill-down; the report itself bounds gap ranges and reasons.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any

from .buckets import hour_label

#: Most gap or incident lines in one producer's drill-down.
MAX_LIST = 20
#: Cell states, worst first; the first that applies colours the cell.
STATES = ("lost", "dropped", "open", "complete")
_MARK = {"lost": "\u2717", "dropped": "!", "open": "\u2026", "complete": "\u2713"}

_CSS = """
:root{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b}
body{margin:0 auto;padding:.6rem;max-width:90rem}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
.meta{color:#555;margin:.2rem 0}.totals span{margin-right:.8rem;white-space:nowrap}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse}th,td{padding:.25rem .4rem;border:1px solid #ddd;text-align:right}
th{background:#f5f5f5;font-weight:600;white-space:nowrap}
tbody th,td.text,thead th:first-child{text-align:left}
.grid td{min-width:3.2rem;vertical-align:top}
.grid thead th{font-size:.8rem;line-height:1.1}
details summary{cursor:pointer;list-style:none;white-space:nowrap}
details summary::-webkit-details-marker{display:none}
details[open] summary{font-weight:700}
dl{margin:.3rem 0 0;display:grid;grid-template-columns:auto auto;gap:0 .5rem;
 text-align:left;font-size:.8rem;white-space:nowrap}
dt{color:#444}dd{margin:0}
.complete{background:#d7f0d8}.open{background:#e6eef8}.dropped{background:#ffe6bf}
.lost{background:#ffc9c9}.lost summary,.lost .n{color:#8b0000;font-weight:700}
.none{background:#fafafa;color:#aaa;text-align:center}
.legend span{display:inline-block;padding:.1rem .45rem;margin:0 .3rem .3rem 0;border:1px solid #ccc}
ul.gaps{margin:.2rem 0 0;padding-left:1rem;text-align:left;font-size:.85rem}
.bad{color:#8b0000;font-weight:700}
@media (max-width:40rem){:root{font-size:13px}th,td{padding:.2rem .25rem}}
"""


def render_page(
    report: dict[str, Any],
    *,
    title: str = "spotify-events completeness",
    refresh_seconds: int = 30,
    max_hours: int = 48,
    max_types: int = 100,
    max_producers: int = 200,
) -> str:
    """The whole page for ``report`` (as :func:`~.report.build_report` returns it)."""
    now = float(report["generated_at"])
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        _header(report, title, now, refresh_seconds),
        _other_incidents(report),
        _grid(report, now, max_hours, max_types),
        _producers(report, now, max_producers),
        _versions(report, max_producers),
        "</body></html>",
    ]
    return "\n".join(parts)


def cell_state(bucket: dict[str, Any]) -> str:
    """The state that colours a bucket's cell: the first of :data:`STATES` that applies."""
    sums = _bucket_sums(bucket)
    if sums["lost"]:
        return "lost"
    if sums["dropped"] or sums["rejected"]:
        return "dropped"
    if not bucket["closed"] or sums["open_gaps"]:
        return "open"
    return "complete"


# -- sections -------------------------------------------------------------------------
def _header(report: dict[str, Any], title: str, now: float, refresh: int) -> str:
    t = report["totals"]
    status = "lost" if t["lost"] else "open" if t["open_gaps"] else "complete"
    totals = " ".join(
        f'<span id="total-{k}"{" class=bad" if k == "lost" and t[k] else ""}>'
        f"{_e(k.replace('_', ' '))}: <b>{int(t[k]):,}</b></span>"
        for k in ("received", "duplicates", "dropped", "rejected", "open_gaps", "lost")
    )
    return (
        f'<header data-status="{status}"><h1>{_e(title)}</h1>'
        f'<p class="meta">as of <time datetime="{_iso(now)}">{_e(_iso(now))}</time>'
        f" · grace period {_duration(report['grace_period'])}"
        f" · lateness {_duration(report['lateness'])}"
        f" · refreshes every {int(refresh)} s</p>"
        f'<p class="totals">{totals}</p></header>'
    )


def _other_incidents(report: dict[str, Any]) -> str:
    """Incidents no producer row shows: what the collector found wrong in its own data
    directory (a damaged part file moved aside), and producers with no stream; newest
    first, :data:`MAX_LIST` of them."""
    known = {p["producer_id"] for p in report.get("producers", [])}
    others = [i for i in report.get("incidents", []) if i.get("producer_id") not in known]
    if not others:
        return ""
    newest = sorted(others, key=_incident_time, reverse=True)[:MAX_LIST]
    items = "".join(
        f'<li data-kind="{_e(i.get("kind", ""))}"><b>{_e(i.get("producer_id", ""))}</b> '
        f"{_e(_iso(_incident_time(i)))} {_e(i.get('kind', ''))}: {_e(i.get('detail', ''))}</li>"
        for i in newest
    )
    more = (
        f'<p class="meta">{len(others) - MAX_LIST:,} more (see /v1/report)</p>'
        if len(others) > MAX_LIST
        else ""
    )
    return (
        '<section id="incidents"><h2 class="bad">Incidents</h2><p class="meta">found by the '
        "collector in its data directory, or reported by producers not listed below; "
        f'newest first</p><ul class="gaps">{items}</ul>{more}</section>'
    )


def _grid(report: dict[str, Any], now: float, max_hours: int, max_types: int) -> str:
    buckets = {(b["event_type"], b["hour"]): b for b in report["buckets"]}
    hours = _hour_columns({h for _, h in buckets}, now, max_hours)
    with_buckets = {t for t, _ in buckets}
    others = {s["event_type"] for s in report["streams"]} - with_buckets
    all_types = sorted(with_buckets) + sorted(others)
    types = all_types[:max_types]
    legend = " ".join(f'<span class="{s}">{_MARK[s]} {s}</span>' for s in STATES)
    head = "".join(
        f'<th scope="col" data-hour="{_e(h)}">{_e(h[5:10])}<br>{_e(h[11:16])}</th>' for h in hours
    )
    rows = []
    for etype in types:
        cells = []
        for h in hours:
            b = buckets.get((etype, h))
            cells.append(_cell(b) if b else f'<td class="none" data-hour="{_e(h)}">·</td>')
        rows.append(
            f'<tr data-event-type="{_e(etype)}"><th scope="row">{_e(etype)}</th>{"".join(cells)}</tr>'
        )
    if len(all_types) > max_types:
        rows.append(
            f'<tr><td class="text" colspan="{len(hours) + 1}">{len(all_types) - max_types:,} more'
            " event types not shown (see /v1/report)</td></tr>"
        )
    body = (
        "".join(rows) or f'<tr><td class="text" colspan="{len(hours) + 1}">no events yet</td></tr>'
    )
    shown = f"hours in UTC, the newest {len(hours)} shown" if hours else "no hours yet"
    return (
        f'<section id="grid"><h2>Event types &times; hours</h2><p class="meta">{shown}; '
        "hover or tap a cell for its counts</p>"
        f'<p class="legend">{legend}</p><div class="scroll"><table class="grid">'
        f'<thead><tr><th scope="col">event type</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div></section>"
    )


def _cell(b: dict[str, Any]) -> str:
    state = cell_state(b)
    sums = _bucket_sums(b)
    facts: list[tuple[str, str]] = [
        ("state", state + (" (closed)" if b["closed"] else " (hour open)")),
        ("received", f"{b['events']:,}"),
        ("duplicates", f"{b['duplicates']:,}"),
        ("skewed", f"{b['skewed']:,}"),
        ("lost", f"{sums['lost']:,}"),
        ("open gaps", f"{sums['open_gaps']:,}"),
        ("dropped", f"{sums['dropped']:,}"),
    ]
    facts += [(f"dropped: {r}", f"{n:,}") for r, n in sorted(sums["dropped_reasons"].items())]
    facts.append(("rejected", f"{sums['rejected']:,}"))
    facts.append(("complete", f"{100 * float(b.get('completeness', 1.0)):.2f}%"))
    title = "\n".join(f"{k}: {v}" for k, v in facts)
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    gaps = [
        f"<li>{_e(p['producer_id'][:8])}: {_e(_ranges(p['gap_ranges']))}</li>"
        for p in b.get("producers", [])
        if p.get("gap_ranges")
    ][:5]
    gap_list = f'<ul class="gaps">{"".join(gaps)}</ul>' if gaps else ""
    summary = f"{_MARK[state]} {b['events']:,}"
    if sums["lost"]:
        summary += f' <span class="n">&minus;{sums["lost"]:,}</span>'
    data = " ".join(
        f'data-{k}="{int(v)}"'
        for k, v in (
            ("received", b["events"]),
            ("duplicates", b["duplicates"]),
            ("skewed", b["skewed"]),
            ("lost", sums["lost"]),
            ("open-gaps", sums["open_gaps"]),
            ("dropped", sums["dropped"]),
            ("rejected", sums["rejected"]),
        )
    )
    return (
        f'<td class="cell {state}" data-state="{state}" data-hour="{_e(b["hour"])}" {data} '
        f'title="{_e(title)}"><details><summary>{summary}</summary>'
        f"<dl>{details}</dl>{gap_list}</details></td>"
    )


def _producers(report: dict[str, Any], now: float, limit: int) -> str:
    producers = sorted(
        report.get("producers", []),
        key=lambda p: (-p["lost"], -p["open_gaps"], -p["dropped"], p["service"], p["producer_id"]),
    )
    gaps: dict[str, list[str]] = {}
    for s in report["streams"]:
        if s["gap_ranges"]:
            gaps.setdefault(s["producer_id"], []).append(
                f"<li>{_e(s['event_type'])}: {_e(_ranges(s['gap_ranges']))}"
                f" ({int(s['lost']):,} lost, {int(s['open_gaps']):,} open)</li>"
            )
    incidents: dict[str, list[str]] = {}
    for i in report.get("incidents", []):
        incidents.setdefault(str(i.get("producer_id", "")), []).append(
            f"<li>{_e(i.get('kind', ''))}: {_e(i.get('detail', ''))}</li>"
        )
    rows = []
    for p in producers[:limit]:
        pid = p["producer_id"]
        lag = _duration(now - p["newest_event"]) if p["newest_event"] is not None else "-"
        more = gaps.get(pid, [])[:MAX_LIST] + incidents.get(pid, [])[:MAX_LIST]
        detail = (
            f"<details><summary>{_gap_summary(len(gaps.get(pid, [])), len(incidents.get(pid, [])))}"
            f'</summary><ul class="gaps">'
            f"{''.join(more)}</ul></details>"
            if more
            else "none"
        )
        cls = "lost" if p["lost"] else "open" if p["open_gaps"] else ""
        rows.append(
            f'<tr class="{cls}" data-producer="{_e(pid)}">'
            f'<td class="text">{_e(p["service"] or "-")}</td>'
            f'<td class="text">{_e(p["host"] or "-")}</td>'
            f'<td class="text">{_e(p["sdk_version"] or "-")}</td>'
            f'<td class="text" title="{_e(pid)}">{_e(pid[:8])}</td>'
            f'<td title="{_e(_iso(p["last_seen"]))}">{_e(_duration(now - p["last_seen"]))} ago</td>'
            f'<td class="lag">{_e(lag)}</td>'
            f"<td>{p['received']:,}</td><td>{p['dropped']:,}</td>"
            f'<td class="n">{p["lost"]:,}</td><td>{p["open_gaps"]:,}</td>'
            f'<td>{p["incidents"]:,}</td><td class="text">{detail}</td></tr>'
        )
    if len(producers) > limit:
        rows.append(
            f'<tr><td class="text" colspan="12">{len(producers) - limit:,} more producers not shown'
            " (see /v1/report)</td></tr>"
        )
    head = "".join(
        f'<th scope="col">{c}</th>'
        for c in (
            "service",
            "host",
            "SDK version",
            "producer",
            "last seen",
            "lag",
            "received",
            "dropped",
            "lost",
            "open gaps",
            "incidents",
            "gaps and incidents",
        )
    )
    body = "".join(rows) or '<tr><td class="text" colspan="12">no producers yet</td></tr>'
    return (
        '<section id="producers"><h2>Producers</h2><p class="meta">lag: page time minus the '
        "newest event time the producer delivered</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div></section>"
    )


def _versions(report: dict[str, Any], limit: int) -> str:
    versions = sorted(report.get("versions", []), key=lambda v: (-v["lost"], -v["producers"]))
    rows = [
        f'<tr class="{"lost" if v["lost"] else ""}" data-service="{_e(v["service"])}" '
        f'data-sdk-version="{_e(v["sdk_version"])}">'
        f'<td class="text">{_e(v["service"] or "-")}</td>'
        f'<td class="text">{_e(v["sdk_version"] or "-")}</td>'
        f"<td>{v['producers']:,}</td><td>{v['received']:,}</td><td>{v['dropped']:,}</td>"
        f'<td class="n">{v["lost"]:,}</td><td>{v["open_gaps"]:,}</td></tr>'
        for v in versions[:limit]
    ]
    if len(versions) > limit:
        rows.append(
            f'<tr><td class="text" colspan="7">{len(versions) - limit:,} more not shown'
            " (see /v1/report)</td></tr>"
        )
    head = "".join(
        f'<th scope="col">{c}</th>'
        for c in ("service", "SDK version", "producers", "received", "dropped", "lost", "open gaps")
    )
    body = "".join(rows) or '<tr><td class="text" colspan="7">no producers yet</td></tr>'
    return (
        '<section id="versions"><h2>Services and SDK versions</h2><div class="scroll"><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>"
    )


# -- helpers --------------------------------------------------------------------------
def _bucket_sums(b: dict[str, Any]) -> dict[str, Any]:
    """Lost, open gaps, dropped (with reasons) and rejected, summed over the bucket's producers."""
    out: dict[str, Any] = {"lost": 0, "open_gaps": 0, "dropped": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    for p in b.get("producers", []):
        for k in ("lost", "open_gaps", "dropped", "rejected"):
            out[k] += int(p.get(k, 0))
        for reason, n in p.get("dropped_reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    out["dropped_reasons"] = reasons
    return out


def _hour_columns(present: set[str], now: float, max_hours: int) -> list[str]:
    """Every hour from the oldest present to the current one (so an empty hour shows),
    the newest ``max_hours`` of them."""
    if not present:
        return []
    as_hours = [_hour_of(h) for h in present]
    newest = max(max(as_hours), int(now // 3600))
    oldest = max(min(as_hours), newest - max_hours + 1)
    return [hour_label(h) for h in range(oldest, newest + 1)]


def _hour_of(label: str) -> int:
    when = datetime.strptime(label, "%Y-%m-%dT%H:00Z").replace(tzinfo=timezone.utc)
    return int(when.timestamp()) // 3600


def _gap_summary(types_with_gaps: int, incidents: int) -> str:
    out = [f"gaps in {types_with_gaps} type{'s' if types_with_gaps != 1 else ''}"]
    if incidents:
        out.append(f"{incidents} incident{'s' if incidents != 1 else ''}")
    return ", ".join(out)


def _ranges(ranges: list[list[int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in ranges)


def _duration(seconds: float) -> str:
    s = max(0.0, float(seconds))
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _incident_time(incident: dict[str, Any]) -> float:
    at = incident.get("at")
    return float(at) if isinstance(at, (int, float)) and 0 <= at < 253402300800 else 0.0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
