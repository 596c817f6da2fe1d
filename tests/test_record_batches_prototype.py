"""The route (a) prototype in ``benchmarks/record_batches.py`` ships what the real path
ships: its containers decode (with the real ``decode_batch``) to the same envelopes,
and its hand-written envelope bytes are fastavro's. No timing here."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from types import ModuleType

import fastavro
import pytest

from spotify_events.wire import ENVELOPE_SCHEMA, MAX_EVENT_MILLIS, MIN_EVENT_MILLIS

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "record_batches.py"


@pytest.fixture(scope="module")
def prototype() -> ModuleType:
    spec = importlib.util.spec_from_file_location("record_batches", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("group", [50, 256])
def test_prototype_containers_carry_the_real_paths_envelopes(
    prototype: ModuleType, tmp_path: Path, group: int
) -> None:
    # 9,000 events a millisecond apart: sequence numbers and timestamps cross the
    # 8192-value steps where the prototype's cached varint prefixes change.
    events = prototype.make_events(9_000, 1_000)
    groups = prototype.split(events, group)
    bodies = {
        name: run(tmp_path / f"{name}.db", groups, 1000)[1] for name, run in prototype.PATHS.items()
    }
    check = prototype.check_equivalent(bodies, events)
    assert check["envelopes_compared_per_path"] == 9_000
    for containers in bodies.values():
        assert prototype.check_bytes(containers) == 9_000
    if group == 256:  # whole blocks only: three 256-event blocks per batch of <= 1000
        assert check["batches"]["blocks"] == -(-9_000 // 768)


def test_envelope_writer_matches_fastavro_at_the_edges(prototype: ModuleType) -> None:
    writer = prototype.EnvelopeWriter()
    fingerprint = bytes(range(8))
    timestamps = [MIN_EVENT_MILLIS, -1, 0, 1, 8191, 8192, 1 << 40, MAX_EVENT_MILLIS]
    for seq in (1, 63, 64, 8191, 8192, 1 << 31, 1 << 62):
        for ms in timestamps:
            for payload in (b"", b"x" * 8191, b"y" * 8192):
                parts = writer.envelope(seq, "a.B", fingerprint, writer.timestamp(ms), payload)
                expected = io.BytesIO()
                record = {
                    "seq": seq,
                    "event_type": "a.B",
                    "fingerprint": fingerprint,
                    "timestamp": ms,
                    "payload": payload,
                }
                fastavro.schemaless_writer(expected, ENVELOPE_SCHEMA, record)
                assert b"".join(parts) == expected.getvalue(), (seq, ms, len(payload))


def test_envelope_writer_refuses_timestamps_avro_readers_cannot_read(
    prototype: ModuleType,
) -> None:
    with pytest.raises(ValueError, match="outside years 1-9999"):
        prototype.EnvelopeWriter().timestamp(MAX_EVENT_MILLIS + 1)
