"""Part files: which one a run of events is appended to, opening them within a limit,
and refusing one that is damaged or not writable (it stays as it is; new events go
to a new part)."""

from __future__ import annotations

import os

from .buckets import CLOSED_MARKER, PartFile, bucket_dir, part_damage
from .datadir import fsync_dir, make_dirs, open_part
from .delivery_base import DeliveryBase
from .ledger import LedgerState, PartState
from .partitions import HourClosedError, hour_lock


class PartFiles(DeliveryBase):
    """The open part files (least recently used closed first) and the active part per
    (type, hour, schema)."""

    def open_files(self) -> int:
        return len(self._files)

    def _part_for(self, etype: str, hour: int, fingerprint: bytes) -> PartState:
        """The part file to append to, never one that is full, damaged, unwritable or not
        ours."""
        fp_hex = fingerprint.hex()
        key = (etype, hour, fp_hex)
        part = self._active.get(key)
        if (
            part is not None
            and part.committed_len < self.config.max_part_bytes
            and (
                part.path in self._files
                or not (self._damaged(part, self.state) or self._unwritable(part))
            )
        ):
            return part
        index = part.index + 1 if part is not None else 0
        if part is not None:
            old = self._files.pop(part.path, None)
            if old is not None:
                old.close()
        directory = bucket_dir(etype, hour)
        while True:  # a name no ledger row and no file has: O_EXCL will not fail
            rel = os.path.join(directory, self.layout.part_name(fp_hex, index))
            if rel not in self.state.parts and not os.path.lexists(
                os.path.join(self.data_dir, rel)
            ):
                break
            index += 1
        part = PartState(
            path=rel,
            event_type=etype,
            hour=hour,
            fingerprint=fp_hex,
            index=index,
            sync=os.urandom(16).hex(),
        )
        self.state.parts[rel] = part
        self._active[key] = part
        return part

    def _open_part(self, part: PartState) -> PartFile:
        pf = self._files.get(part.path)
        if pf is not None:
            self._files.move_to_end(part.path)
            return pf
        while len(self._files) >= self.config.max_open_files:
            self._files.popitem(last=False)[1].close()  # fsyncs: what it got is durable
        full = os.path.join(self.data_dir, part.path)
        directory = make_dirs(self.data_dir, os.path.dirname(part.path), self.config.modes)
        new = part.committed_len == 0
        if new and self.layout.part_tag:  # one partition of several: see hour_lock
            with hour_lock(directory):
                if os.path.exists(os.path.join(directory, CLOSED_MARKER)):
                    raise HourClosedError(
                        f"{part.path}: every partition closed the hour before this one's "
                        "first part file there (a commit that read its clock before the "
                        "hour's deadline and got here after it); not written"
                    )
                fd = open_part(full, self.config.modes, new=True)
        else:
            fd = open_part(full, self.config.modes, new=new)
        pf = self._files[part.path] = PartFile(full, fd)
        if new:
            fsync_dir(directory)
        return pf

    def _damaged(self, part: PartState, state: LedgerState) -> bool:
        """Check a part file before reopening it; a damaged one is quarantined for good."""
        full = os.path.join(self.data_dir, part.path)
        damage = part_damage(full, part.committed_len, bytes.fromhex(part.sync))
        if damage is None:
            return False
        where = "(file missing)"
        if os.path.lexists(full):
            where = self._quarantine.move(part.path, f"damaged: {damage}")
        part.quarantined = where
        self.ledger.save(parts=[part])
        self._collector_incident(
            state,
            "damaged_part_file",
            f"{part.path} is {damage}; its {part.events} acknowledged events may be lost "
            f"or partly readable; moved to {where}; new events go to a new part file",
        )
        return True

    def _unwritable(self, part: PartState) -> bool:
        """Whether an intact part file cannot be appended to (made read-only or immutable
        behind the collector's back). It is left as it is, intact and in the ledger, and
        new events go to a new part: appending would fail every batch of its hour."""
        full = os.path.join(self.data_dir, part.path)
        if not part.committed_len or os.access(full, os.W_OK):
            return False
        self._collector_incident(
            self.state,
            "part_file_not_writable",
            f"{part.path} cannot be written to; its {part.events} events stay in it "
            "untouched; new events of its hour go to a new part file",
        )
        return True
