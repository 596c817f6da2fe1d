"""ProcessHooks: parts run in registration order around a real fork, the parent's release in
reverse; the hooks reach their owner only through weak references."""

from __future__ import annotations

import gc
import os
import weakref

from spotify_events.lifecycle import Lifecycle, ProcessHooks


class Recorder:
    """A part that writes what it was asked to do to a shared log."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def before_fork(self) -> None:
        self.log.append(f"before:{self.name}")

    def after_fork_in_parent(self) -> None:
        self.log.append(f"parent:{self.name}")

    def after_fork_in_child(self) -> None:
        self.log.append(f"child:{self.name}")

    def stop(self, timeout: float) -> bool:
        self.log.append(f"stop:{self.name}")
        return True


class Owner:
    def __init__(self) -> None:
        self.exits = 0

    def exit_hook(self) -> None:
        self.exits += 1


def test_parts_run_in_order_around_a_real_fork() -> None:
    log: list[str] = []
    owner = Owner()
    hooks = ProcessHooks(owner.exit_hook)
    parts = [Recorder("queue", log), Recorder("writer", log), Recorder("client", log)]
    for part in parts:
        assert isinstance(part, Lifecycle)
        hooks.register(part)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what ran in it, then leaves without cleanup
        os.close(read_end)
        os.write(write_end, ",".join(log).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_log = pipe.read().decode().split(",")
    os.waitpid(pid, 0)
    before = ["before:queue", "before:writer", "before:client"]
    assert child_log == [*before, "child:queue", "child:writer", "child:client"]
    assert log == [*before, "parent:client", "parent:writer", "parent:queue"]


def test_a_stopped_owner_holds_nothing_at_a_fork() -> None:
    log: list[str] = []
    owner = Owner()
    hooks = ProcessHooks(owner.exit_hook)
    part = Recorder("queue", log)
    hooks.register(part)
    hooks.stop_fork_handling()
    hooks.before_fork()
    hooks.after_fork_in_parent()
    assert log == []


def test_hooks_keep_neither_owner_nor_parts_alive() -> None:
    log: list[str] = []
    owner = Owner()
    hooks = ProcessHooks(owner.exit_hook)
    part = Recorder("queue", log)
    hooks.register(part)
    owner_ref, part_ref, hooks_ref = weakref.ref(owner), weakref.ref(part), weakref.ref(hooks)
    hooks.run_exit_hook()
    assert owner.exits == 1
    del owner, part
    gc.collect()
    assert owner_ref() is None and part_ref() is None
    hooks.run_exit_hook()  # the owner is gone: nothing to call, nothing raised
    hooks.before_fork()
    assert log == []
    hooks.unregister_exit()
    del hooks
    gc.collect()
    assert hooks_ref() is None  # os.register_at_fork and atexit hold it only weakly
