"""Hourly bucket files: paths, Avro container part files, and the close marker.

A bucket is ``DATA_DIR/<event type full name>/<YYYY-MM-DD>/<HH>/`` (UTC hour of the
event time). Inside it, one part file per writer schema,
``part-<fingerprint hex>-<index>.avro``, so two versions of one type in the same
hour never share a file and each file is a plain Avro object container readable
by any Avro tool.

The writer is hand-rolled on purpose: payloads arrive already Avro-encoded with
exactly the file's schema, so a container block is just
``count, size, concat(payloads), sync`` — no decode/re-encode round trip (which
would cost about as much again as validation). Files are only ever appended to;
the ledger records each file's committed length, and anything past it after a
crash is cut off on startup (:func:`truncate_to`).
"""

from __future__ import annotations

import json
import os
import zlib
from datetime import datetime, timezone
from typing import IO, Any

from ..schemas import EventSchema

try:
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # Python < 3.14
    from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]

MAGIC = b"Obj\x01"
CLOSED_MARKER = "_CLOSED.json"
BUCKET_CODECS = ("null", "deflate", "zstandard")
HOUR_MS = 3_600_000


def hour_of(timestamp_ms: int) -> int:
    """Hours since the epoch (UTC) of a millisecond timestamp."""
    return timestamp_ms // HOUR_MS


def bucket_dir(event_type: str, hour: int) -> str:
    """Relative directory of a bucket; ``event_type`` must already be a checked Avro name."""
    when = datetime.fromtimestamp(hour * 3600, tz=timezone.utc)
    return os.path.join(event_type, when.strftime("%Y-%m-%d"), when.strftime("%H"))


def hour_label(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, tz=timezone.utc).strftime("%Y-%m-%dT%H:00Z")


def part_name(fingerprint_hex: str, index: int) -> str:
    return f"part-{fingerprint_hex}-{index:04d}.avro"


def avro_long(n: int) -> bytes:
    """Avro's zig-zag varint encoding of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(b: bytes) -> bytes:
    return avro_long(len(b)) + b


def container_header(schema: EventSchema, codec: str, sync: bytes) -> bytes:
    """Avro object container header: magic, metadata (schema, codec), sync marker."""
    schema_json = json.dumps(schema.raw, separators=(",", ":")).encode()
    meta = (
        avro_long(2)
        + _string(b"avro.schema")
        + _string(schema_json)
        + _string(b"avro.codec")
        + _string(codec.encode())
        + avro_long(0)
    )
    return MAGIC + meta + sync


def container_block(payloads: list[bytes], codec: str, sync: bytes) -> bytes:
    """One container block holding ``payloads`` (each an Avro-encoded record)."""
    data = b"".join(payloads)
    if codec == "deflate":
        comp = zlib.compressobj(1, zlib.DEFLATED, -15)  # level 1: ~40 µs per 1000 events
        data = comp.compress(data) + comp.flush()
    elif codec == "zstandard":
        data = zstd.compress(data)
    return avro_long(len(payloads)) + avro_long(len(data)) + data + sync


class PartFile:
    """An open, append-only part file."""

    __slots__ = ("fh", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh: IO[bytes] = open(path, "ab")  # noqa: SIM115 - lives as long as the bucket is open

    def append(self, data: bytes) -> None:
        self.fh.write(data)

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()


def fsync_dir(path: str) -> None:
    """Make a new directory entry durable (a new part file, a renamed marker)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(root: str, rel_dir: str) -> str:
    """Create ``root/rel_dir`` and fsync each new level's parent; return the full path."""
    full = os.path.join(root, rel_dir)
    if os.path.isdir(full):
        return full
    parts = rel_dir.split(os.sep)
    cur = root
    for part in parts:
        parent, cur = cur, os.path.join(cur, part)
        if not os.path.isdir(cur):
            os.makedirs(cur, exist_ok=True)
            fsync_dir(parent)
    return full


def truncate_to(path: str, length: int) -> int:
    """Cut a part file back to its committed length; returns how many bytes were cut."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 0
    if size > length:
        with open(path, "r+b") as fh:
            fh.truncate(length)
            fh.flush()
            os.fsync(fh.fileno())
        return size - length
    return 0


def write_marker(directory: str, content: dict[str, Any], name: str = CLOSED_MARKER) -> None:
    """Write ``_CLOSED.json`` atomically (temp file, fsync, rename, fsync dir)."""
    final = os.path.join(directory, name)
    tmp = final + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(content, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(directory)


def read_marker(directory: str, name: str = CLOSED_MARKER) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
            return data
    except (FileNotFoundError, ValueError):
        return None
