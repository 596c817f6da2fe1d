"""Container pre-scan: bound the work a body can cause *before* fastavro decodes it.

fastavro decompresses each container block in one call with no output limit
(``zstd.decompress(data)``), so a few kilobytes of zstd can expand to gigabytes:
a decompression bomb. This module walks the Object Container framing by hand
(header, then per block: record count, byte size, data, sync marker), refuses
codecs the wire contract does not allow, and decompresses every block with an
explicit ``max_length`` so the total record count and decoded size stay under
the configured limits. The decompressed blocks are kept, so the envelopes are
decoded from them (:mod:`.wire`) without decompressing a second time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ..errors import CollectorError
from ..wire import DECODABLE_CODECS

try:  # the same zstd binding fastavro uses for the "zstandard" codec
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # Python < 3.14
    from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]

MAGIC = b"Obj\x01"
SYNC_SIZE = 16


class GuardError(CollectorError, ValueError):
    """The body is refused before decoding; ``status`` is 400 (malformed) or 413 (too big)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ScanResult:
    """What the scan learnt: the header's extent and schema, and the decompressed blocks."""

    codec: str
    records: int
    decoded_bytes: int
    header_len: int
    schema_json: bytes | None
    blocks: list[tuple[int, bytes]]  # (record count, decompressed data), kept for decoding


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def long(self) -> int:
        result = shift = 0
        buf = self.buf
        while True:
            if self.pos >= len(buf):
                raise GuardError(400, "truncated container")
            b = buf[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7
            if shift > 63:
                raise GuardError(400, "malformed varint in container")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise GuardError(400, "truncated container")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def scan_container(
    body: bytes,
    *,
    max_events: int,
    max_decoded_bytes: int,
    max_blocks: int = 8192,
    max_schema_bytes: int = 64 << 10,
) -> ScanResult:
    """Check framing, codec, schema size, block and record counts and decompressed
    size of a wire batch. Each block costs a decompressor call however small it is,
    and a header schema is parsed whole, so both are capped too."""
    cur = _Cursor(body)
    if cur.take(len(MAGIC)) != MAGIC:
        raise GuardError(400, "not an Avro object container (bad magic)")
    meta: dict[str, bytes] = {}
    while True:
        count = cur.long()
        if count == 0:
            break
        if count < 0:
            count = -count
            cur.long()  # block byte size, unused
        if count > 10_000:
            raise GuardError(400, "container header has too many metadata entries")
        for _ in range(count):
            key = cur.take(cur.long()).decode("utf-8", "replace")
            meta[key] = cur.take(cur.long())
    schema_json = meta.get("avro.schema")
    if schema_json is not None and len(schema_json) > max_schema_bytes:
        raise GuardError(400, f"container schema exceeds {max_schema_bytes} bytes")
    sync = cur.take(SYNC_SIZE)
    header_len = cur.pos
    codec = meta.get("avro.codec", b"null").decode("utf-8", "replace")
    if codec not in DECODABLE_CODECS:
        raise GuardError(400, f"unsupported codec {codec!r}; use zstandard or deflate")
    records = decoded = 0
    blocks: list[tuple[int, bytes]] = []
    while cur.pos < len(body):
        n = cur.long()
        size = cur.long()
        if n < 0 or size < 0:
            raise GuardError(400, "malformed container block header")
        if len(blocks) >= max_blocks:
            raise GuardError(413, f"batch holds more than {max_blocks} container blocks")
        records += n
        if records > max_events:
            raise GuardError(413, f"batch holds more than {max_events} events; split it")
        data = cur.take(size)
        if cur.take(SYNC_SIZE) != sync:
            raise GuardError(400, "container block sync marker mismatch")
        plain = _decompress(codec, data, max_decoded_bytes - decoded)
        decoded += len(plain)
        blocks.append((n, plain))
    return ScanResult(
        codec=codec,
        records=records,
        decoded_bytes=decoded,
        header_len=header_len,
        schema_json=schema_json,
        blocks=blocks,
    )


def _decompress(codec: str, data: bytes, budget: int) -> bytes:
    """Decompress ``data`` into at most ``budget`` bytes; GuardError(413) past it."""
    too_big = GuardError(413, "batch decompresses to more than the allowed size")
    if codec == "null":
        if len(data) > budget:
            raise too_big
        return data
    try:
        if codec == "deflate":
            d = zlib.decompressobj(-15)
            out = d.decompress(data, budget + 1)
            if len(out) > budget or d.unconsumed_tail:
                raise too_big
            return out
        chunks: list[bytes] = []
        total = 0
        rest = data
        while rest:  # zstd: one frame after another, each bounded by what is left
            dz = zstd.ZstdDecompressor()
            out = dz.decompress(rest, max_length=budget - total + 1)
            total += len(out)
            if total > budget or (not dz.eof and not dz.needs_input):
                raise too_big
            if not dz.eof:
                raise GuardError(400, "truncated zstandard block")
            chunks.append(out)
            rest = dz.unused_data
        return b"".join(chunks)
    except GuardError:
        raise
    except Exception as exc:  # zlib.error / ZstdError on corrupt data
        raise GuardError(400, f"corrupt {codec} block: {exc}") from exc
