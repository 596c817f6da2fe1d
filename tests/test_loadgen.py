"""``spotify-events loadgen`` against a real collector: what it reports is what the
collector's ledger holds (accepted events, drop notices, nothing lost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import ROOT

from spotify_events.collector.process import CollectorProcess


def test_loadgen_reports_what_the_collector_accepted(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "data", ROOT / "schemas") as collector:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "spotify_events",
                "loadgen",
                collector.url,
                "--producers",
                "3",
                "--rate",
                "600",
                "--duration",
                "2",
                "--batch-events",
                "50",
                "--drop-every",
                "2",
                "--schemas",
                str(ROOT / "schemas"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        summary = json.loads(out.stdout)
        report = collector.report()
    totals = report["totals"]
    assert summary["errors"] == {}
    assert summary["accepted"] > 0 and summary["accepted"] == totals["received"]
    assert summary["latency_ms"]["p50"] > 0
    assert totals["dropped"] > 0  # every second batch follows five dropped numbers
    assert totals["lost"] == 0 and totals["open_gaps"] == 0
    assert len(report["streams"]) == 3
