"""ClientConfig: every EventClient setting, its default, its environment variable.

Environment variables are read here and nowhere else, once, when a client is
built; keyword arguments win over the environment. Values are checked at
construction so nonsense fails loudly at startup instead of quietly at 3 a.m.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError
from .settings import (
    EVENT_MEMORY_OVERHEAD,
    ClientSettings,
    DropPolicy,
    Durability,
    QueueSettings,
    ShipperSettings,
    Shipping,
    TransportSettings,
    WriterSettings,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

ENV_PREFIX = "SPOTIFY_EVENTS_"

__all__ = ["ENV_PREFIX", "ClientConfig", "DropPolicy", "Durability", "Shipping"]


@dataclass(frozen=True)
class ClientConfig:
    """Settings of one EventClient. Times are in seconds, sizes in bytes."""

    endpoint: str = "http://127.0.0.1:8080/v1/batches"
    queue_path: str = "spotify-events.db"
    schemas: Any = "schemas"
    durability: Durability = Durability.BUFFERED
    shipping: Shipping = Shipping.IN_PROCESS
    token: str | None = None
    service: str = ""
    # queue
    max_queue_bytes: int = 256 << 20
    drop_policy: DropPolicy = DropPolicy.OLDEST
    max_event_bytes: int = 512 << 10
    # writer: at most 20 transactions a second whatever the rate (~76 us of CPU each,
    # benchmarks/RESULTS.md "The rate curve"); what buffered may lose to a SIGKILL (README)
    commit_interval: float = 0.05
    max_buffer_bytes: int = 16 << 20
    block_timeout: float = 0.5
    commit_timeout: float = 5.0
    # shipper: batch limits picked from measurements, see shipper.py
    batch_max_events: int = 5000
    batch_max_bytes: int = 4 << 20
    linger: float = 0.5  # a batch waits this long for company unless it fills (as segment's 0.5 s)
    heartbeat_interval: float = 30.0
    lease_ttl: float = 30.0
    backoff_max: float = 5.0
    hold_retry_max: float = 60.0  # longest pause between retries of a schema the collector lacks
    # transport
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    verify: bool | str = True
    # lifecycle
    close_timeout: float = 10.0
    exit_timeout: float = 2.0

    def __post_init__(self) -> None:
        self._check_types()
        positive = (
            "max_queue_bytes",
            "max_event_bytes",
            "max_buffer_bytes",
            "batch_max_events",
            "batch_max_bytes",
            "heartbeat_interval",
            "lease_ttl",
            "backoff_max",
            "hold_retry_max",
            "connect_timeout",
            "read_timeout",
            "commit_interval",
            "commit_timeout",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("linger", "block_timeout", "close_timeout", "exit_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_event_bytes + EVENT_MEMORY_OVERHEAD > self.max_buffer_bytes:
            raise ConfigError(
                f"max_buffer_bytes must hold at least one largest event "
                f"(max_event_bytes + {EVENT_MEMORY_OVERHEAD} bytes of bookkeeping)"
            )
        if self.lease_ttl <= 2 * (self.connect_timeout + self.read_timeout):
            # a send may take connect + read timeout; the lease must outlive it with margin,
            # or a second process takes over mid-send and both ship the same events
            raise ConfigError(
                f"lease_ttl ({self.lease_ttl}) must exceed twice connect_timeout + read_timeout "
                f"({2 * (self.connect_timeout + self.read_timeout):g})"
            )
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint must be an http(s) URL, got {self.endpoint!r}")
        check_token("token", self.token)

    def _check_types(self) -> None:
        """A wrong kind of value (``linger="50ms"``) fails here, naming the setting,
        rather than as a TypeError deep inside a comparison."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{f.name} must be a number of seconds, got {value!r}")
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be a whole number, got {value!r}")
            if kind == "str" and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}")
        if self.token is not None and not isinstance(self.token, str):
            raise ConfigError(f"token must be a string, got {type(self.token).__name__}")
        if not isinstance(self.verify, (bool, str)):
            raise ConfigError(
                f"verify must be true, false or a CA bundle path, got {self.verify!r}"
            )
        if isinstance(self.verify, str) and not os.path.exists(self.verify):
            raise ConfigError(f"verify: no CA bundle at {self.verify!r} (a file or directory)")

    @property
    def host(self) -> str:
        return socket.gethostname()

    # -- the settings each component takes: derived here, never defaulted there ----------
    def queue_settings(self) -> QueueSettings:
        return QueueSettings(
            max_queue_bytes=self.max_queue_bytes,
            drop_policy=self.drop_policy,
            fsync=self.durability is Durability.FSYNC,
        )

    def writer_settings(self) -> WriterSettings:
        return WriterSettings(
            commit_interval=self.commit_interval,
            max_buffer_bytes=self.max_buffer_bytes,
            block_timeout=self.block_timeout,
        )

    def shipper_settings(self) -> ShipperSettings:
        return ShipperSettings(
            max_events=self.batch_max_events,
            max_bytes=self.batch_max_bytes,
            linger=self.linger,
            heartbeat_interval=self.heartbeat_interval,
            lease_ttl=self.lease_ttl,
            backoff_max=self.backoff_max,
            hold_retry_max=self.hold_retry_max,
            service=self.service,
            host=self.host,
            sdk_version=__version__,
        )

    def transport_settings(self) -> TransportSettings:
        return TransportSettings(
            endpoint=self.endpoint,
            token=self.token,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            verify=self.verify,
            user_agent=f"spotify-events/{__version__}",
        )

    @classmethod
    def build(
        cls, environ: Mapping[str, str] | None = None, **overrides: Unpack[ClientSettings]
    ) -> ClientConfig:
        """The one place settings are merged: defaults, then ``SPOTIFY_EVENTS_<NAME>``
        variables, then keyword arguments (``None`` counts as not given)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, raw, _PARSERS.get(f.name, str))
        for name, value in overrides.items():
            if name not in _FIELD_NAMES:
                raise ConfigError(f"unknown setting {name!r}")
            if value is not None:
                values[name] = os.fspath(value) if isinstance(value, os.PathLike) else value
        for name, choice in (
            ("durability", Durability),
            ("shipping", Shipping),
            ("drop_policy", DropPolicy),
        ):
            values[name] = _choice(name, choice, values.get(name, getattr(cls, name)))
        return cls(**values)


def _parse_bool_or_path(raw: str) -> bool | str:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    return raw  # a CA bundle path


def _choice(name: str, choice: type[enum.Enum], value: Any) -> Any:
    """``value`` as a member of the setting's enum, or a ConfigError listing the choices."""
    try:
        return choice(value)
    except ValueError:
        names = [str(member.value) for member in choice]
        allowed = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
        raise ConfigError(f"{name} must be {allowed}; got {value!r}") from None


def _convert(name: str, raw: str, parser: Callable[[str], Any]) -> Any:
    try:
        return parser(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {name}") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    f.name: {"int": int, "float": float}.get(str(f.type), str) for f in fields(ClientConfig)
}
_PARSERS["verify"] = _parse_bool_or_path
_FIELD_NAMES = frozenset(f.name for f in fields(ClientConfig))


def check_token(name: str, token: str | None) -> None:
    """Refuse a token an HTTP ``Authorization`` header cannot carry as it is: printable
    ASCII without surrounding spaces (a secret file's trailing newline, a non-ASCII
    character). Shared by the client and the collector, so both agree on what matches."""
    if token is not None and not (
        token.isascii() and token.isprintable() and token == token.strip()
    ):
        raise ConfigError(
            f"{name} must be printable ASCII without leading or trailing spaces or newlines"
        )
