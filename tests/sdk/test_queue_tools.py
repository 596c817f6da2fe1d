"""``spotify-events queue inspect | dead-letters | replay | ship`` against a real
collector: replayed dead letters keep their sequence numbers, and the collector's
report moves them from rejected to received."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sdk_helpers import END_SONG
from support import SCHEMAS, free_port

from spotify_events import EventClient
from spotify_events.cli import main
from spotify_events.collector.process import CollectorProcess
from spotify_events.queue import DurableQueue, PendingEvent

TYPE = "spotify.events.playback.EndSong"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    process = CollectorProcess(tmp_path / "data", SCHEMAS)
    process.start()
    yield process
    try:
        process.stop()
    finally:
        process.kill()


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["queue", *args])
    return result.exit_code, result.output


def _stream(collector: CollectorProcess) -> dict[str, int]:
    (stream,) = [s for s in collector.report()["streams"] if s["event_type"] == TYPE]
    return stream


def test_inspect_dead_letters_replay_and_ship(tmp_path: Path, collector: CollectorProcess) -> None:
    path = tmp_path / "q.db"
    client = EventClient(
        endpoint=f"http://127.0.0.1:{free_port()}/v1/batches",
        queue_path=str(path),
        schemas=str(SCHEMAS),
    )
    for i in range(10):
        client.log("EndSong", {**END_SONG, "track_id": f"t{i}"})
    producer = client.producer_id
    client.close(timeout=0.2)
    queue = DurableQueue(path)  # three events the collector once refused
    refused = [e for e in queue.read_batch(max_events=10) if e.seq in (3, 4, 5)]
    queue.dead_letter(refused, "payload does not decode", notify_collector=True)
    queue.close()

    code, out = _run("inspect", str(path), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["producer_id"] == producer and info["events"] == 7
    assert info["types"][TYPE]["events"] == 7
    assert info["dead_letters"] == {TYPE: {"payload does not decode": 3}}
    assert [d["first_seq"] for d in info["unreported_drops"]] == [3]
    assert info["held"] == [] and info["lease_holder"] is None
    code, out = _run("inspect", str(path))
    assert code == 0 and "dead letters" in out and producer in out

    code, out = _run("ship", str(path), "--endpoint", collector.endpoint, "--timeout", "30")
    assert code == 0, out
    stream = _stream(collector)
    assert (stream["received"], stream["rejected"]) == (7, 3)

    code, out = _run("dead-letters", str(path), "--json")
    assert code == 0
    assert [(d["event_type"], d["seq"]) for d in json.loads(out)] == [
        (TYPE, 3),
        (TYPE, 4),
        (TYPE, 5),
    ]

    code, out = _run("replay", str(path), "--type", TYPE)
    assert code == 0 and "3 dead letter(s)" in out
    code, out = _run("ship", str(path), "--endpoint", collector.endpoint, "--timeout", "30")
    assert code == 0, out
    stream = _stream(collector)
    assert (stream["received"], stream["rejected"], stream["lost"]) == (10, 0, 0)
    code, out = _run("dead-letters", str(path), "--json")
    assert json.loads(out) == []


def test_tools_name_a_missing_file_and_ship_reports_what_is_left(tmp_path: Path) -> None:
    code, out = _run("inspect", str(tmp_path / "nope.db"))
    assert code == 1 and "no queue file at" in out
    path = tmp_path / "q.db"
    client = EventClient(
        endpoint="http://127.0.0.1:1/v1/batches", queue_path=str(path), schemas=str(SCHEMAS)
    )
    client.log("EndSong", END_SONG)
    client.close(timeout=0.1)
    code, out = _run(
        "ship",
        str(path),
        "--endpoint",
        f"http://127.0.0.1:{free_port()}/v1/batches",
        "--timeout",
        "0.5",
    )
    assert code == 1 and "1 event(s) still in" in out


def test_replay_says_which_dead_letters_of_a_copied_file_stay(tmp_path: Path) -> None:
    original, copy = tmp_path / "q.db", tmp_path / "copy.db"
    queue = DurableQueue(original)
    queue.append([PendingEvent(TYPE, b"\x11" * 8, 0, b"x")] * 2)
    queue.dead_letter(queue.read_batch(), "payload does not decode", notify_collector=False)
    queue.close()
    shutil.copyfile(original, copy)
    code, out = _run("replay", str(copy))
    assert code == 0 and "0 dead letter(s) back in the queue" in out
    assert "2 dead letter(s) of an earlier producer of this copied file stay" in out
    code, out = _run("replay", str(original))  # at home: its own producer's
    assert code == 0 and "2 dead letter(s) back in the queue" in out and "stay" not in out


def test_ship_sends_the_incidents_of_a_file_without_events(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    path = tmp_path / "q.db"
    queue = DurableQueue(path)
    queue.record_incident("queue_quarantined", "the old file was damaged; moved aside")
    producer = queue.producer_id
    queue.close()
    code, out = _run("ship", str(path), "--endpoint", collector.endpoint, "--timeout", "30")
    assert code == 0, out
    told = [i["kind"] for i in collector.report()["incidents"] if i["producer_id"] == producer]
    assert told == ["queue_quarantined"]
