"""Avro object container framing around records the caller has already encoded.

A wire batch is an Avro object container (the specification's "Object Container
Files": magic, a metadata map holding the schema and codec, a sync marker, then
blocks of records). fastavro's container writer takes records as dicts and runs
each through its generic writer: for the SDK's envelopes that cost ~7 µs per event,
several times the rest of a send (benchmarks/RESULTS.md, "Figures behind choices").
The wire module encodes envelopes in one tight loop instead and hands the bytes
here; this module only frames them. Its output is byte for byte what fastavro's
writer produces for the same records, metadata, codec and sync marker
(tests/sdk/test_container.py), so any Avro reader opens it.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

MAGIC = b"Obj\x01"
SYNC_SIZE = 16


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # raw deflate, as the spec says
    return compressor.compress(data) + compressor.flush()


#: Block compression per codec name, as written in the header's ``avro.codec``.
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "null": bytes,
    "deflate": _deflate,
    "zstandard": zstd.compress,
}


def write_long(out: bytearray, value: int) -> None:
    """Avro's zigzag varint of a 64-bit ``value`` (the caller checks the range)."""
    n = (value << 1) ^ (value >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def write_bytes(out: bytearray, data: bytes) -> None:
    """Avro ``bytes`` (and, given UTF-8, ``string``): a length, then the data."""
    write_long(out, len(data))
    out += data


def container(
    schema_json: str,
    metadata: Mapping[str, str],
    blocks: Iterable[tuple[int, bytes]],
    codec: str,
) -> bytes:
    """A container of ``blocks`` — (record count, the records' encoded bytes) — with
    ``metadata`` ahead of ``avro.codec`` and ``avro.schema`` in the header, the order
    fastavro writes them in. Raises ValueError for a codec it cannot write."""
    compress = COMPRESSORS.get(codec)
    if compress is None:
        raise ValueError(f"unrecognized codec: {codec}")
    sync = os.urandom(SYNC_SIZE)
    meta = {**metadata, "avro.codec": codec, "avro.schema": schema_json}
    out = bytearray(MAGIC)
    write_long(out, len(meta))
    for key, value in meta.items():
        write_bytes(out, key.encode())
        write_bytes(out, value.encode())
    out.append(0)
    out += sync
    for count, data in blocks:
        write_long(out, count)
        write_bytes(out, compress(data))
        out += sync
    return bytes(out)
