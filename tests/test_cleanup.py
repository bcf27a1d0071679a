"""Nothing is left behind, even when pytest itself is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from conftest import CONTAINER
from helpers import CgroupSandbox, run, snapshot_host, wait_for
from test_limits import _processes_with

pytestmark = pytest.mark.requires(*CONTAINER)



def test_sigkill_of_pytest_kills_the_test_and_next_run_cleans(pytester: pytest.Pytester) -> None:
    marker = uuid.uuid4().hex
    pytester.makepyfile(
        f"""
        import subprocess, time
        from pytest_isolate import isolated

        @isolated(mem="256M")
        def test_hangs():
            subprocess.Popen(["sh", "-c", "sleep 3600; : {marker}"], start_new_session=True)
            time.sleep(3600)
        """
    )
    before = snapshot_host()
    sandbox = CgroupSandbox()
    try:
        _kill_pytest_mid_test_then_rerun(pytester, sandbox, marker, before)
    finally:
        sandbox.remove()


def _kill_pytest_mid_test_then_rerun(pytester: pytest.Pytester, sandbox: CgroupSandbox, marker: str, before) -> None:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    pytest_process = subprocess.Popen(
        command, cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=sandbox.enter
    )
    try:
        assert wait_for(lambda: _processes_with(marker), 30), "the test never started"
    finally:
        pytest_process.send_signal(signal.SIGKILL)
        pytest_process.wait()
    assert wait_for(lambda: not _processes_with(marker), 1.0), "the test's processes outlived pytest"
    leftovers = sandbox.dead_groups()
    assert len(leftovers) >= 1  # the dead run's empty cgroups, until the next run

    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated
        def test_quick():
            pass
        """
    )
    rerun = subprocess.run(
        [*command, "--isolate"], cwd=pytester.path, capture_output=True, text=True, preexec_fn=sandbox.enter
    )
    assert rerun.returncode == 0, rerun.stdout
    assert f"pytest-isolate: removed {len(leftovers)} cgroup(s) left by dead runs" in rerun.stdout.splitlines()
    assert sandbox.dead_groups() == set()
    assert snapshot_host().mounts == before.mounts


def test_many_tests_leave_nothing(pytester: pytest.Pytester, host_state) -> None:
    pytester.makepyfile(
        """
        import os, pytest, subprocess

        @pytest.mark.parametrize("n", range(40))
        def test_n(n):
            subprocess.Popen(["sleep", "60"], start_new_session=True)
            assert n % 13 != 12
        """
    )
    result = run(pytester, "--isolate", "--isolate-mem=128M", "--isolate-pids=16", "--isolate-cpu=1")
    result.assert_outcomes(passed=37, failed=3)
    fds = sorted(os.listdir("/proc/self/fd"))
    assert fds == sorted(os.listdir("/proc/self/fd"))
