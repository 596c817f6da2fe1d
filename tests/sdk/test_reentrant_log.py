"""log() re-entered in one thread never deadlocks and loses nothing.

A signal handler runs between two bytecodes of whatever the main thread was
doing, so it can call ``log()`` while the main thread is inside ``log()`` holding
the buffer lock. Each scenario runs in a child process with a timeout: a
deadlock shows as a timeout instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import SCHEMAS

CHILD = textwrap.dedent(
    """
    import signal, sys, threading
    from spotify_events import EventClient
    from spotify_events.wire import decode_batch
    from spotify_events.transport import MockTransport, SendResult

    mode, queue_path, schemas, durability = sys.argv[1:5]
    received = set()
    lock = threading.Lock()

    def collector(body, headers):
        batch = decode_batch(body)
        with lock:
            received.update((e.event_type, e.seq) for e in batch.envelopes)
        return SendResult(200, {"accepted": len(batch.envelopes), "duplicates": 0, "rejected": []})

    client = EventClient(
        queue_path=queue_path, schemas=schemas, durability=durability,
        transport=MockTransport(collector), linger=0,
    )
    record = {"user_id": "u", "track_id": "t", "ms_played": 1, "reason_start": "CLICKROW",
              "reason_end": "TRACKDONE", "platform": "p"}
    handled = 0
    timer_on = True

    def handler(signum, frame):
        global handled
        handled += 1
        client.log("EndSong", {**record, "track_id": "from-handler"})
        if mode == "timer" and timer_on:
            signal.setitimer(signal.ITIMER_REAL, 0.0002)  # one-shot, re-armed: never nested

    signal.signal(signal.SIGUSR1, handler)
    signal.signal(signal.SIGALRM, handler)
    client.log("EndSong", record)  # threads started, first commit done
    client.flush(10)
    logged = 1
    if mode == "inside":
        # Raise the signal at a point where log() holds the buffer lock: the buffer's
        # wake-up call, made while the lock is held, when the buffer turns non-empty.
        writer = client._writer
        class SignallingEvent(threading.Event):
            armed = True
            def set(self):
                if SignallingEvent.armed:
                    SignallingEvent.armed = False
                    signal.raise_signal(signal.SIGUSR1)  # handled in the call below
                super().set()
        writer._wake = SignallingEvent()
        client.log("EndSong", record)
        logged += 1
    else:
        signal.setitimer(signal.ITIMER_REAL, 0.0002)
        for _ in range(20000):
            client.log("EndSong", record)
            logged += 1
        timer_on = False
        signal.setitimer(signal.ITIMER_REAL, 0)
    ok = client.flush(20)
    stats = client.stats()
    print(ok, logged + handled, len(received), stats.logged, stats.reentered,
          sorted(s for _, s in received) == list(range(1, len(received) + 1)), flush=True)
    client.close(5)
    """
)


@pytest.mark.parametrize("durability", ["buffered", "commit"])
@pytest.mark.parametrize("mode", ["inside", "timer"])
def test_signal_handler_logging_inside_log_neither_deadlocks_nor_loses(
    tmp_path: Path, mode: str, durability: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    try:
        done = subprocess.run(
            [sys.executable, str(script), mode, str(tmp_path / "q.db"), str(SCHEMAS), durability],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("log() re-entered from a signal handler deadlocked")
    assert done.returncode == 0, done.stderr
    ok, total, received, logged, reentered, contiguous = done.stdout.split()
    assert ok == "True"
    assert int(received) == int(total) == int(logged)  # every call, handler's too, delivered
    assert contiguous == "True"  # numbered 1..n: nothing skipped
    if mode == "inside":
        assert int(reentered) == 1  # the handler's event took the side list, not the lock
