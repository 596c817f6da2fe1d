"""Route (a) prototype: record batches in the queue, against the queue and shipper of today.

    python benchmarks/record_batches.py [--events 60000] [--rounds 5] [--groups 256,50]
                                        [--batch 1000]

Per event, CPU microseconds (``time.thread_time()``, one thread) of the part of the
pipeline that storing commit groups as blocks would change, after ``log()``'s encode:

* **current**: the real code. ``DurableQueue.append`` per commit group (a row per
  event), ``DurableQueue.read_batch``, the shipper's own ``Shipper._encode`` (the
  producer's watermark, an ``Envelope`` per event, ``wire.encode_batch`` with the
  wire codec) and ``DurableQueue.ack``, writer and shipper on two connections to one
  file, as in a client.
* **blocks**: a prototype (:class:`BlockQueue`, here only). A commit group becomes ONE
  row: the group's envelopes Avro-encoded back to back once their sequence numbers
  are known (:class:`EnvelopeWriter`), with its per-type sequence ranges. Shipping
  reads whole block rows, joins their bytes into one Avro block and writes the
  container around it with fastavro's own ``Writer.write_block`` (header, metadata,
  codec and sync marker as ``encode_batch`` writes them; no record re-encoded). The
  ack deletes block rows. Both keep the ``sequences`` and ``counters`` bookkeeping
  of format 2.
* **blocks_fastavro**: the same with fastavro's public ``schemaless_writer`` (a dict
  per event) encoding the envelopes at commit.

All paths take the same pre-encoded events (EndSong, with one ServiceCall in 8), in
commit groups of each ``--groups`` size, and ship batches of at most ``--batch``
events (a block is never split, so with 256-event groups a blocks batch holds 768).
Commits and shipping alternate as they do in a running client: commit groups until a
batch's worth is queued, ship one batch, repeat. Each round runs every (group size,
path) pair on fresh files, the paths' order reversed every other round, so a change
in the machine's load hits all; medians and ranges over the rounds are printed and
every value is in the JSON.

Before timing, every container of every path is decoded with the real
``wire.decode_batch`` and its envelopes compared one by one with the current path's
and with the committed events, and its decompressed Avro block compared byte for
byte with fastavro's encoding of those envelopes; any difference stops the run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
from fastavro.write import Writer

from spotify_events.config import ClientConfig
from spotify_events.encoding import EventEncoder
from spotify_events.queue import ROW_OVERHEAD, DurableQueue, PendingRow
from spotify_events.queue.rows import bump_counters
from spotify_events.schemas import SchemaRegistry
from spotify_events.shipper import Shipper
from spotify_events.wire import (
    ENVELOPE_SCHEMA,
    MAX_EVENT_MILLIS,
    META_DROPS,
    META_HOST,
    META_NEXT_SEQ,
    META_PRODUCER,
    META_SDK_VERSION,
    META_SERVICE,
    MIN_EVENT_MILLIS,
    WIRE_CODEC,
    WireBatch,
    decode_batch,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.* like -m does
    sys.path.insert(0, str(ROOT))

from benchmarks.e2e_delivery import END_SONG  # noqa: E402

SCHEMAS = ROOT / "schemas"
STEPS = ("commit", "read", "ship", "ack")
SERVICE_CALL = {
    "service": "playlists",
    "operation": "GET /v1/playlists",
    "duration_ms": 12.5,
    "outcome": "OK",
    "user_id": "user-1234",
    "status_code": 200,
}


# -- the prototype's envelope encoding ---------------------------------------------------


def avro_long(n: int) -> bytes:
    """Avro's zig-zag varint of ``n`` (what fastavro writes for ``long``)."""
    return _unsigned((n << 1) ^ (n >> 63))


def _unsigned(z: int) -> bytes:
    out = bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


