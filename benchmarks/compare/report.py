"""Medians, spreads and ratios over the runs, as tables and as a JSON summary.

Every figure is the median over the repeats of one (contestant, scenario,
threads); its spread is (max - min) / median, and a spread above ``--noise``
marks the figure with ``~``. Each figure is also shown divided by
spotify-events' median of the same figure in the same run (``x``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from .contestants import BASELINE

INF = math.inf
# The figures the tables show, by their short names for the notes.
SHOWN = {
    "p50_us": "p50",
    "p99_us": "p99",
    "p999_us": "p99.9",
    "calls_per_s": "calls/s",
    "delivered_per_s": "delivered/s",
    "lost": "lost",
    "bytes_per_event": "B/event",
    "cpu_s_per_m": "CPU/M",
    "maxrss_mb": "RSS",
    "drain_s": "drain",
    "cpu_seconds": "CPU",
}


def _get(run: dict[str, Any], path: str) -> Any:
    value: Any = run
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


# (key in the summary, path in a run, how a missing value counts)
FIGURES: dict[str, list[tuple[str, str, float | None]]] = {
    "latency": [
        ("p50_us", "latency_us.p50", None),
        ("p99_us", "latency_us.p99", None),
        ("p999_us", "latency_us.p999", None),
        ("logged", "logged", None),
        ("lost", "lost", None),
        ("lost_pct", "lost_pct", None),
        ("late_calls", "late_calls", None),
        ("late_pct", "late_pct", None),
    ],
    "throughput": [
        ("calls_per_s", "calls_per_s", None),
        ("delivered_per_s", "delivered_per_s", None),
        ("logged", "logged", None),
        ("delivered", "delivered", None),
        ("lost", "lost", None),
        ("lost_pct", "lost_pct", None),
        ("bytes_per_event", "bytes_per_event", None),
        ("cpu_s_per_m", "cpu_s_per_m", None),
        ("maxrss_mb", "maxrss_mb", None),
    ],
    "outage": [
        ("logged", "logged", None),
        ("delivered", "delivered", None),
        ("lost", "lost", None),
        ("lost_pct", "lost_pct", None),
        ("drain_s", "drain_s", INF),  # not drained by the deadline
        ("cpu_seconds", "cpu_seconds", None),
    ],
}


def summarize(runs: list[dict[str, Any]], noise: float) -> dict[str, Any]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if "error" not in r:
            groups[(r["contestant"], r["scenario"], int(r["threads"]))].append(r)
    summary: dict[str, Any] = {}
    for (name, scenario, threads), rs in groups.items():
        entry: dict[str, Any] = {
            "runs": len(rs),
            # Runs that ended at the deadline with the SDK still sending (or stuck): their
            # "lost" counts events not delivered *yet*, not only events dropped.
            "deadline_runs": sum(1 for r in rs if r.get("completed_by") == "deadline"),
        }
        for key, path, missing in FIGURES[scenario]:
            values = [_get(r, path) for r in rs]
            values = [missing if v is None else v for v in values]
            values = [float(v) for v in values if v is not None]
            if not values:
                continue
            med = statistics.median(values)
            finite = [v for v in values if v != INF]
            if len(values) > 1 and len(finite) == len(values) and med:
                spread = (max(values) - min(values)) / abs(med)
            elif len(values) > 1 and 0 < len(finite) < len(values):
                spread = INF  # drained in some repeats, not in others
            else:
                spread = 0.0
            entry[key] = {
                "median": med,
                "values": values,
                "spread": spread,
                "noisy": spread > noise and not _tiny(key, values),
            }
        summary.setdefault(name, {}).setdefault(scenario, {})[str(threads)] = entry
    for scenarios in summary.values():
        for scenario, by_threads in scenarios.items():
            for threads, entry in by_threads.items():
                base = summary.get(BASELINE, {}).get(scenario, {}).get(threads, {})
                for key, fig in entry.items():
                    if not isinstance(fig, dict):
                        continue
                    b = base.get(key, {}).get("median")
                    fig["ratio"] = _ratio(fig["median"], b)
    return summary


def _tiny(key: str, values: list[float]) -> bool:
    # A spread in counts of lost events that are all small is not noise worth a flag.
    return key in ("lost", "lost_pct", "late_calls", "late_pct") and max(values) <= (
        1.0 if key.endswith("_pct") else 100
    )


def _ratio(value: float, base: float | None) -> float | None:
    if base is None or value is None:
        return None
    if base == 0:
        return None if value == 0 else INF
    if value == INF or base == INF:
        return None
    return value / base


# -- rendering ------------------------------------------------------------------------------------
def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    if v == INF:
        return "not drained"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _cell(entry: dict[str, Any], key: str, digits: int = 0, ratio: bool = True) -> str:
    """The median, ``~`` when noisy, ``(Nx)`` its ratio to the baseline's (not on its own row)."""
    fig = entry.get(key)
    if not fig:
        return "n/a"
    text = _num(fig["median"], digits)
    if fig.get("noisy"):
        text += "~"
    r = fig.get("ratio")
    if ratio and r is not None and not entry.get("baseline"):
        text += " (∞x)" if r == INF else f" ({r:.2g}x)" if r < 10 else f" ({r:,.0f}x)"
    return text


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


