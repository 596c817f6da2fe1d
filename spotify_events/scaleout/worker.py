"""``spotify-events deliver``: a delivery worker, from the stream to the buckets.

One asyncio loop in the main thread. Each owned partition has a
:class:`PartitionRunner`: a durable pull consumer on the partition's subject, read
through a :class:`~.pull.PullFeed` (a pull request kept open), feeding the
collector's own delivery half (:class:`~spotify_events.collector.delivery.
LocalDelivery`, one per partition, its ledger under ``DATA_DIR/_partitions/``).
Per batch taken from the feed (every message it holds, up to ``fetch_batch``
messages and :data:`COMMIT_MAX_BYTES`): decode the slices (one it cannot write is set
aside alone, not committed with the others), check the lease (the
fence: locally, and against the bucket when no renewal has confirmed it within a
third of the TTL), make them durable in one group commit, and only then acknowledge
them to JetStream. A crash before the acks means redelivery, and the ledger counts
the redelivered events as duplicates instead of writing them twice.

The group commit runs on the loop's own thread, although it fsyncs. Handed to a
thread pool, every commit cost the worker more CPU than the commit itself: the hand-off
and its answer wake two threads, and while a commit writes, the loop (receiving the
next messages) and the commit thread pass the GIL back and forth at every write and
fsync, several context switches each (benchmarks/RESULTS.md, "The worker's group
commit on its loop"). The loop waits meanwhile, for one bounded commit (and for the
delivery's lock while a thread closes due buckets), and a runner yields after each
commit. A runner also starts no commit while a round of lease renewals is due and not
done (:meth:`Worker.renewals_first`): renewals, every third of the TTL, are late by a
commit per owned partition at most, and the feeds' requests outlive that. A disk that
stalls for seconds stalls the worker's renewals too, so its leases lapse and other
workers take its partitions; the fence keeps it from writing once it is back (and the
partition directory's lock keeps the next owner out until it has closed it).

The loop also keeps the leases (:mod:`.leases`), closes due buckets, writes
``_CLOSED.json`` where every partition has closed an hour, and serves ``/healthz``
and ``/metrics`` when given a port. SIGTERM/SIGINT: stop fetching, finish the
commit in progress, acknowledge it, release the leases (so others take over at
once) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import math
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..collector.app import PAGE_CHALLENGE, PAGE_HEADERS, token_matches
from ..collector.delivery import LocalDelivery
from ..collector.ingest import IngestedBatch
from ..collector.page import render_page
from ..collector.partitions import finalize_hours, partition_layout
from ..collector.report import load_report
from ..collector.seam import DeliveryConfig, DeliveryStatus
from ..errors import SpotifyEventsError
from ..schemas import SchemaRegistry
from .connection import check_server_version, close, connect
from .leases import REBALANCE_POLL, LeaseLost, LeaseTable, lease_bucket
from .pull import PullFeed, ensure_consumer
from .slices import SliceDecodeError, decode_message
from .stream import retry_until, stream_partitions
from .worker_config import WorkerConfig

log = logging.getLogger(__name__)
PREFIX = "spotify_events_deliver"
#: Message data one group commit takes at most (at least one message): what bounds how
#: long a commit holds the loop (about 30,000 events of ~35 bytes, tens of ms).
COMMIT_MAX_BYTES = 1 << 20


class WorkerMetrics:
    """The worker's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            f"{PREFIX}_messages",
            "Stream messages by outcome (committed, retried, invalid).",
            ["outcome"],
            registry=r,
        )
        self.events = Counter(
            f"{PREFIX}_events",
            "Events by outcome (accepted, duplicate).",
            ["outcome"],
            registry=r,
        )
        self.owned = Gauge(f"{PREFIX}_partitions_owned", "Partitions this worker owns.", registry=r)
        self.lease_changes = Counter(
            f"{PREFIX}_lease_changes",
            "Lease changes (acquired, released, lost).",
            ["change"],
            registry=r,
        )
        self.pending = Gauge(
            f"{PREFIX}_partition_pending_messages",
            "Messages in a partition not yet delivered to this worker (consumer lag).",
            ["partition"],
            registry=r,
        )
        # the children a commit touches, looked up once
        self.committed = self.messages.labels("committed")
        self.accepted = self.events.labels("accepted")
        self.duplicates = self.events.labels("duplicate")
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Time of one group commit (write, fsync, ledger).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )


