"""deploy/prometheus/alerts.yml: promtool's unit tests pass, and every collector metric
the rules name is one the collector really exposes (a renamed metric would otherwise
leave an alert that can never fire)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from collector_helpers import END_SONG, FIXED_TS, BatchMaker, wsgi_call
from prometheus_client.parser import text_string_to_metric_families
from support import SCHEMAS

from spotify_events.collector.delivery import COMPLETENESS_MAX_AGE
from spotify_events.collector.server import Collector, CollectorConfig
from spotify_events.schemas import SchemaRegistry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool not on PATH (Debian: apt-get install prometheus); alert rules untested"
        )
    return found


def test_promtool_checks_and_unit_tests_pass() -> None:
    tool = promtool()
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            [tool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_rules_name_only_metrics_the_collector_exposes(tmp_path: Path) -> None:
    collector = Collector(CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS)))
    try:
        maker = BatchMaker(SchemaRegistry(SCHEMAS), "producer-a")
        status, _, _ = wsgi_call(
            collector.app, "POST", "/v1/batches", maker.body(maker.envelopes(END_SONG, [1, 3]))
        )
        assert status == 200
        exposed = {
            sample.name
            for family in text_string_to_metric_families(collector.metrics.render().decode())
            for sample in family.samples
        }
    finally:
        collector.shutdown()
    named = set(re.findall(r"spotify_events_collector_\w+", (DEPLOY / "alerts.yml").read_text()))
    assert named and named <= exposed, sorted(named - exposed)
    assert "spotify_events_collector_build_info" in exposed


def test_completeness_gauges_follow_the_ledger(tmp_path: Path) -> None:
    clock = [FIXED_TS / 1000 + 1]
    collector = Collector(
        CollectorConfig(
            data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS), grace_period=60, lateness=60
        ),
        clock=lambda: clock[0],
    )

    def gauge(name: str) -> float:
        value = collector.metrics.registry.get_sample_value(f"spotify_events_collector_{name}")
        assert value is not None, name
        return float(value)

    try:
        maker = BatchMaker(SchemaRegistry(SCHEMAS), "producer-a")
        body = maker.body(maker.envelopes(END_SONG, [1, 2, 5]))
        assert wsgi_call(collector.app, "POST", "/v1/batches", body)[0] == 200
        assert (gauge("open_gap_events"), gauge("lost_events")) == (2, 0)
        assert (gauge("producers"), gauge("active_producers"), gauge("open_buckets")) == (1, 1, 1)
        clock[0] += 61
        assert (gauge("open_gap_events"), gauge("lost_events")) == (0, 2)
        assert gauge("open_bucket_overdue_seconds") == 0
        clock[0] += 3600 + 120  # past hour end + lateness, and no closer ran
        assert gauge("open_bucket_overdue_seconds") > 0
        assert gauge("active_producers") == 0
        collector.delivery.close_due_buckets()
        clock[0] += COMPLETENESS_MAX_AGE  # a scrape may serve figures up to this old
        assert (gauge("open_buckets"), gauge("open_bucket_overdue_seconds")) == (0, 0)
        assert gauge("data_dir_free_bytes") > 0
    finally:
        collector.shutdown()


def test_a_scrape_while_delivery_is_busy_never_reports_zero_for_a_real_loss(
    tmp_path: Path,
) -> None:
    """Before the first ledger walk there is no figure to serve: a scrape that finds the
    delivery lock busy leaves the completeness gauges out rather than reporting 0, which
    the loss alerts (``lost - lost offset 15m > 0``) would later read as new loss."""
    clock = [FIXED_TS / 1000 + 1]
    config = CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS))
    first = Collector(config, clock=lambda: clock[0])
    maker = BatchMaker(SchemaRegistry(SCHEMAS), "producer-a")
    body = maker.body(maker.envelopes(END_SONG, [1, 5]))
    assert wsgi_call(first.app, "POST", "/v1/batches", body)[0] == 200
    first.shutdown()
    clock[0] += config.grace_period + 1  # numbers 2..4 are lost now
    restarted = Collector(config, clock=lambda: clock[0])
    try:
        with restarted.delivery._lock:  # a group commit is fsyncing
            busy = restarted.metrics.registry.get_sample_value(
                "spotify_events_collector_lost_events"
            )
        assert busy is None
        lost = restarted.metrics.registry.get_sample_value("spotify_events_collector_lost_events")
        assert lost == 3
    finally:
        restarted.shutdown()
