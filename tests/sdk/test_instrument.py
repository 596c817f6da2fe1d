"""@track and timed(): which fields an event gets, and that the host never notices.

Every test goes through a real EventClient with a MockTransport that decodes each
batch it is handed, so what is asserted is what would reach the collector.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import threading
import types
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import Any

import pytest
from support import SCHEMAS

from spotify_events import (
    EventClient,
    EventValidationError,
    SchemaRegistry,
    UnknownEventTypeError,
    instrument,
)
from spotify_events.encoding import decode_event
from spotify_events.errors import ClientClosedError
from spotify_events.instrument import exception_name, timed, track
from spotify_events.transport import MockTransport, SendResult
from spotify_events.wire import decode_batch

SERVICE_CALL = "spotify.events.ops.ServiceCall"

#: A schema whose automatic fields take the other shapes @track supports: a long
#: duration, a lowercase enum, a required non-null exception_type; no operation.
JOB_RUN = {
    "type": "record",
    "name": "JobRun",
    "namespace": "test.jobs",
    "fields": [
        {"name": "job", "type": "string"},
        {"name": "duration_ms", "type": "long"},
        {"name": "outcome", "type": {"type": "enum", "name": "Result", "symbols": ["ok", "error"]}},
        {"name": "exception_type", "type": "string"},
        {"name": "attempt", "type": "int", "default": 1},
    ],
}


class Collector:
    """The MockTransport handler: decodes every batch and keeps its events."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self.lock = threading.Lock()
        self.envelopes: list[Any] = []

    def __call__(self, body: bytes, headers: Any) -> SendResult:
        batch = decode_batch(body)
        with self.lock:
            self.envelopes.extend(batch.envelopes)
        return SendResult(200, {"accepted": len(batch.envelopes), "duplicates": 0, "rejected": []})

    def events(self, event_type: str = SERVICE_CALL) -> list[dict[str, Any]]:
        with self.lock:
            envelopes = list(self.envelopes)
        out = []
        for env in sorted(envelopes, key=lambda e: (e.event_type, e.seq)):
            if env.event_type == event_type:
                schema = self.registry.by_fingerprint(env.fingerprint)
                assert schema is not None
                out.append(decode_event(schema, env.payload))
        return out


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., tuple[EventClient, Collector]]]:
    made: list[EventClient] = []

    def make(schemas: Any = None, **settings: Any) -> tuple[EventClient, Collector]:
        registry = SchemaRegistry(SCHEMAS if schemas is None else schemas)
        collector = Collector(registry)
        client = EventClient(
            transport=MockTransport(collector),
            queue_path=str(tmp_path / f"queue{len(made)}.db"),
            schemas=registry,
            linger=0.0,
            **settings,
        )
        made.append(client)
        return client, collector

    yield make
    for client in made:
        # Short: Shipper.stop() can miss its wake-up and then waits out the join timeout
        # (_idle_wait clears `committed` after stop() set it: a lost wake-up).
        client.close(timeout=0.5)


@pytest.fixture
def client_and_events(
    make_client: Callable[..., tuple[EventClient, Collector]],
) -> tuple[EventClient, Callable[..., list[dict[str, Any]]]]:
    client, collector = make_client()

    def events(event_type: str = SERVICE_CALL) -> list[dict[str, Any]]:
        assert client.flush(10.0)
        return collector.events(event_type)

    return client, events


Events = Callable[..., list[dict[str, Any]]]


