"""The ledger at its edges: what it keeps per stream, bucket and part, and the file itself.

The ledger is what a 200 promises: acknowledged sequence numbers and committed part
lengths survive a restart exactly. These tests go through a real ``_ledger.db`` in a
temporary directory (save, close, open again, load) and state the limits that keep a
stream's row small: one merged watermark step older than the grace period, at most
MAX_STEPS steps, at most MAX_REASONS reasons of MAX_REASON_CHARS characters.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from spotify_events.collector.datadir import DataDirError, FileModes
from spotify_events.collector.ledger import (
    LEDGER_FILE,
    MAX_REASON_CHARS,
    MAX_REASONS,
    MAX_STEPS,
    OTHER_REASONS,
    SCHEMA_VERSION,
    BucketState,
    Ledger,
    PartState,
    ProducerInBucket,
    StreamState,
)
from spotify_events.collector.ranges import RangeSet

END_SONG = "com.example.EndSong"
GRACE = 60.0
T0 = 1_767_261_600.0  # exact in binary floating point, as are T0 + whole seconds


def _reopened(tmp_path: Path, **saved: Any) -> Ledger:
    """Save ``saved`` rows in a ledger, close it, and open the file again."""
    ledger = Ledger(tmp_path)
    ledger.save(**saved)
    ledger.close()
    return Ledger(tmp_path)


# --- the watermark and its steps -------------------------------------------------------


def test_announce_never_lowers_the_watermark_nor_records_a_repeat() -> None:
    st = StreamState("p", END_SONG)
    st.announce(5, T0, GRACE)
    st.announce(5, T0 + 1, GRACE)  # the same watermark again: not a new step
    st.announce(3, T0 + 2, GRACE)  # lower: ignored
    assert st.next_seq == 5
    assert st.steps == [(5, T0)]
    st.announce(6, T0 + 3, GRACE)
    assert (st.next_seq, st.steps) == (6, [(5, T0), (6, T0 + 3)])


def test_steps_past_the_grace_period_merge_into_the_newest_of_them() -> None:
    st = StreamState("p", END_SONG)
    st.announce(2, T0, GRACE)
    st.announce(3, T0 + 5, GRACE)
    st.announce(4, T0 + 10, GRACE)
    st.announce(5, T0 + 20, GRACE)
    # at T0 + 70 the first three steps are past grace (T0 + 10 exactly one grace old):
    # every number below them is lost whichever step judges it, so only the newest stays
    st.announce(6, T0 + 10 + GRACE, GRACE)
    assert st.steps == [(4, T0 + 10), (5, T0 + 20), (6, T0 + 10 + GRACE)]
    st.announce(7, T0 + 20 + GRACE, GRACE)  # two steps past grace now: again only one stays
    assert st.steps == [(5, T0 + 20), (6, T0 + 10 + GRACE), (7, T0 + 20 + GRACE)]


def test_a_step_one_tick_younger_than_the_grace_period_is_kept() -> None:
    st = StreamState("p", END_SONG)
    st.announce(2, T0, GRACE)
    st.announce(3, T0 + 10, GRACE)
    st.announce(4, T0 + 10 + GRACE - 0.5, GRACE)  # T0 + 10 is not yet past grace
    assert [n for n, _ in st.steps] == [2, 3, 4]


def test_at_most_max_steps_are_kept_and_the_oldest_merge_into_their_successor() -> None:
    st = StreamState("p", END_SONG)
    for i in range(MAX_STEPS + 3):  # all within the grace period: none merge by age
        st.announce(2 + i, T0 + i * 0.001, GRACE)
    assert len(st.steps) == MAX_STEPS
    # the three oldest steps were folded into the fourth: a gap below them now looks
    # as young as that step (never older than it is), and the newest are all kept
    assert st.steps[0] == (2 + 3, T0 + 3 * 0.001)
    assert st.steps[-1] == (2 + MAX_STEPS + 2, T0 + (MAX_STEPS + 2) * 0.001)
    assert [n for n, _ in st.steps] == list(range(5, 5 + MAX_STEPS))


# --- reasons -----------------------------------------------------------------------------


def test_a_reason_is_cut_to_max_reason_chars() -> None:
    st = StreamState("p", END_SONG)
    long = "r" * (MAX_REASON_CHARS + 50)
    st.mark("drop", long).add(3)
    st.mark("drop", long[:MAX_REASON_CHARS] + "different tail").add(4)
    assert list(st.marks) == [("drop", "r" * MAX_REASON_CHARS)]
    assert st.marks[("drop", "r" * MAX_REASON_CHARS)].to_list() == [[3, 4]]


def test_reasons_past_max_reasons_are_counted_under_other_reasons() -> None:
    st = StreamState("p", END_SONG)
    for i in range(MAX_REASONS):
        st.mark("drop", f"reason {i}").add(i + 1)
    assert len(st.marks) == MAX_REASONS
    st.mark("drop", "one more").add(100)
    st.mark("reject", "rejected: and another").add(101)
    st.mark("drop", "yet another").add(102)
    st.mark("drop", "reason 7").add(103)  # a known reason keeps its own entry
    assert len(st.marks) == MAX_REASONS + 2
    assert st.marks[("drop", OTHER_REASONS)].to_list() == [[100, 100], [102, 102]]
    assert st.marks[("reject", OTHER_REASONS)].to_list() == [[101, 101]]
    assert st.marks[("drop", "reason 7")].to_list() == [[8, 8], [103, 103]]


# --- per-bucket producer spans ---------------------------------------------------------


def test_a_producer_share_of_a_bucket_spans_its_lowest_to_highest_seq() -> None:
    share = ProducerInBucket()
    share.add(7, skewed=False)
    share.add(3, skewed=True)
    share.add(9, skewed=False)
    share.add(5, skewed=True)
    assert (share.events, share.skewed, share.min_seq, share.max_seq) == (4, 2, 3, 9)


# --- rows survive a restart exactly ----------------------------------------------------


def test_a_stream_row_survives_a_restart_field_for_field(tmp_path: Path) -> None:
    st = StreamState(
        "producer-a",
        END_SONG,
        received=RangeSet([(1, 4), (9, 9)]),
        duplicates=3,
        conflicts=2,
        first_seen=T0,
        last_seen=T0 + 5.5,
        service="checkout",
        host="web-1",
        sdk_version="1.2.3",
        newest_event_ms=1_767_261_600_123,
    )
    st.announce(12, T0 + 1, GRACE)
    st.mark("drop", "queue full").add_range(5, 6)
    st.mark("reject", "rejected: schema").add(7)
    ledger = _reopened(tmp_path, streams=[st])
    loaded = ledger.load().streams
    assert list(loaded) == [("producer-a", END_SONG)]
    assert loaded[("producer-a", END_SONG)] == st
    ledger.close()


def test_a_stream_row_without_the_later_fields_loads_with_their_defaults(
    tmp_path: Path,
) -> None:
    """A row as written before conflicts, service, host, sdk_version and lag were kept."""
    old_row = (
        '{"received":[[1,2]],"duplicates":1,"next_seq":3,"steps":[[3,1.5]],'
        '"marks":[],"first_seen":1.0,"last_seen":2.0}'
    )
    st = StreamState.from_json("p", END_SONG, old_row)
    assert st == StreamState(
        "p",
        END_SONG,
        received=RangeSet([(1, 2)]),
        duplicates=1,
        next_seq=3,
        steps=[(3, 1.5)],
        first_seen=1.0,
        last_seen=2.0,
    )
    assert (st.conflicts, st.service, st.host, st.sdk_version, st.newest_event_ms) == (
        0,
        "",
        "",
        "",
        0,
    )


def test_bucket_and_part_rows_survive_a_restart_field_for_field(tmp_path: Path) -> None:
    bucket = BucketState(
        END_SONG,
        hour=491_017,
        closed=True,
        closed_at=T0 + 3600.25,
        events=5,
        skewed=1,
        duplicates=2,
        producers={"a": ProducerInBucket(3, 1, 2, 4, 6), "b": ProducerInBucket(2, 0, 0, 1, 2)},
        summary={"events": 5, "complete": True},
    )
    part = PartState(
        path=f"{END_SONG}/hour/part-0001.avro",
        event_type=END_SONG,
        hour=491_017,
        fingerprint="00112233aabbccdd",
        index=1,
        sync="0f" * 16,
        committed_len=4096,
        events=5,
        quarantined="_quarantine/part-0001.avro",
    )
    ledger = _reopened(tmp_path, buckets=[bucket], parts=[part], meta={"k": "v"})
    state = ledger.load()
    assert state.buckets == {(END_SONG, 491_017): bucket}
    assert state.parts == {part.path: part}
    assert state.meta == {"schema_version": str(SCHEMA_VERSION), "k": "v"}
    ledger.close()


def test_rows_are_stored_without_whitespace() -> None:
    """Every acknowledged batch rewrites its stream, bucket and part rows: they are
    written as compact JSON (a stream row with many ranges would grow by a third)."""
    st = StreamState("p", END_SONG, received=RangeSet([(1, 2), (4, 5)]))
    st.mark("drop", "queue_full").add(3)
    bucket = BucketState(END_SONG, 1, producers={"p": ProducerInBucket(1, 0, 0, 1, 1)})
    part = PartState("a/b.avro", END_SONG, 1, "00", 1, "ff")
    for row in (st.to_json(), bucket.to_json(), part.to_json()):
        assert " " not in row, row


def test_an_open_bucket_row_without_a_summary_loads_as_open(tmp_path: Path) -> None:
    bucket = BucketState(END_SONG, hour=7)
    ledger = _reopened(tmp_path, buckets=[bucket])
    loaded = ledger.load().buckets[(END_SONG, 7)]
    assert (loaded.closed, loaded.closed_at, loaded.summary) == (False, None, None)
    ledger.close()


def test_saving_again_replaces_the_row(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    st = StreamState("p", END_SONG, received=RangeSet([(1, 1)]))
    ledger.save(streams=[st])
    st.received.add(2)
    ledger.save(streams=iter([st]))
    ledger.close()
    ledger = Ledger(tmp_path)
    assert ledger.load().streams[("p", END_SONG)].received.to_list() == [[1, 2]]
    ledger.close()


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    with pytest.raises(RuntimeError), ledger.atomic() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('half', 'done')")
        raise RuntimeError("crash between two writes")
    ledger.save(meta={"after": "1"})  # the connection is usable again
    ledger.close()
    ledger = Ledger(tmp_path)
    assert ledger.load().meta == {"schema_version": str(SCHEMA_VERSION), "after": "1"}
    ledger.close()


def test_the_ledger_commits_durably_in_wal_mode(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    journal = ledger._conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = ledger._conn.execute("PRAGMA synchronous").fetchone()[0]
    ledger.close()
    assert (journal, synchronous) == ("wal", 2)  # 2 is FULL


# --- the file ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modes", "expected"), [(None, 0o600), (FileModes.group_readable(), 0o640)]
)
def test_the_ledger_file_gets_the_data_dir_file_mode(
    tmp_path: Path, modes: FileModes | None, expected: int
) -> None:
    (tmp_path / LEDGER_FILE).write_bytes(b"")
    os.chmod(tmp_path / LEDGER_FILE, 0o666)  # an existing file is brought to the mode too
    Ledger(tmp_path, modes=modes).close()
    assert stat.S_IMODE(os.stat(tmp_path / LEDGER_FILE).st_mode) == expected


def test_reading_a_data_dir_without_a_ledger_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no collector ledger here"):
        Ledger(tmp_path, read_only=True)
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_ledger_reads_what_a_writer_saved(tmp_path: Path) -> None:
    writer = Ledger(tmp_path)
    writer.save(meta={"k": "v"})
    reader = Ledger(tmp_path, read_only=True)
    assert reader.load().meta["k"] == "v"
    reader.close()
    writer.close()


def test_refuse_new_refuses_an_empty_ledger_and_creates_no_version(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match=r"^no ledger: adopt first$"):
        Ledger(tmp_path, refuse_new="no ledger: adopt first")
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:
        assert conn.execute("SELECT count(*) FROM meta").fetchone() == (0,)
    Ledger(tmp_path).close()  # without refuse_new it is started
    Ledger(tmp_path, refuse_new="no ledger: adopt first").close()  # and now known


def test_a_ledger_of_another_version_is_refused_with_both_versions(tmp_path: Path) -> None:
    Ledger(tmp_path).close()
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(DataDirError, match=r"ledger version '2'; this collector reads version 1\."):
        Ledger(tmp_path)


def test_a_file_that_is_not_sqlite_is_refused_with_the_way_out(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataDirError, match="not a usable collector ledger") as info:
        Ledger(tmp_path)
    assert str(info.value).endswith(
        "Stop every collector on this data directory, move the file aside, and restore the "
        "ledger from a backup; without one, start with --adopt-data-dir to begin a new ledger "
        "(bucket files the new ledger does not know are moved to _quarantine)."
    )
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_a_row_that_does_not_parse_is_a_data_dir_error(tmp_path: Path) -> None:
    Ledger(tmp_path).close()
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:
        conn.execute("INSERT INTO streams VALUES ('p', ?, '{\"received\": []}')", (END_SONG,))
    ledger = Ledger(tmp_path)
    with pytest.raises(
        DataDirError,
        match=r"a ledger row does not parse \(KeyError: .*\); restore the ledger from a backup$",
    ):
        ledger.load()
    ledger.close()


def test_closing_twice_is_harmless(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.close()
    ledger.close()


def test_a_ledger_path_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """The ledger is opened without following links: a link planted in the data dir
    must not send the collector's promises to another file."""
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(b"")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / LEDGER_FILE).symlink_to(elsewhere)
    with pytest.raises(DataDirError, match=r"^cannot open the ledger .*_ledger\.db: \w"):
        Ledger(tmp_path / "data")
    assert elsewhere.read_bytes() == b""


def test_a_ledger_path_sqlite_cannot_open_is_a_data_dir_error(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).mkdir()
    with pytest.raises(DataDirError, match="is not a usable collector ledger"):
        Ledger(tmp_path, read_only=True)


def test_a_sqlite_file_without_the_ledger_tables_is_not_a_ledger(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:
        conn.execute("CREATE TABLE other (x)")
    ledger = Ledger(tmp_path, read_only=True)
    with pytest.raises(DataDirError, match=r"_ledger\.db: not a collector ledger \(no such table"):
        ledger.load()
    ledger.close()


def test_the_ledger_can_be_used_from_another_thread(tmp_path: Path) -> None:
    """The bucket closer thread saves through the same ledger as the request threads
    (one at a time: the caller serialises)."""
    ledger = Ledger(tmp_path)
    failures: list[BaseException] = []

    def save_closed_bucket() -> None:
        try:
            ledger.save(buckets=[BucketState(END_SONG, 3, closed=True)])
        except BaseException as exc:  # reported to the test thread
            failures.append(exc)

    closer = threading.Thread(target=save_closed_bucket)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive() and failures == []
    assert ledger.load().buckets[(END_SONG, 3)].closed
    ledger.close()
