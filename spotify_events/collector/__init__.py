"""The reference collector: the server side that SDK batches are shipped to.

Two halves behind one seam (docs/architecture.md, "Scaling out"):

* *ingest* (:mod:`.app`, :mod:`.ingest`, :mod:`.guard`): HTTP, auth, size and
  decompression limits, container decode, per-event validation. Stateless.
* *delivery* (:mod:`.delivery`, :mod:`.ledger`, :mod:`.buckets`, :mod:`.datadir`):
  dedupe by (producer, event type, seq), the SQLite loss ledger, immutable hourly
  Avro buckets in a locked data directory where nothing acknowledged is deleted.
  Reached through :class:`~.delivery.Delivery` (``deliver``, ``close``).

:mod:`.report` turns the ledger into the delivery report; :mod:`.server` runs it
all on waitress; :mod:`.cli` holds the ``collector`` and ``report`` commands.
Installed with ``pip install 'spotify-events[collector]'``.
"""

from __future__ import annotations

from .delivery import LocalDelivery
from .ingest import BatchFacts, Ingest, IngestedBatch, IngestError, IngestLimits, Rejection
from .seam import Delivery, DeliveryConfig, DeliveryResult, DeliveryStatus

__all__ = [
    "BatchFacts",
    "Delivery",
    "DeliveryConfig",
    "DeliveryResult",
    "DeliveryStatus",
    "Ingest",
    "IngestError",
    "IngestLimits",
    "IngestedBatch",
    "LocalDelivery",
    "Rejection",
]
