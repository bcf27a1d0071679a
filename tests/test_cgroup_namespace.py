"""Test cgroups stay inside the cgroup pytest runs in, under a private cgroup namespace.

A CI container started with ``--cgroupns=private`` and the host's tree
bind-mounted (``-v /sys/fs/cgroup:/sys/fs/cgroup:rw``) shows its own cgroup
as ``/`` in /proc/self/cgroup while mountinfo shows the hierarchy's root as
``/../..``: the names in between are hidden.  This builds that situation for
real on the host - a cgroup two levels below ours, a pytest process moved in
and put in a cgroup namespace of its own - and checks where the session
group appears.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import uuid

import pytest
from conftest import CONTAINER
from helpers import wait_for

pytestmark = pytest.mark.requires(*CONTAINER, "cgroup_v1")

CLONE_NEWCGROUP = 0x02000000


def _groups_of(pid: int, top: str) -> list[str]:
    """Every session group of pytest process ``pid`` in the hierarchy under ``top`` (bounded walk)."""
    found = []
    for current, dirs, _ in os.walk(top):
        found += [os.path.join(current, name) for name in dirs if name.startswith(f"pytest-isolate-{pid}-")]
        if current.count("/") > 10:
            dirs[:] = []
    return found


def test_session_group_inside_our_cgroup_under_a_private_cgroup_namespace(pytester: pytest.Pytester) -> None:
    from pytest_isolate.container.cgroups import CgroupV1, remove_tree

    v1 = CgroupV1.detect()
    assert v1 is not None
    name = f"isolate-testcase-{uuid.uuid4().hex[:12]}"
    outers = [os.path.join(parent, name) for parent in dict.fromkeys(v1.parents.values())]
    inners = [os.path.join(outer, "inner") for outer in outers]
    for outer, inner in zip(outers, inners):
        os.mkdir(outer)
        os.mkdir(inner)
    pytester.makepyfile(
        """
        import time
        from pytest_isolate import isolated

        @isolated(mem="64M")
        def test_limited():
            time.sleep(4)
        """
    )

    def enter() -> None:
        for inner in inners:
            with open(os.path.join(inner, "cgroup.procs"), "w") as handle:
                handle.write(str(os.getpid()))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWCGROUP) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWCGROUP)")

    memory_mount = os.path.join("/sys/fs/cgroup", "memory")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra"],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=enter,
        )
        try:
            assert wait_for(lambda: _groups_of(process.pid, memory_mount), 30), "no session group appeared"
            groups = _groups_of(process.pid, memory_mount)
        finally:
            output, _ = process.communicate(timeout=60)
        memory_inner = next(inner for inner in inners if inner.startswith(memory_mount + "/"))
        assert [os.path.dirname(group) for group in groups] == [memory_inner], groups
        assert "1 passed" in output, output
        assert _groups_of(process.pid, memory_mount) == []  # removed at the session's end
    finally:
        for outer in outers:
            remove_tree(outer)


def test_own_cgroup_is_found_below_a_mount_shown_from_above(tmp_path) -> None:
    """The resolution itself: ``/../..`` and a path, against a real cgroup tree."""
    from pytest_isolate.container.cgroups import CgroupV1, _join

    v1 = CgroupV1.detect()
    assert v1 is not None
    own = v1.parents["memory"]
    mount = "/sys/fs/cgroup/memory"
    relative = os.path.relpath(own, mount)
    depth = 0 if relative == "." else len(relative.split("/"))
    if depth == 0:
        pytest.skip("pytest runs in the memory hierarchy's root: nothing hidden to find")
    # As if our namespace's root were our own cgroup: "/" and "/../.." (one ".." per hidden level).
    assert _join(mount, "/" + "/".join([".."] * depth), "/") == own.rstrip("/")
    # A tree beside ours shows nothing of it.
    assert _join(mount, "/../elsewhere", "/") is None
    # A mount of a subtree strips its root from the path.
    assert _join("/sys/fs/cgroup/memory", "/a/b", "/a/b/c") == "/sys/fs/cgroup/memory/c"
    assert _join("/sys/fs/cgroup/memory", "/a/b", "/a/bc") is None