#: Zig-zag varints below 2**14 (values 0..8191), and the first two bytes (continuation
#: bits set) of any longer one, by its low 14 bits.
_SHORT = [avro_long(n) for n in range(1 << 13)]
_LOW14 = [bytes((i & 0x7F | 0x80, i >> 7 | 0x80)) for i in range(1 << 14)]


class EnvelopeWriter:
    """``spotify_events.wire.Envelope`` records in Avro binary, byte for byte what
    fastavro writes (the benchmark checks every envelope it ships), without a dict
    per event. The bytes between ``seq`` and ``timestamp`` are fixed per (type,
    fingerprint); ``seq`` and ``timestamp`` only grow, so a varint is two table bytes
    for its low 14 bits plus the varint of the rest, which changes every 8192 values
    and is cached."""

    def __init__(self) -> None:
        self._middles: dict[tuple[str, bytes], bytes] = {}
        #: Per series (the timestamps, each type's sequence numbers): (z >> 14, its varint).
        self._high: dict[str, tuple[int, bytes]] = {}

    def _rising(self, series: str, n: int) -> bytes:
        z = n << 1
        if n < 0:
            return avro_long(n)
        if z < 0x4000:
            return _SHORT[n]
        high = z >> 14
        cached = self._high.get(series)
        if cached is None or cached[0] != high:
            cached = self._high[series] = (high, _unsigned(high))
        return _LOW14[z & 0x3FFF] + cached[1]

    def timestamp(self, ms: int) -> bytes:
        if not MIN_EVENT_MILLIS <= ms <= MAX_EVENT_MILLIS:
            raise ValueError(f"timestamp {ms} ms is outside years 1-9999")
        return self._rising(" timestamp", ms)  # no Avro full name has a space

    def envelope(
        self, seq: int, event_type: str, fingerprint: bytes, timestamp: bytes, payload: bytes
    ) -> list[bytes]:
        """One record, as the parts to join; ``timestamp`` as :meth:`timestamp` wrote it."""
        middle = self._middles.get((event_type, fingerprint))
        if middle is None:
            name = event_type.encode()
            middle = avro_long(len(name)) + name + fingerprint
            self._middles[(event_type, fingerprint)] = middle
        n = len(payload)
        size = _SHORT[n] if n < 8192 else avro_long(n)
        return [self._rising(event_type, seq), middle, timestamp, size, payload]


# -- the prototype queue -----------------------------------------------------------------

BLOCKS_TABLE = (
    "CREATE TABLE IF NOT EXISTS prototype_blocks (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "events INTEGER NOT NULL, size INTEGER NOT NULL, oldest INTEGER NOT NULL, "
    "ranges TEXT NOT NULL, body BLOB NOT NULL)"
)