class PartitionRunner:
    """One owned partition: its consumer loop and its delivery."""

    def __init__(self, worker: Worker, partition: int, delivery: LocalDelivery) -> None:
        self.worker = worker
        self.partition = partition
        self.delivery = delivery
        self.stopping = False
        self.task: asyncio.Task[None] = asyncio.create_task(self._run())

    async def _run(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        w = self.worker
        durable = f"deliver_p{self.partition}"
        feed: PullFeed | None = None
        last_error = ""
        try:
            while not self.stopping:
                try:
                    if feed is None:
                        await ensure_consumer(
                            w.js,
                            w.config.stream,
                            durable,
                            f"{w.config.stream}.p.{self.partition}",
                            ConsumerConfig(
                                ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL,
                                ack_wait=w.config.ack_wait,
                                max_deliver=-1,
                                max_ack_pending=20 * w.config.fetch_batch,
                            ),
                        )
                        feed = PullFeed(
                            w.nc,
                            w.config.stream,
                            durable,
                            batch=w.config.fetch_batch,
                            max_bytes=COMMIT_MAX_BYTES,
                        )
                        await feed.start()
                    msgs = await feed.next_batch(timeout=1.0)
                except Exception as exc:  # no connection, no leader, consumer gone: retry quietly
                    text = f"{type(exc).__name__}: {exc}"
                    if text != last_error:
                        last_error = text
                        log.warning("partition %d: fetching failed: %s", self.partition, text)
                    if feed is not None:
                        await feed.close()
                        feed = None
                    await asyncio.sleep(0.5)
                    continue
                if not msgs:
                    continue
                last_error = ""
                await self._commit(msgs)
                left = msgs[-1].metadata.num_pending
                if left is not None:
                    w.metrics.pending.labels(str(self.partition)).set(left)
                # A commit holds the loop and a full feed hands out its next batch without
                # waiting: let the lease renewals and the other partitions in between.
                await asyncio.sleep(0)
        finally:
            if feed is not None:  # what it holds beyond the last commit goes back at once
                await feed.close()

    async def _commit(self, msgs: list[Any]) -> None:
        w = self.worker
        batches: list[IngestedBatch] = []
        good: list[Any] = []
        for msg in msgs:
            try:
                batch = decode_message(msg.data, received_at=time.time())
            except SliceDecodeError as exc:  # not deliverable: moved aside, counted, logged
                w.metrics.messages.labels("invalid").inc()
                seq = msg.metadata.sequence.stream
                path = await asyncio.to_thread(self._quarantine, seq, msg.data)
                log.error(
                    "partition %d: message %s is not a slice (%s); kept in %s",
                    self.partition,
                    seq,
                    exc,
                    path,
                )
                await _quietly(msg.term())
                continue
            unknown = self._unknown_schema(batch)
            if unknown:  # alone: in the group commit it would fail every message with it
                w.metrics.messages.labels("retried").inc()
                log.warning(
                    "partition %d: message %s holds events of %s; kept in the stream, "
                    "tried again in %.0f s",
                    self.partition,
                    msg.metadata.sequence.stream,
                    unknown,
                    w.config.ack_wait,
                )
                await _quietly(msg.nak(delay=w.config.ack_wait))
                continue
            batches.append(batch)
            good.append(msg)
        if not batches:
            return
        await w.renewals_first()
        try:
            if w.leases.revision_due(self.partition):  # confirm() checks locally first
                await asyncio.wait_for(w.leases.confirm(self.partition), w.config.lease_ttl / 3)
            else:  # confirmed lately: a lapsed lease stops the runner here (the fence only naks)
                w.leases.check_local(self.partition)
        except LeaseLost as exc:
            log.warning("partition %d: %s; stopping it", self.partition, exc)
            self.stopping = True
            await _answer_each(good, "nak")
            return
        except Exception as exc:  # cannot prove ownership now: retry later, write nothing
            log.debug("partition %d: lease check failed: %s", self.partition, exc)
            await _answer_each(good, "nak", delay=1)
            return
        started = time.perf_counter()
        # again under the writer lock: the lease may lapse while confirm() or the lock is awaited
        fence = functools.partial(w.leases.check_local, self.partition)
        results = self.delivery.deliver_all(batches, fence)  # on the loop: see the module doc
        w.metrics.commit_seconds.observe(time.perf_counter() - started)
        if all(r.status is DeliveryStatus.OK for r in results):
            await _answer_each(good, "ack")
            w.metrics.committed.inc(len(good))
            w.metrics.accepted.inc(sum(r.accepted for r in results))
            w.metrics.duplicates.inc(sum(r.duplicates for r in results))
        else:
            message = next(r.message for r in results if r.status is not DeliveryStatus.OK)
            log.warning("partition %d: commit failed (%s); redelivering", self.partition, message)
            w.metrics.messages.labels("retried").inc(len(good))
            await _answer_each(good, "nak", delay=1)

    def _unknown_schema(self, batch: IngestedBatch) -> str:
        """What a slice's schema is, if this worker's registry does not have it ("" if
        it does): collectors with a newer schema set accepted its events; a worker
        given that schema writes them."""
        if not batch.events:
            return ""
        event = batch.events[0]  # a slice holds one event type and schema
        schema = self.worker.registry.by_fingerprint(event.fingerprint)
        if schema is not None and schema.full_name == event.event_type:
            return ""
        return f"{event.event_type} schema {event.fingerprint.hex()}, which this worker lacks"

    def _quarantine(self, stream_seq: int, data: bytes) -> str:
        """Keep an undecodable message's bytes (fsynced) before it leaves the stream."""
        directory = os.path.join(
            self.worker.config.data_dir, partition_layout(self.partition).ledger_dir, "quarantine"
        )
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{stream_seq}.msg")
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return path


async def _answer_each(msgs: list[Any], answer: str, **kwargs: Any) -> None:
    """Ack or nak each message, one after the other: each only appends to the
    connection's buffer, so a task per message (``gather``) would cost more than it
    overlaps. Acknowledgement is per message, never "all up to here" (``AckPolicy.ALL``):
    a later commit would acknowledge an earlier message still waiting for its
    redelivery (after a nak, or fetched by the partition's previous owner)."""
    for msg in msgs:
        await _quietly(getattr(msg, answer)(**kwargs))


async def _quietly(awaitable: Any) -> None:
    """An ack/nak is a fire-and-forget publish; if it fails, JetStream redelivers."""
    try:
        await awaitable
    except Exception as exc:
        log.debug("ack/nak failed (the message will be redelivered): %s", exc)


class Worker:
    """The whole worker: connection, leases, runners, closer, health endpoint."""

    def __init__(self, config: WorkerConfig, *, worker_id: str | None = None) -> None:
        self.config = config
        self.worker_id = (
            worker_id or f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.worker_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.worker_id)
        self.registry = SchemaRegistry(config.schemas)
        self.delivery_config = DeliveryConfig(
            grace_period=config.grace_period, lateness=config.lateness
        )
        self.metrics = WorkerMetrics()
        self.runners: dict[int, PartitionRunner] = {}
        self.stop_event = asyncio.Event()
        self._renew_at = 0.0  # monotonic: when the next round of renewals is due
        self._renewed: asyncio.Future[None] | None = None  # resolved when that round is done
        self.nc: Any = None
        self.js: Any = None
        self.leases: LeaseTable = None  # type: ignore[assignment]  # set in run()
        self.partitions = 0
        self._http: WSGIServer | None = None

    # -- lifecycle --------------------------------------------------------------
    async def run(self, ready: Callable[[str], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, self.stop_event.set)
        timeout = self.config.startup_timeout
        self.nc = await retry_until(
            lambda: connect(self.config.urls, name=f"spotify-events-deliver-{self.worker_id}"),
            timeout=timeout,
            what="connecting to NATS",
        )
        try:
            check_server_version(self.nc)
            self.js = self.nc.jetstream(timeout=5.0)
            # collectors create the stream; a worker waits for it
            self.partitions = await retry_until(
                lambda: stream_partitions(self.js, self.config.stream),
                timeout=timeout,
                what=f"reading stream {self.config.stream}",
            )
            info = await self.js.stream_info(self.config.stream)
            bucket = f"{self.config.stream}_leases"
            kv = await retry_until(
                lambda: lease_bucket(
                    self.js,
                    bucket,
                    replicas=info.config.num_replicas or 1,
                    ttl=self.config.lease_ttl,
                ),
                timeout=timeout,
                what=f"opening the lease bucket {bucket}",
            )
            self.leases = LeaseTable(
                self.js, bucket, kv, self.worker_id, self.partitions, ttl=self.config.lease_ttl
            )
            if self.config.port is not None:
                url = self._start_http()
                if ready is not None:
                    ready(f"listening on {url}")
            if ready is not None:
                ready(f"worker {self.worker_id} delivering {self.config.stream}")
            # What exists now (modules, schemas, the connection) lives as long as the
            # worker: out of the collector's way. Each fetch then makes tens of thousands
            # of short-lived event tuples, and a full collection walks only those.
            gc.freeze()
            await self._keep_leases()
        finally:
            await self._shutdown()

    async def _keep_leases(self) -> None:
        """Balance partitions and close buckets; renewals run in their own task, so a
        slow step here (opening a partition's delivery recovers its files) never lets
        an owned lease lapse."""
        renewer = asyncio.create_task(self._renew_loop())
        tick = self.config.lease_ttl / 3
        next_close = 0.0
        try:
            while not self.stop_event.is_set():
                release_due = False
                try:  # each KV call is bounded by the JetStream context's timeout; no outer
                    # bound: cancelling a round half-way could orphan a runner or a lease
                    release_due = await self._balance()
                except Exception as exc:  # no quorum for a while: the fence stops writes
                    log.info("lease round failed: %s: %s", type(exc).__name__, exc)
                for p, runner in list(self.runners.items()):
                    if runner.task.done():  # lease lost (or the runner failed): let it go
                        await self._stop_runner(p, release=False)
                if time.monotonic() >= next_close:
                    next_close = time.monotonic() + self.config.close_interval
                    await self._close_buckets()
                self.metrics.owned.set(len(self.runners))
                wait = min(tick, REBALANCE_POLL) if release_due else tick
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), wait)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def renewals_first(self) -> None:
        """Wait, before a commit, for a round of lease renewals that is due.

        Each KV round trip of a round takes a few turns of the loop, and on each turn
        every runner with a backlog commits once: behind those commits, renewing n
        leases took n turns of n commits, the leases lapsed on the way, and the fence
        stopped this worker's own partitions though no other worker wanted them. With
        the runners waiting, a round waits only for the commits already under way.
        """
        if time.monotonic() >= self._renew_at:
            if self._renewed is None or self._renewed.done():
                self._renewed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._renewed)

    async def _renew_loop(self) -> None:
        tick = self.config.lease_ttl / 3
        try:
            while True:
                try:
                    await self.leases.heartbeat()
                    for p in await self.leases.renew():
                        self.metrics.lease_changes.labels("lost").inc()
                        runner = self.runners.get(p)
                        if runner is not None:  # the fence already refuses its writes
                            runner.stopping = True
                except Exception as exc:  # no quorum: the fence stops writes until it is back
                    log.info("renewing leases failed: %s: %s", type(exc).__name__, exc)
                self._round_done(time.monotonic() + tick)
                await asyncio.sleep(tick)
        finally:  # no more rounds (the worker stops): nothing waits for one
            self._round_done(math.inf)

    def _round_done(self, next_at: float) -> None:
        self._renew_at = next_at
        if self._renewed is not None and not self._renewed.done():
            self._renewed.set_result(None)

    async def _balance(self) -> bool:
        """One round of taking and giving back leases; True while a release by another
        worker is due (:meth:`LeaseTable.release_due`): look again soon."""
        leases = self.leases
        target = leases.target(await leases.live_workers())
        extras = sorted(self.runners, reverse=True)[: max(0, len(self.runners) - target)]
        # together: each waits for its runner's fetch in progress (up to a second)
        await asyncio.gather(*(self._stop_runner(p, release=True) for p in extras))
        for p in leases.candidates():
            if len(leases.owned) >= target or self.stop_event.is_set():
                break
            if await leases.try_acquire(p):
                self.metrics.lease_changes.labels("acquired").inc()
                try:
                    delivery = await asyncio.to_thread(
                        LocalDelivery,
                        self.config.data_dir,
                        self.registry,
                        config=self.delivery_config,
                        layout=partition_layout(p),
                    )
                except Exception:
                    log.exception("partition %d: opening its delivery failed", p)
                    await leases.release(p)
                    continue
                self.runners[p] = PartitionRunner(self, p, delivery)
        return leases.release_due(target)

    async def _stop_runner(self, partition: int, *, release: bool) -> None:
        runner = self.runners.pop(partition, None)
        if runner is not None:
            runner.stopping = True
            try:
                await runner.task  # finishes the commit in progress and its acks
            except Exception:
                log.exception("partition %d: its consumer loop failed", partition)
            await asyncio.to_thread(runner.delivery.close)
        if release:
            await self.leases.release(partition)
            self.metrics.lease_changes.labels("released").inc()
        else:
            self.leases.owned.pop(partition, None)

    async def _close_buckets(self) -> None:
        for runner in list(self.runners.values()):
            try:
                await asyncio.to_thread(runner.delivery.close_due_buckets)
            except Exception:
                log.exception("partition %d: closing due buckets failed", runner.partition)
        try:
            closed = await asyncio.to_thread(
                finalize_hours,
                self.config.data_dir,
                now=time.time(),
                lateness=self.config.lateness,
                settle=self.config.lease_ttl,
            )
        except Exception:
            log.exception("writing _CLOSED.json markers failed")
        else:
            for directory in closed:
                log.info("every partition closed %s", directory)

    async def _shutdown(self) -> None:
        """Every step runs even if an earlier one fails: what was committed is acked or
        redelivered, and leases not released expire on their own."""
        for p in list(self.runners):
            try:
                await self._stop_runner(p, release=True)
            except Exception:
                log.exception("partition %d: stopping it failed", p)
        if self.leases is not None:
            await self.leases.leave()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self.nc is not None:
            try:
                await close(self.nc)
            except Exception as exc:  # a connection already gone has nothing left to send
                log.info("closing the NATS connection: %s", exc)

    # -- /healthz and /metrics ------------------------------------------------------
    def _start_http(self) -> str:
        assert self.config.port is not None
        server = make_server(
            self.config.host, self.config.port, self._wsgi, handler_class=_QuietHandler
        )
        self._http = server
        threading.Thread(
            target=server.serve_forever, name="spotify-events-deliver-http", daemon=True
        ).start()
        return f"http://{self.config.host}:{server.server_port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        headers: list[tuple[str, str]] = []
        if path == "/healthz":
            connected = bool(self.nc is not None and self.nc.is_connected)
            body = json.dumps(
                {
                    "status": "ok" if connected else "disconnected",
                    "worker": self.worker_id,
                    "partitions": sorted(self.runners),
                    "partition_count": self.partitions,
                }
            ).encode()
            status, ctype = (
                ("200 OK" if connected else "503 Service Unavailable"),
                "application/json",
            )
        elif path not in ("/", "/metrics"):
            body, status, ctype = b'{"error":"not found"}', "404 Not Found", "application/json"
        elif not self._authorized(environ):
            body, status, ctype = (
                b'{"error":"token needed"}',
                "401 Unauthorized",
                "application/json",
            )
            headers.append(("WWW-Authenticate", PAGE_CHALLENGE))
        elif path == "/metrics":
            body = generate_latest(self.metrics.registry)
            status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
        else:  # the completeness page over every partition's ledger, as the collector serves it
            try:
                report = load_report(
                    self.config.data_dir, now=time.time(), grace=self.config.grace_period
                )
            except (OSError, sqlite3.Error, SpotifyEventsError) as exc:
                # A partition's ledger being created by its first owner (or unreadable):
                # say so and when to ask again, instead of a traceback and a bare 500.
                log.info("completeness page: the ledgers cannot be read now: %s", exc)
                body = json.dumps({"error": f"ledgers not readable yet: {exc}"}).encode()
                status, ctype = "503 Service Unavailable", "application/json"
                headers.append(("Retry-After", "1"))
            else:
                body = render_page(report).encode()
                status, ctype = "200 OK", "text/html; charset=utf-8"
                headers.extend(PAGE_HEADERS)
        headers += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]

    def _authorized(self, environ: dict[str, Any]) -> bool:
        """The token as a bearer token or a basic-auth password, when one is configured."""
        if not self.config.token:
            return True
        return token_matches(environ.get("HTTP_AUTHORIZATION", ""), [self.config.token.encode()])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def run_worker(config: WorkerConfig, ready: Callable[[str], None] | None = None) -> None:
    async def main() -> None:
        await Worker(config).run(ready)

    asyncio.run(main())
