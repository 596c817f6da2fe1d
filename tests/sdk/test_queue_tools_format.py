"""The queue tools never lift a format-3 file to format 4. None of them stores a block
(``replay`` puts dead letters back as rows), and a service on an older SDK still
writing the file would be refused at its next open by the newer format: the on-call
person who looked into its queue would have stopped its delivery. Real files; ``ship``
against the scripted collector on loopback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner
from queue_helpers import A, MakeQueue, ev
from sdk_helpers import Sink

from spotify_events.cli import main


def format_3_file(make_queue: MakeQueue, path: Path) -> None:
    """Events and a dead letter as a format-3 file holds them: rows, no blocks table."""
    queue = make_queue()
    for _ in range(3):
        queue.append([ev(A)])
    queue.dead_letter(queue.read_batch(max_events=1), "refused once", notify_collector=False)
    queue.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE blocks")
        conn.execute("PRAGMA user_version=3")
    conn.close()


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    return int(version)


def test_every_queue_tool_leaves_a_format_3_file_at_format_3(
    make_queue: MakeQueue, queue_path: Path, sink: Sink
) -> None:
    format_3_file(make_queue, queue_path)
    for args in (
        ["inspect", str(queue_path)],
        ["dead-letters", str(queue_path)],
        ["replay", str(queue_path)],
        ["ship", str(queue_path), "--endpoint", sink.endpoint, "--timeout", "20"],
    ):
        result = CliRunner().invoke(main, ["queue", *args])
        assert result.exit_code == 0, result.output
        assert user_version(queue_path) == 3, args
    assert sink.seqs(A) == [1, 2, 3]  # the replayed dead letter too
