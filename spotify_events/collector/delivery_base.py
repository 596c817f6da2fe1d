"""What the parts of :class:`~.delivery.LocalDelivery` share: its state and incidents.

LocalDelivery is one writer over one ledger; its roles live in modules of their own,
each a class building on the one before (:mod:`.parts`, then :mod:`.closer`, which
closes parts, :mod:`.dedupe`, which needs both, and :mod:`.recovery`, which resets
all three), so every part sees the same in-memory state under the same lock. The
attributes are declared here and set by ``LocalDelivery.__init__``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ..schemas import SchemaRegistry
from .buckets import PartFile
from .datadir import DataDirLock, Quarantine
from .ledger import (
    COLLECTOR_INCIDENT_PREFIX,
    COLLECTOR_SOURCE,
    BucketState,
    Ledger,
    LedgerState,
    PartState,
)
from .partitions import BucketLayout
from .seam import DeliveryConfig

log = logging.getLogger("spotify_events.collector.delivery")


class DeliveryBase:
    """The state one LocalDelivery keeps beside its ledger, and its incident recorder."""

    data_dir: str
    layout: BucketLayout
    registry: SchemaRegistry
    config: DeliveryConfig
    clock: Callable[[], float]
    ledger: Ledger
    state: LedgerState
    _types: frozenset[str]
    _lock: threading.Lock
    _dir_lock: DataDirLock
    _quarantine: Quarantine
    _files: OrderedDict[str, PartFile]  # open part files, least recently used first
    _open_buckets: dict[tuple[str, int], BucketState]
    _next_close_at: float  # the earliest close deadline of an open bucket
    _marker_retry: dict[tuple[str, int], float]  # (type, hour): next try of a failed marker
    _active: dict[tuple[str, int, str], PartState]  # (type, hour, fingerprint): appended to
    _missing: dict[tuple[str, str], int]  # per (producer, type): numbers not accounted for
    _missing_total: int
    _incidents: int  # collector incidents recorded by this process
    _incidents_kept: dict[str, int]  # queue incidents in the ledger, by producer
    _incidents_refused: set[str]
    _incidents_seen: set[tuple[object, object, object]]  # incident_identity of those kept
    _range_limited: set[tuple[str, str]]  # streams told of as past max_ranges_per_stream

    def _collector_incident(self, state: LedgerState, kind: str, detail: str) -> None:
        """Record (durably, at once) something the collector itself found wrong on disk."""
        now = time.time()
        self._incidents += 1
        key = f"{COLLECTOR_INCIDENT_PREFIX}{now:.6f}:{os.getpid()}:{self._incidents}"
        value = json.dumps(
            {"producer_id": COLLECTOR_SOURCE, "kind": kind, "detail": detail, "at": now}
        )
        self.ledger.save(meta={key: value})
        state.meta[key] = value
        log.warning("%s: %s", kind, detail)