# -- sync functions and binding ----------------------------------------------------------------
def test_sync_binding_positional_keyword_and_defaults(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events

    @client.track("ServiceCall", service="playlists")
    def get_playlist(
        playlist_id: str, user_id: str | None = "anon", *, status_code: int = 200
    ) -> str:
        return f"playlist:{playlist_id}"

    assert get_playlist("p1") == "playlist:p1"
    assert get_playlist("p2", "u2") == "playlist:p2"
    assert get_playlist(playlist_id="p3", user_id="u3", status_code=404) == "playlist:p3"
    assert get_playlist("p4", status_code=201) == "playlist:p4"

    got = events()
    assert [(e["user_id"], e["status_code"]) for e in got] == [
        ("anon", 200),
        ("u2", 200),
        ("u3", 404),
        ("anon", 201),
    ]
    for e in got:
        assert e["service"] == "playlists"
        assert e["outcome"] == "OK"
        assert e["exception_type"] is None
        assert isinstance(e["duration_ms"], float) and 0 <= e["duration_ms"] < 1000
        # no operation given and no parameter named so: the function's qualified name
        assert e["operation"].endswith("get_playlist")
        assert e["operation"].startswith(__name__)
    assert client.instrumentation_errors == 0


def test_static_field_wins_over_parameter_and_varargs_are_not_fields(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events

    @client.track("ServiceCall", operation="/search")
    def search(operation: str, *args: Any, **kwargs: Any) -> int:
        return len(args) + len(kwargs)

    assert search("ignored", 1, 2, user_id="not-a-param") == 3
    (event,) = events()
    assert event["operation"] == "/search"
    assert event["user_id"] is None  # **kwargs keys are not parameters


def test_service_comes_from_the_client_setting_unless_given(
    make_client: Callable[..., tuple[EventClient, Collector]],
) -> None:
    client, collector = make_client(service="from-config")

    @client.track("ServiceCall", operation="a")
    def plain() -> None:
        pass

    @client.track("ServiceCall", operation="b", service="static")
    def static() -> None:
        pass

    @client.track("ServiceCall", operation="c")
    def param(service: str) -> None:
        pass

    plain()
    static()
    param("param")
    with client.timed("ServiceCall", operation="d"):
        pass
    with client.timed("ServiceCall", operation="e") as ev:
        ev["service"] = "block"
    assert client.flush(10.0)
    assert [(e["operation"], e["service"]) for e in collector.events()] == [
        ("a", "from-config"),
        ("b", "static"),
        ("c", "param"),
        ("d", "from-config"),
        ("e", "block"),
    ]


def test_method_self_is_not_a_field_and_static_and_class_methods(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events

    class Handler:
        def __init__(self) -> None:
            self.calls = 0

        @client.track("ServiceCall", operation="handle")
        def handle(self, user_id: str) -> int:
            self.calls += 1
            return self.calls

        @client.track("ServiceCall", operation="static")
        @staticmethod
        def static(user_id: str) -> str:
            return user_id

        @client.track("ServiceCall", operation="klass")
        @classmethod
        def klass(cls, status_code: int) -> str:
            return cls.__name__

    h = Handler()
    assert h.handle("u1") == 1
    assert h.handle(user_id="u2") == 2
    assert Handler.static("u3") == "u3"
    assert h.klass(418) == "Handler"

    got = events()
    assert [(e["operation"], e["user_id"], e["status_code"]) for e in got] == [
        ("handle", "u1", None),
        ("handle", "u2", None),
        ("static", "u3", None),
        ("klass", None, 418),
    ]


def test_metadata_is_preserved(client_and_events: tuple[EventClient, Events]) -> None:
    client, _ = client_and_events

    def plain(a: int, b: str = "x", *rest: int, flag: bool = False, **extra: Any) -> str:
        """Docstring of plain."""
        return b * a

    async def coro(user_id: str) -> int:
        """Docstring of coro."""
        return 1

    def gen(n: int) -> Iterator[int]:
        yield from range(n)

    async def agen(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    decorate = client.track("ServiceCall", operation="x")
    for func, check in (
        (plain, inspect.isfunction),
        (coro, inspect.iscoroutinefunction),
        (gen, inspect.isgeneratorfunction),
        (agen, inspect.isasyncgenfunction),
    ):
        wrapped: Any = decorate(func)
        assert wrapped is not func
        assert wrapped.__name__ == func.__name__
        assert wrapped.__qualname__ == func.__qualname__
        assert wrapped.__doc__ == func.__doc__
        assert wrapped.__module__ == func.__module__
        assert wrapped.__wrapped__ is func
        assert inspect.signature(wrapped) == inspect.signature(func)
        assert check(wrapped)


# -- exceptions --------------------------------------------------------------------------------
class PaymentDeclined(Exception):
    pass


def test_exception_propagates_unchanged_and_is_recorded(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events
    raised: list[BaseException] = []

    def charge(user_id: str) -> None:
        exc = PaymentDeclined("card expired")
        raised.append(exc)
        raise exc

    tracked = client.track("ServiceCall", operation="charge")(charge)
    with pytest.raises(PaymentDeclined) as info:
        tracked("u1")
    assert info.value is raised[0]  # the very object
    assert info.value.args == ("card expired",)
    frames = [frame.name for frame in info.traceback]
    assert frames[-1] == "charge"  # traceback still ends where it was raised
    with pytest.raises(KeyError):
        client.track("ServiceCall", operation="lookup")(lambda user_id: {}[user_id])("u2")

    first, second = events()
    assert first["outcome"] == "ERROR"
    assert first["exception_type"] == f"{__name__}.PaymentDeclined"
    assert first["exception_type"] == exception_name(PaymentDeclined)
    assert first["user_id"] == "u1"
    assert second["exception_type"] == "KeyError"  # builtins without a prefix
    assert second["outcome"] == "ERROR"
    assert client.instrumentation_errors == 0


# -- async, generators ------------------------------------------------------------------------
def test_async_function_is_timed_until_the_await_completes(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events

    @client.track("ServiceCall", operation="fetch")
    async def fetch(user_id: str, delay: float = 0.05) -> str:
        await asyncio.sleep(delay)
        return user_id.upper()

    @client.track("ServiceCall", operation="boom")
    async def boom(status_code: int) -> None:
        await asyncio.sleep(0)
        raise TimeoutError("slow")

    async def main() -> str:
        result = await fetch("u1")
        with pytest.raises(TimeoutError):
            await boom(504)
        return result

    assert asyncio.run(main()) == "U1"
    ok, failed = events()
    assert ok["user_id"] == "u1" and ok["outcome"] == "OK"
    assert ok["duration_ms"] >= 45.0
    assert failed["outcome"] == "ERROR" and failed["status_code"] == 504
    assert failed["exception_type"] == "TimeoutError"


def test_generator_is_timed_until_exhausted_or_closed(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events

    @client.track("ServiceCall", operation="stream")
    def stream(user_id: str, n: int) -> Generator[int, Any, int]:
        for i in range(n):
            received = yield i
            if received == "stop":
                raise ValueError("told to stop")
        return n

    def collect() -> Generator[int, Any, int]:
        return (yield from stream("u1", 3))

    gen = collect()
    assert list(gen) == [0, 1, 2]  # exhausted; `return n` arrives through yield from
    g = collect()
    next(g)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(g)
    assert stop.value.value == 3

    early = stream("u2", 100)
    assert next(early) == 0
    early.close()  # consumer stopped early: OK, not ERROR

    bad = stream("u3", 5)
    next(bad)
    with pytest.raises(ValueError, match="told to stop"):
        bad.send("stop")

    never = stream("u4", 1)
    del never  # never started: nothing was timed, no event

    got = events()
    assert [(e["user_id"], e["outcome"], e["exception_type"]) for e in got] == [
        ("u1", "OK", None),
        ("u1", "OK", None),
        ("u2", "OK", None),
        ("u3", "ERROR", "ValueError"),
    ]


def test_async_generator(client_and_events: tuple[EventClient, Events]) -> None:
    client, events = client_and_events

    @client.track("ServiceCall", operation="astream")
    async def astream(user_id: str, n: int) -> AsyncGenerator[int, None]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i
        if user_id == "bad":
            raise RuntimeError("broken stream")

    async def main() -> list[int]:
        items = [i async for i in astream("u1", 3)]
        with pytest.raises(RuntimeError, match="broken stream"):
            async for _ in astream("bad", 1):
                pass
        agen = astream("u2", 10)
        assert await agen.__anext__() == 0
        await agen.aclose()
        return items

    assert asyncio.run(main()) == [0, 1, 2]
    got = events()
    assert [(e["user_id"], e["outcome"], e["exception_type"]) for e in got] == [
        ("u1", "OK", None),
        ("bad", "ERROR", "RuntimeError"),
        ("u2", "OK", None),
    ]


# -- computed fields -------------------------------------------------------------------------
def test_fields_callable_gets_bound_arguments_with_defaults_and_result(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events
    seen: list[tuple[dict[str, Any], Any]] = []

    def computed(arguments: dict[str, Any], result: Any) -> dict[str, Any]:
        seen.append((arguments, result))
        status = result[0] if result else None
        return {"operation": f"GET /{arguments['path']}", "status_code": status}

    @client.track("ServiceCall", fields=computed)
    def get(path: str, user_id: str | None = None, retries: int = 3) -> tuple[int, str]:
        if path == "fail":
            raise LookupError(path)
        return 200, "body"

    assert get("tracks", user_id="u1") == (200, "body")
    with pytest.raises(LookupError):
        get("fail")

    assert seen[0] == ({"path": "tracks", "user_id": "u1", "retries": 3}, (200, "body"))
    assert seen[1] == ({"path": "fail", "user_id": None, "retries": 3}, None)
    ok, failed = events()
    assert (ok["operation"], ok["status_code"], ok["user_id"]) == ("GET /tracks", 200, "u1")
    assert (failed["operation"], failed["status_code"]) == ("GET /fail", None)
    assert failed["outcome"] == "ERROR"


# -- instrumentation never breaks the host ---------------------------------------------------
def test_failing_event_build_does_not_break_the_call_and_is_counted_and_logged_once(
    client_and_events: tuple[EventClient, Events], caplog: pytest.LogCaptureFixture
) -> None:
    client, events = client_and_events

    @client.track("ServiceCall", operation="lookup")
    def lookup(user_id: Any) -> str:
        return f"found {user_id}"

    def explode(arguments: dict[str, Any], result: Any) -> dict[str, Any]:
        raise ZeroDivisionError("bug in a fields= callable")

    @client.track("ServiceCall", operation="other", fields=explode)
    def other() -> int:
        return 7

    with caplog.at_level(logging.WARNING, logger="spotify_events"):
        for _ in range(3):
            assert lookup(12345) == "found 12345"  # int where the schema wants a string
        assert lookup("u1") == "found u1"
        assert other() == 7
        assert other() == 7

    assert client.instrumentation_errors == 5 == client.stats().instrumentation_errors
    warnings = [r for r in caplog.records if "could not emit" in r.getMessage()]
    assert len(warnings) == 2  # once per decorated function, not per call
    assert "user_id" in warnings[0].getMessage() and "lookup" in warnings[0].getMessage()
    assert [e["user_id"] for e in events()] == ["u1"]


def test_closed_client_does_not_break_decorated_calls(
    make_client: Callable[..., tuple[EventClient, Collector]],
) -> None:
    client, _ = make_client()

    @client.track("ServiceCall", operation="late")
    def late() -> str:
        return "still works"

    client.close(timeout=1.0)
    assert late() == "still works"
    with client.timed("ServiceCall", operation="late-block"):
        pass
    assert client.instrumentation_errors == 2
    with pytest.raises(ClientClosedError):
        client.log("ServiceCall", {"operation": "x", "duration_ms": 1.0, "outcome": "OK"})


# -- decoration-time errors ------------------------------------------------------------------
def test_decoration_time_errors(client_and_events: tuple[EventClient, Events]) -> None:
    client, _ = client_and_events

    with pytest.raises(UnknownEventTypeError, match="NoSuchEvent"):
        client.track("NoSuchEvent")
    with pytest.raises(EventValidationError, match="endpoint") as info:
        client.track("ServiceCall", endpoint="/x")
    assert isinstance(info.value, ValueError)
    assert info.value.field == "endpoint"
    with pytest.raises(EventValidationError, match="duration_ms"):
        client.track("ServiceCall", operation="x", duration_ms=1.0)  # set by the decorator
    with pytest.raises(TypeError):
        client.track("ServiceCall", fields="not callable")  # type: ignore[arg-type]

    # PageView needs session_id, page_uri and load_ms; nothing supplies session_id
    def view(page_uri: str, load_ms: int) -> None:
        pass

    with pytest.raises(EventValidationError, match="session_id") as missing:
        client.track("PageView")(view)
    assert missing.value.field == "session_id"
    # ... unless a fields= callable may compute it, or a parameter is named after it
    client.track("PageView", fields=lambda a, r: {"session_id": "s"})(view)
    client.track("PageView", session_id="s1")(view)

    with pytest.raises(UnknownEventTypeError):
        client.timed("NoSuchEvent")
    with pytest.raises(EventValidationError, match="endpoint"):
        client.timed("ServiceCall", endpoint="/x")
    assert client.instrumentation_errors == 0


def test_schema_without_automatic_fields_gets_only_bound_ones(
    client_and_events: tuple[EventClient, Events],
) -> None:
    client, events = client_and_events

    @client.track("PageView")
    def render(session_id: str, page_uri: str, load_ms: int, user_id: str | None = None) -> None:
        pass

    render("s1", "spotify:album:1", 120)
    (view,) = events("spotify.events.web.PageView")
    assert view == {
        "user_id": None,
        "session_id": "s1",
        "page_uri": "spotify:album:1",
        "referrer_uri": None,
        "load_ms": 120,
        "viewport": {},
    }


def test_other_shapes_of_the_automatic_fields(
    make_client: Callable[..., tuple[EventClient, Collector]],
) -> None:
    client, collector = make_client(schemas=[JOB_RUN])

    @client.track("JobRun")
    def run(job: str, attempt: int = 1) -> None:
        if attempt > 1:
            raise OSError("disk full")

    run("nightly")
    with pytest.raises(OSError):
        run("nightly", attempt=2)
    with client.timed("JobRun", job="adhoc"):
        pass
    assert client.flush(10.0)
    first, second, third = collector.events("test.jobs.JobRun")
    assert isinstance(first["duration_ms"], int)
    assert (first["outcome"], first["exception_type"], first["attempt"]) == ("ok", "", 1)
    assert (second["outcome"], second["exception_type"]) == ("error", "OSError")
    assert second["attempt"] == 2
    assert (third["job"], third["outcome"], third["exception_type"]) == ("adhoc", "ok", "")


def test_unusable_automatic_field_type_is_a_decoration_error(
    make_client: Callable[..., tuple[EventClient, Collector]],
) -> None:
    schema = {
        "type": "record",
        "name": "Weird",
        "fields": [
            {"name": "outcome", "type": {"type": "enum", "name": "R", "symbols": ["A", "B"]}}
        ],
    }
    client, _ = make_client(schemas=[schema])
    with pytest.raises(EventValidationError, match="OK and ERROR"):
        client.track("Weird")


# -- timed() ---------------------------------------------------------------------------------
def test_timed_context_manager(client_and_events: tuple[EventClient, Events]) -> None:
    client, events = client_and_events

    with client.timed("ServiceCall", operation="/x", service="api") as ev:
        ev["status_code"] = 200
        ev.set(user_id="u1")
        assert ev["status_code"] == 200
        assert "user_id" in ev
    assert ev.event_type == SERVICE_CALL

    error = ConnectionResetError("peer went away")
    with pytest.raises(ConnectionResetError) as info:  # noqa: SIM117 (the order is the point)
        with client.timed("ServiceCall", operation="/y") as ev2:
            ev2["status_code"] = 502
            raise error
    assert info.value is error

    with client.timed("ServiceCall", operation="/z") as ev3:
        ev3["outcome"] = "ERROR"  # fields set in the block win over the automatic ones
    with client.timed("ServiceCall", operation="/bad") as ev4:
        ev4["status_code"] = "not an int"  # found at exit: counted, not raised
    with pytest.raises(EventValidationError, match="endpoint"):  # noqa: SIM117
        with client.timed("ServiceCall", operation="/w") as ev5:
            ev5["endpoint"] = "/typo"  # unknown name: raised where it is set

    got = events()
    assert [(e["operation"], e["outcome"], e["status_code"], e["exception_type"]) for e in got] == [
        ("/x", "OK", 200, None),
        ("/y", "ERROR", 502, "ConnectionResetError"),
        ("/z", "ERROR", None, None),
        ("/w", "ERROR", None, "spotify_events.errors.EventValidationError"),
    ]
    assert got[0]["user_id"] == "u1" and got[0]["service"] == "api"
    assert client.instrumentation_errors == 1


def test_timed_async_with(client_and_events: tuple[EventClient, Events]) -> None:
    client, events = client_and_events

    async def main() -> None:
        async with client.timed("ServiceCall", operation="/async") as ev:
            await asyncio.sleep(0.02)
            ev["status_code"] = 204

    asyncio.run(main())
    (event,) = events()
    assert event["status_code"] == 204 and event["duration_ms"] >= 15.0


# -- what instrumentation needs of a client --------------------------------------------------
class RecordingClient:
    """Not an EventClient: only what :class:`InstrumentedClient` asks for."""

    def __init__(self, registry: SchemaRegistry, service: str) -> None:
        self.registry = registry
        self.config = types.SimpleNamespace(service=service)
        self.instrumentation_errors = 0
        self.logged: list[tuple[str, dict[str, Any]]] = []

    def log(self, event: str, record: Mapping[str, Any], /) -> None:
        self.logged.append((event, dict(record)))


def test_track_and_timed_need_only_the_client_protocol() -> None:
    """Both build the same automatic fields through one function, for any object with
    the protocol's four members (the module does not import the client class)."""
    client = RecordingClient(SchemaRegistry(SCHEMAS), service="svc")

    @track(client, "ServiceCall", operation="op")
    def call(fail: bool) -> None:
        if fail:
            raise KeyError("x")

    call(False)
    with pytest.raises(KeyError):
        call(True)
    with timed(client, "ServiceCall", operation="op"):
        pass
    with pytest.raises(KeyError), timed(client, "ServiceCall", operation="op"):
        raise KeyError("x")

    shapes = [
        (r["outcome"], r.get("exception_type"), r["service"], type(r["duration_ms"]))
        for _, r in client.logged
    ]
    ok, error = ("OK", None, "svc", float), ("ERROR", "KeyError", "svc", float)
    assert shapes == [ok, error, ok, error]
    assert client.instrumentation_errors == 0


def test_instrument_does_not_import_the_client_module() -> None:
    tree = ast.parse(Path(instrument.__file__).read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    assert "client" not in imported and "spotify_events.client" not in imported
