"""What the report claims against what happened, on a real collector over HTTP.

Each test drives a path off the common one and checks that the report and the
acknowledgement neither claim a loss that did not happen nor hide one that did.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from collector_helpers import (
    END_SONG,
    BatchMaker,
    expected_uids,
    part_files,
    post,
    read_uids,
    stream,
)
from support import wait_for

from spotify_events.collector.buckets import avro_long
from spotify_events.collector.guard import scan_container
from spotify_events.collector.process import CollectorProcess
from spotify_events.wire import Envelope

#: A schema fingerprint no collector knows: the events of a schema not yet deployed.
UNDEPLOYED = b"\xfe" * 8


def now_ms() -> int:
    return int(time.time() * 1000)


def test_numbers_held_for_a_schema_the_collector_lacks_stay_open_gaps_never_lost(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    """The SDK holds ``unknown_schema`` events in its queue (with their numbers) until the
    collector learns the schema, which can take longer than the grace period; its
    watermark covers them all along. They are not lost: the report must keep them open,
    not page on them, and count them received once they arrive."""
    cp = start_collector("--grace-period", "0.2")
    ts = now_ms()
    known = maker.envelopes(END_SONG, [1, 2, 3], ts)
    held = [Envelope(s, END_SONG, UNDEPLOYED, ts, b"\x00") for s in (4, 5)]
    answer = post(cp.url, maker.body([*known, *held], next_seq={END_SONG: 6})).json()
    assert answer["accepted"] == 3
    assert [(r["seq"], r["code"]) for r in answer["rejected"]] == [
        (4, "unknown_schema"),
        (5, "unknown_schema"),
    ]
    past_grace = time.time() + 0.2
    assert wait_for(lambda: cp.report()["generated_at"] > past_grace + 0.1, timeout=10)
    s = stream(cp.report(), "producer-a", END_SONG)
    assert (s["received"], s["open_gaps"], s["lost"], s["gap_ranges"]) == (3, 2, 0, [[4, 5]])

    # the schema is deployed: the held numbers arrive and the stream is whole
    assert post(cp.url, maker.body(maker.envelopes(END_SONG, [4, 5], ts))).json()["accepted"] == 2
    s = stream(cp.report(), "producer-a", END_SONG)
    assert (s["received"], s["open_gaps"], s["lost"], s["complete"]) == (5, 0, 0, True)
    assert read_uids(cp.data_dir) == expected_uids("producer-a", END_SONG, range(1, 6))


def test_a_block_holding_more_records_than_it_declares_is_refused_not_half_read(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    """A container block says how many records it holds; fastavro reads that many and
    ignores the rest of the block. Three events under a count of one were answered 200
    with ``accepted: 1``: two events of an acknowledged body neither written nor
    rejected. The body is not a well-formed batch, so it is refused whole."""
    cp = start_collector()
    honest = maker.body(maker.envelopes(END_SONG, [1, 2, 3], now_ms()), codec="null")
    scan = scan_container(honest, max_events=10, max_decoded_bytes=1 << 20)
    ((count, data),) = scan.blocks
    assert count == 3
    sync = honest[scan.header_len - 16 : scan.header_len]
    lying = honest[: scan.header_len] + avro_long(1) + avro_long(len(data)) + data + sync

    answer = post(cp.url, lying)
    assert answer.status_code == 400, answer.text
    assert part_files(cp.data_dir) == []
    assert cp.report()["streams"] == []
    assert post(cp.url, honest).json() == {"accepted": 3, "duplicates": 0, "rejected": []}


def test_a_number_rejected_for_two_reasons_counts_once_in_the_reasons(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    """A rejection's reason can name a setting (``--max-future``), so the same number
    retried after a restart with another setting is rejected again for a reason worded
    differently. It is one rejected event: the reasons must add up to ``rejected``, as
    they do for every other stream, instead of listing it under both."""
    cp = start_collector()
    ahead = now_ms() + 2 * 86_400_000
    body = maker.body(maker.envelopes(END_SONG, [1], ahead))
    assert [r["code"] for r in post(cp.url, body).json()["rejected"]] == ["too_far_in_future"]
    cp.stop()
    cp.args = ["--max-future", "3600"]
    cp.start()
    assert [r["code"] for r in post(cp.url, body).json()["rejected"]] == ["too_far_in_future"]

    s = stream(cp.report(), "producer-a", END_SONG)
    assert s["rejected"] == 1
    assert sum(s["rejected_reasons"].values()) == 1, s["rejected_reasons"]
