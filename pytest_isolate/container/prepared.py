"""The next container's PID namespace and its init, made while the current test runs.

Spawning init costs milliseconds in a big pytest process (4 ms with a
300 MB heap), and nothing about it depends on the test that will use it:
a PID namespace holding nothing but a fresh init.  So, as root, pytest
makes the next one right after it forked the current test, and the next
test's path is only ``setns`` + fork (see ``runtime.Runtime.launch``).

As root, with a blueprint to follow, the whole container is built ahead
too, by ``preparer``: then its other namespaces (``joined``) come with it,
and its init is the preparer's child, not ours.

Each prepared namespace is used by exactly one container and its init
lives only as long as its pipe: nothing of one test reaches the next.
Until it is used, its descriptors are closed in every other fork (a
fixture's ``multiprocessing`` child, a test process): only pytest holds
init's pipe, or init would outlive pytest.
"""

from __future__ import annotations

import dataclasses
import os
import signal

from pytest_isolate.container import libc
from pytest_isolate.container.launcher import spawn_init


@dataclasses.dataclass
class PreparedPidNamespace:
    init_pid: int
    init_write: int  # closing it ends init, and with it the namespace
    namespace_fd: int  # /proc/<init>/ns/pid: setns here, then fork, and the child is PID 2
    # A container built ahead: its other namespaces, (descriptor, CLONE_NEW*),
    # which the test process joins instead of making its own.
    joined: tuple[tuple[int, int], ...] = ()
    init_is_ours: bool = True  # False: the preparer's child, which it reaps

    def descriptors(self) -> tuple[int, ...]:
        fds = (self.init_write, self.namespace_fd, *(fd for fd, _ in self.joined))
        return tuple(fd for fd in fds if fd >= 0)

    def close_namespace_fd(self) -> None:
        """After the test's fork: the namespaces live on in its processes."""
        fds = (self.namespace_fd, *(fd for fd, _ in self.joined))
        pending.discard(fds)
        _close_all(fds)
        self.namespace_fd = -1
        self.joined = ()

    def discard(self) -> None:
        """Unused: end init (and reap it, if it is ours)."""
        # Off the pending set first: a number closed here is soon reused (a
        # probe's pipe), and a fork's child would close that instead.
        pending.discard(self.descriptors())
        _close_all(self.descriptors())
        if not self.init_is_ours:
            return  # it reads end-of-file on its pipe and exits; the preparer reaps it
        try:
            os.kill(self.init_pid, signal.SIGKILL)
            os.waitpid(self.init_pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def prepare(own_pid_namespace: int) -> PreparedPidNamespace:
    """A new PID namespace with init as its PID 1; the calling thread's children stay in its own."""
    init_read, init_write = os.pipe()
    libc.unshare(libc.CLONE_NEWPID)
    try:
        init_pid = spawn_init(init_read)
    finally:
        libc.setns(own_pid_namespace, libc.CLONE_NEWPID)
        os.close(init_read)
    namespace_fd = os.open(f"/proc/{init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    prepared = PreparedPidNamespace(init_pid, init_write, namespace_fd)
    pending.add(prepared.descriptors())
    return prepared


def take(prepared: PreparedPidNamespace) -> None:
    """From here on the launch owns init's pipe (the test process closes it itself, pytest at the end).

    The PID namespace's descriptor stays pending, so that the test's own
    fork closes it in the child; ``close_namespace_fd`` closes it in pytest.
    The test process joins the others itself.
    """
    pending.discard((prepared.init_write, *(fd for fd, _ in prepared.joined)))


class _Pending:
    """Descriptors closed in the child of any fork: namespaces not yet used, the preparer's socket."""

    def __init__(self) -> None:
        self.fds: set[int] = set()
        os.register_at_fork(after_in_child=self._close_in_child)

    def add(self, fds: tuple[int, ...]) -> None:
        self.fds.update(fds)

    def discard(self, fds: tuple[int, ...]) -> None:
        self.fds.difference_update(fds)

    def _close_in_child(self) -> None:
        _close_all(tuple(self.fds))
        self.fds.clear()


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


pending = _Pending()
