"""Type checks reach inside nested records, arrays and maps of records, and nullable records.

fastavro's writer would store ``True`` as 1 and ``1.5`` as 1 at any depth, so the
compiled check must look there too, and say where: the error names the whole
path (``lines[0].price.n``), the ``field`` attribute the top-level field. The
schema is a test-only one (tests/sdk/schemas_nested/), not one of the examples.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from spotify_events.encoding import EventEncoder, decode_event
from spotify_events.errors import EventValidationError
from spotify_events.schemas import SchemaRegistry

NESTED_SCHEMAS = Path(__file__).resolve().parent / "schemas_nested"
ORDER = "tests.nested.Order"


def _line(sku: str, n: int) -> dict[str, Any]:
    return {"sku": sku, "n": n, "price": {"n": 100, "d": 1.25, "exact": True}}


VALID_ORDER: dict[str, Any] = {
    "id": "o1",
    "placed_at": datetime(2025, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc),
    "qty": 3,
    "inner": {"n": 7, "d": 2.5, "exact": False},
    "lines": [_line("a", 1), _line("b", 2)],
    "by_sku": {"a": _line("a", 1)},
    "refund": {"n": 1, "d": 0.5, "exact": False},
    "ratio": 0.5,
    "code": b"SE",
    "tags": {"a": "NEW", "b": "GIFT"},
    "attrs": {"channel": "web"},
}


@pytest.fixture  # per test: each test compiles the check itself (mutmut maps code to tests)
def encoder() -> EventEncoder:
    return EventEncoder(SchemaRegistry(NESTED_SCHEMAS).get(ORDER))


def test_a_valid_nested_record_round_trips(encoder: EventEncoder) -> None:
    assert decode_event(encoder.schema, encoder.encode(VALID_ORDER)) == VALID_ORDER
    int_for_double = copy.deepcopy(VALID_ORDER)
    int_for_double["inner"]["d"] = 3  # an int is a valid double, as at the top level
    assert decode_event(encoder.schema, encoder.encode(int_for_double))["inner"]["d"] == 3.0
    other_valid = {**VALID_ORDER, "refund": None, "placed_at": 1_763_158_400_123}
    decoded = decode_event(encoder.schema, encoder.encode(other_valid))  # millis as an int
    assert decoded["refund"] is None and decoded["placed_at"] == VALID_ORDER["placed_at"]


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        target: Any = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


BAD_AT_DEPTH: dict[str, tuple[Callable[[dict[str, Any]], None], str, str]] = {
    # id: (change to the valid record, path named in the message, expected type named)
    "bool-for-int-in-record": (_set(("inner", "n"), True), "inner.n", "int (32-bit)"),
    "float-for-int-in-record": (_set(("inner", "n"), 1.5), "inner.n", "int (32-bit)"),
    "string-for-double-in-record": (_set(("inner", "d"), "2.5"), "inner.d", "double"),
    "int-for-boolean-in-record": (_set(("inner", "exact"), 1), "inner.exact", "boolean"),
    "int-out-of-range-in-record": (_set(("inner", "n"), 2**31), "inner.n", "int (32-bit)"),
    "float-for-long-in-array-of-records": (_set(("lines", 1, "n"), 1.5), "lines[1].n", "int"),
    "bool-in-record-in-array": (
        _set(("lines", 0, "price", "n"), True),
        "lines[0].price.n",
        "int (32-bit)",
    ),
    "string-for-double-in-map-of-records": (
        _set(("by_sku", "a", "price", "d"), "2.5"),
        "by_sku['a'].price.d",
        "double",
    ),
    "bool-for-int-in-nullable-record": (_set(("refund", "n"), True), "refund.n", "int (32-bit)"),
    "list-for-record-in-array": (
        _set(("lines", 0), ["a", 1]),
        "lines[0]",
        "record tests.nested.Line, got list",
    ),
    "string-for-array-of-records": (
        _set(("lines",), "abc"),
        "lines",
        "array of record tests.nested.Line",
    ),
    "list-for-map-of-records": (_set(("by_sku",), []), "by_sku", "map of tests.nested.Line"),
    "list-for-nullable-record": (
        _set(("refund",), [1]),
        "refund",
        "null or tests.nested.Amount",
    ),
    "bool-for-float": (_set(("ratio",), True), "ratio", "float"),
    "wrong-size-fixed": (_set(("code",), b"SEK"), "code", "fixed tests.nested.Code"),
    "unknown-symbol-in-map-of-enums": (
        _set(("tags", "b"), "USED"),
        "tags['b']",
        "one of NEW, GIFT, got str 'USED'",
    ),
    "int-in-map-of-strings": (_set(("attrs", "channel"), 7), "attrs['channel']", "string"),
    "bool-for-timestamp": (_set(("placed_at",), True), "placed_at", "timestamp-millis"),
    "float-for-timestamp": (_set(("placed_at",), 1.5), "placed_at", "timestamp-millis"),
    "bool-for-int-spelled-as-object": (_set(("qty",), True), "qty", "int (32-bit)"),
}


@pytest.mark.parametrize(("change", "path", "expected"), BAD_AT_DEPTH.values(), ids=BAD_AT_DEPTH)
def test_wrong_type_at_depth_is_refused_with_its_path(
    encoder: EventEncoder,
    change: Callable[[dict[str, Any]], None],
    path: str,
    expected: str,
) -> None:
    record = copy.deepcopy(VALID_ORDER)
    change(record)
    with pytest.raises(EventValidationError) as err:
        encoder.encode(record)
    error = err.value
    assert error.event_type == ORDER
    assert error.field == path.split(".")[0].split("[")[0]
    (message,) = error.errors
    assert message.startswith(f"{path}: expected {expected}"), message
    assert path in str(error)