class BlockQueue:
    """A format-2 queue file (made by the real DurableQueue) with a ``prototype_blocks`` table:
    one row per commit group. One connection, like one DurableQueue instance; a
    client would hold two (writer, shipper)."""

    def __init__(self, path: Path, producer_id: str, envelopes: str = "hand") -> None:
        """``envelopes``: "hand" (:class:`EnvelopeWriter`) or "fastavro" (its public
        ``schemaless_writer``, a dict per event)."""
        self.producer_id = producer_id
        self.fastavro_envelopes = envelopes == "fastavro"
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.execute(BLOCKS_TABLE)
        self.max_queue_bytes = ClientConfig().max_queue_bytes
        self.envelopes = EnvelopeWriter()
        #: Thread CPU seconds spent encoding envelopes inside ``append`` (part of its cost).
        self.encode_seconds = 0.0

    def append(self, events: Sequence[PendingRow]) -> int:
        """Commit ``events`` as one block, numbered per type; returns the block's id."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            types = sorted({e[0] for e in events})
            next_seq = dict.fromkeys(types, 1)
            marks = ",".join("?" * len(types))
            for event_type, seq in conn.execute(
                f"SELECT event_type, next_seq FROM sequences WHERE event_type IN ({marks})", types
            ):
                next_seq[event_type] = seq
            first = dict(next_seq)
            writer = self.envelopes
            encode_started = time.thread_time()
            parts = []
            size = 0
            oldest = events[0][2]
            last_ts, ts_bytes = None, b""
            for event_type, fp, ts, payload in events:
                seq = next_seq[event_type]
                next_seq[event_type] = seq + 1
                if ts != last_ts:
                    last_ts, ts_bytes = ts, writer.timestamp(ts)
                if self.fastavro_envelopes:
                    buf = io.BytesIO()
                    fastavro.schemaless_writer(
                        buf,
                        ENVELOPE_SCHEMA,
                        {
                            "seq": seq,
                            "event_type": event_type,
                            "fingerprint": fp,
                            "timestamp": ts,
                            "payload": payload,
                        },
                    )
                    parts.append(buf.getvalue())
                else:
                    parts += writer.envelope(seq, event_type, fp, ts_bytes, payload)
                oldest = min(oldest, ts)
                size += len(payload) + ROW_OVERHEAD
            body = b"".join(parts)
            self.encode_seconds += time.thread_time() - encode_started
            ranges = {t: [first[t], next_seq[t] - 1] for t in types}
            block_id = conn.execute(
                "INSERT INTO prototype_blocks (events, size, oldest, ranges, body) VALUES (?, ?, ?, ?, ?)",
                (len(events), size, oldest, json.dumps(ranges), body),
            ).lastrowid
            for item in next_seq.items():
                conn.execute(
                    "INSERT INTO sequences (event_type, next_seq) VALUES (?, ?) "
                    "ON CONFLICT(event_type) DO UPDATE SET next_seq = excluded.next_seq",
                    item,
                )
            bump_counters(conn, size, len(events))
            (queue_bytes,) = conn.execute(
                "SELECT value FROM counters WHERE name = 'bytes'"
            ).fetchone()
            if queue_bytes > self.max_queue_bytes:
                raise RuntimeError("the prototype does not evict; raise max_queue_bytes")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        assert block_id is not None
        return block_id

    def read_blocks(self, max_events: int, max_bytes: int) -> list[tuple[int, int, bytes]]:
        """(id, events, body) of the oldest whole blocks within both limits (at least one)."""
        self.conn.execute("SELECT 1 FROM holds WHERE next_try > ? LIMIT 1", (time.time(),))
        cursor = self.conn.execute(
            "SELECT id, events, size, body FROM prototype_blocks ORDER BY id"
        )
        blocks: list[tuple[int, int, bytes]] = []
        events = size = 0
        for block_id, n, block_size, body in cursor:
            if blocks and (events + n > max_events or size + block_size > max_bytes):
                break
            blocks.append((block_id, n, body))
            events += n
            size += block_size
        cursor.close()
        return blocks

    def ship(self, blocks: Sequence[tuple[int, int, bytes]], shipper: Shipper) -> bytes:
        """The wire container of ``blocks``: the same metadata as ``encode_batch``,
        their envelope bytes joined into one Avro block."""
        next_seq = {
            str(t): int(s)
            for t, s in self.conn.execute("SELECT event_type, next_seq FROM sequences")
        }
        settings = shipper.settings
        metadata = {
            META_PRODUCER: self.producer_id,
            META_NEXT_SEQ: json.dumps(next_seq, separators=(",", ":"), sort_keys=True),
            META_DROPS: "[]",
            META_SERVICE: settings.service,
            META_HOST: settings.host,
            META_SDK_VERSION: settings.sdk_version,
        }
        out = io.BytesIO()
        writer = Writer(out, ENVELOPE_SCHEMA, codec=WIRE_CODEC, metadata=metadata)
        body = io.BytesIO(b"".join(b[2] for b in blocks))
        writer.write_block(SimpleNamespace(num_records=sum(b[1] for b in blocks), bytes_=body))
        writer.flush()
        return out.getvalue()

    def ack(self, first_id: int, last_id: int) -> int:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            count, size = conn.execute(
                "SELECT coalesce(sum(events), 0), coalesce(sum(size), 0) FROM prototype_blocks "
                "WHERE id BETWEEN ? AND ?",
                (first_id, last_id),
            ).fetchone()
            conn.execute(
                "DELETE FROM prototype_blocks WHERE id BETWEEN ? AND ?", (first_id, last_id)
            )
            bump_counters(conn, -size, -count)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(count)

    def close(self) -> None:
        self.conn.close()


# -- the paths ---------------------------------------------------------------------------


def shipper_for(queue: DurableQueue, batch: int) -> Shipper:
    """A Shipper that is never started: only its ``_encode`` and settings are used."""
    settings = replace(ClientConfig().shipper_settings(), max_events=batch)
    return Shipper(queue, transport=None, settings=settings)  # type: ignore[arg-type]


def drive(
    groups: list[list[PendingRow]],
    batch: int,
    append: Callable[[list[PendingRow]], object],
    read: Callable[[], Any],
    encode: Callable[[Any], bytes],
    ack: Callable[[Any], object],
    count: Callable[[Any], int],
) -> tuple[dict[str, float], list[bytes]]:
    """Commit groups until a batch's worth is queued, ship one batch, and again, as a
    client does; CPU seconds per step and the bodies sent. ``read`` returns what one
    batch holds, which ``encode``, ``ack`` and ``count`` (its events) take."""
    cpu = dict.fromkeys(STEPS, 0.0)
    bodies: list[bytes] = []
    clock = time.thread_time
    queued = shipped = 0
    total = sum(len(g) for g in groups)
    pending = iter(groups)
    while shipped < total:
        while queued < batch:
            group = next(pending, None)
            if group is None:
                break
            t = clock()
            append(group)
            cpu["commit"] += clock() - t
            queued += len(group)
        t0 = clock()
        part = read()
        t1 = clock()
        body = encode(part)
        t2 = clock()
        ack(part)
        t3 = clock()
        cpu["read"] += t1 - t0
        cpu["ship"] += t2 - t1
        cpu["ack"] += t3 - t2
        bodies.append(body)
        n = count(part)
        queued -= n
        shipped += n
    return cpu, bodies


def run_current(
    path: Path, groups: list[list[PendingRow]], batch: int
) -> tuple[dict[str, float], list[bytes]]:
    """CPU seconds per step through the real queue and shipper; the bodies sent."""
    settings = ClientConfig().queue_settings()
    writer, reader = DurableQueue(path, settings), DurableQueue(path, settings)
    shipper = shipper_for(reader, batch)
    max_bytes = shipper.settings.max_bytes
    try:
        return drive(
            groups,
            batch,
            writer.append,
            lambda: reader.read_batch(max_events=batch, max_bytes=max_bytes),
            lambda part: shipper._encode(part, [], []),
            lambda part: reader.ack(part[0].id, part[-1].id),
            len,
        )
    finally:
        writer.close()
        reader.close()


def run_blocks(
    path: Path, groups: list[list[PendingRow]], batch: int, envelopes: str = "hand"
) -> tuple[dict[str, float], list[bytes]]:
    """CPU seconds per step through the prototype; the bodies it would send."""
    made = DurableQueue(path, ClientConfig().queue_settings())  # format 2, WAL, tables
    producer_id = made.producer_id
    shipper = shipper_for(made, batch)
    made.close()
    writer = BlockQueue(path, producer_id, envelopes)
    reader = BlockQueue(path, producer_id, envelopes)
    max_bytes = shipper.settings.max_bytes
    try:
        cpu, bodies = drive(
            groups,
            batch,
            writer.append,
            lambda: reader.read_blocks(batch, max_bytes),
            lambda blocks: reader.ship(blocks, shipper),
            lambda blocks: reader.ack(blocks[0][0], blocks[-1][0]),
            lambda blocks: sum(b[1] for b in blocks),
        )
        cpu["encode_in_commit"] = writer.encode_seconds
        return cpu, bodies
    finally:
        writer.close()
        reader.close()


def run_blocks_fastavro(
    path: Path, groups: list[list[PendingRow]], batch: int
) -> tuple[dict[str, float], list[bytes]]:
    return run_blocks(path, groups, batch, envelopes="fastavro")


#: The baseline first; every other path is compared with it.
PATHS = {"current": run_current, "blocks": run_blocks, "blocks_fastavro": run_blocks_fastavro}


# -- input, check, report ----------------------------------------------------------------


def make_events(count: int, per_second: int) -> list[PendingRow]:
    """``count`` encoded events, one ServiceCall in 8, timestamps ``per_second`` apart
    as the writer would see them at that rate."""
    registry = SchemaRegistry(str(SCHEMAS))
    end_song = registry.get("EndSong")
    service_call = registry.get("ServiceCall")
    encoders = {s.full_name: EventEncoder(s) for s in (end_song, service_call)}
    start = int(time.time() * 1000)
    events: list[PendingRow] = []
    record, call = dict(END_SONG), dict(SERVICE_CALL)
    for i in range(count):
        ts = start + i * 1000 // per_second
        if i % 8 == 7:
            call["duration_ms"] = i / 100
            events.append(
                (
                    service_call.full_name,
                    service_call.fingerprint,
                    ts,
                    encoders[service_call.full_name].encode(call),
                )
            )
        else:
            record["ms_played"] = i
            events.append(
                (
                    end_song.full_name,
                    end_song.fingerprint,
                    ts,
                    encoders[end_song.full_name].encode(record),
                )
            )
    return events


def check_equivalent(bodies: dict[str, list[bytes]], events: list[PendingRow]) -> dict[str, Any]:
    """Decode every path's containers with the real ``decode_batch``: each path must
    carry the same envelopes in the same order as the current one, those envelopes
    must be the committed events, and each batch's watermark must cover it."""
    envelopes = {}
    for name, containers in bodies.items():
        decoded: list[WireBatch] = [decode_batch(b) for b in containers]
        for batch in decoded:
            for e in batch.envelopes:
                if batch.next_seq.get(e.event_type, 0) <= e.seq:
                    raise AssertionError(f"{name}: watermark {batch.next_seq} below {e}")
        envelopes[name] = [e for batch in decoded for e in batch.envelopes]
    baseline = envelopes["current"]
    if [(e.event_type, e.fingerprint, e.timestamp, e.payload) for e in baseline] != events:
        raise AssertionError("the current path's envelopes are not the committed events")
    for name, mine in envelopes.items():
        if mine != baseline:
            first = next(
                (i for i, (a, b) in enumerate(zip(baseline, mine, strict=False)) if a != b), None
            )
            where = f"envelope {first}" if first is not None else "the count"
            raise AssertionError(f"{name}: envelopes differ from the current path's at {where}")
    return {
        "envelopes_compared_per_path": len(baseline),
        "identical": True,
        "wire_bytes_per_event": {n: sum(map(len, c)) / len(events) for n, c in bodies.items()},
        "batches": {n: len(c) for n, c in bodies.items()},
    }


