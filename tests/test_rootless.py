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


def test_info_says_what_works_for_this_user() -> None:
    import subprocess
    import sys

    from pytest_isolate import hostinfo

    output = subprocess.run([sys.executable, "-m", "pytest_isolate.cli", "info"], capture_output=True, text=True, check=True).stdout
    answers = {line.split()[0]: line.split(None, 1)[1] for line in output.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert answers["net"] == (
        'yes, except net="private": a veth link to the host needs root; use net=False, True or ["127.0.0.1:PORT"]'
    )
    assert answers["rootfs"] == (
        'yes, "host" and directories; an image only once it is in the cache: building or importing one needs root '
        "(sudo PYTEST_ISOLATE_CACHE=DIR pytest-isolate images build NAME, then isolate_cache = DIR)"
    )
    if hostinfo.cgroup_facts()["version"] == 1:
        v1 = "no: cgroup v1 cannot be delegated to a user: run as root; isolate_limits_fallback = rlimit "
        assert answers["mem"] == v1 + "makes it RLIMIT_AS (address space, weaker)"
        assert answers["pids"] == v1 + "makes it RLIMIT_NPROC (per user, weaker)"
        assert answers["cpu"] == v1 + "does not enforce it (each run lists the tests)"


def test_an_unenforced_cpu_limit_is_said_once_per_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(cpu=0.5)
        def test_a():
            pass

        @isolated(cpu=1, mem="512M")
        def test_b():
            pass

        @isolated(mem="512M")
        def test_c():
            pass
        """
    )
    result = run(pytester, "-o", "isolate_limits_fallback=rlimit", "-n", "2")
    result.assert_outcomes(passed=3)
    notes = [line for line in result.outlines if line.startswith("pytest-isolate: cpu=")]
    assert len(notes) == 1
    assert re.fullmatch(
        r"pytest-isolate: cpu= was not enforced for 2 test\(s\): rootless without a delegated cgroup, "
        r"isolate_limits_fallback = rlimit has no CPU limit: "
        r"test_an_unenforced_cpu_limit_is_said_once_per_run.py::test_[ab], test_an_unenforced_cpu_limit_is_said_once_per_run.py::test_[ab]",
        notes[0],
    ), notes


def test_etc_in_a_rootless_container(pytester: pytest.Pytester) -> None:
    """Root's files cannot be changed in place; new files can be made, and root's files deleted (in the layer)."""
    pytester.makepyfile(
        """
        import os, pytest
        from pytest_isolate import isolated

        @isolated
        def test_etc():
            with open("/etc/pytest-isolate-rootless-new", "w") as handle:
                handle.write("made")
            with pytest.raises(PermissionError):
                open("/etc/hostname", "a")
            os.remove("/etc/hostname")
            assert not os.path.exists("/etc/hostname")
        """
    )
    run(pytester).assert_outcomes(passed=1)
    assert os.path.exists("/etc/hostname") and not os.path.exists("/etc/pytest-isolate-rootless-new")


# Where mmdebstrap is missing, that is what the user is told first (and
# rightly): the "needs root" advice is for a host that has the tool.
@pytest.mark.requires("mmdebstrap")
def test_an_image_that_needs_building_says_what_to_run_as_root(pytester: pytest.Pytester) -> None:
    (pytester.path / "recipes").mkdir()
    (pytester.path / "recipes" / "mine.toml").write_text(
        'name = "mine"\ndescription = "a base image"\n[base]\ntool = "mmdebstrap"\nsuite = "bookworm"\nvariant = "minbase"\n'
    )
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(rootfs="mine")
        def test_a():
            pass
        """
    )
    result = run(pytester, "-o", "isolate_images=recipes", "-o", f"isolate_cache={pytester.path / 'cache'}")
    (line,) = failure_lines(result)
    assert line == (
        "ERROR test_an_image_that_needs_building_says_what_to_run_as_root.py::test_a - pytest-isolate could not "
        "prepare the root filesystem image: building image 'mine' needs root (it mounts overlays and runs chroot); "
        f"this process runs as uid {os.geteuid()}: run `sudo pytest-isolate images build mine` first (with the same "
        "cache: PYTEST_ISOLATE_CACHE or isolate_cache), or run pytest as root in CI"
    )
