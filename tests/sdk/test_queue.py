"""DurableQueue on real SQLite files: sequence numbers, bounds, drops, dead letters,
depth counters, two processes, the shipping lease, and files that are not ours."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import stored_bytes, stored_events

from spotify_events.errors import (
    ConfigError,
    QueueCorruptError,
    QueueError,
    QueueForeignFileError,
    QueueVersionError,
)
from spotify_events.queue import (
    DROP_BUFFER_FULL,
    DROP_QUEUE_FULL,
    FORMAT_VERSION,
    ROW_OVERHEAD,
    DurableQueue,
    PendingEvent,
)
from spotify_events.settings import DropPolicy, QueueSettings

A = "test.events.Alpha"
B = "test.events.Beta"
FP = b"\x11" * 8
TS = 1_763_158_400_000

MakeQueue = Callable[..., DurableQueue]


def ev(event_type: str = A, payload: bytes = b"x" * 52, ts: int = TS) -> PendingEvent:
    """A pending event; the default costs exactly 100 bytes of queue budget."""
    return PendingEvent(event_type, FP, ts, payload)


def stored(path: Path) -> list[tuple[str, int]]:
    """(event type, seq) of every stored event in queue order, read over a separate connection."""
    return [(e.event_type, e.seq) for e in stored_events(path)]


def drop_rows(path: Path) -> list[tuple[str, int, int, int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT event_type, first_seq, last_seq, count, reason FROM drops ORDER BY id"
        ).fetchall()


def accounted_seqs(path: Path, acked: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Every sequence number the file accounts for, per type: stored, dropped, dead-lettered
    (plus the ones the test acked). Each number must appear exactly once."""
    seqs: dict[str, list[int]] = {t: list(s) for t, s in (acked or {}).items()}
    for t, s in stored(path):
        seqs.setdefault(t, []).append(s)
    with sqlite3.connect(path) as conn:
        for t, s in conn.execute("SELECT event_type, seq FROM dead_letters"):
            seqs.setdefault(t, []).append(s)
        for t, first, last, count, reason in conn.execute(
            "SELECT event_type, first_seq, last_seq, count, reason FROM drops"
        ):
            assert count == last - first + 1, (t, first, last, count)
            if reason.startswith("rejected: "):
                continue  # also a dead letter: counted there
            seqs.setdefault(t, []).extend(range(first, last + 1))
    return {t: sorted(s) for t, s in seqs.items()}


def assert_contiguous(seqs: dict[str, list[int]], next_seqs: dict[str, int]) -> None:
    assert set(seqs) == set(next_seqs)
    for t, numbers in seqs.items():
        assert numbers == list(range(1, next_seqs[t])), t


def assert_depth_consistent(queue: DurableQueue) -> None:
    events = stored_events(queue.path)
    depth = queue.depth()
    assert (depth.events, depth.bytes) == (len(events), stored_bytes(queue.path))
    assert depth.oldest_timestamp == (events[0].timestamp if events else None)


# -- basics ----------------------------------------------------------------------------