def format_report(
    runs: list[dict[str, Any]], args: Any, versions: dict[str, str], skipped: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    summary = summarize(runs, args.noise)
    names = [n for n in args.contestants if n in summary]
    for by_threads in summary.get(BASELINE, {}).values():
        for entry in by_threads.values():
            entry["baseline"] = True
    out: list[str] = []
    out.append(
        f"(Nx) = the figure divided by {BASELINE}' median in the same run; "
        "~ = spread (max-min)/median over "
        f"the repeats > {args.noise:.0%}."
    )

    if "latency" in args.scenarios:
        rows = []
        for n in names:
            for t, e in sorted(summary[n].get("latency", {}).items(), key=lambda kv: int(kv[0])):
                rows.append(
                    [
                        n,
                        t,
                        _cell(e, "p50_us", 1),
                        _cell(e, "p99_us", 1),
                        _cell(e, "p999_us", 1),
                        _num(_med(e, "late_pct"), 1) + "%",
                        _lost(e),
                    ]
                )
        out.append(
            f"\n(a) caller-side latency of one log()/track()/capture() call, paced at "
            f"{args.rate:,.0f} events/s in total for {args.latency_seconds:g} s; "
            f"{_runs(args.repeat)}"
        )
        out.append(
            _table(["contestant", "threads", "p50 µs", "p99 µs", "p99.9 µs", "late", "lost"], rows)
        )

    if "throughput" in args.scenarios:
        rows = []
        for n in names:
            for t, e in sorted(summary[n].get("throughput", {}).items(), key=lambda kv: int(kv[0])):
                rows.append(
                    [
                        n,
                        t,
                        _cell(e, "calls_per_s", 0, ratio=False),
                        _cell(e, "delivered_per_s"),
                        _lost(e),
                        _cell(e, "bytes_per_event", 1),
                        _cell(e, "cpu_s_per_m", 1),
                        _cell(e, "maxrss_mb", 1),
                    ]
                )
        out.append(
            f"\n(b) as fast as possible for {args.throughput_seconds:g} s, then up to "
            f"{args.drain_timeout:g} s to deliver; counted at the sink; {_runs(args.repeat)}"
        )
        out.append(
            _table(
                [
                    "contestant",
                    "threads",
                    "calls/s",
                    "delivered/s",
                    "lost (of logged)",
                    "wire B/event",
                    "CPU s per M delivered",
                    "peak RSS MB",
                ],
                rows,
            )
        )

    if "outage" in args.scenarios:
        rows = []
        for n in names:
            e = summary[n].get("outage", {}).get("1")
            if e:
                rows.append(
                    [
                        n,
                        _cell(e, "logged", 0, ratio=False),
                        _cell(e, "delivered", 0, ratio=False),
                        _lost(e),
                        _cell(e, "drain_s", 2),
                        _cell(e, "cpu_seconds", 2),
                    ]
                )
        out.append(
            f"\n(c) sink down while one caller logs {args.outage_rate:,.0f} events/s for "
            f"{args.outage_seconds:g} s, then up; drain = sink up -> last event in, once the SDK "
            f"is done (deadline {args.outage_drain_timeout:g} s); CPU = producer CPU s from first "
            "call to done; "
            f"{_runs(min(args.repeat, args.outage_repeat))}"
        )
        out.append(
            _table(["contestant", "logged", "delivered", "lost", "time to drain s", "CPU s"], rows)
        )

    notes = []
    for n, why in skipped.items():
        notes.append(f"{n}: skipped — {why}")
    failed = [r for r in runs if "error" in r]
    for r in failed:
        notes.append(
            f"{r['contestant']} {r['scenario']} {r['threads']}t repeat {r['repeat'] + 1} "
            f"failed: {r['error']}"
        )
    noisy = []
    for n, ss in summary.items():
        figs = [
            f"{s[0]}{t} {SHOWN[k]}"
            for s, tt in ss.items()
            for t, e in sorted(tt.items())
            for k, f in e.items()
            if k in SHOWN and isinstance(f, dict) and f.get("noisy")
        ]
        if figs:
            noisy.append(f"{n}: {', '.join(figs)}")
    if noisy:
        notes.append(
            f"~ noisy (spread > {args.noise:.0%}; l/t/o = latency/throughput/outage, digit = "
            "threads): " + "; ".join(noisy)
        )
    if any(
        e.get("deadline_runs") for ss in summary.values() for tt in ss.values() for e in tt.values()
    ):
        notes.append(
            "+ = in at least one run the SDK was still sending (or stuck) at the deadline: "
            "its 'lost' counts events not delivered by then, not only events it dropped"
        )
    sustained = _sustain_notes(summary, args)
    notes.extend(sustained)
    if notes:
        out.append("\n" + "\n".join("note: " + x for x in notes))
    return "\n".join(out), summary


def _runs(n: int) -> str:
    return f"median of {n} runs" if n > 1 else "1 run"


def _lost(entry: dict[str, Any]) -> str:
    text = _cell(entry, "lost", 0, ratio=False) + f" ({_num(_med(entry, 'lost_pct'), 1)}%)"
    return text + " +" if entry.get("deadline_runs") else text


def _med(entry: dict[str, Any], key: str) -> float | None:
    fig = entry.get(key)
    return fig["median"] if fig else None


def _sustain_notes(summary: dict[str, Any], args: Any) -> list[str]:
    notes = []
    for n, ss in summary.items():
        tp = _med(ss.get("throughput", {}).get("1", {}), "delivered_per_s")
        if tp is not None and tp < args.rate * 1.2:
            notes.append(
                f"{n} delivered only {tp:,.0f}/s flat out, close to or below the paced rate "
                f"{args.rate:,.0f}/s: its latency row is measured near saturation"
            )
        for t, e in ss.get("latency", {}).items():
            lost = _med(e, "lost")
            if lost:
                notes.append(f"{n} lost {lost:,.0f} events at the paced rate with {t} thread(s)")
    return notes
