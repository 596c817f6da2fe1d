"""The exception tree of spotify-events.

Everything the package raises on purpose derives from one root, so a caller can
catch ``SpotifyEventsError`` and know it is ours::

    SpotifyEventsError
    ├── ConfigError(ValueError)            nonsense configuration, caught at construction
    ├── SchemaError(ValueError)            a schema that cannot be loaded or parsed
    ├── EventValidationError(ValueError)   log() refused an event; names type and field
    │   ├── UnknownEventTypeError          no schema registered under that name
    │   └── EventTooLargeError             encoded event exceeds max_event_bytes
    ├── BatchDecodeError(ValueError)       a wire batch that is not a valid container
    ├── ClientClosedError(RuntimeError)    log() on a client after close()
    ├── QueueError                         the on-disk queue cannot be used
    │   ├── QueuePathError(ConfigError)    queue_path unusable: directory missing, permission denied
    │   ├── QueueCorruptError              not SQLite, or damaged; names the file
    │   ├── QueueForeignFileError          an SQLite file that is not a queue (left alone)
    │   ├── QueueVersionError              written by a newer spotify-events
    │   └── QueueBusyError                 a caller's own deadline passed while another process wrote
    ├── MissingExtraError(ImportError)     a feature's optional extra is not installed
    ├── DataDirError                       the collector's data directory is unsafe to use
    ├── HourClosedError                    a part file started in an hour already closed (retried)
    ├── StreamConfigError                  the JetStream stream exists with other settings
    ├── SliceDecodeError                   a stream message that is not a slice (quarantined)
    ├── LeaseLost                          a delivery worker no longer owns its partition
    ├── PullFailed                         JetStream cannot serve a worker's pull requests
    ├── PublishFailed                      JetStream refused a collector's publish (or has no leader)
    ├── NatsServerError(RuntimeError)      no usable nats-server (tests, demo --cluster)
    ├── TooManyRanges(ValueError)          a number would open a range past a set's limit
    └── CollectorError                     the collector refuses a whole body (answered 400/413)
        ├── GuardError(ValueError)         refused before decoding (collector/guard.py)
        └── IngestError                    refused while decoding it (collector/ingest.py)

The ``ValueError`` parents are deliberate: code that already guards input with
``except ValueError`` keeps working.

There is no exception for network or collector trouble on the sending side: a
transport reports what happened as a ``SendResult`` and the shipper decides what
it means for the queue, so nothing the network does can raise into the service.
The CLI's ``click.ClickException`` subclasses stay inside the command: click turns
them into a message and an exit code.
"""

from __future__ import annotations

from collections.abc import Sequence


class SpotifyEventsError(Exception):
    """Root of every exception spotify-events raises on purpose."""


class ConfigError(SpotifyEventsError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class SchemaError(SpotifyEventsError, ValueError):
    """A schema file or definition cannot be used; the message names the source."""


class EventValidationError(SpotifyEventsError, ValueError):
    """An event was refused before it entered the queue.

    ``errors`` holds one human-readable line per problem, each naming the field
    path, so a caller can log them or surface them in a test failure.
    """

    def __init__(self, event_type: str, errors: Sequence[str], field: str | None = None) -> None:
        self.event_type = event_type
        self.errors = list(errors)
        self.field = field
        where = f" (field {field!r})" if field else ""
        super().__init__(f"invalid {event_type} event{where}: " + "; ".join(self.errors))


class UnknownEventTypeError(EventValidationError):
    """No schema is registered under the requested event type name."""

    def __init__(self, event_type: str, known: Sequence[str]) -> None:
        shown = ", ".join(sorted(known)[:20]) or "none"
        super().__init__(event_type, [f"unknown event type; registered types: {shown}"])


class EventTooLargeError(EventValidationError):
    """The encoded event is larger than ``max_event_bytes``."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(event_type, [f"encoded size {size} bytes exceeds max_event_bytes={limit}"])


class BatchDecodeError(SpotifyEventsError, ValueError):
    """A wire batch could not be decoded as an envelope container."""


class ClientClosedError(SpotifyEventsError, RuntimeError):
    """The client was closed; events logged now would have nowhere to go."""


class QueueError(SpotifyEventsError):
    """The durable queue cannot be opened or written."""


class QueuePathError(QueueError, ConfigError):
    """``queue_path`` cannot hold a queue: its directory is missing or not writable,
    the file is not readable and writable, or it is a directory."""


class QueueCorruptError(QueueError):
    """The queue file is not an SQLite database, or is damaged."""


class QueueForeignFileError(QueueError):
    """The path holds somebody else's SQLite database; it is never modified or moved."""


class QueueVersionError(QueueError):
    """The queue file was written by a newer, incompatible spotify-events."""


class QueueBusyError(QueueError):
    """A caller's deadline (``flush(timeout)``, the ``commit`` level's wait) passed while
    another process held the queue's write lock: nothing failed, the events wait in
    memory for the writer thread's next commit."""


class MissingExtraError(SpotifyEventsError, ImportError):
    """A feature needs a dependency that only an optional extra installs."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.extra = extra
        super().__init__(
            f"{feature} needs {module!r}, which the {extra!r} extra installs: "
            f"pip install 'spotify-events[{extra}]'",
            name=module,
        )


class CollectorError(SpotifyEventsError):
    """The collector refuses a request body before any of it is delivered."""