def test_new_file_identity(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    assert len(queue.producer_id) == 36
    with sqlite3.connect(queue_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
    queue.close()
    assert make_queue().producer_id == queue.producer_id  # minted once, kept in the file
    assert make_queue(queue_path.with_name("other.db")).producer_id != queue.producer_id


@pytest.mark.parametrize(
    "options",
    [{"max_queue_bytes": 0}, {"busy_timeout": 0}, {"drop_policy": "random"}],
)
def test_nonsense_configuration(make_queue: MakeQueue, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_queue(**options)


def test_directory_is_refused(make_queue: MakeQueue, tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="directory"):
        make_queue(tmp_path)


def test_read_batch_limits_and_order(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([ev(A, bytes([i]) * 10) for i in range(10)])
    batch = queue.read_batch(max_events=4)
    assert [e.seq for e in batch] == [1, 2, 3, 4]
    assert [e.payload[0] for e in batch] == [0, 1, 2, 3]
    more = queue.read_batch(after_id=batch[-1].id, max_events=100)
    assert [e.seq for e in more] == list(range(5, 11))
    by_size = queue.read_batch(max_bytes=2 * (10 + ROW_OVERHEAD))
    assert len(by_size) == 2
    # one event bigger than max_bytes is still returned (alone)
    assert len(queue.read_batch(max_bytes=1)) == 1
    assert queue.read_batch(after_id=queue.max_event_id()) == []


# -- sequence numbers -------------------------------------------------------------------


def test_seq_contiguous_per_type_and_never_reused(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    rnd = random.Random(3)
    expected = {A: 0, B: 0}
    for _ in range(20):
        types = [rnd.choice((A, B)) for _ in range(rnd.randint(1, 40))]
        result = queue.append([ev(t) for t in types])
        assert result.stored == len(types)
        for t in types:
            expected[t] += 1
    assert queue.next_seqs() == {t: n + 1 for t, n in expected.items()}
    for t in (A, B):
        assert [s for typ, s in stored(queue_path) if typ == t] == list(range(1, expected[t] + 1))

    # drain: ack everything, then close and reopen
    assert queue.ack(1, queue.max_event_id()) == sum(expected.values())
    assert queue.depth().events == 0
    queue.close()
    reopened = make_queue()
    reopened.append([ev(A), ev(B), ev(A)])
    assert [(t, s) for t, s in stored(queue_path)] == [
        (A, expected[A] + 1),
        (B, expected[B] + 1),
        (A, expected[A] + 2),
    ]
    assert reopened.next_seqs() == {A: expected[A] + 3, B: expected[B] + 2}


def test_overflow_consumes_seq_numbers_as_drop_records(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A)])
    result = queue.append(
        [ev(A), ev(B)], overflow={(A, DROP_BUFFER_FULL): 3, (B, "queue_write_failed"): 2}
    )
    assert result.stored == 2
    assert result.dropped == {DROP_BUFFER_FULL: 3, "queue_write_failed": 2}
    assert drop_rows(queue_path) == [
        (A, 2, 4, 3, DROP_BUFFER_FULL),
        (B, 1, 2, 2, "queue_write_failed"),
    ]
    assert stored(queue_path) == [(A, 1), (A, 5), (B, 3)]
    assert queue.next_seqs() == {A: 6, B: 4}
    # overflow alone (no events) still consumes numbers
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 2})
    assert queue.next_seqs()[A] == 8
    assert_contiguous(accounted_seqs(queue_path), queue.next_seqs())
    assert [n.to_json()["first_seq"] for _, n in queue.unreported_drops()] == [2, 1, 6]


# -- bounds and drop policies --------------------------------------------------------


def test_bounded_queue_drops_oldest(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue(max_queue_bytes=1000)  # ten 100-byte events
    queue.append([ev(A) for _ in range(6)] + [ev(B) for _ in range(4)])
    assert queue.depth().bytes == 1000
    assert drop_rows(queue_path) == []
    result = queue.append([ev(A), ev(B), ev(A)])
    assert result.stored == 3
    assert result.dropped == {DROP_QUEUE_FULL: 3}
    assert drop_rows(queue_path) == [(A, 1, 3, 3, DROP_QUEUE_FULL)]
    assert stored(queue_path)[:1] == [(A, 4)]
    assert stored(queue_path)[-3:] == [(A, 7), (B, 5), (A, 8)]
    assert queue.depth().bytes <= 1000
    assert_depth_consistent(queue)

    result = queue.append([ev(B) for _ in range(5)])  # evicts A4..A6 and B1, B2 (oldest rows)
    assert sorted(drop_rows(queue_path)) == [
        (A, 1, 6, 6, DROP_QUEUE_FULL),  # A4..A6 follow A1..A3: merged into one record
        (B, 1, 2, 2, DROP_QUEUE_FULL),
    ]
    assert_contiguous(accounted_seqs(queue_path), queue.next_seqs())
    notices = [n for _, n in queue.unreported_drops()]
    assert all(n.reason == DROP_QUEUE_FULL for n in notices)
    assert sum(n.count for n in notices) == 8


def test_event_bigger_than_the_queue_is_dropped_and_recorded(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue(max_queue_bytes=500)
    queue.append([ev(A)])
    queue.append([ev(A, b"y" * 1000)])
    assert queue.depth().events == 0
    assert_depth_consistent(queue)
    assert_contiguous(accounted_seqs(queue_path), queue.next_seqs())


def test_drop_newest_policy(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue(max_queue_bytes=1000, drop_policy="newest")
    queue.append([ev(A) for _ in range(8)])
    result = queue.append([ev(A), ev(B), ev(A), ev(B), ev(A)])  # room for two
    assert result.stored == 2
    assert result.dropped == {DROP_QUEUE_FULL: 3}
    assert [s for t, s in stored(queue_path) if t == A] == list(range(1, 10))
    assert [s for t, s in stored(queue_path) if t == B] == [1]
    assert sorted(drop_rows(queue_path)) == [
        (A, 10, 11, 2, DROP_QUEUE_FULL),
        (B, 2, 2, 1, DROP_QUEUE_FULL),
    ]
    shipper = make_queue(max_queue_bytes=1000, drop_policy="newest")  # as the client does it
    shipper.ack(1, shipper.max_event_id())  # space again: new events are kept
    assert queue.append([ev(A)]).stored == 1
    assert stored(queue_path) == [(A, 12)]
    assert_contiguous(
        accounted_seqs(queue_path, {A: list(range(1, 10)), B: [1]}), queue.next_seqs()
    )


# Regression: the append cache (queue bytes, next seqs) was invalidated only by PRAGMA
# data_version, which moves for *other* connections' commits; after an ack through the
# same instance the next append dropped (newest) or evicted (oldest) into an empty queue.
@pytest.mark.parametrize("policy", ["oldest", "newest"])
def test_ack_through_the_same_instance_frees_space(
    make_queue: MakeQueue, queue_path: Path, policy: str
) -> None:
    queue = make_queue(max_queue_bytes=1000, drop_policy=policy)
    queue.append([ev(A) for _ in range(10)])  # full
    queue.ack(1, queue.max_event_id())
    assert queue.depth().bytes == 0
    result = queue.append([ev(A) for _ in range(5)])
    assert (result.stored, result.dropped) == (5, {})
    assert drop_rows(queue_path) == []


def test_dead_letter_through_the_same_instance_frees_space(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue(max_queue_bytes=1000)
    queue.append([ev(A) for _ in range(10)])
    queue.dead_letter(queue.read_batch(), "bad", notify_collector=False)
    result = queue.append([ev(A) for _ in range(5)])
    assert (result.stored, result.dropped) == (5, {})
    assert stored(queue_path) == [(A, s) for s in range(11, 16)]


# -- dead letters ------------------------------------------------------------------


def test_dead_letter_moves_rows_and_optionally_notifies(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(B), ev(A), ev(A), ev(B)])
    events = queue.read_batch()
    a1, b1, a2, a3, _b2 = events
    assert queue.dead_letter([a1, a2, b1], "schema mismatch", notify_collector=True) == 3
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 3), (B, 2)]
    assert queue.dead_letters() == [
        (A, 1, "schema mismatch"),
        (A, 2, "schema mismatch"),
        (B, 1, "schema mismatch"),
    ]
    assert sorted(drop_rows(queue_path)) == [
        (A, 1, 2, 2, "rejected: schema mismatch"),
        (B, 1, 1, 1, "rejected: schema mismatch"),
    ]
    assert queue.dead_letter([a3], "listed by the collector", notify_collector=False) == 1
    assert len(drop_rows(queue_path)) == 2
    assert queue.dead_letter([], "nothing", notify_collector=True) == 0
    assert_depth_consistent(queue)
    with sqlite3.connect(queue_path) as conn:
        payloads = conn.execute("SELECT payload FROM dead_letters").fetchall()
    assert all(p == (b"x" * 52,) for p in payloads)


def test_mark_drops_reported(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 1, (B, DROP_BUFFER_FULL): 1})
    first, second = queue.unreported_drops()
    queue.mark_drops_reported([first])
    assert queue.unreported_drops() == [second]
    assert queue.unreported_drops(limit=0) == []


# -- depth counters under random operations ---------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"), st.lists(st.sampled_from([A, B]), max_size=30), st.integers(0, 300)
        ),
        st.tuples(st.just("overflow"), st.sampled_from([A, B]), st.integers(1, 5)),
        st.tuples(st.just("ack"), st.integers(0, 40)),
        st.tuples(st.just("dead_letter"), st.integers(0, 10), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, policy=st.sampled_from(["oldest", "newest"]), same_instance=st.booleans())
