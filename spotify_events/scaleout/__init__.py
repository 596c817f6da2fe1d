"""The scaled-out shape of the collector tier, on NATS JetStream.

::

    SDKs --HTTP--> collector --nats (stateless ingest, any number)
         --publish, Nats-Msg-Id, wait for the JetStream ack--> stream (R3), one subject per partition
         --durable pull consumer per partition--> deliver workers (KV leases own partitions)
         --the collector's own delivery half, one ledger per partition--> DATA_DIR

Modules, one job each: :mod:`.slices` (what one stream message holds),
:mod:`.stream` (stream settings, creation and the partition check),
:mod:`.connection` (quiet nats-py connections, the event loop thread for WSGI
threads), :mod:`.ingest` (the collector's
:class:`~spotify_events.collector.delivery.Delivery` seam as a publish),
:mod:`.serve` (``collector --nats``, pre-forked), :mod:`.leases` (partition
ownership), :mod:`.worker` (``deliver``), :mod:`.cli` (their options),
:mod:`.natsserver` (local servers for tests, benchmarks and :mod:`.demo`,
``demo --cluster``; child processes come from :mod:`spotify_events.collector.process`).
Needs ``pip install 'spotify-events[nats]'``.
"""
