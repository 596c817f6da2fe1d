"""What one JetStream message holds: a (producer, event type) slice of a batch, or its control facts.

Ingest publishes one message per slice, not per event: nats-py manages a few
hundred awaited publishes per second and tens of thousands with many in flight, so
a message per event would cap the tier. A slice bigger than the server's max
payload is split. Control facts (watermarks, drop notices, the collector's
rejections, queue incidents) ride in the header of the batch's first slice when they
are small (:data:`EMBED_CONTROL_MAX` bytes of JSON), which halves the messages of a
usual one-type batch; the same facts as a message of their own are that slice's
:attr:`Message.fallback`, published only when JetStream answers "duplicate" for the
slice, so a retried batch whose events dedupe inside JetStream never takes a newer
watermark or drop notice down with it. Larger control facts always travel in their
own messages.

Message ids (``Nats-Msg-Id``, JetStream's dedupe key inside its window):

* events: ``producer:type:first-last`` when the slice's sequence numbers are
  contiguous, so an id names exactly one set of events (a number never names two
  events); otherwise ``producer:type:first-last:n<count>.<crc32 of the numbers>``;
* control: ``producer:control:<sha256 of the facts>``.

Layout of a message body (version 1): ``b"SE1"``, a 4-byte big-endian header length,
the header as JSON (producer facts; for events the type, the writer fingerprint and
the count; the control facts, if the message carries them), then an index of ``seq (int64)
timestamp (int64) payload length (uint32)`` per event, then the payloads back to
back. Fixed-size index entries let both sides pack and unpack them in C
(``struct.iter_unpack``) instead of a Python loop per field.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, islice, repeat
from operator import itemgetter, lt
from typing import Any

from ..collector.ingest import MAX_TIMESTAMP_MS, BatchFacts, IngestedBatch, Rejection
from ..errors import SpotifyEventsError
from ..wire import DropNotice, Envelope

MAGIC = b"SE1"
_HEAD = struct.Struct(">I")
_INDEX = struct.Struct(">qqI")
#: Room kept for the header and NATS protocol framing below the server's max payload.
HEADER_RESERVE = 16 << 10
#: Largest control facts (bytes of JSON) that ride in a slice's header: well inside
#: :data:`HEADER_RESERVE`, so a slice that carries them still fits the max payload.
EMBED_CONTROL_MAX = 4 << 10
# Envelope fields by position, for map() over a slice's events (no Python loop per event)
_SEQ = itemgetter(0)
_TYPE = itemgetter(1)
_FINGERPRINT = itemgetter(2)
_TIMESTAMP = itemgetter(3)
_PAYLOAD = itemgetter(4)
_INDEX_TS = itemgetter(1)  # of an index entry (seq, timestamp, length)
_INDEX_LEN = itemgetter(2)
_new_envelope = partial(tuple.__new__, Envelope)


class SliceDecodeError(SpotifyEventsError):
    """A stream message that is not a slice this version can read."""


@dataclass(frozen=True)
class Message:
    """One publish: its partition subject, dedupe id, body, and how many events it carries.

    ``fallback`` is set on a slice that carries the batch's control facts: the same
    facts as a control message, to publish when JetStream answers "duplicate" for the
    slice (the stored copy carries the facts of an earlier attempt, not these)."""

    subject: str
    msg_id: str
    data: bytes
    events: int
    event_type: str = ""  # of the events; "" for a control message
    fallback: Message | None = None


def partition_of(producer_id: str, partitions: int) -> int:
    """The partition of a producer: CRC-32 of its id (stable across processes and hosts;
    Python's ``hash()`` is salted per process) modulo the partition count."""
    return zlib.crc32(producer_id.encode("utf-8")) % partitions


def _producer_header(facts: BatchFacts) -> dict[str, Any]:
    return {
        "v": 1,
        "producer_id": facts.producer_id,
        "service": facts.service,
        "host": facts.host,
        "sdk_version": facts.sdk_version,
    }


def _body(header: dict[str, Any], events: list[Envelope]) -> bytes:
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    payloads = list(map(_PAYLOAD, events))
    index = b"".join(
        map(_INDEX.pack, map(_SEQ, events), map(_TIMESTAMP, events), map(len, payloads))
    )
    return b"".join((MAGIC, _HEAD.pack(len(head)), head, index, *payloads))


def _event_id(producer: str, event_type: str, seqs: list[int]) -> str:
    first, last = seqs[0], seqs[-1]
    if last - first + 1 == len(seqs) and all(map(lt, seqs, islice(seqs, 1, None))):
        return f"{producer}:{event_type}:{first}-{last}"  # the usual run, found without a set
    first, last = min(seqs), max(seqs)
    base = f"{producer}:{event_type}:{first}-{last}"
    if last - first + 1 == len(seqs) == len(set(seqs)):
        return base
    digest = zlib.crc32(struct.pack(f">{len(seqs)}q", *seqs))
    return f"{base}:n{len(seqs)}.{digest:08x}"


def _by_type(events: list[Envelope]) -> dict[tuple[str, bytes], list[Envelope]]:
    """Events grouped by (type, writer fingerprint), in order. A batch usually holds one
    group: that case is found with C-level loops over the two fields, without a key
    tuple per event: the garbage collector tracks tuples, and the 5,000 of a large
    batch set off collections that walked every event alive in the process."""
    if not events:
        return {}
    if len(set(map(_TYPE, events))) == 1 and len(set(map(_FINGERPRINT, events))) == 1:
        return {(events[0].event_type, events[0].fingerprint): events}
    groups: dict[tuple[str, bytes], list[Envelope]] = {}
    for env in events:
        groups.setdefault((env.event_type, env.fingerprint), []).append(env)
    return groups


def batch_messages(batch: IngestedBatch, *, subject: str, max_bytes: int) -> list[Message]:
    """The messages one ingested batch becomes (none for a bare heartbeat)."""
    budget = max(max_bytes - HEADER_RESERVE, 1)
    base = _producer_header(batch.facts)
    slices: list[tuple[str, list[Envelope]]] = []
    for (event_type, _), events in _by_type(batch.events).items():
        if sum(map(len, map(_PAYLOAD, events))) + _INDEX.size * len(events) <= budget:
            slices.append((event_type, events))
            continue
        chunk: list[Envelope] = []
        size = 0
        for env in events:
            cost = _INDEX.size + len(env.payload)
            if chunk and size + cost > budget:
                slices.append((event_type, chunk))
                chunk, size = [], 0
            chunk.append(env)
            size += cost
        if chunk:
            slices.append((event_type, chunk))
    control = _control_messages(batch, base, subject, budget)
    if not slices:
        return [c.message for c in control]
    embed = control[0] if len(control) == 1 and control[0].small else None
    out = [_event_message(base, subject, *slices[0], embed)]
    out += [_event_message(base, subject, event_type, events) for event_type, events in slices[1:]]
    if embed is None:
        out += [c.message for c in control]
    return out


def _event_message(
    base: dict[str, Any],
    subject: str,
    event_type: str,
    events: list[Envelope],
    control: _Control | None = None,
) -> Message:
    header = {
        **base,
        "event_type": event_type,
        "fingerprint": events[0].fingerprint.hex(),
        "count": len(events),
    }
    if control is not None:
        header["control"] = control.facts
    msg_id = _event_id(base["producer_id"], event_type, list(map(_SEQ, events)))
    fallback = control.message if control is not None else None
    return Message(subject, msg_id, _body(header, events), len(events), event_type, fallback)


@dataclass(frozen=True)
class _Control:
    """One part of a batch's control facts and the control message that carries it alone."""

    facts: dict[str, Any]
    message: Message
    small: bool  # small enough to ride in a slice's header (EMBED_CONTROL_MAX)


def _control_messages(
    batch: IngestedBatch, base: dict[str, Any], subject: str, budget: int
) -> list[_Control]:
    facts = batch.facts
    rejections = [[r.event_type, r.seq, r.code, r.reason] for r in batch.rejections]
    control = {
        "next_seq": facts.next_seq,
        "drops": [[d.event_type, d.first_seq, d.last_seq, d.count, d.reason] for d in facts.drops],
        "incidents": facts.incidents,
    }
    if not (facts.next_seq or facts.drops or facts.incidents or rejections):
        return []
    # Rejections are the only part that can be large (one per event): split them.
    chunks: list[list[list[Any]]] = [rejections]
    while True:
        sizes = [len(json.dumps(c)) for c in chunks]
        if max(sizes) + len(json.dumps(control)) <= budget or max(len(c) for c in chunks) <= 1:
            break
        chunks = [half for c in chunks for half in (c[: len(c) // 2], c[len(c) // 2 :]) if half]
    out = []
    for i, chunk in enumerate(chunks):
        facts_part = {**control, "rejections": chunk} if i == 0 else {"rejections": chunk}
        text = json.dumps(facts_part, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(text).hexdigest()[:32]
        header = {**base, "control": facts_part}
        message = Message(subject, f"{base['producer_id']}:control:{digest}", _body(header, []), 0)
        out.append(_Control(facts_part, message, len(text) <= EMBED_CONTROL_MAX))
    return out


def _incident_shaped(incident: object) -> bool:
    """An incident as ingest passes it on: the ledger keys and compares them by these."""
    return (
        isinstance(incident, dict)
        and isinstance(incident.get("kind"), str)
        and isinstance(incident.get("at"), (int, float))
        and isinstance(incident.get("detail", ""), str)
    )


def decode_message(data: bytes, *, received_at: float) -> IngestedBatch:
    """A stream message back into the :class:`IngestedBatch` the delivery half takes."""
    if data[:3] != MAGIC or len(data) < 7:
        raise SliceDecodeError("not a spotify-events slice (bad magic)")
    (head_len,) = _HEAD.unpack_from(data, 3)
    pos = 7 + head_len
    try:
        header = json.loads(data[7:pos])
        control = header.get("control") or {}
        # the delivery half takes these as they are: anything else fails its commit
        texts = [header[k] for k in ("producer_id", "service", "host", "sdk_version")]
        event_type = header.get("event_type", "")
        if not all(isinstance(t, str) for t in (*texts, event_type)):
            raise TypeError("a producer or event type field is not a string")
        incidents = list(control.get("incidents", []))
        if not all(map(_incident_shaped, incidents)):
            raise TypeError("an incident is not an object of a kind, a time and a detail")
        facts = BatchFacts(
            producer_id=texts[0],
            next_seq={str(k): int(v) for k, v in control.get("next_seq", {}).items()},
            drops=[
                DropNotice(str(t), int(a), int(b), int(n), str(r))
                for t, a, b, n, r in control.get("drops", [])
            ],
            service=texts[1],
            host=texts[2],
            sdk_version=texts[3],
            received_at=received_at,
            body_bytes=len(data),
            incidents=incidents,
        )
        rejections = [
            Rejection(event_type=str(t), seq=int(s), code=str(c), reason=str(r))
            for t, s, c, r in control.get("rejections", [])
        ]
        fingerprint = bytes.fromhex(header.get("fingerprint", ""))
        count = int(header.get("count", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # Attribute: not a dict
        raise SliceDecodeError(f"bad slice header: {type(exc).__name__}: {exc}") from exc
    index_end = pos + count * _INDEX.size
    if count < 0 or index_end > len(data):
        raise SliceDecodeError("truncated slice index")
    entries = list(_INDEX.iter_unpack(data[pos:index_end]))
    ends = list(accumulate(map(_INDEX_LEN, entries), initial=index_end))
    if ends[-1] != len(data):
        raise SliceDecodeError("slice payloads do not match the index")
    stamps = list(map(_INDEX_TS, entries))
    if stamps and (min(stamps) < 0 or max(stamps) > MAX_TIMESTAMP_MS):
        # ingest refuses these; no bucket path can be built from one
        raise SliceDecodeError("an event timestamp is out of range")
    payloads = map(data.__getitem__, map(slice, ends[:-1], ends[1:]))
    fields = zip(
        map(_SEQ, entries),
        repeat(event_type),
        repeat(fingerprint),
        stamps,
        payloads,
    )
    events = list(map(_new_envelope, fields))  # tuple.__new__: no Python frame per event
    return IngestedBatch(facts=facts, events=events, rejections=rejections)
