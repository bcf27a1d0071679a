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
                # Groups inside a CgroupSandbox belong to the test that made
                # it, which checks their cleanup itself.
                if name.startswith("pytest-isolate-") and not owner_is_alive(name) and "isolate-testcase-" not in current:
                    found.append(os.path.join(current, name))
            if current.count("/") > 8:
                dirs[:] = []
    return tuple(sorted(found))


def snapshot_host() -> HostSnapshot:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = tuple(sorted(" ".join(line.split()[3:5]) for line in handle))
    return HostSnapshot(mounts=mounts, cgroups=_our_cgroups())


def wait_for(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it holds or ``seconds`` pass (bounded)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*ARGS, *args)


def failure_lines(result: pytest.RunResult) -> list[str]:
    """The '-ra' short summary lines."""
    return [line for line in result.outlines if re.match(r"^(FAILED|ERROR) ", line)]


class CgroupSandbox:
    """A cgroup of its own for a pytest run started by a test.

    The plugin looks for a dead run's leftovers next to its own cgroup; a
    test that kills pytest and checks the next run's cleanup note must not
    have other runs (xdist workers of this suite) clean them first.  On
    cgroup v1 the run gets a child cgroup in each hierarchy; on v2 a leaf
    below a cgroup of ours, which then holds the session groups.
    """

    def __init__(self) -> None:
        import uuid

        from pytest_isolate.container.cgroups import CgroupV1, CgroupV2

        self.name = f"isolate-testcase-{uuid.uuid4().hex[:12]}"
        v1 = CgroupV1.detect()
        self.dirs: list[str] = []
        self.join: list[str] = []
        if v1 is not None:
            for parent in dict.fromkeys(v1.parents.values()):
                self.dirs.append(os.path.join(parent, self.name))
            self.join = list(self.dirs)
        else:
            v2 = CgroupV2.detect()
            assert v2 is not None
            top = os.path.join(os.path.dirname(v2.own_dir.rstrip("/")), self.name)
            self.dirs = [top, os.path.join(top, "leaf")]
            self.join = [self.dirs[1]]
        for directory in self.dirs:
            os.mkdir(directory)

    def enter(self) -> None:
        """preexec_fn: move the new process in before it runs pytest."""
        for directory in self.join:
            with open(os.path.join(directory, "cgroup.procs"), "w") as handle:
                handle.write(str(os.getpid()))

    def dead_groups(self) -> set[str]:
        """Session groups of dead pytest runs inside the sandbox."""
        from pytest_isolate.container.cgroups import owner_is_alive

        found = set()
        for top in self.dirs:
            for current, dirs, _ in os.walk(top):
                found.update(
                    os.path.join(current, name)
                    for name in dirs
                    if name.startswith("pytest-isolate-") and not owner_is_alive(name)
                )
        return found

    def remove(self) -> None:
        from pytest_isolate.container.cgroups import remove_tree

        for directory in self.dirs[:1] if len(self.dirs) == 2 and self.dirs[1].startswith(self.dirs[0]) else self.dirs:
            remove_tree(directory)
