"""An experiment for benchmarks/bench.py: a process per test, forked by a fork server.

Load it with ``-p no:isolate -p zygote_fork_plugin`` (``benchmarks/`` on
``PYTHONPATH``), or through bench.py:

    python benchmarks/bench.py --extra "zygote-fork=-p no:isolate -p zygote_fork_plugin"

Like ``bare_fork_plugin``, every test runs in a child of its own that sends
its reports back as JSON, and the parent replays them.  The difference is
who forks: pytest forks one server (the zygote) once, when the first test
starts, and the zygote forks each test's child.  pytest itself never forks
again, so its pages are not write-protected anew for every test, and what
it does between tests costs it no copy-on-write faults.  The question this
answers is how much of the bare fork's cost per test is pytest's own faults
after each fork, i.e. what a fork-server design could save.

It is a measurement, not a runner: the children are forked from pytest as
it was at the first test, so they see nothing pytest did since (wider
fixtures are set up in each child, as in ``bare_fork_plugin``, and so is
everything else a plugin changes between tests).  A child that dies without
reporting turns into an error.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest
from bare_fork_plugin import replay, run_child  # the same child and replay: only the forking differs

_server: socket.socket | None = None  # pytest's end of the zygote's socket
_items: list[pytest.Item] = []
_index: dict[int, int] = {}  # id(item) -> its place in _items


def pytest_collection_finish(session: pytest.Session) -> None:
    _items[:] = session.items
    _index.update((id(item), index) for index, item in enumerate(_items))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    global _server
    if _server is None:
        _server = _start_zygote()
    read_end, write_end = os.pipe()
    # The test's index and the write end of its report pipe: the zygote forks
    # the child, which inherits the pipe and writes its reports to it.
    socket.send_fds(_server, [b"%d\n" % _index[id(item)]], [write_end])
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()  # to end-of-file: the child and the zygote closed theirs
    if not payload:
        raise RuntimeError(f"zygote_fork_plugin: the child for {item.nodeid} sent no reports")
    replay(item, payload)
    return True


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.close()  # the zygote reads end-of-file and exits


def _start_zygote() -> socket.socket:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        try:
            _serve(theirs)
        finally:
            os._exit(0)
    theirs.close()
    return ours


def _serve(channel: socket.socket) -> None:
    """The zygote: one child per request, never waited for (the kernel reaps them)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        message, fds, _, _ = socket.recv_fds(channel, 64, 1)
        if not message or not fds:
            return
        index = int(message)
        if os.fork() == 0:
            channel.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the test's own subprocesses are waited for
            item = _items[index]
            nextitem = _items[index + 1] if index + 1 < len(_items) else None
            run_child(item, nextitem, fds[0])  # never returns
        os.close(fds[0])
