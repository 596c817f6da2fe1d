"""Partition ownership: leases in a JetStream key-value bucket, changed only by compare-and-swap.

The bucket (``<stream>_leases``, replicated like the stream) holds

* ``p.<n>``: partition n's lease, ``{"owner": worker id or null, "expires": unix time}``;
* ``w.<worker id>``: a worker's heartbeat, ``{"expires": unix time}``.

Every change to a lease is an ``update`` with the revision the worker last read
(JetStream's expected-last-subject-sequence), or a ``create`` of an absent key, so
two workers can never both believe they took the same partition: one of the
writes fails. A worker renews its leases every ``ttl / 3``; a lease whose
``expires`` has passed (or whose owner released it) may be taken by anyone.

Fence: a worker writes a partition only while (a) its own monotonic clock says the
lease has at least ``ttl / 3`` left, counted from *before* the renewal was sent
(checked right before each write, no round trip) and (b) the bucket confirmed the
lease's revision as its own within the last ``ttl / 3``: every renewal and
acquisition is such a confirmation (a compare-and-swap on that revision), and a
commit that finds the last one older reads the lease back first. A worker that
stalls or loses its connection thus stops writing before the lease can expire, and
another worker starts only after it has expired. Expiry compares unix times across
hosts: keep clocks in sync (NTP) to well under ``ttl / 3``; should they drift
further and another worker take a lease early, (b) stops the old owner within
``ttl / 3`` (a read per commit would narrow that to one commit, at a round trip
per commit).

Bound on a takeover: a dead worker's leases expire at most ``ttl`` after its last
renewal, and the others look every ``ttl / 3``: its partitions are owned again
within ``ttl * 4 / 3`` (plus one round trip). Messages it had fetched but not
acknowledged come back after the consumer's ack wait.

Balance: each worker aims at ``ceil(partitions / live workers)`` leases, takes free
ones up to that, and releases its highest-numbered extras when more workers join. A
worker short of its share while another holds more than its share looks again every
:data:`REBALANCE_POLL` seconds instead of every ``ttl / 3``, so a released partition
is owned again within a fraction of a second instead of up to ``ttl / 3`` later (a
partition without an owner is a pause in its delivery).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, SpotifyEventsError

log = logging.getLogger(__name__)
#: How often a worker short of its share looks for released partitions while a
#: release is due (see the module's "Balance").
REBALANCE_POLL = 0.25


class LeaseLost(SpotifyEventsError):
    """The worker no longer owns the partition (or cannot prove it does)."""


@dataclass
class Lease:
    partition: int
    revision: int
    valid_until: float  # local monotonic time after which we stop writing
    confirmed_at: float  # local monotonic time the bucket last confirmed the revision


class LeaseTable:
    """This worker's view of the lease bucket; every method runs on the worker's loop."""

    def __init__(
        self,
        js: Any,
        bucket: str,
        kv: Any,
        worker_id: str,
        partitions: int,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ConfigError("ttl must be > 0")
        self.js = js
        self.bucket = bucket
        self.kv = kv
        self.worker_id = worker_id
        self.partitions = partitions
        self.ttl = ttl
        self.clock = clock
        self.monotonic = monotonic
        self.owned: dict[int, Lease] = {}
        #: partition -> the other worker holding it, as the last try_acquire read it
        self.held_by: dict[int, str] = {}
        self._worker_rev = 0

    # -- keys and values --------------------------------------------------------
    @staticmethod
    def key(partition: int) -> str:
        return f"p.{partition}"

    def _value(self, owner: str | None) -> bytes:
        return json.dumps({"owner": owner, "expires": self.clock() + self.ttl}).encode()

    # -- fence ------------------------------------------------------------------
    def check_local(self, partition: int) -> None:
        """The part of the fence that needs no round trip (run right before writing)."""
        lease = self.owned.get(partition)
        if lease is None:
            raise LeaseLost(f"partition {partition} is not ours")
        if self.monotonic() >= lease.valid_until:
            raise LeaseLost(f"lease on partition {partition} not renewed in time")

    def revision_due(self, partition: int) -> bool:
        """Whether a commit must :meth:`confirm` first: the bucket last confirmed our
        revision (acquisition, renewal or read) ``ttl / 3`` or more ago."""
        lease = self.owned.get(partition)
        return lease is None or self.monotonic() - lease.confirmed_at >= self.ttl / 3

    async def confirm(self, partition: int) -> None:
        """The full fence: the local check, and the bucket still holds our revision."""
        from nats.js.errors import KeyNotFoundError

        self.check_local(partition)
        started = self.monotonic()
        try:
            entry = await self.kv.get(self.key(partition))
        except KeyNotFoundError as exc:
            raise LeaseLost(f"lease on partition {partition} is gone") from exc
        lease = self.owned.get(partition)
        if lease is None or entry.revision != lease.revision:
            self.owned.pop(partition, None)
            raise LeaseLost(f"partition {partition} was taken over (revision {entry.revision})")
        lease.confirmed_at = started

    # -- changes ----------------------------------------------------------------
    async def renew(self) -> list[int]:
        """Renew every owned lease; returns the partitions lost (taken or deleted)."""
        from nats.js.errors import KeyWrongLastSequenceError

        lost = []
        for partition, lease in list(self.owned.items()):
            started = self.monotonic()
            try:
                lease.revision = await self.kv.update(
                    self.key(partition), self._value(self.worker_id), last=lease.revision
                )
                lease.valid_until = started + self.ttl * 2 / 3
                lease.confirmed_at = started
            except KeyWrongLastSequenceError:
                log.warning("lost the lease on partition %d to another worker", partition)
                self.owned.pop(partition, None)
                lost.append(partition)
            except Exception as exc:  # no quorum, no connection: the fence stops writes
                log.debug("renewing partition %d failed: %s", partition, exc)
        return lost

    async def heartbeat(self) -> None:
        key = f"w.{self.worker_id}"
        self._worker_rev = await self.kv.put(key, self._value(self.worker_id))

    async def live_workers(self) -> int:
        """Workers whose heartbeat has not expired (one stream-info call, then a get each)."""
        from nats.js.errors import KeyNotFoundError

        prefix = f"$KV.{self.bucket}."
        info = await self.js.stream_info(f"KV_{self.bucket}", subjects_filter=f"{prefix}w.>")
        now = self.clock()
        live = 0
        for subject in info.state.subjects or {}:
            key = subject[len(prefix) :]
            if key == f"w.{self.worker_id}":
                live += 1
                continue
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue
            if _expires(entry.value) > now:
                live += 1
        return max(live, 1)

    def target(self, live: int) -> int:
        return math.ceil(self.partitions / max(live, 1))

    def release_due(self, target: int) -> bool:
        """Whether this worker is short of ``target`` while another holds more than it
        (as the last round of :meth:`try_acquire` read them): that one gives its extras
        back at its next round, and whoever looks first takes them."""
        if len(self.owned) >= target:
            return False
        held = [owner for p, owner in self.held_by.items() if p not in self.owned]
        return any(held.count(owner) > target for owner in set(held))

    async def try_acquire(self, partition: int) -> bool:
        """Take a free or expired lease by compare-and-swap; True if it is now ours."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        key = self.key(partition)
        started = self.monotonic()
        try:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                revision = await self.kv.create(key, self._value(self.worker_id))
            else:
                current = _decode(entry.value)
                if current.get("owner") and _expires(entry.value) > self.clock():
                    self.held_by[partition] = str(current["owner"])
                    return False
                revision = await self.kv.update(
                    key, self._value(self.worker_id), last=entry.revision
                )
        except KeyWrongLastSequenceError:
            return False  # someone else was faster
        self.held_by.pop(partition, None)
        self.owned[partition] = Lease(partition, revision, started + self.ttl * 2 / 3, started)
        log.info("worker %s owns partition %d (revision %d)", self.worker_id, partition, revision)
        return True

    async def release(self, partition: int) -> None:
        """Give a lease back (after the partition's last commit) so another can take it now."""
        lease = self.owned.pop(partition, None)
        if lease is None:
            return
        try:
            await self.kv.update(self.key(partition), self._value(None), last=lease.revision)
        except Exception as exc:  # it expires on its own
            log.warning("releasing partition %d failed (it will expire): %s", partition, exc)
        else:
            log.info("worker %s released partition %d", self.worker_id, partition)

    async def leave(self) -> None:
        try:
            await self.kv.delete(f"w.{self.worker_id}")
        except Exception as exc:  # the heartbeat expires on its own
            log.debug("removing the worker heartbeat failed: %s", exc)

    def candidates(self) -> list[int]:
        """Unowned partitions, starting at a worker-specific offset (less contention)."""
        start = zlib.crc32(self.worker_id.encode()) % self.partitions
        order = [(start + i) % self.partitions for i in range(self.partitions)]
        return [p for p in order if p not in self.owned]


def _decode(value: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(value or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _expires(value: bytes | None) -> float:
    try:
        return float(_decode(value).get("expires", 0.0))
    except (TypeError, ValueError):
        return 0.0


async def lease_bucket(js: Any, name: str, *, replicas: int, ttl: float) -> Any:
    """The lease bucket, created when absent. Its keys age out after an hour unwritten
    (or 10 TTLs), so heartbeats of workers long gone do not pile up."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=name, history=1, ttl=max(3600.0, ttl * 10), replicas=replicas)
        )
