"""Per-event CPU of each step of the JetStream hop, in one process, one thread.

    python benchmarks/scaleout_hop.py

Ingest (decode + validate) of 500-event batches, publishing them as slices to a
local one-node JetStream (what ``collector --nats`` adds), decoding the slices
(what a worker adds), and the delivery half's group commit, each in CPU
microseconds per event. The hop's cost is the publish plus the decode, against
ingest plus delivery for the single-process collector.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest
from spotify_events.encoding import EventEncoder
from spotify_events.scaleout.ingest import JetStreamDelivery, prepare_stream
from spotify_events.scaleout.natsserver import NatsCluster
from spotify_events.scaleout.slices import batch_messages, decode_message
from spotify_events.scaleout.stream import StreamSettings
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import Envelope, WireBatch, encode_batch

ROOT = Path(__file__).resolve().parent.parent
BATCHES = 300
EVENTS = 500


def per_event(seconds: float) -> float:
    return round(seconds / BATCHES / EVENTS * 1e6, 2)


def main() -> None:
    registry = SchemaRegistry(ROOT / "schemas")
    schema = registry.get("spotify.events.playback.EndSong")
    payload = EventEncoder(schema).encode(
        {
            "user_id": "u",
            "track_id": "t",
            "ms_played": 1,
            "reason_start": "CLICKROW",
            "reason_end": "TRACKDONE",
            "platform": "ios",
        }
    )
    now_ms = int(time.time() * 1000)
    bodies = [
        encode_batch(
            WireBatch(
                f"producer-{k % 16}",
                [
                    Envelope(k * EVENTS + i, schema.full_name, schema.fingerprint, now_ms, payload)
                    for i in range(1, EVENTS + 1)
                ],
                {schema.full_name: k * EVENTS + EVENTS + 1},
            )
        )
        for k in range(BATCHES)
    ]
    out: dict[str, float] = {}
    ingest = Ingest(registry)
    started = time.process_time()
    batches = [ingest.parse(b) for b in bodies]
    out["ingest_us"] = per_event(time.process_time() - started)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp) / "nats", size=1).start()
        try:
            settings = StreamSettings(name="HOP", partitions=4, replicas=1)
            asyncio.run(prepare_stream([cluster.nodes[0].url], settings, 30))
            publisher = JetStreamDelivery([cluster.nodes[0].url], settings)
            publisher.deliver(batches[0])  # connect outside the measurement
            started = time.process_time()
            for b in batches:
                publisher.deliver(b)
            out["publish_us"] = per_event(time.process_time() - started)
            publisher.close()
        finally:
            cluster.stop()
            cluster.kill()
        messages = [batch_messages(b, subject="x", max_bytes=1 << 20)[0] for b in batches]
        started = time.process_time()
        decoded = [decode_message(m.data, received_at=0) for m in messages]
        out["decode_us"] = per_event(time.process_time() - started)
        delivery = LocalDelivery(Path(tmp) / "data", registry)
        started = time.process_time()
        for k in range(0, BATCHES, 8):
            delivery.deliver_all(decoded[k : k + 8])
        out["delivery_us"] = per_event(time.process_time() - started)
        delivery.close()
    single = out["ingest_us"] + out["delivery_us"]
    out["hop_added_pct"] = round(100 * (out["publish_us"] + out["decode_us"]) / single, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
