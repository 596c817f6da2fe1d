"""The queue file as a file: whether a path can hold one, and moving a damaged one aside."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import QueuePathError


def check_queue_path(path: str | os.PathLike[str]) -> None:
    """Raise :class:`QueuePathError` naming what keeps ``path`` from holding a queue.

    SQLite says only "unable to open database file" for all of these; this says
    which: the directory is missing, a permission is missing, or the path is a
    directory. (Whether an existing file is a queue is decided when it is opened.)"""
    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise QueuePathError(f"queue_path {path}: is a directory, not a queue file")
    directory = target.parent
    if not directory.is_dir():
        raise QueuePathError(f"queue_path {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        # SQLite creates its -wal and -shm files beside the queue file
        raise QueuePathError(
            f"queue_path {path}: permission denied: cannot create files in {directory}"
        )
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        raise QueuePathError(
            f"queue_path {path}: permission denied: the file must be readable and writable"
        )


def quarantine(path: str | os.PathLike[str]) -> Path:
    """Move a damaged queue file (and its -wal/-shm companions) aside, never deleting
    it, so a fresh queue can start and someone can still inspect or salvage the old one."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return move_aside(Path(path), f"corrupt-{stamp}")


def move_aside(source: Path, label: str) -> Path:
    """Rename ``source`` and its companions to ``source.<label>[-n]``; the new path."""
    target = source.with_name(f"{source.name}.{label}")
    n = 1
    while target.exists():
        n += 1
        target = source.with_name(f"{source.name}.{label}-{n}")
    for suffix in ("", "-wal", "-shm"):
        companion = Path(f"{source}{suffix}")
        if companion.exists():
            os.replace(companion, f"{target}{suffix}")
    return target


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
