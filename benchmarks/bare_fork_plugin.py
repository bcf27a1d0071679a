"""Baseline for benchmarks/bench.py: fork once per test, and nothing else.

Load it with ``-p no:isolate -p bare_fork_plugin`` (``benchmarks/`` on
``PYTHONPATH``).  Every test runs in a forked child; the child sends its
reports back through a pipe as JSON, the way pytest-isolate sends them, and
the parent replays them to the terminal reporter and other plugins.

It is the floor that pytest-isolate cannot go under: the cost of a fork, a
pipe and report serialization, without namespaces, mounts or cgroups.  So
``isolate overhead / bare-fork overhead`` says how much the container itself
costs on top of "a process per test".

Deliberately minimal: fixtures of wider scope than a function are set up
(and torn down) in each child, since the parent never runs the test; that is
fine for the trivial tests the benchmark generates.  A child that dies
without reporting turns into an error, not a report.
"""

from __future__ import annotations

import json
import os

import pytest
from _pytest.runner import runtestprotocol


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        run_child(item, nextitem, write_end)  # never returns
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()  # to EOF before waitpid: a full pipe would block the child
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"bare_fork_plugin: child for {item.nodeid} exited with {code}")
    replay(item, payload)
    return True


def run_child(item: pytest.Item, nextitem: pytest.Item | None, write_end: int) -> None:
    """Run the test, write one JSON report per line, and leave with os._exit.

    os._exit skips atexit handlers and the flushing of buffers inherited from
    the parent, which would otherwise be written twice.
    """
    code = 1
    try:
        config = item.config
        reports = runtestprotocol(item, log=False, nextitem=nextitem)
        lines = [
            json.dumps(config.hook.pytest_report_to_serializable(config=config, report=report))
            for report in reports
        ]
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write("\n".join(lines).encode())
        code = 0
    finally:
        os._exit(code)


def replay(item: pytest.Item, payload: bytes) -> None:
    """Rebuild the child's reports and log them as if the test had run here."""
    config = item.config
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for line in payload.decode().splitlines():
        report = config.hook.pytest_report_from_serializable(config=config, data=json.loads(line))
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
