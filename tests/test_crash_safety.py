"""Killing or interrupting pytest never leaves a container behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import pytest
from conftest import CONTAINER
from helpers import CgroupSandbox, snapshot_host, wait_for
from test_limits import _processes_with

pytestmark = pytest.mark.requires(*CONTAINER)

HANGING = """
import subprocess, time, pytest
from pytest_isolate import isolated

@isolated(mem="256M")
@pytest.mark.parametrize("n", [1, 2])
def test_hang(n):
    subprocess.Popen(["sh", "-c", "sleep 3600; : {marker}"], start_new_session=True)
    time.sleep(3600)
"""



def test_sigkill_of_xdist_controller_ends_every_container(pytester: pytest.Pytester) -> None:
    marker = uuid.uuid4().hex
    pytester.makepyfile(test_hang=HANGING.format(marker=marker))
    before = snapshot_host()
    sandbox = CgroupSandbox()
    try:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2"]
        controller = subprocess.Popen(
            command, cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=sandbox.enter
        )
        try:
            assert wait_for(lambda: len(_processes_with(marker)) == 2, 60), "both tests never started"
        finally:
            controller.send_signal(signal.SIGKILL)
            controller.wait()
        started = time.monotonic()
        assert wait_for(lambda: not _processes_with(marker), 1.0), "test processes outlived pytest by 1 s"
        print(f"all gone {time.monotonic() - started:.3f} s after SIGKILL")

        pytester.makepyfile(test_hang="from pytest_isolate import isolated\n\n@isolated\ndef test_ok():\n    pass\n")
        rerun = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, preexec_fn=sandbox.enter)
        assert rerun.returncode == 0, rerun.stdout
        # Each worker owned a session group in each cgroup hierarchy (memory
        # and cpuacct on v1); the rerun's workers clean them up.
        assert "1 passed" in rerun.stdout.splitlines()[-1]
    finally:
        sandbox.remove()
    after = snapshot_host()
    assert after.mounts == before.mounts
    assert set(after.cgroups) - set(before.cgroups) == set()


def test_ctrl_c_ends_the_session_normally(pytester: pytest.Pytester, host_state) -> None:
    marker = uuid.uuid4().hex
    pytester.makepyfile(
        test_first="from pytest_isolate import isolated\n\n@isolated\ndef test_quick():\n    pass\n",
        test_second=HANGING.format(marker=marker),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for(lambda: _processes_with(marker), 60), "the hanging test never started"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == pytest.ExitCode.INTERRUPTED
    lines = output.splitlines()
    assert any(line.startswith("!") and "KeyboardInterrupt" in line for line in lines), output
    assert "PASSED test_first.py::test_quick" in lines
    assert lines[-1].startswith("=") and "1 passed" in lines[-1]
    assert not _processes_with(marker)
