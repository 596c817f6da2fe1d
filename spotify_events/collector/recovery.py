"""Recovery: making memory and disk agree with the ledger, at startup and after any
failure, without losing an acknowledged byte: what is cut back or moved goes to the
quarantine first (docs/architecture.md).

Also the checks a data directory passes before a ledger opens in it."""

from __future__ import annotations

import json
import os
from collections import Counter

from .buckets import bucket_dir, header_length, read_marker
from .datadir import LOCK_FILE, DataDirError, FileModes
from .dedupe import BatchApplier
from .ledger import INCIDENT_PREFIX, LEDGER_FILE, LedgerState, PartState, incident_identity
from .partitions import BucketLayout


class Recovery(BatchApplier):
    """Rebuilds the in-memory state from the ledger; quarantines what it cannot trust."""

    def _recover(self) -> None:
        """Make memory and disk agree with the ledger (startup, and after any failure).

        Nothing is deleted or truncated away: bytes past a part's committed length
        (a crash between write and commit, or a ledger older than the files) are
        copied to the quarantine before the part is cut back; a part whose committed
        prefix is damaged, and part files no ledger row knows, are moved there.
        """
        while self._files:
            self._files.popitem()[1].close()
        self._active.clear()
        state = self.ledger.load()
        root = self.data_dir
        # A marker without a closed ledger row: we crashed between the two, or the ledger
        # is older than the files. Trust the marker, before any part is looked at: a
        # closed bucket's files are never changed.
        adopted: set[tuple[str, int]] = set()
        for b in state.buckets.values():
            if not b.closed:
                marker = read_marker(
                    os.path.join(root, bucket_dir(b.event_type, b.hour)), self.layout.marker
                )
                if marker is not None:
                    b.closed, b.closed_at, b.summary = True, marker.get("closed_at"), marker
                    self.ledger.save(buckets=[b])
                    adopted.add((b.event_type, b.hour))
        for part in state.parts.values():
            bucket = state.buckets.get((part.event_type, part.hour))
            if part.quarantined or (bucket is not None and bucket.closed):
                if (part.event_type, part.hour) in adopted:
                    self._note_closed_tail(part, state)
                continue
            if self._damaged(part, state):
                continue
            self._move_tail_aside(part, state)
            key = (part.event_type, part.hour, part.fingerprint)
            active = self._active.get(key)
            if active is None or part.index > active.index:
                self._active[key] = part
        self._quarantine_unknown_parts(state)
        self.state = state
        self._open_buckets = {k: b for k, b in state.buckets.items() if not b.closed}
        self._next_close_at = min(
            (self._close_deadline(b.hour) for b in self._open_buckets.values()),
            default=float("inf"),
        )
        self._missing.clear()
        self._missing_total = 0
        self._count_missing(state.streams.values())
        kept = [json.loads(v) for k, v in state.meta.items() if k.startswith(INCIDENT_PREFIX)]
        self._incidents_kept = Counter(str(i.get("producer_id")) for i in kept)
        self._incidents_seen = {incident_identity(i) for i in kept}

    def _move_tail_aside(self, part: PartState, state: LedgerState) -> None:
        """Bytes past the committed length: keep a readable copy, then cut the part back."""
        full = os.path.join(self.data_dir, part.path)
        size = os.lstat(full).st_size if os.path.lexists(full) else 0
        if size <= part.committed_len:
            return
        sync = bytes.fromhex(part.sync)
        with open(full, "r+b") as fh:
            head = fh.read(header_length(full, sync)) if part.committed_len else b""
            fh.seek(part.committed_len)
            tail = fh.read()
            where = self._quarantine.keep_copy(
                part.path,
                head + tail,
                f"{len(tail)} bytes past the committed length {part.committed_len}",
            )
            fh.truncate(part.committed_len)
            fh.flush()
            os.fsync(fh.fileno())
        self._collector_incident(
            state,
            "uncommitted_bytes",
            f"{part.path} had {len(tail)} bytes past its committed length (a crash before "
            f"the ledger commit, whose events the producer retries, or a ledger older than "
            f"the files); they are kept in {where}",
        )

    def _note_closed_tail(self, part: PartState, state: LedgerState) -> None:
        """Say (once: the bucket is now closed in the ledger too) that a part of a bucket
        closed under a newer ledger holds bytes this ledger never committed. They stay
        where they are, as the bucket's marker describes them; the numbers of their
        events are not in this ledger, so the report may count those as missing."""
        full = os.path.join(self.data_dir, part.path)
        size = os.lstat(full).st_size if os.path.lexists(full) else 0
        if size <= part.committed_len:
            return
        self._collector_incident(
            state,
            "closed_bucket_ahead_of_ledger",
            f"{part.path} holds {size - part.committed_len} bytes past the length "
            f"{part.committed_len} the ledger knows, in a bucket closed under a newer "
            "ledger (was it restored from an older copy?); the closed bucket is left as "
            "it is, so events the ledger does not know may be counted missing",
        )

    def _quarantine_unknown_parts(self, state: LedgerState) -> None:
        """Move part files no ledger row knows out of open buckets, into the quarantine.

        Only real directories of registered event types are walked (no symlink is
        followed), only regular ``part-*.avro`` files are moved, closed buckets are
        left as they are, and nothing is deleted.
        """
        root = self.data_dir
        for etype in sorted(self._types):
            top = os.path.join(root, etype)
            if not os.path.isdir(top) or os.path.islink(top):
                continue
            stack = [top]
            while stack:
                directory = stack.pop()
                with os.scandir(directory) as it:
                    entries = list(it)
                if any(e.name == self.layout.marker for e in entries):
                    continue
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif (
                        e.is_file(follow_symlinks=False)
                        and self.layout.owns(e.name)
                        and os.path.relpath(e.path, root) not in state.parts
                    ):
                        rel = os.path.relpath(e.path, root)
                        size = e.stat(follow_symlinks=False).st_size
                        where = self._quarantine.move(rel, "no ledger row knows this part file")
                        self._collector_incident(
                            state,
                            "unknown_part_file",
                            f"{rel} ({size} bytes) is not in "
                            f"the ledger (a crash before its first commit, or a lost or older "
                            f"ledger); moved to {where}",
                        )


