"""``spotify-events`` subcommands run with a crash failpoint, for the crash tests.

``python tests/failpoints.py crash-after-write:2 collector --data-dir ...`` runs the
same command as ``python -m spotify_events collector --data-dir ...``, except that
every :class:`~spotify_events.collector.delivery.LocalDelivery` it builds (the
collector's, or each partition's in a delivery worker) gets a ``failpoint`` hook
that ends the process with ``os._exit(137)``, as abrupt as SIGKILL, the 2nd time its
group commit passes ``after-write`` (bucket bytes fsynced, ledger not committed) or,
for ``crash-after-commit:N``, ``after-commit`` (ledger committed, no 200 sent yet).
The package reads no switch for this: the hook comes in through the constructor.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotify_events.collector import delivery


def failpoint_program(spec: str) -> list[str]:
    """The command line prefix that runs a subcommand with failpoint ``spec``
    (``crash-after-write:N`` or ``crash-after-commit:N``), for ``ServiceProcess.program``."""
    _parse(spec)  # refuse a typo here, not in the child
    return [sys.executable, str(Path(__file__).resolve()), spec]


def crash_at(point: str, nth: int) -> Callable[[str], None]:
    """A failpoint hook that exits the process the ``nth`` time ``point`` is passed."""
    remaining = nth

    def hook(name: str) -> None:
        nonlocal remaining
        if name == point:
            remaining -= 1
            if remaining == 0:
                os._exit(137)

    return hook


def _parse(spec: str) -> tuple[str, int]:
    for point in (delivery.FAILPOINT_AFTER_WRITE, delivery.FAILPOINT_AFTER_COMMIT):
        prefix = f"crash-{point}:"
        if spec.startswith(prefix):
            return point, int(spec[len(prefix) :])
    raise ValueError(f"unknown failpoint {spec!r}")


def _inject(spec: str) -> None:
    """Give every LocalDelivery built from now on its own hook (its own count)."""
    point, nth = _parse(spec)
    original = delivery.LocalDelivery.__init__

    @functools.wraps(original)
    def init(self: delivery.LocalDelivery, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("failpoint", crash_at(point, nth))
        original(self, *args, **kwargs)

    delivery.LocalDelivery.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    _inject(sys.argv[1])
    from spotify_events.cli import main

    sys.argv[1:] = sys.argv[2:]
    main()
