"""The PID namespace pytest prepares for the next container while a test runs (container/prepared.py)."""

from __future__ import annotations

import os

import pytest

from pytest_isolate.container import libc, prepared

pytestmark = pytest.mark.requires("root")


@pytest.fixture
def own_pid_namespace():
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def test_a_prepared_namespace_holds_only_its_init_and_the_next_fork_is_pid_2(own_pid_namespace):
    ready = prepared.prepare(own_pid_namespace)
    prepared.take(ready)
    read_end, write_end = os.pipe()
    libc.setns(ready.namespace_fd, libc.CLONE_NEWPID)
    try:
        pid = os.fork()
        if pid == 0:
            os.write(write_end, b"%d" % os.getpid())
            os._exit(0)
    finally:
        libc.setns(own_pid_namespace, libc.CLONE_NEWPID)
        ready.close_namespace_fd()
    os.close(write_end)
    assert os.read(read_end, 16) == b"2"
    os.close(read_end)
    assert os.waitpid(pid, 0)[1] == 0
    # Our own children are back in our namespace.
    assert os.readlink("/proc/self/ns/pid_for_children") == os.readlink("/proc/self/ns/pid")
    ready.discard()
    assert not os.path.exists(f"/proc/{ready.init_pid}")


def test_an_unrelated_fork_does_not_keep_a_prepared_namespace_alive(own_pid_namespace):
    ready = prepared.prepare(own_pid_namespace)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a fixture's multiprocessing child, say: it must not hold init's pipe
        still_open = [fd for fd in ready.descriptors() if _is_open(fd)]
        os.write(write_end, repr(still_open).encode())
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 100) == b"[]"
    os.close(read_end)
    os.waitpid(pid, 0)
    ready.discard()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
