"""Process lifecycle: what each part does around ``os.fork()`` and at exit, in one place.

Every part that owns a thread, a lock, a connection or a socket follows one
protocol, :class:`Lifecycle`: ``before_fork`` (quiesce, so the child inherits no
lock held by a thread it does not have), ``after_fork_in_parent`` (carry on),
``after_fork_in_child`` (fresh primitives, no threads; connections reopen on use)
and ``stop(timeout) -> bool``. A client keeps one :class:`ProcessHooks`, which
registers each process hook once (``os.register_at_fork``, ``atexit``,
``multiprocessing``'s after-fork registry), reaches its parts and its exit hook
only through weak references (so registering never keeps a client alive), and
calls the parts in the order they were registered (the parent's release runs in
reverse, undoing the holds innermost first).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import weakref
from collections.abc import Callable
from typing import Protocol, runtime_checkable

logger = logging.getLogger("spotify_events")


@runtime_checkable
class Lifecycle(Protocol):
    """A part with process-level state: threads, locks, connections, sockets."""

    def before_fork(self) -> None: ...

    def after_fork_in_parent(self) -> None: ...

    def after_fork_in_child(self) -> None: ...

    def stop(self, timeout: float) -> bool: ...


class ProcessHooks:
    """One client's fork, exit and multiprocessing hooks, registered once."""

    def __init__(self, exit_hook: Callable[[], None]) -> None:
        self._parts: list[weakref.ref[Lifecycle]] = []
        self._exit_hook = weakref.WeakMethod(exit_hook)
        self._pid = os.getpid()
        self._forking = True  # False once the client closes: a fork then holds nothing
        self._held = False
        hooks = weakref.ref(self)

        def call(method: Callable[[ProcessHooks], None]) -> Callable[[], None]:
            def hook() -> None:
                target = hooks()
                if target is not None:
                    method(target)

            return hook

        os.register_at_fork(
            before=call(ProcessHooks.before_fork),
            after_in_parent=call(ProcessHooks.after_fork_in_parent),
            after_in_child=call(ProcessHooks.after_fork_in_child),
        )
        self._atexit: Callable[[], None] | None = call(ProcessHooks.run_exit_hook)
        atexit.register(self._atexit)
        # multiprocessing's forked children leave through os._exit(), skipping atexit,
        # and clear its finalizer registry at start; its after-fork hooks run after that.
        multiprocessing.util.register_after_fork(self, ProcessHooks._exit_with_multiprocessing)

    def register(self, part: Lifecycle) -> None:
        """Add ``part``; parts run in registration order (the parent's release in reverse)."""
        self._parts.append(weakref.ref(part))

    def _live_parts(self) -> list[Lifecycle]:
        return [part for ref in self._parts if (part := ref()) is not None]

    # -- the process hooks ------------------------------------------------------------
    def before_fork(self) -> None:
        if self._forking and self._pid == os.getpid():
            for part in self._live_parts():
                part.before_fork()
            self._held = True

    def after_fork_in_parent(self) -> None:
        if self._held:
            self._held = False
            for part in reversed(self._live_parts()):
                part.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        self._held = False
        self._pid = os.getpid()
        for part in self._live_parts():
            part.after_fork_in_child()

    def run_exit_hook(self) -> None:
        hook = self._exit_hook()
        if hook is not None:
            hook()

    def _exit_with_multiprocessing(self) -> None:
        if self._forking:
            multiprocessing.util.Finalize(self, self.run_exit_hook, exitpriority=10)

    # -- the owner closing ------------------------------------------------------------
    def stop_fork_handling(self) -> None:
        """The owner is closing: later forks hold nothing (its parts are shutting down)."""
        self._forking = False

    def unregister_exit(self) -> None:
        """The owner closed on its own: nothing left for the exit hook to do."""
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
