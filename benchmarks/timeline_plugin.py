"""Where one test's time goes: a timeline from pytest, across the fork, into the test.

Load it with ``-p timeline_plugin`` (``benchmarks/`` on ``PYTHONPATH``) and
``PYTEST_ISOLATE_TIMELINE=PATH``; ``breakdown.py`` does both and reads the
file.  Works with any fork-per-test runner (bare_fork_plugin, --isolate,
pytest-forked): it wraps ``os.fork`` to note when the test's process is
made, and the child notes, through a descriptor it inherited (its own
filesystem may be a throw-away layer), when its test phases begin and end,
with its CPU time and page faults so far.  A forked child's rusage starts
at zero, so they are what the child spent since the fork.

With ``--isolate`` it also notes the test process's own steps before the
test's setup: leaving pytest, joining the container, dropping privileges,
saying "ready" (see ``_note_isolate_steps``).

One JSON line per event: ``{"pid", "event", "t_ns", ...}``.  Times are
CLOCK_MONOTONIC, which every process on the host shares.
"""

from __future__ import annotations

import json
import os
import resource
import time

import pytest

_fd: int | None = None
_real_fork = os.fork
_forked = False  # in a child made by the wrapped fork


def _note(event: str, **fields: object) -> None:
    if _fd is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = {
        "pid": os.getpid(), "event": event, "t_ns": time.monotonic_ns(), "child": _forked,
        "minflt": usage.ru_minflt, "utime": usage.ru_utime, "stime": usage.ru_stime,
        "nvcsw": usage.ru_nvcsw, "nivcsw": usage.ru_nivcsw, **fields,
    }
    os.write(_fd, (json.dumps(line) + "\n").encode())


def _fork() -> int:
    global _forked
    before = time.monotonic_ns()
    pid = _real_fork()
    if pid == 0:
        _forked = True
        _note("child_start", parent_fork_ns=before)
    else:
        _note("fork", child_pid=pid, before_ns=before)
    return pid


def _noted(owner: object, name: str, event: str) -> None:
    """Wrap ``owner.name`` so that it notes ``event_start`` and ``event_end`` around its call."""
    original = getattr(owner, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        _note(f"{event}_start")
        try:
            return original(*args, **kwargs)
        finally:
            _note(f"{event}_end")

    setattr(owner, name, wrapper)


def _note_isolate_steps() -> None:
    """--isolate: the test process's own steps between the fork and the test's setup.

    Private functions of the plugin, wrapped by name; a step that is not
    found (a later version) is left out of the breakdown, not an error.
    The wrappers are made in pytest, before the fork, so every test
    process inherits them.  Each note costs the child a few page faults of
    its own, so a step's figures are a little high; their order is exact.
    """
    from pytest_isolate import runtime
    from pytest_isolate.container import launcher

    for name, event in (("_leave_pytest", "leave"), ("_settle", "settle")):
        if hasattr(launcher, name):
            _noted(launcher, name, event)
    make_protocol = getattr(runtime, "_pytest_protocol", None)
    if make_protocol is not None:

        def noting_protocol(*args: object, **kwargs: object) -> object:
            run_test = make_protocol(*args, **kwargs)

            def noted_run_test() -> None:
                _note("protocol")
                run_test()

            return noted_run_test

        runtime._pytest_protocol = noting_protocol


def pytest_configure(config: pytest.Config) -> None:
    global _fd
    path = os.environ.get("PYTEST_ISOLATE_TIMELINE")
    if path:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.fork = _fork
        if getattr(config.option, "isolate", False):
            _note_isolate_steps()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> object:
    # A wrapper runs around every runner's protocol hook, whichever takes it.
    if not _forked:
        _note("protocol_start", nodeid=item.nodeid)
    yield
    if not _forked:
        _note("protocol_end", nodeid=item.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _note("setup")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _note("call")


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _note("teardown_start")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    yield
    if call.when == "teardown":
        _note("teardown_end")