def prepare_data_dir(data_dir: str, modes: FileModes) -> None:
    """Create the data dir (owner-only) if needed; a clear error naming it if unusable."""
    try:
        if not os.path.lexists(data_dir):
            os.makedirs(data_dir, modes.directory)
            os.chmod(data_dir, modes.directory)
        if not os.path.isdir(data_dir):
            raise DataDirError(f"data directory {data_dir} is not a directory")
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise DataDirError(
                f"data directory {data_dir} is not writable by this user (uid {os.getuid()})"
            )
    except OSError as exc:
        raise DataDirError(f"cannot use data directory {data_dir}: {exc.strerror}") from exc


def check_type_names(data_dir: str, event_types: frozenset[str]) -> None:
    """Refuse event types whose directory cannot exist here, or exists as a symlink.

    A full name longer than the file system allows would fail every batch of that
    type the same way (ENAMETOOLONG): found at startup instead, naming the type.
    """
    try:
        name_max = os.pathconf(data_dir, "PC_NAME_MAX")
        path_max = os.pathconf(data_dir, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    # DATA_DIR/<type>/YYYY-MM-DD/HH/part-<16 hex>-NNNN.avro, and its quarantine copy
    longest_rest = len("/_quarantine/YYYYMMDDTHHMMSSZ-4194304/") + len(
        "/YYYY-MM-DD/HH/part-0123456789abcdef-0000.avro.tail.avro.99"
    )
    for etype in sorted(event_types):
        size = len(etype.encode())
        if size > name_max or len(data_dir.encode()) + size + longest_rest > path_max:
            raise DataDirError(
                f"event type {etype!r} ({size} bytes) is too long for a directory name under "
                f"{data_dir} (the file system allows {name_max} bytes per name, {path_max} "
                "per path); shorten its namespace or name"
            )
        top = os.path.join(data_dir, etype)
        if os.path.islink(top) or (os.path.lexists(top) and not os.path.isdir(top)):
            raise DataDirError(
                f"{top} is a symlink or not a directory; the collector writes only into "
                "directories it created. Move it out of the data directory."
            )


def foreign_entries(data_dir: str) -> list[str]:
    """Names in the data dir other than the lock and the ledger's own files."""
    own = {LOCK_FILE, LEDGER_FILE, LEDGER_FILE + "-wal", LEDGER_FILE + "-shm"}
    with os.scandir(data_dir) as it:
        return sorted(e.name for e in it if e.name not in own)


def owned_part_files(data_dir: str, event_types: frozenset[str], layout: BucketLayout) -> list[str]:
    """Part files of ``layout`` in the buckets of ``data_dir`` (paths relative to it).

    A partition's ledger directory holds nothing else, so it looks empty when the
    ledger is lost; its part files sit in the bucket directories it shares with the
    other partitions. Only real directories of registered types are walked.
    """
    found = []
    for etype in sorted(event_types):
        top = os.path.join(data_dir, etype)
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for directory, _, files in os.walk(top):
            found += [
                os.path.relpath(os.path.join(directory, n), data_dir)
                for n in sorted(files)
                if layout.owns(n)
            ]
    return found
