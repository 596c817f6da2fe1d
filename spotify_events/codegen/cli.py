"""Schema tooling commands: ``spotify-events codegen`` and ``spotify-events schemas check``.

Owns the two CLI entry points :mod:`spotify_events.cli` loads lazily
(``codegen_command``, ``schemas_group``) and the schema-evolution diff behind
the CI gate (:func:`diff_schema_dirs`). Source generation itself lives in
:mod:`.model` and :mod:`.python`.

Exit codes: 0 ok; 1 a stale generated file (``codegen --check``) or an
incompatible schema change (``schemas check``); 2 unusable input (a schema
directory that does not load: the message names the file and the problem) or,
for ``schemas check``, Apache Avro missing (the message names the extra).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from ..errors import MissingExtraError, SchemaError
from ..schemas import SchemaRegistry, check_compatibility
from .python import generate_python

__all__ = [
    "SchemaChange",
    "codegen_command",
    "diff_schema_dirs",
    "schemas_group",
]

#: What ``--require`` accepts: which directions a changed type must stay compatible in.
REQUIREMENTS = ("full", "backward", "forward")


class InputError(click.ClickException):
    """Unusable input (a schema directory that does not load) or a missing optional
    dependency; exit code 2, so a CI gate never reads it as an incompatible change."""

    exit_code = 2


def _load(directory: str) -> SchemaRegistry:
    try:
        return SchemaRegistry(directory)
    except SchemaError as exc:
        raise InputError(str(exc)) from exc


# -- codegen -----------------------------------------------------------------------------
@click.command("codegen")
@click.argument("schemas_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Python file to write, e.g. mypkg/events.py.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 if OUTPUT differs from what would be generated (for CI).",
)
def codegen_command(schemas_dir: str, output: str, check: bool) -> None:
    """Generate typed dataclasses for the event schemas in SCHEMAS_DIR.

    One frozen dataclass per event type (and per nested record), str-valued
    enums, schema defaults and docs, the event type and fingerprint as class
    attributes, and ``to_avro()``. The output is deterministic, so
    ``--check`` in CI catches a file that was not regenerated.
    """
    try:
        source = generate_python(schemas_dir, output)
    except SchemaError as exc:
        raise InputError(str(exc)) from exc
    data = source.encode("ascii")
    target = Path(output)
    if check:
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            raise click.ClickException(
                f"{output} does not exist; run: spotify-events codegen {schemas_dir} -o {output}"
            ) from None
        if current != data:
            raise click.ClickException(
                f"{output} is stale: it differs from what the schemas in {schemas_dir} "
                f"generate; run: spotify-events codegen {schemas_dir} -o {output}"
            )
        click.echo(f"{output} is up to date")
        return
    _write_atomically(target, data)
    click.echo(f"wrote {output}")


def _write_atomically(target: Path, data: bytes) -> None:
    """Write through a temporary file and ``os.replace`` so readers never see half a file.

    The file is created with mode 0666 less the umask, like any file an editor or
    ``open()`` writes (``mkstemp`` would make generated source private: 0600).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- schemas check ------------------------------------------------------------------------
@dataclass(frozen=True)
class SchemaChange:
    """How one event type changed between two schema directories.

    ``change`` is ``added``, ``removed``, ``unchanged`` or ``changed``;
    ``backward``/``forward`` are None where there is nothing to compare.
    """

    event_type: str
    change: str
    ok: bool
    backward: bool | None = None
    forward: bool | None = None
    old_fingerprint: str | None = None
    new_fingerprint: str | None = None
    reasons: tuple[str, ...] = field(default=())


