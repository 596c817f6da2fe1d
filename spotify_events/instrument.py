"""Instrumentation: decorators and context managers that turn calls into events.

Owns ``@track`` (one event per call of a function, method, ``async def``
function, generator or async generator) and ``timed()`` (one event per ``with``
block). Both emit through :meth:`EventClient.log` and follow the rule of the
background path: **instrumentation never breaks the host**. A call's return
value, exception (same object, same traceback), signature, name and docstring
are exactly those of the undecorated function; when building or logging the
event fails (a parameter of the wrong type for the schema, a closed client ...)
the call still succeeds, the failure is logged once per decorated function and
counted in ``client.instrumentation_errors``.

Mistakes that can be seen without calling anything are errors when the
decorator is applied: an unknown event type (:class:`UnknownEventTypeError`), a
static field that is not in the schema, a required schema field that nothing
supplies (:class:`EventValidationError`, a ``ValueError``).

Which fields an event gets, resolved once at decoration time (a call pays for a
few tuple lookups, not for ``inspect.signature(...).bind``):

1. static fields given to the decorator (``@track("ServiceCall", service="api")``);
2. every parameter of the decorated function whose name is a schema field
   (positional or keyword, defaults applied; never ``self``/``cls``, never
   ``*args``/``**kwargs``, never a name given as a static field);
3. ``operation``, when the schema has a string ``operation`` field that 1 and 2
   leave unset: the function's ``module.qualname``; ``service``, likewise, from the
   client's ``service`` setting (``SPOTIFY_EVENTS_SERVICE``) when that is not empty;
4. ``duration_ms`` (number), ``outcome`` (``"OK"``/``"ERROR"``, string or enum) and,
   when the call raised, ``exception_type`` (qualified name, ``builtins.`` omitted),
   each only if the schema has that field;
5. ``fields(bound_arguments, result) -> dict`` when given: computed per call, wins
   over everything above (``result`` is None when the call raised). Binding the
   arguments for it costs a few microseconds per call; the other steps do not.

Durations are ``time.perf_counter`` wall-clock: a coroutine is timed until its
``await`` completes, a generator from its first ``next()`` until it is exhausted
or closed (closing early is ``OK``, not ``ERROR``; ``GeneratorExit`` is how a
consumer says "enough").

What a call costs over the undecorated function is measured by
``benchmarks/test_bench_instrument.py``; the figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from .errors import EventValidationError, SpotifyEventsError
from .schemas import EventSchema, SchemaRegistry

logger = logging.getLogger("spotify_events")

F = TypeVar("F", bound=Callable[..., Any])
#: ``fields=`` callable: ``(bound_arguments, result) -> extra fields``.
FieldsFn = Callable[[dict[str, Any], Any], Mapping[str, Any]]

DURATION = "duration_ms"
OUTCOME = "outcome"
EXCEPTION_TYPE = "exception_type"
OPERATION = "operation"
SERVICE = "service"
AUTOMATIC_FIELDS = frozenset({DURATION, OUTCOME, EXCEPTION_TYPE})

_MISSING: Any = object()
_KEYWORD_ONLY = sys.maxsize  # "index" of a keyword-only parameter: never in args
_count_lock = threading.RLock()  # re-entrant: a signal handler may count a failure too
_perf = time.perf_counter


class _ServiceSetting(Protocol):
    @property
    def service(self) -> str: ...


class InstrumentedClient(Protocol):
    """What instrumentation needs of a client (:class:`~spotify_events.EventClient` is
    one): its schemas, its ``service`` setting, ``log()``, and the counter of events it
    could not build. A protocol, so this module does not import the client."""

    registry: SchemaRegistry
    instrumentation_errors: int

    @property
    def config(self) -> _ServiceSetting: ...

    def log(self, event: str, record: Mapping[str, Any], /) -> None: ...


class ClientSource(Protocol):
    """Where instrumentation finds its schemas (at decoration) and client (per event).

    Lets the module-level API (:mod:`spotify_events.default`) decorate at import
    time without creating a client: ``schema_registry()`` may only read schema
    files, ``get_client()`` is first called when the first event is emitted.
    """

    def schema_registry(self) -> SchemaRegistry: ...

    def get_client(self) -> InstrumentedClient: ...


class _Direct:
    """A :class:`ClientSource` for one existing client."""

    __slots__ = ("client",)

    def __init__(self, client: InstrumentedClient) -> None:
        self.client = client

    def schema_registry(self) -> SchemaRegistry:
        return self.client.registry

    def get_client(self) -> InstrumentedClient:
        return self.client


def _as_source(client: InstrumentedClient | ClientSource) -> ClientSource:
    if all(callable(getattr(client, m, None)) for m in ("schema_registry", "get_client")):
        return cast(ClientSource, client)
    if callable(getattr(client, "log", None)) and isinstance(
        getattr(client, "registry", None), SchemaRegistry
    ):
        return _Direct(cast(InstrumentedClient, client))
    raise TypeError(f"expected an EventClient or a ClientSource, got {client!r}")


# -- what a schema offers the automatic fields, computed once per schema version ------------
@dataclass(frozen=True)
class _SchemaPlan:
    full_name: str
    fields: frozenset[str]
    required: frozenset[str]  # fields without a default
    auto: frozenset[str]  # automatic fields present in the schema
    to_duration: Callable[[float], Any] | None
    ok: Any  # outcome value for a call that returned (_MISSING: no outcome field)
    error: Any
    exception_ok: Any  # exception_type value when nothing was raised (_MISSING: leave default)
    has_exception_type: bool
    operation_is_string: bool
    service_is_string: bool


# Per registry (hashed by identity, cheap) and name as asked for: timed() looks its plan
# up on every block. Like the client's encoder cache, a version registered later is not
# picked up by names already resolved.
_plans: weakref.WeakKeyDictionary[SchemaRegistry, dict[str, _SchemaPlan]] = (
    weakref.WeakKeyDictionary()
)


def _kind(avro_type: Any) -> Any:
    return avro_type.get("type") if isinstance(avro_type, Mapping) else avro_type


def _plan_for(registry: SchemaRegistry, event_type: str) -> _SchemaPlan:
    by_name = _plans.get(registry)
    if by_name is None:
        by_name = _plans.setdefault(registry, {})
    plan = by_name.get(event_type)
    if plan is None:
        plan = by_name[event_type] = _build_plan(registry.get(event_type))
    return plan


def _build_plan(schema: EventSchema) -> _SchemaPlan:
    name = schema.full_name
    fields = schema.parsed["fields"]
    by_name = {f["name"]: f for f in fields}

    def branches(field_name: str) -> tuple[list[Any], bool]:
        ftype = by_name[field_name]["type"]
        options = ftype if isinstance(ftype, list) else [ftype]
        rest = [t for t in options if _kind(t) != "null"]
        return rest, len(rest) != len(options)

    def unusable(field_name: str, need: str) -> EventValidationError:
        return EventValidationError(
            name,
            [
                f"{field_name} is set by instrumentation and must be {need}; "
                f"got {by_name[field_name]['type']!r}"
            ],
            field=field_name,
        )

    to_duration: Callable[[float], Any] | None = None
    if DURATION in by_name:
        types, _ = branches(DURATION)
        kinds = {_kind(t) for t in types}
        if len(types) == 1 and kinds <= {"double", "float"}:
            to_duration = float
        elif len(types) == 1 and kinds <= {"long", "int"}:
            to_duration = round
        else:
            raise unusable(DURATION, "a double, float, long or int (milliseconds)")

    ok = error = _MISSING
    if OUTCOME in by_name:
        types, _ = branches(OUTCOME)
        kind = _kind(types[0]) if len(types) == 1 else None
        if kind == "string":
            ok, error = "OK", "ERROR"
        elif kind == "enum":
            symbols = {s.upper(): s for s in types[0]["symbols"]}
            if "OK" not in symbols or "ERROR" not in symbols:
                raise unusable(OUTCOME, "an enum with the symbols OK and ERROR")
            ok, error = symbols["OK"], symbols["ERROR"]
        else:
            raise unusable(OUTCOME, "a string or an enum with the symbols OK and ERROR")

    exception_ok = _MISSING
    if EXCEPTION_TYPE in by_name:
        types, nullable = branches(EXCEPTION_TYPE)
        if [_kind(t) for t in types] != ["string"]:
            raise unusable(EXCEPTION_TYPE, 'a string or ["null", "string"]')
        if "default" not in by_name[EXCEPTION_TYPE]:
            exception_ok = None if nullable else ""

    def is_string(field_name: str) -> bool:
        return field_name in by_name and any(_kind(t) == "string" for t in branches(field_name)[0])

    return _SchemaPlan(
        full_name=name,
        fields=frozenset(by_name),
        required=frozenset(f["name"] for f in fields if "default" not in f),
        auto=AUTOMATIC_FIELDS & frozenset(by_name),
        to_duration=to_duration,
        ok=ok,
        error=error,
        exception_ok=exception_ok,
        has_exception_type=EXCEPTION_TYPE in by_name,
        operation_is_string=is_string(OPERATION),
        service_is_string=is_string(SERVICE),
    )


def _check_static(plan: _SchemaPlan, static: Mapping[str, Any]) -> dict[str, Any]:
    keys = static.keys()
    if keys <= plan.fields and not keys & plan.auto:  # the common case, on every timed()
        return dict(static)
    unknown = sorted(set(static) - plan.fields)
    if unknown:
        raise EventValidationError(
            plan.full_name,
            [
                f"static field {n!r} is not a field of {plan.full_name} "
                f"(fields: {', '.join(sorted(plan.fields))})"
                for n in unknown
            ],
            field=unknown[0],
        )
    automatic = sorted(set(static) & plan.auto)
    if automatic:
        raise EventValidationError(
            plan.full_name,
            [
                f"{n!r} is set by the instrumentation; override it per call with fields="
                for n in automatic
            ],
            field=automatic[0],
        )
    return dict(static)


def add_automatic_fields(
    record: dict[str, Any], plan: _SchemaPlan, elapsed_ms: float, raised: type[BaseException] | None
) -> None:
    """Set ``duration_ms``, ``outcome`` and ``exception_type`` of one call or block in
    ``record``, each only where the schema has it. ``raised`` is the class of the
    exception that ended it, or None; ``GeneratorExit`` (a consumer closing a
    generator early) counts as a normal end."""
    if plan.to_duration is not None:
        record[DURATION] = plan.to_duration(elapsed_ms)
    if raised is None or issubclass(raised, GeneratorExit):
        if plan.ok is not _MISSING:
            record[OUTCOME] = plan.ok
        if plan.exception_ok is not _MISSING:
            record[EXCEPTION_TYPE] = plan.exception_ok
    else:
        if plan.error is not _MISSING:
            record[OUTCOME] = plan.error
        if plan.has_exception_type:
            record[EXCEPTION_TYPE] = exception_name(raised)


def exception_name(exc_type: type[BaseException]) -> str:
    """``module.QualName`` of an exception class; builtins go without ``builtins.``."""
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def _count_failure(client: InstrumentedClient | None) -> None:
    if client is not None:
        with _count_lock:
            client.instrumentation_errors += 1


# -- @track ----------------------------------------------------------------------------------
def track(
    client: InstrumentedClient | ClientSource,
    event_type: str,
    /,
    *,
    fields: FieldsFn | None = None,
    **static_fields: Any,
) -> Callable[[F], F]:
    """Decorator factory: emit one ``event_type`` event per call of the decorated callable.

    ``client`` is an :class:`EventClient` or a :class:`ClientSource`. See the module
    docstring for which fields are filled and how. Raises at decoration time for an
    unknown type, a static field not in the schema, or a required field nothing sets.
    """
    source = _as_source(client)
    plan = _plan_for(source.schema_registry(), event_type)
    static = _check_static(plan, static_fields)
    if fields is not None and not callable(fields):
        raise TypeError(f"fields= must be a callable (arguments, result) -> dict, got {fields!r}")

    def decorate(func: F) -> F:
        if isinstance(func, (staticmethod, classmethod)):
            return cast(F, type(func)(decorate(func.__func__)))
        if not callable(func):
            raise TypeError(f"@track decorates a callable, got {func!r}")
        wrapped: F = _Tracker(source, plan, static, fields, func).wrap()
        return wrapped

    return decorate


class _Tracker:
    """The per-decorated-function state: resolved binding, failure count, warned flag."""

    __slots__ = (
        "errors",
        "fields_fn",
        "fill_service",
        "func",
        "get_client",
        "label",
        "params",
        "plan",
        "signature",
        "static",
        "warned",
    )

    def __init__(
        self,
        source: ClientSource,
        plan: _SchemaPlan,
        static: dict[str, Any],
        fields_fn: FieldsFn | None,
        func: Callable[..., Any],
    ) -> None:
        self.plan = plan
        self.func = func
        self.fields_fn = fields_fn
        self.get_client = source.get_client
        qualname = getattr(func, "__qualname__", repr(func))
        self.label = f"{getattr(func, '__module__', '?')}.{qualname}"
        self.errors = 0
        self.warned = False
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have none: no parameter binding
            self.signature = None
        static = dict(static)
        params: list[tuple[str, int, Any]] = []
        position = 0
        parameters = self.signature.parameters.values() if self.signature is not None else ()
        for i, param in enumerate(parameters):
            kind = param.kind
            if kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            index = _KEYWORD_ONLY if kind is param.KEYWORD_ONLY else position
            if kind is not param.KEYWORD_ONLY:
                position += 1
            name = param.name
            if i == 0 and name in ("self", "cls"):
                continue
            if name in plan.fields and name not in static and name not in plan.auto:
                default = _MISSING if param.default is param.empty else param.default
                params.append((name, index, default))
        self.params = tuple(params)
        covered = set(static) | {p[0] for p in params} | plan.auto
        if OPERATION not in covered and plan.operation_is_string:
            static[OPERATION] = self.label
            covered.add(OPERATION)
        self.static = static
        self.fill_service = plan.service_is_string and SERVICE not in covered
        missing = sorted(plan.required - covered)
        if missing and fields_fn is None:
            raise EventValidationError(
                plan.full_name,
                [
                    f"required field {n!r} is set by nothing: give it as a static field, name "
                    f"a parameter of {self.label} after it, or compute it with fields="
                    for n in missing
                ],
                field=missing[0],
            )

    def wrap(self) -> Any:
        func, emit = self.func, self.emit
        wrapper: Callable[..., Any]
        if inspect.isasyncgenfunction(func):

            async def async_gen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
                start = _perf()
                try:
                    agen = func(*args, **kwargs)
                    try:
                        value = await agen.__anext__()
                        while True:
                            try:
                                sent = yield value
                            except GeneratorExit:
                                await agen.aclose()
                                raise
                            except BaseException as thrown:  # athrow() into the wrapper
                                value = await agen.athrow(thrown)
                            else:
                                value = await agen.asend(sent)
                    except StopAsyncIteration:
                        pass
                except GeneratorExit:
                    emit(args, kwargs, start, None, None)
                    raise
                except BaseException as exc:
                    emit(args, kwargs, start, exc, None)
                    raise
                emit(args, kwargs, start, None, None)

            wrapper = async_gen_wrapper
        elif inspect.iscoroutinefunction(func):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = _perf()
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    emit(args, kwargs, start, exc, None)
                    raise
                emit(args, kwargs, start, None, result)
                return result

            wrapper = async_wrapper
        elif inspect.isgeneratorfunction(func):

            def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                start = _perf()
                try:
                    result = yield from func(*args, **kwargs)
                except GeneratorExit:
                    emit(args, kwargs, start, None, None)
                    raise
                except BaseException as exc:
                    emit(args, kwargs, start, exc, None)
                    raise
                emit(args, kwargs, start, None, result)
                return result

            wrapper = gen_wrapper
        else:

            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = _perf()
                try:
                    result = func(*args, **kwargs)
                except BaseException as exc:
                    emit(args, kwargs, start, exc, None)
                    raise
                emit(args, kwargs, start, None, result)
                return result

            wrapper = sync_wrapper
        return functools.wraps(func)(wrapper)

    def emit(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        exc: BaseException | None,
        result: Any,
    ) -> None:
        """Build and log the event for one call; never raises (``Exception``s are counted)."""
        elapsed = (_perf() - start) * 1000.0
        client: InstrumentedClient | None = None
        try:
            client = self.get_client()
            record = self.static.copy()
            if self.fill_service and client.config.service:
                record[SERVICE] = client.config.service
            nargs = len(args)
            for name, index, default in self.params:
                if index < nargs:
                    record[name] = args[index]
                else:
                    value = kwargs.get(name, default)
                    if value is not _MISSING:
                        record[name] = value
            plan = self.plan
            add_automatic_fields(record, plan, elapsed, None if exc is None else type(exc))
            if self.fields_fn is not None:
                arguments: dict[str, Any] = {}
                if self.signature is not None:
                    bound = self.signature.bind(*args, **kwargs)
                    bound.apply_defaults()
                    arguments = dict(bound.arguments)
                record.update(self.fields_fn(arguments, result))
            client.log(plan.full_name, record)
        except Exception as err:  # instrumentation never breaks the host
            self.failed(err, client)

    def failed(self, err: Exception, client: InstrumentedClient | None) -> None:
        _count_failure(client)
        with _count_lock:
            self.errors += 1
            first, self.warned = not self.warned, True
        if first:
            logger.warning(
                "spotify-events: @track(%s) on %s could not emit its event (%s: %s); the call "
                "itself was not affected. Further failures of this function are only counted "
                "(client.instrumentation_errors).",
                self.plan.full_name,
                self.label,
                type(err).__name__,
                err,
                exc_info=_traceback_for(err),
            )


def _traceback_for(err: Exception) -> Exception | None:
    """Our own errors (client closed, invalid event) are expected: the message says
    it all. Anything else is a bug somewhere and deserves its traceback."""
    return None if isinstance(err, SpotifyEventsError) else err


# -- timed() ---------------------------------------------------------------------------------
_warned_timed: set[tuple[str, tuple[str, ...]]] = set()


def timed(
    client: InstrumentedClient | ClientSource, event_type: str, /, **static_fields: Any
) -> Timed:
    """Context manager: emit one ``event_type`` event per ``with`` block.

    ``with client.timed("ServiceCall", operation="/x") as ev: ...`` — inside the
    block ``ev["status_code"] = 200`` or ``ev.set(status_code=200)`` adds fields;
    at exit ``duration_ms``, ``outcome``, ``exception_type`` and the client's
    ``service`` are added (fields set in the block win) and the event is logged.
    Exceptions propagate unchanged; a failure to build or log the event is logged
    once and counted, never raised.
    Unknown type and unknown static fields raise here, unknown field names raise
    when set (both :class:`EventValidationError`); a wrong *value* is only found
    when the event is encoded at exit, and is counted.
    """
    source = _as_source(client)
    plan = _plan_for(source.schema_registry(), event_type)
    return Timed(source, plan, _check_static(plan, static_fields))


class Timed:
    """One timed block's event in the making; the object ``with ... as ev`` gives."""

    __slots__ = ("_fields", "_plan", "_source", "_start")

    def __init__(self, source: ClientSource, plan: _SchemaPlan, static: dict[str, Any]) -> None:
        self._source = source
        self._plan = plan
        self._fields = static
        self._start = 0.0

    @property
    def event_type(self) -> str:
        return self._plan.full_name

    @property
    def fields(self) -> dict[str, Any]:
        """A copy of the fields set so far (static and in-block; not the automatic ones)."""
        return dict(self._fields)

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self._plan.fields:
            self._unknown(name)
        self._fields[name] = value

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def set(self, **fields: Any) -> Timed:
        """Set several fields at once; returns ``self``."""
        for name in fields:
            if name not in self._plan.fields:
                self._unknown(name)
        self._fields.update(fields)
        return self

    def _unknown(self, name: str) -> None:
        plan = self._plan
        raise EventValidationError(
            plan.full_name,
            [
                f"{name!r} is not a field of {plan.full_name} "
                f"(fields: {', '.join(sorted(plan.fields))})"
            ],
            field=name,
        )

    def __enter__(self) -> Timed:
        self._start = _perf()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = (_perf() - self._start) * 1000.0
        plan = self._plan
        client: InstrumentedClient | None = None
        try:
            client = self._source.get_client()
            record: dict[str, Any] = {}
            if plan.service_is_string and client.config.service:
                record[SERVICE] = client.config.service
            add_automatic_fields(record, plan, elapsed, exc_type)
            record.update(self._fields)
            client.log(plan.full_name, record)
        except Exception as err:  # instrumentation never breaks the host
            _count_failure(client)
            key = (plan.full_name, tuple(sorted(self._fields)))
            if key not in _warned_timed:
                _warned_timed.add(key)
                logger.warning(
                    "spotify-events: timed(%s) could not emit its event (%s: %s); the block itself "
                    "was not affected. Further such failures are only counted "
                    "(client.instrumentation_errors).",
                    plan.full_name,
                    type(err).__name__,
                    err,
                    exc_info=_traceback_for(err),
                )

    async def __aenter__(self) -> Timed:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
