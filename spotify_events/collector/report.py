"""The delivery report: per stream what arrived, what was dropped or rejected and why,
what is still missing (open gaps) and what is lost; per bucket whether it is closed,
its counts, and how complete it is.

Built from :class:`~.ledger.LedgerState` only, so ``spotify-events report`` works on
the data directory of a stopped collector, and ``GET /v1/report`` serves the very
same document from the running one. The JSON keys are stable for scripts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .accounting import account
from .buckets import bucket_dir, hour_label
from .ledger import INCIDENT_PREFIX, BucketState, LedgerState, PartState
from .partitions import load_state

REPORT_VERSION = 1


def stream_entry(st: Any, now: float, grace: float) -> dict[str, Any]:
    a = account(st, now, grace)
    return {
        "producer_id": st.producer_id,
        "event_type": st.event_type,
        "service": st.service,
        "host": st.host,
        "sdk_version": st.sdk_version,
        "received": a.received,
        "duplicates": st.duplicates,
        "conflicts": st.conflicts,
        "dropped": a.dropped,
        "dropped_reasons": a.dropped_reasons,
        "rejected": a.rejected,
        "rejected_reasons": a.rejected_reasons,
        "open_gaps": a.open_gaps,
        "lost": a.lost,
        "gap_ranges": a.gap_ranges,
        "next_seq": st.next_seq,
        "first_seen": st.first_seen,
        "last_seen": st.last_seen,
        "newest_event": st.newest_event_ms / 1000 if st.newest_event_ms else None,
        "complete": a.open_gaps == 0 and a.lost == 0,
    }


def bucket_summary(
    b: BucketState, parts: list[PartState], state: LedgerState, *, now: float, grace: float
) -> dict[str, Any]:
    """Counts and completeness of one bucket (the content of its ``_CLOSED.json``).

    Completeness is estimated per producer over the sequence span the bucket holds
    (min..max seq): numbers missing inside that span are attributed to this bucket.
    """
    producers = []
    missing_total = 0
    for pid, pb in sorted(b.producers.items()):
        entry: dict[str, Any] = {
            "producer_id": pid,
            "events": pb.events,
            "skewed": pb.skewed,
            "duplicates": pb.duplicates,
            "min_seq": pb.min_seq,
            "max_seq": pb.max_seq,
        }
        st = state.streams.get((pid, b.event_type))
        if st is not None and pb.events:
            a = account(st, now, grace, low=pb.min_seq, high=pb.max_seq, max_gap_ranges=5)
            entry.update(
                dropped=a.dropped,
                dropped_reasons=a.dropped_reasons,
                rejected=a.rejected,
                open_gaps=a.open_gaps,
                lost=a.lost,
                gap_ranges=a.gap_ranges,
            )
            missing_total += a.open_gaps + a.lost
        producers.append(entry)
    denominator = b.events + missing_total
    return {
        "event_type": b.event_type,
        "hour": hour_label(b.hour),
        "path": bucket_dir(b.event_type, b.hour),
        "closed": b.closed,
        "events": b.events,
        "skewed": b.skewed,
        "duplicates": b.duplicates,
        "missing": missing_total,
        "completeness": round(b.events / denominator, 6) if denominator else 1.0,
        "parts": [
            {
                "file": os.path.basename(p.path),
                "fingerprint": p.fingerprint,
                "events": p.events,
                "bytes": p.committed_len,
                **({"quarantined": p.quarantined} if p.quarantined else {}),
            }
            for p in sorted(parts, key=lambda p: p.path)
        ],
        "producers": producers,
    }


def build_report(
    state: LedgerState, *, now: float, grace: float, lateness: float
) -> dict[str, Any]:
    streams = [stream_entry(st, now, grace) for _, st in sorted(state.streams.items())]
    parts_by_bucket: dict[tuple[str, int], list[PartState]] = {}
    for p in state.parts.values():
        parts_by_bucket.setdefault((p.event_type, p.hour), []).append(p)
    buckets = []
    for key, b in sorted(state.buckets.items()):
        if b.closed and b.summary is not None:
            entry = dict(b.summary)
            entry["closed"] = True
        else:
            entry = bucket_summary(b, parts_by_bucket.get(key, []), state, now=now, grace=grace)
        buckets.append(entry)
    totals = {k: sum(s[k] for s in streams) for k in _COUNTS}
    incidents = [
        json.loads(value)
        for key, value in sorted(state.meta.items())
        if key.startswith(INCIDENT_PREFIX)
    ]
    producers = producer_entries(streams, incidents)
    return {
        "version": REPORT_VERSION,
        "generated_at": now,
        "grace_period": grace,
        "lateness": lateness,
        "totals": totals,
        "streams": streams,
        "buckets": buckets,
        "incidents": incidents,
        "producers": producers,
        "versions": version_entries(producers),
    }


_COUNTS = ("received", "duplicates", "conflicts", "dropped", "rejected", "open_gaps", "lost")


def producer_entries(
    streams: list[dict[str, Any]], incidents: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per producer: who it says it is (service, host, SDK version, as of its
    latest batch), when it was last heard from, the newest event time it delivered, and
    its counts summed over its event types."""
    by_id: dict[str, dict[str, Any]] = {}
    for s in streams:  # sorted by producer, then type
        p = by_id.get(s["producer_id"])
        if p is None:
            p = by_id[s["producer_id"]] = {
                "producer_id": s["producer_id"],
                "event_types": [],
                "last_seen": 0.0,
                "newest_event": None,
                "incidents": 0,
                **dict.fromkeys(_COUNTS, 0),
            }
        p["event_types"].append(s["event_type"])
        for k in _COUNTS:
            p[k] += s[k]
        if s["last_seen"] >= p["last_seen"]:
            p.update(
                last_seen=s["last_seen"],
                service=s["service"],
                host=s["host"],
                sdk_version=s["sdk_version"],
            )
        if s["newest_event"] is not None and (
            p["newest_event"] is None or s["newest_event"] > p["newest_event"]
        ):
            p["newest_event"] = s["newest_event"]
    for incident in incidents:
        p = by_id.get(incident.get("producer_id", ""))
        if p is not None:
            p["incidents"] += 1
    return list(by_id.values())


