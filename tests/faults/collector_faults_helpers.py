"""Helpers for the collector fault tests (crashes and hostile input).

What "a clean data dir" means, checked the same way after a crash matrix and after
a fuzz run: every part file the ledger knows is exactly its committed length and
reads completely as an Avro container; no part file exists that the ledger does
not know; and (for the crash test) the committed prefix of each part is readable
even while the collector is dead and has not yet truncated the torn tail.

The builders and bucket readers of the collector tests are reused from
``tests/collector/collector_helpers.py`` (importable from here: the ``pythonpath``
setting in pyproject.toml puts ``tests/collector`` on the path, also for runs that
collect ``tests/faults`` alone).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import fastavro
from collector_helpers import (
    END_SONG,
    FIXED_TS,
    PAGE_VIEW,
    UID_FIELD,
    BatchMaker,
    part_files,
    read_uids,
    record_for,
    wsgi_call,
)

from spotify_events.collector.ledger import Ledger, LedgerState

__all__ = [
    "END_SONG",
    "FIXED_TS",
    "PAGE_VIEW",
    "UID_FIELD",
    "BatchMaker",
    "DataDirCheck",
    "check_committed_prefixes",
    "check_data_dir",
    "files_outside",
    "load_ledger",
    "part_files",
    "read_uids",
    "record_for",
    "snapshot_tree",
    "wsgi_call",
]


@dataclass
class DataDirCheck:
    parts: int  # part files checked
    records: int  # Avro records read back in total


def load_ledger(data_dir: Path) -> LedgerState:
    """The ledger of a (stopped or dead) collector's data dir."""
    ledger = Ledger(data_dir, read_only=True)
    try:
        return ledger.load()
    finally:
        ledger.close()


def _read_all(data: bytes, where: str) -> int:
    """Read a whole container; AssertionError naming ``where`` if any byte is bad."""
    try:
        return sum(1 for _ in fastavro.reader(io.BytesIO(data)))
    except Exception as exc:
        raise AssertionError(f"{where}: not a complete Avro container: {exc!r}") from exc


def check_data_dir(data_dir: Path) -> DataDirCheck:
    """A stopped collector's data dir is clean (see the module docstring)."""
    state = load_ledger(data_dir) if (data_dir / "_ledger.db").exists() else LedgerState()
    on_disk = {str(p.relative_to(data_dir)) for p in part_files(data_dir)}
    unknown = on_disk - set(state.parts)
    assert not unknown, f"part files the ledger never committed: {sorted(unknown)}"
    records = 0
    for rel, part in sorted(state.parts.items()):
        full = data_dir / rel
        data = full.read_bytes()
        assert len(data) == part.committed_len, (
            f"{rel}: {len(data)} bytes on disk, ledger committed {part.committed_len}"
        )
        n = _read_all(data, rel)
        assert n == part.events, f"{rel}: {n} records, ledger says {part.events}"
        records += n
    return DataDirCheck(parts=len(state.parts), records=records)


def check_committed_prefixes(data_dir: Path) -> DataDirCheck:
    """Right after a SIGKILL (before any restart truncates): each part file is at least
    its committed length, and that committed prefix is a complete Avro container."""
    state = load_ledger(data_dir)
    records = 0
    for rel, part in sorted(state.parts.items()):
        data = (data_dir / rel).read_bytes()
        assert len(data) >= part.committed_len, (
            f"{rel}: {len(data)} bytes on disk, shorter than committed {part.committed_len}"
        )
        n = _read_all(data[: part.committed_len], f"{rel} (committed prefix)")
        assert n == part.events, f"{rel}: {n} committed records, ledger says {part.events}"
        records += n
    return DataDirCheck(parts=len(state.parts), records=records)


def snapshot_tree(root: Path) -> set[str]:
    """Every path (files and directories) below ``root``, relative to it."""
    out: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def files_outside(root: Path, before: set[str], allowed: Path) -> list[str]:
    """Paths below ``root`` that are new since ``before`` and not inside ``allowed``."""
    allowed_rel = os.path.relpath(allowed, root)
    new = snapshot_tree(root) - before
    return sorted(p for p in new if p != allowed_rel and not p.startswith(allowed_rel + os.sep))
