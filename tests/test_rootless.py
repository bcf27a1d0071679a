"""Rootless containers: pytest run by an ordinary user, in a user namespace.

CI runs this file a second time as an unprivileged user (see .ci/run); as
root these tests skip, since the root suite covers the rest.
"""

from __future__ import annotations

import os
import re

import pytest
from helpers import failure_lines, run

pytestmark = pytest.mark.requires("rootless", "overlay", "netns")


def test_contained_like_root(pytester: pytest.Pytester) -> None:
    mine = pytester.path / "mine.txt"
    mine.write_text("original")
    pytester.makepyfile(
        f"""
        import os, socket
        from pytest_isolate import isolated

        @isolated
        def test_a_changes_things(tmp_path):
            assert os.getpid() == 2
            assert sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == [1, 2]
            assert socket.gethostname() == "isolated"
            assert [name for _, name in socket.if_nameindex()] == ["lo"]
            with open({str(mine)!r}, "w") as handle:
                handle.write("changed")
            os.remove({str(mine)!r}.replace("mine", "also"))
            (tmp_path / "x").write_text("works")

        @isolated
        def test_b_sees_nothing_of_a():
            assert open({str(mine)!r}).read() == "original"
        """
    )
    (pytester.path / "also.txt").write_text("here")
    run(pytester).assert_outcomes(passed=2)
    assert mine.read_text() == "original"
    assert (pytester.path / "also.txt").exists()


def test_limits_need_delegation_or_the_rlimit_fallback(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(mem="64M")
        def test_limited():
            block = bytearray(256 << 20)
        """
    )
    refused = run(pytester)
    (line,) = failure_lines(refused)
    assert re.fullmatch(
        rf"ERROR test_limits_need_delegation_or_the_rlimit_fallback.py::test_limited - pytest-isolate could not "
        rf"set the test's limits: pytest runs as uid {os.geteuid()} and may not create cgroups here \(cgroup v[12]\)",
        line,
    ) or "delegat" in line, line
    fallback = run(pytester, "-o", "isolate_limits_fallback=rlimit", "--junitxml=out.xml")
    fallback.assert_outcomes(failed=1)
    assert failure_lines(fallback) == ["FAILED test_limits_need_delegation_or_the_rlimit_fallback.py::test_limited - MemoryError"]
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="isolate_limits_enforced_by" value="rlimit (weaker than cgroups' in xml


def test_network_private_needs_root(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(net="private")
        def test_link():
            pass
        """
    )
    (line,) = failure_lines(run(pytester))
    assert "pytest-isolate could not create the container's private network link" in line, line
