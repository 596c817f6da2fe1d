"""Buckets are UTC hours whatever the machine's local zone is.

The zone is pinned here (not left to whoever runs the suite) to zones whose
offsets are not whole hours, and to an event right before a UTC midnight, so a
local-time slip changes the directory, the hour label or even the date.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector_helpers import END_SONG, BatchMaker, part_files

from spotify_events.collector.buckets import HOUR_MS, bucket_dir, hour_label, hour_of
from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest
from spotify_events.collector.seam import DeliveryConfig
from spotify_events.schemas import SchemaRegistry

#: 2025-12-31T23:59:59.999Z: the last millisecond of a UTC day (and year).
LAST_MS_OF_2025 = 1_767_225_599_999
#: UTC+05:30 and UTC-03:30 (Newfoundland standard time), in POSIX spelling.
ZONES = ["IST-05:30", "NST+03:30"]


@pytest.fixture(params=ZONES)
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        assert time.localtime(0).tm_min == 30  # the zone really is in effect
        yield request.param
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_bucket_path_and_label_are_the_utc_hour(local_zone: str) -> None:
    hour = hour_of(LAST_MS_OF_2025)
    assert bucket_dir(END_SONG, hour) == os.path.join(END_SONG, "2025-12-31", "23")
    assert hour_label(hour) == "2025-12-31T23:00Z"
    assert bucket_dir(END_SONG, hour + 1) == os.path.join(END_SONG, "2026-01-01", "00")
    assert hour_label(hour + 1) == "2026-01-01T00:00Z"
    assert hour_of(LAST_MS_OF_2025 + 1) == hour + 1 == (LAST_MS_OF_2025 + 1) // HOUR_MS


def test_delivered_events_land_in_their_utc_hour(
    local_zone: str, tmp_path: Path, collector_registry: SchemaRegistry, maker: BatchMaker
) -> None:
    now = (LAST_MS_OF_2025 + 1) / 1000 + 60  # one minute into 2026, UTC

    def clock() -> float:
        return now

    delivery = LocalDelivery(
        tmp_path / "data", collector_registry, config=DeliveryConfig(), clock=clock
    )
    try:
        envs = maker.envelopes(END_SONG, [1], LAST_MS_OF_2025)
        envs += maker.envelopes(END_SONG, [2], LAST_MS_OF_2025 + 1)
        result = delivery.deliver(Ingest(collector_registry, clock=clock).parse(maker.body(envs)))
        assert (result.accepted, result.skewed) == (2, 0)
        report = delivery.report()
    finally:
        delivery.close()
    data = tmp_path / "data"
    assert [p.parent.relative_to(data).as_posix() for p in part_files(data)] == [
        f"{END_SONG}/2025-12-31/23",
        f"{END_SONG}/2026-01-01/00",
    ]
    assert [b["hour"] for b in report["buckets"]] == ["2025-12-31T23:00Z", "2026-01-01T00:00Z"]
