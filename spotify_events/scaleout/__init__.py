"""The scaled-out shape of the collector tier, on NATS JetStream.

::

    SDKs --HTTP--> collector --nats (stateless ingest, any number)
         --publish, Nats-Msg-Id, wait for the JetStream ack--> stream (R3), one subject per partition
         --durable pull consumer per partition--> deliver workers (KV leases own partitions)
         --the collector's own delivery half, one ledger per partition--> DATA_DIR

Modules, one job each: :mod:`.slices` (what one stream message holds),
:mod:`.stream` (stream and lease-bucket configuration), :mod:`.publisher` (the
asyncio loop in a thread that publishes for the WSGI threads), :mod:`.ingest`
(the collector's :class:`~spotify_events.collector.delivery.Delivery` seam as a
publish), :mod:`.leases` (partition ownership), :mod:`.worker` (``deliver``),
:mod:`.natsserver` (a local nats-server or 3-node cluster for tests and the demo).
Needs ``pip install 'spotify-events[nats]'``.
"""