def check_bytes(bodies: list[bytes]) -> int:
    """Each container's Avro blocks, decompressed, must be byte for byte what fastavro's
    ``schemaless_writer`` writes for the envelopes they decode to. Returns the count."""
    checked = 0
    for body in bodies:
        envelopes = decode_batch(body).envelopes
        raw = b"".join(block.bytes_.getvalue() for block in fastavro.block_reader(io.BytesIO(body)))
        expected = io.BytesIO()
        for e in envelopes:
            fastavro.schemaless_writer(expected, ENVELOPE_SCHEMA, e._asdict())
        if raw != expected.getvalue():
            raise AssertionError("a container's envelope bytes differ from fastavro's encoding")
        checked += len(envelopes)
    return checked


def split(events: list[PendingRow], size: int) -> list[list[PendingRow]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--groups",
        default="256,50",
        help="commit group sizes: 256 is a full group flat out, ~50 one 50 ms commit at 1,000/s",
    )
    parser.add_argument("--batch", type=int, default=1000, help="most events per shipped batch")
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "record_batches.json",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.groups.split(",")]
    rates = {size: 25_000 if size >= 256 else 1_000 for size in sizes}
    inputs = {size: make_events(args.events, rates[size]) for size in sizes}
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    checks: dict[int, Any] = {}
    cpu: dict[int, dict[str, list[dict[str, float]]]] = {
        size: {name: [] for name in PATHS} for size in sizes
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for size in sizes:
            groups = split(inputs[size], size)
            bodies = {
                name: run(workdir / f"check-{size}-{name}.db", groups, args.batch)[1]
                for name, run in PATHS.items()
            }
            checks[size] = check_equivalent(bodies, inputs[size])
            checks[size]["envelope_bytes_checked"] = {n: check_bytes(b) for n, b in bodies.items()}
        for round_ in range(args.rounds):
            for size in sizes:
                groups = split(inputs[size], size)
                order = list(PATHS) if round_ % 2 == 0 else list(reversed(PATHS))
                for name in order:
                    db = workdir / f"{round_}-{size}-{name}.db"
                    seconds, _ = PATHS[name](db, groups, args.batch)
                    per_event = {k: v / args.events * 1e6 for k, v in seconds.items()}
                    per_event["total"] = sum(per_event[step] for step in STEPS)
                    cpu[size][name].append(per_event)
    load_after = os.getloadavg()
    report(args, sizes, cpu, checks, rates, started, load_before, load_after)


def report(
    args: argparse.Namespace,
    sizes: list[int],
    cpu: dict[int, dict[str, list[dict[str, float]]]],
    checks: dict[int, Any],
    rates: dict[int, int],
    started: datetime,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    print(
        f"\nrecord batches (route a): CPU us per event, {args.events:,} events, batches of "
        f"<= {args.batch}, median (min-max) of {args.rounds} rounds; "
        "ratios to current per round"
    )
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    out: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "events": args.events,
        "batch": args.batch,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "groups": {},
    }
    others = [name for name in PATHS if name != "current"]
    for size in sizes:
        check = checks[size]
        wire = ", ".join(f"{n} {v:.1f}" for n, v in check["wire_bytes_per_event"].items())
        batches = ", ".join(f"{n} {v}" for n, v in check["batches"].items())
        print(
            f"\ncommit groups of {size} (timestamps as at {rates[size]:,} events/s): "
            f"{check['envelopes_compared_per_path']:,} envelopes per path identical after "
            f"decode_batch\n  wire bytes/event: {wire}; batches: {batches}"
        )
        header = f"  {'step':<8}" + "".join(f"{n:>22}" for n in PATHS)
        print(header + "".join(f"{n + '/current':>26}" for n in others))
        rows: dict[str, Any] = {}
        runs = cpu[size]
        for step in (*STEPS, "total"):
            row = {name: summary([r[step] for r in runs[name]]) for name in PATHS}
            for name in others:
                row[f"{name}/current"] = summary(
                    [b[step] / c[step] for c, b in zip(runs["current"], runs[name], strict=True)]
                )
            rows[step] = row
            print(
                f"  {step:<8}"
                + "".join(f"{fmt(row[n]):>22}" for n in PATHS)
                + "".join(f"{fmt(row[n + '/current']):>26}" for n in others)
            )
        encode = {n: summary([r["encode_in_commit"] for r in runs[n]]) for n in others}
        rows["encode_in_commit"] = encode
        print(
            f"  {'(commit: of which envelope encoding)':<30}"
            + "".join(f"{n} {fmt(encode[n])}  " for n in others)
        )
        out["groups"][str(size)] = {
            "timestamps_per_second": rates[size],
            "check": check,
            "steps": rows,
            "rounds": runs,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\n  JSON: {args.json}")


def fmt(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


if __name__ == "__main__":
    main()