def test_depth_and_accounting_stay_consistent(
    ops: list[tuple[object, ...]], policy: str, same_instance: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.db"
        settings = QueueSettings(max_queue_bytes=2000, drop_policy=DropPolicy(policy), fsync=False)
        queue = DurableQueue(path, settings)
        # acks and dead letters through the shipper's own instance, as in the client, or
        # through the appending one (its append cache must notice its own deletes)
        shipper = queue if same_instance else DurableQueue(path, settings)
        acked: dict[str, list[int]] = {}
        try:
            for op in ops:
                if op[0] == "append":
                    types, size = op[1], op[2]
                    assert isinstance(types, list) and isinstance(size, int)
                    before = queue.depth().bytes
                    result = queue.append([ev(t, b"p" * size) for t in types])
                    if before + len(types) * (size + ROW_OVERHEAD) <= 2000:
                        assert result.dropped == {}, (before, len(types), size)
                    assert result.stored + result.dropped.get(DROP_QUEUE_FULL, 0) >= len(types)
                elif op[0] == "overflow":
                    queue.append([], overflow={(op[1], DROP_BUFFER_FULL): op[2]})  # type: ignore[dict-item]
                elif op[0] == "ack":
                    batch = queue.read_batch(max_events=int(op[1]))  # type: ignore[call-overload]
                    if batch:
                        for e in batch:
                            acked.setdefault(e.event_type, []).append(e.seq)
                        assert shipper.ack(batch[0].id, batch[-1].id) == len(batch)
                else:
                    batch = shipper.read_batch(max_events=int(op[1]))  # type: ignore[call-overload]
                    shipper.dead_letter(batch, "bad", notify_collector=bool(op[2]))
                assert_depth_consistent(queue)
                assert queue.depth().bytes <= 2000
            assert_contiguous(accounted_seqs(path, acked), queue.next_seqs())
        finally:
            if shipper is not queue:
                shipper.close()
            queue.close()


# -- two processes --------------------------------------------------------------------

APPENDER = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from spotify_events.config import ClientConfig
    from spotify_events.queue import DurableQueue, PendingEvent
    path, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()  # start together (opening included: the file may not exist yet)
    queue = DurableQueue(path, replace(ClientConfig().queue_settings(), busy_timeout=30))
    for i in range(rounds):
        batch = [PendingEvent("test.events.Alpha" if (i + k) % 3 else "test.events.Beta",
                              b"\\0" * 8, i, f"{tag}:{i}:{k}".encode()) for k in range(1 + i % 7)]
        queue.append(batch)
    queue.close()
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("create_first", [True, False], ids=["existing-file", "racing-to-create"])
def test_two_processes_append_contiguous_unique_sequences(
    make_queue: MakeQueue, queue_path: Path, create_first: bool
) -> None:
    if create_first:  # else the children race to create the file too
        make_queue().close()
    rounds = 150
    children = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(queue_path), tag, str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0 and out.strip() == "done", err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    queue = make_queue()
    per_process = sum(1 + i % 7 for i in range(rounds))
    rows = stored(queue_path)
    assert len(rows) == 2 * per_process
    assert_contiguous(accounted_seqs(queue_path), queue.next_seqs())
    assert_depth_consistent(queue)
    # each process's events are in its own order within each type (seq follows commit order)
    all_rows = [
        (e.event_type, e.payload) for e in sorted(stored_events(queue_path), key=lambda e: e.seq)
    ]
    for tag in ("p1", "p2"):
        for t in (A, B):
            mine = [
                tuple(int(x) for x in p.decode().split(":")[1:])
                for typ, p in all_rows
                if typ == t and p.decode().startswith(f"{tag}:")
            ]
            assert mine and mine == sorted(mine), (tag, t)


# -- shipping lease --------------------------------------------------------------------


def test_release_lease_only_by_its_holder(make_queue: MakeQueue) -> None:
    first, second = make_queue(), make_queue()
    assert first.acquire_lease("a", ttl=30)
    second.release_lease("b")  # not the holder: no effect
    assert not second.acquire_lease("b", ttl=30)
    first.release_lease("a")
    assert first.lease_holder() is None
    assert second.acquire_lease("b", ttl=30)


# -- files that are not ours ------------------------------------------------------------


def _snapshot(path: Path) -> tuple[bytes, set[str]]:
    return path.read_bytes(), {p.name for p in path.parent.iterdir()}


@pytest.mark.parametrize("size", [100, 4096, 65536])
def test_random_bytes_file_is_corrupt_and_untouched(
    make_queue: MakeQueue, tmp_path: Path, size: int
) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(random.Random(size).randbytes(size))
    before = path.read_bytes()
    with pytest.raises(QueueCorruptError) as err:
        make_queue(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


def test_text_file_is_corrupt_and_untouched(make_queue: MakeQueue, tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_text("queue_path = 'events.db'\n" * 200)
    before = path.read_bytes()
    with pytest.raises(QueueCorruptError, match=str(path)):
        make_queue(path)
    assert path.read_bytes() == before


def test_foreign_sqlite_database_is_refused_and_untouched(
    make_queue: MakeQueue, tmp_path: Path
) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    before, files = _snapshot(path)
    with pytest.raises(QueueForeignFileError) as err:
        make_queue(path)
    assert str(path) in str(err.value)
    assert _snapshot(path) == (before, files)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_newer_format_version_is_refused_and_untouched(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev()])
    queue.close()
    with sqlite3.connect(queue_path) as conn:
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION + 1}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = queue_path.read_bytes()
    with pytest.raises(QueueVersionError) as err:
        make_queue()
    assert str(queue_path) in str(err.value) and str(FORMAT_VERSION + 1) in str(err.value)
    assert queue_path.read_bytes() == before


def test_truncated_queue_file_is_a_queue_error(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    queue.append([ev(A, os.urandom(2000)) for _ in range(50)])
    queue.checkpoint()
    queue.close()
    for suffix in ("-wal", "-shm"):
        Path(str(queue_path) + suffix).unlink(missing_ok=True)
    data = queue_path.read_bytes()
    queue_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(QueueError) as err:
        reopened = make_queue()
        reopened.read_batch(max_events=100)
        reopened.append([ev(A)])
    assert str(queue_path) in str(err.value)


def test_two_instances_interleaving_appends_share_one_numbering(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    first, second = make_queue(max_queue_bytes=1500), make_queue(max_queue_bytes=1500)
    for i in range(30):
        (first if i % 3 else second).append([ev(A), ev(B)] if i % 2 else [ev(A)])
        assert_depth_consistent(first)
    assert first.depth().bytes <= 1500
    assert first.next_seqs() == second.next_seqs() == {A: 31, B: 16}
    assert_contiguous(accounted_seqs(queue_path), first.next_seqs())


def test_ack_of_an_in_flight_batch_never_deletes_newer_events(make_queue: MakeQueue) -> None:
    writer_queue, shipper_queue = make_queue(max_queue_bytes=1000), make_queue(max_queue_bytes=1000)
    writer_queue.append([ev(A) for _ in range(5)])
    in_flight = shipper_queue.read_batch()  # ids 1..5, being POSTed
    writer_queue.append([ev(A, b"y" * 2000)])  # bigger than the queue: evicts every row
    assert writer_queue.depth().events == 0
    writer_queue.append([ev(B) for _ in range(5)])  # new events, not sent yet
    shipper_queue.ack(in_flight[0].id, in_flight[-1].id)  # the collector took A1..A5
    assert [(e.event_type, e.seq) for e in shipper_queue.read_batch()] == [
        (B, s) for s in range(1, 6)
    ]


def _file_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_disk_stays_bounded_while_a_full_queue_keeps_evicting(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue(max_queue_bytes=10_000)
    for _ in range(1000):
        queue.append([ev(A)])
    settled = _file_bytes(queue_path)
    for _ in range(3000):
        queue.append([ev(A)])
    assert _file_bytes(queue_path) - settled <= 8192
    assert_contiguous(accounted_seqs(queue_path), queue.next_seqs())


def test_a_version_1_file_is_migrated_in_place_and_keeps_its_events(
    make_queue: Callable[..., DurableQueue], queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev()])
    producer = queue.producer_id
    queue.close()
    with sqlite3.connect(queue_path) as conn:  # as the first release left it
        conn.execute("DROP TABLE holds")
        conn.execute("PRAGMA user_version=1")
    conn.close()
    reopened = make_queue()
    assert reopened.producer_id == producer
    assert [e.seq for e in reopened.read_batch()] == [1]
    assert reopened.holds() == []
    with sqlite3.connect(queue_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 4
    conn.close()


def test_held_events_stay_queued_unread_until_their_next_try(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(B), ev(A), ev(B)])
    batch = queue.read_batch()
    held = [e for e in batch if e.event_type == A]
    queue.hold(held, "unknown schema fingerprint", lambda attempts: 3600.0)
    assert queue.ack(batch[0].id, batch[-1].id, keep=[e.id for e in held]) == 2
    assert queue.depth().events == 2
    assert queue.read_batch() == []  # held, not due
    (hold,) = queue.holds()
    assert (hold.event_type, hold.events, hold.attempts) == (A, 2, 1)
    queue.hold(held, "unknown schema fingerprint", lambda attempts: 0.0)  # renewed, due now
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 1), (A, 2)]
    assert queue.holds()[0].attempts == 2
    assert queue.release_holds([(A, FP)]) == 1 and queue.holds() == []


def test_acknowledging_a_batch_read_around_held_events_leaves_them_queued(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(B)])
    first = queue.read_batch()
    held = [e for e in first if e.event_type == A]
    queue.hold(held, "unknown schema fingerprint", lambda attempts: 3600.0)
    queue.ack_batch(first, keep=[e.id for e in held])
    queue.append([ev(B), ev(A), ev(B)])  # A2 sits between B2 and B3
    batch = queue.read_batch()
    assert [(e.event_type, e.seq) for e in batch] == [(B, 2), (B, 3)]
    assert queue.ack_batch(batch) == 2
    (hold,) = queue.holds()
    assert (hold.event_type, hold.events) == (A, 2)  # A1 and A2: nothing deleted unsent
    queue.hold(held, "unknown schema fingerprint", lambda attempts: 0.0)
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 1), (A, 2)]


def test_a_copied_file_gets_a_new_producer_for_new_events(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(A)])
    old = queue.producer_id
    queue.close()
    copy = tmp_path / "copy.db"
    copy.write_bytes(queue_path.read_bytes())
    clone = make_queue(copy)
    assert clone.producer_id != old
    clone.append([ev(A)])
    first = clone.read_batch(max_events=10)  # stops where the copy began: one producer per batch
    assert [(e.seq, clone.producer_for([e])[0]) for e in first] == [(1, old), (2, old)]
    clone.ack(first[0].id, first[-1].id)
    second = clone.read_batch()
    assert [(e.seq, clone.producer_for(second)[0]) for e in second] == [(1, clone.producer_id)]
    assert [i["kind"] for _, i in clone.unreported_incidents()] == ["queue_file_copied"]
    assert make_queue().producer_id == old  # the original at home is untouched
