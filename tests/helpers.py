"""Shared helpers for the acceptance tests."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

# pytester runs pytest in a subprocess; the plugin forks, so in-process runs
# would fork the test runner itself.
ARGS = ("-p", "no:cacheprovider", "-ra")

# Put into an inner conftest: a hostile test calls inside_container() first
# and refuses to attack a host it is not isolated from.
GUARD_CONFTEST = '''
import os, socket

def inside_container():
    with open("/proc/self/mountinfo") as handle:
        root = next(line for line in handle if line.split()[4] == "/")
    on_overlay = root.split(" - ")[1].startswith("overlay ")
    own_pids = os.getpid() < 100 and os.path.exists("/proc/1/comm")
    if not (on_overlay and own_pids and socket.gethostname() != HOST_NAME):
        raise AssertionError("not inside a container: refusing to run a destructive test")
'''


def guard_conftest() -> str:
    return GUARD_CONFTEST.replace("HOST_NAME", repr(os.uname().nodename))


@dataclasses.dataclass(frozen=True)
class HostSnapshot:
    mounts: tuple[str, ...]
    cgroups: tuple[str, ...]


def _our_cgroups() -> tuple[str, ...]:
    """Session groups whose pytest process is gone: leftovers.

    Live owners are skipped: other pytest runs on the machine are not leaks.
    """
    from pytest_isolate.container.cgroups import owner_is_alive

    found = []
    for top in ("/sys/fs/cgroup",):
        for current, dirs, _ in os.walk(top):
            for name in dirs:
                if name.startswith("pytest-isolate-") and not owner_is_alive(name):
                    found.append(os.path.join(current, name))
            if current.count("/") > 8:
                dirs[:] = []
    return tuple(sorted(found))


def snapshot_host() -> HostSnapshot:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = tuple(sorted(" ".join(line.split()[3:5]) for line in handle))
    return HostSnapshot(mounts=mounts, cgroups=_our_cgroups())


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*ARGS, *args)


def failure_lines(result: pytest.RunResult) -> list[str]:
    """The '-ra' short summary lines."""
    return [line for line in result.outlines if re.match(r"^(FAILED|ERROR) ", line)]
