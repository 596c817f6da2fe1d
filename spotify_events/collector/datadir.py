"""The data directory as a place nobody shares by accident and nothing is destroyed in.

Everything the collector does to the file system outside the ledger's SQLite
file goes through here, so the rules hold in one place:

* **one owner**: an exclusive ``flock`` on the data directory for the process's
  life (the kernel drops it when the process dies, even by SIGKILL); a second
  collector on the same directory exits naming the holder's pid (kept in
  ``DATA_DIR/_lock``);
* **no symlinks**: directories are created level by level and a level that is
  a symlink (or not a directory) is refused; part files are opened with
  ``O_NOFOLLOW``, and new ones with ``O_EXCL``, so an existing file is never
  appended to by mistake;
* **owner-only modes** by default (``0600`` files, ``0700`` directories), group
  readable on request, whatever the umask;
* **quarantine instead of delete**: bytes the ledger cannot account for are
  moved to ``DATA_DIR/_quarantine/<when>-<pid>/`` beside a ``NOTE.txt`` saying
  where they came from and why, never unlinked or truncated away.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass

from ..errors import SpotifyEventsError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None  # type: ignore[assignment]

#: Not on every platform (Windows has neither); there the protection is the lstat checks.
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)

LOCK_FILE = "_lock"
QUARANTINE_DIR = "_quarantine"
NOTE_FILE = "NOTE.txt"


class DataDirError(SpotifyEventsError):
    """The data directory cannot be used safely; the message says why and what to do."""


@dataclass(frozen=True)
class FileModes:
    """Permission bits of everything the collector creates in its data directory."""

    file: int = 0o600
    directory: int = 0o700

    @classmethod
    def group_readable(cls) -> FileModes:
        return cls(file=0o640, directory=0o750)


class DataDirLock:
    """An exclusive ``flock`` on the data directory itself, held until :meth:`release` or
    exit; the holder's pid is written to ``DATA_DIR/_lock`` for the refusal message.

    The directory is locked, not a file in it: a lock file can be deleted or replaced
    while its collector runs (a tidy-up script, an operator), and the next collector
    would then lock the new file and share the directory with the first.
    """

    def __init__(self, data_dir: str, modes: FileModes) -> None:
        self.path = os.path.join(data_dir, LOCK_FILE)
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover
            return
        try:
            self._fd = os.open(data_dir, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        except OSError as exc:
            raise DataDirError(f"cannot open {data_dir} to lock it: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.release()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DataDirError(
                    f"{data_dir} is in use by another collector (pid {self._holder()}); stop "
                    "it, or give this collector a data directory of its own"
                ) from exc
            raise DataDirError(f"cannot lock {data_dir}: {exc.strerror}") from exc
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, modes.file)
        except OSError as exc:
            self.release()
            raise DataDirError(f"cannot open the lock file {self.path}: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        finally:
            os.close(fd)

    def _holder(self) -> str:
        """The pid the holder wrote to the lock file, or ``unknown``."""
        try:
            fd = os.open(self.path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        except OSError:
            return "unknown"
        try:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def fsync_dir(path: str) -> None:
    """Make a new directory entry durable (a new part file, a renamed marker)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(root: str, rel_dir: str, modes: FileModes) -> str:
    """Create ``root/rel_dir`` level by level, never through a symlink; the full path.

    Each new level gets ``modes.directory`` and its parent is fsynced. A level
    that exists as a symlink or as something other than a directory is refused.
    """
    cur = root
    for name in rel_dir.split(os.sep):
        parent, cur = cur, os.path.join(cur, name)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            try:
                os.mkdir(cur, modes.directory)
            except FileExistsError:
                st = os.lstat(cur)
            else:
                os.chmod(cur, modes.directory)  # whatever the umask
                fsync_dir(parent)
                continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise DataDirError(
                f"{cur} is {kind}; the collector writes only into real directories it "
                "created. Move it out of the data directory."
            )
    return cur


def open_part(path: str, modes: FileModes, *, new: bool) -> int:
    """An append-only descriptor for a part file; ``new`` insists the file does not exist."""
    flags = os.O_WRONLY | os.O_APPEND | O_NOFOLLOW | O_CLOEXEC
    if new:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, modes.file)
        os.fchmod(fd, modes.file)
        return fd
    return os.open(path, flags)


def write_new_file(path: str, data: bytes, modes: FileModes) -> None:
    """Write a whole new file (``O_EXCL``, no symlink followed) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, modes.file)
    try:
        os.fchmod(fd, modes.file)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Quarantine:
    """Moves what the ledger cannot account for out of the buckets, keeping every byte."""

    def __init__(self, data_dir: str, modes: FileModes) -> None:
        self.data_dir = data_dir
        self.modes = modes
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.rel = os.path.join(QUARANTINE_DIR, f"{stamp}-{os.getpid()}")

    def _target(self, rel: str, suffix: str = "") -> tuple[str, str]:
        """(relative, full) path in the quarantine for ``rel``; never an existing name."""
        directory = make_dirs(
            self.data_dir, os.path.join(self.rel, os.path.dirname(rel)), self.modes
        )
        base = os.path.basename(rel) + suffix
        name, n = base, 1
        while os.path.lexists(os.path.join(directory, name)):
            n += 1
            name = f"{base}.{n}"
        full = os.path.join(directory, name)
        return os.path.relpath(full, self.data_dir), full

    def move(self, rel: str, why: str) -> str:
        """Rename ``DATA_DIR/rel`` into the quarantine; returns its new relative path."""
        dest_rel, dest = self._target(rel)
        os.rename(os.path.join(self.data_dir, rel), dest)
        fsync_dir(os.path.dirname(dest))
        fsync_dir(os.path.dirname(os.path.join(self.data_dir, rel)))
        self._note(f"{dest_rel}: moved from {rel}: {why}")
        return dest_rel

    def keep_copy(self, rel: str, data: bytes, why: str) -> str:
        """Store ``data`` (bytes about to leave ``rel``) as a new quarantine file."""
        dest_rel, dest = self._target(rel, ".tail.avro")
        write_new_file(dest, data, self.modes)
        fsync_dir(os.path.dirname(dest))
        self._note(f"{dest_rel}: bytes cut from the end of {rel}: {why}")
        return dest_rel

    def _note(self, line: str) -> None:
        directory = make_dirs(self.data_dir, self.rel, self.modes)
        path = os.path.join(directory, NOTE_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_NOFOLLOW, self.modes.file)
        try:
            with contextlib.suppress(OSError):
                os.fchmod(fd, self.modes.file)
            os.write(fd, (line + "\n").encode("utf-8", "replace"))
            os.fsync(fd)
        finally:
            os.close(fd)