def version_entries(producers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Producers grouped by (service, SDK version): which versions run, and which lose events."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for p in producers:
        key = (p["service"], p["sdk_version"])
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "service": key[0],
                "sdk_version": key[1],
                "producers": 0,
                "last_seen": 0.0,
                **dict.fromkeys(_COUNTS, 0),
            }
        g["producers"] += 1
        g["last_seen"] = max(g["last_seen"], p["last_seen"])
        for k in _COUNTS:
            g[k] += p[k]
    return [groups[k] for k in sorted(groups)]


def load_report(
    data_dir: str | os.PathLike[str], *, now: float, grace: float | None = None
) -> dict[str, Any]:
    """Read a (possibly stopped) collector's ledger(s) and build the report.

    A data directory written by partitioned delivery workers has one ledger per
    partition; the report adds them up (:func:`~.partitions.load_state`).
    """
    state = load_state(data_dir)
    grace_value = grace if grace is not None else float(state.meta.get("grace_period", "300"))
    lateness = float(state.meta.get("lateness", "600"))
    return build_report(state, now=now, grace=grace_value, lateness=lateness)


def format_table(report: dict[str, Any]) -> str:
    """Human-readable report: one row per stream, then one row per bucket."""
    lines: list[str] = []
    cols = ["producer", "event type", "received", "dup", "dropped", "rejected", "open gaps", "lost"]
    rows = [
        [
            s["producer_id"][:13],
            s["event_type"],
            str(s["received"]),
            str(s["duplicates"]),
            str(s["dropped"]),
            str(s["rejected"]),
            str(s["open_gaps"]),
            str(s["lost"]),
        ]
        for s in report["streams"]
    ]
    lines += _table(cols, rows)
    reasons = []
    for s in report["streams"]:
        for kind in ("dropped", "rejected"):
            for reason, n in sorted(s[f"{kind}_reasons"].items()):
                reasons.append(
                    f"  {s['event_type']} ({s['producer_id'][:13]}): {kind} {n}: {reason}"
                )
    if reasons:
        lines += ["", "reasons:", *reasons]
    t = report["totals"]
    lines += [
        "",
        f"total: received {t['received']}, duplicates {t['duplicates']}, "
        f"conflicts {t['conflicts']}, dropped {t['dropped']}, "
        f"rejected {t['rejected']}, open gaps {t['open_gaps']}, lost {t['lost']} "
        f"(grace period {report['grace_period']:g}s)",
        "",
    ]
    for incident in report.get("incidents", []):
        lines.append(
            f"incident: producer {incident['producer_id']} {incident['kind']}: {incident['detail']}"
        )
    if report.get("incidents"):
        lines.append("")
    vcols = ["service", "sdk version", "producers", "received", "dropped", "open gaps", "lost"]
    vrows = [
        [
            v["service"] or "-",
            v["sdk_version"] or "-",
            str(v["producers"]),
            str(v["received"]),
            str(v["dropped"]),
            str(v["open_gaps"]),
            str(v["lost"]),
        ]
        for v in report.get("versions", [])
    ]
    lines += [*_table(vcols, vrows), ""]
    bcols = ["bucket", "state", "events", "skewed", "dup", "missing", "complete"]
    brows = [
        [
            b["path"],
            "closed" if b["closed"] else "open",
            str(b["events"]),
            str(b["skewed"]),
            str(b["duplicates"]),
            str(b["missing"]),
            f"{100 * b['completeness']:.2f}%",
        ]
        for b in report["buckets"]
    ]
    lines += _table(bcols, brows)
    return "\n".join(lines)


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [fmt(cols), fmt(["-" * w for w in widths])]
    out += [fmt(r) for r in rows] or ["(none)"]
    return out
