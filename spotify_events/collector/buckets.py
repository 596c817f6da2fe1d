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
the ledger records each file's committed length; bytes past it after a crash are
moved to the quarantine on startup, and a file whose committed prefix is damaged
(:func:`part_damage`) is never appended to again.
"""

from __future__ import annotations

import json
import os
import stat
import zlib
from datetime import datetime, timezone
from typing import Any

from ..schemas import EventSchema
from .datadir import O_NOFOLLOW, FileModes, fsync_dir

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
    """An open, append-only part file (descriptor from :func:`.datadir.open_part`)."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def append(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def size(self) -> int:
        assert self.fd is not None
        return os.fstat(self.fd).st_size

    def sync(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        """Fsync and close: a file closed early (open-file limit) keeps its promise."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def part_damage(path: str, committed_len: int, sync: bytes) -> str | None:
    """Why the file at ``path`` is not a part whose first ``committed_len`` bytes are
    intact (missing, shorter, or not ending in a block at that length), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing" if committed_len else None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a symlink?)"
    size = st.st_size
    if size < committed_len:
        return f"shorter ({size} bytes) than its committed length {committed_len}"
    if committed_len:
        with open(path, "rb") as fh:  # a regular file: nothing to follow
            fh.seek(committed_len - len(sync))
            if fh.read(len(sync)) != sync:
                return f"no block ends at its committed length {committed_len}"
    return None


def header_length(path: str, sync: bytes) -> int:
    """Length of a part file's container header (up to and including its sync marker)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    at = head.find(sync)
    return at + len(sync) if at >= 0 else 0


def write_marker(
    directory: str, content: dict[str, Any], modes: FileModes, name: str = CLOSED_MARKER
) -> None:
    """Write ``_CLOSED.json`` atomically (temp file, fsync, rename, fsync dir)."""
    final = os.path.join(directory, name)
    tmp = final + ".tmp"
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_NOFOLLOW, modes.file)
    try:
        os.fchmod(fd, modes.file)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(directory)


def read_marker(directory: str, name: str = CLOSED_MARKER) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
            return data
    except (FileNotFoundError, ValueError):
        return None