def diff_schema_dirs(
    old: SchemaRegistry, new: SchemaRegistry, *, require: str = "full"
) -> list[SchemaChange]:
    """Compare the writer version of every event type in ``old`` and ``new``.

    ``require`` names the directions a changed type must stay compatible in
    (``full`` = both). A removed type is always a failure: producers that
    still send it would have every event rejected.
    """
    if require not in REQUIREMENTS:
        raise ValueError(f"require must be one of {', '.join(REQUIREMENTS)}, not {require!r}")
    changes: list[SchemaChange] = []
    for name in sorted(set(old.event_types) | set(new.event_types)):
        if name not in new.event_types:
            o = old.get(name)
            changes.append(
                SchemaChange(
                    name,
                    "removed",
                    ok=False,
                    old_fingerprint=o.fingerprint_hex,
                    reasons=("removed: producers still sending this type would be rejected",),
                )
            )
            continue
        if name not in old.event_types:
            n = new.get(name)
            changes.append(SchemaChange(name, "added", ok=True, new_fingerprint=n.fingerprint_hex))
            continue
        o, n = old.get(name), new.get(name)
        if o.fingerprint == n.fingerprint:
            changes.append(
                SchemaChange(
                    name,
                    "unchanged",
                    ok=True,
                    backward=True,
                    forward=True,
                    old_fingerprint=o.fingerprint_hex,
                    new_fingerprint=n.fingerprint_hex,
                )
            )
            continue
        result = check_compatibility(o, n)
        reasons = tuple(
            _name_fields(r, n.raw if r.startswith("backward") else o.raw) for r in result.reasons
        )
        needed = {
            "full": result.full,
            "backward": result.backward,
            "forward": result.forward,
        }[require]
        changes.append(
            SchemaChange(
                name,
                "changed",
                ok=needed,
                backward=result.backward,
                forward=result.forward,
                old_fingerprint=o.fingerprint_hex,
                new_fingerprint=n.fingerprint_hex,
                reasons=reasons,
            )
        )
    return changes


_LOCATION = re.compile(r"/fields/[\w/]*")


def _name_fields(reason: str, reader: Mapping[str, Any]) -> str:
    """Add the field path to Avro's JSON-pointer locations: ``/fields/2/type (ms_played)``.

    Locations point into the *reader* schema (new for backward, old for forward).
    """

    def field_path(match: re.Match[str]) -> str:
        node: Any = reader
        names: list[str] = []
        for segment in match.group(0).strip("/").split("/"):
            if isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
                node = node[int(segment)]
                if isinstance(node, Mapping) and "name" in node and "type" in node:
                    names.append(str(node["name"]))
            elif isinstance(node, Mapping) and segment in node:
                node = node[segment]
            else:
                break
        return f"{match.group(0)} ({'.'.join(names)})" if names else match.group(0)

    return _LOCATION.sub(field_path, reason)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def _table(changes: list[SchemaChange], require: str) -> str:
    headers = ("EVENT TYPE", "CHANGE", "BACKWARD", "FORWARD", "RESULT")
    rows = [
        (
            c.event_type,
            c.change,
            _yes_no(c.backward),
            _yes_no(c.forward),
            "ok" if c.ok else "INCOMPATIBLE",
        )
        for c in changes
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for change, row in zip(changes, rows, strict=True):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if not change.ok or (change.change == "changed" and change.reasons):
            lines.extend(f"    {reason}" for reason in change.reasons)
    bad = sum(not c.ok for c in changes)
    counts = {k: sum(c.change == k for c in changes) for k in ("changed", "added", "removed")}
    summary = (
        f"{len(changes)} event types: {counts['changed']} changed, {counts['added']} added, "
        f"{counts['removed']} removed; required compatibility: {require}; "
    )
    summary += f"{bad} incompatible" if bad else "all compatible"
    lines += ["", summary]
    return "\n".join(lines)


@click.group("schemas")
def schemas_group() -> None:
    """Inspect and gate changes to event schemas."""


@schemas_group.command("check")
@click.argument("old_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("new_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--require",
    type=click.Choice(REQUIREMENTS),
    default="full",
    show_default=True,
    help="Directions a changed type must stay compatible in: full = backward and forward "
    "(new readers read old data, old readers read new data).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of a table.")
def schemas_check_command(old_dir: str, new_dir: str, require: str, as_json: bool) -> None:
    """Check that the schemas in NEW_DIR can replace those in OLD_DIR.

    Per event type (by full name): added, removed, unchanged, or changed with
    its backward/forward compatibility and the reasons when not. Exits 1 on
    any incompatible change or removed type, so it can gate CI.
    """
    old, new = _load(old_dir), _load(new_dir)
    try:
        changes = diff_schema_dirs(old, new, require=require)
    except MissingExtraError as exc:
        raise InputError(str(exc)) from exc
    compatible = all(c.ok for c in changes)
    if as_json:
        report = {
            "compatible": compatible,
            "require": require,
            "types": [{**asdict(c), "reasons": list(c.reasons)} for c in changes],
        }
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(_table(changes, require))
    if not compatible:
        raise SystemExit(1)
