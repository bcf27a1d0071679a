"""Limits and the messages a user reads when a test breaks one."""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest
from conftest import CONTAINER
from helpers import failure_lines, guard_conftest, run

pytestmark = pytest.mark.requires(*CONTAINER)


def test_memory_limit(pytester: pytest.Pytester, host_state) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        def touch(size):
            block = bytearray(size)
            for offset in range(0, size, 4096):
                block[offset] = 1
            return block

        @isolated(mem="64M")
        def test_small_allocation_fits():
            assert len(touch(16 << 20)) == 16 << 20

        @isolated(mem="64M")
        def test_big_allocation_is_killed():
            touch(512 << 20)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    (line,) = failure_lines(result)
    assert re.fullmatch(
        r"FAILED test_memory_limit.py::test_big_allocation_is_killed - isolated test was killed for "
        r"exceeding the memory limit mem='64M' \(peak 6[34]\.\d MiB\)",
        line,
    ), line


def test_timeout_kills_the_test_and_its_children(pytester: pytest.Pytester, host_state) -> None:
    marker = uuid.uuid4().hex
    pytester.makepyfile(
        f"""
        import subprocess, time
        from pytest_isolate import isolated

        @isolated(timeout=1.5)
        def test_hangs():
            child = subprocess.Popen(["sh", "-c", "sleep 3600; : {marker}"])
            time.sleep(0.3)
            assert child.poll() is None  # running when the timeout strikes
            time.sleep(3600)
        """
    )
    started = time.monotonic()
    result = run(pytester)
    # The test and its child sleep for an hour: ending within minutes (under an emulator too) is the kill.
    assert time.monotonic() - started < 600
    result.assert_outcomes(failed=1)
    assert failure_lines(result) == [
        "FAILED test_timeout_kills_the_test_and_its_children.py::test_hangs - "
        "isolated test exceeded timeout=1.5s; all its processes were killed"
    ]
    assert not _processes_with(marker)


def test_setsid_daemon_dies_with_its_test(pytester: pytest.Pytester, host_state) -> None:
    marker = uuid.uuid4().hex
    pytester.makepyfile(
        f"""
        import subprocess, time
        from pytest_isolate import isolated

        @isolated
        def test_starts_daemon():
            daemon = subprocess.Popen(["sh", "-c", "sleep 3600; : {marker}"], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            assert daemon.poll() is None
        """
    )
    run(pytester).assert_outcomes(passed=1)
    assert not _processes_with(marker)


def test_pids_limit(pytester: pytest.Pytester, host_state) -> None:
    pytester.makeconftest(guard_conftest())
    pytester.makepyfile(
        """
        import os, time
        from conftest import inside_container
        from pytest_isolate import isolated

        @isolated(pids=24)
        def test_forks_100():
            inside_container()
            children = []
            try:
                for _ in range(100):  # bounded
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(5)
                        os._exit(0)
                    children.append(pid)
            finally:
                for pid in children:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)

        @isolated(pids=24)
        def test_few_processes_fit():
            import subprocess
            for _ in range(5):
                subprocess.run(["true"], check=True)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    assert failure_lines(result) == [
        "FAILED test_pids_limit.py::test_forks_100 - BlockingIOError: [Errno 11] Resource temporarily unavailable"
    ]
    result.stdout.fnmatch_lines(
        [
            "*- pytest-isolate -*",
            "the pids limit pids=24 was reached: the kernel refused * fork/clone call(s) with EAGAIN",
        ]
    )


def test_signals_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import ctypes, faulthandler, os, signal
        from pytest_isolate import isolated

        @isolated
        def test_segfault():
            faulthandler.disable()
            ctypes.string_at(0)

        @isolated
        def test_sigterm_itself():
            os.kill(os.getpid(), signal.SIGTERM)

        @isolated
        def test_sigkill_itself():
            os.kill(os.getpid(), signal.SIGKILL)

        @isolated
        def test_exits_early():
            os._exit(3)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=4)
    assert failure_lines(result) == [
        "FAILED test_signals_are_reported.py::test_segfault - isolated test died of signal SIGSEGV",
        "FAILED test_signals_are_reported.py::test_sigterm_itself - isolated test died of signal SIGTERM",
        "FAILED test_signals_are_reported.py::test_sigkill_itself - isolated test died of signal SIGKILL",
        "FAILED test_signals_are_reported.py::test_exits_early - "
        "isolated test process exited with code 3 before it finished",
    ]


def test_cpu_limit_throttles(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        from pytest_isolate import isolated

        @isolated(cpu=0.2)
        def test_busy_loop():
            wall_start, cpu_start = time.monotonic(), time.process_time()
            while time.monotonic() - wall_start < 2.0:
                pass
            share = (time.process_time() - cpu_start) / (time.monotonic() - wall_start)
            print(f"cpu share {share:.3f}")
            assert 0.1 < share < 0.3, share
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_usage_reaches_junitxml(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated
        def test_allocates():
            block = bytearray(40 << 20)
            for offset in range(0, len(block), 4096):
                block[offset] = 1
        """
    )
    result = run(pytester, "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    xml = (pytester.path / "out.xml").read_text()
    peak = int(re.search(r'name="isolate_peak_memory_bytes" value="(\d+)"', xml).group(1))
    cpu = float(re.search(r'name="isolate_cpu_seconds" value="([\d.]+)"', xml).group(1))
    assert 40 << 20 <= peak < 200 << 20
    assert 0 < cpu < 10


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_outcomes_serial_and_under_xdist(pytester: pytest.Pytester, host_state, workers: list[str]) -> None:
    pytester.makepyfile(
        """
        import os, signal, time
        from pytest_isolate import isolated

        def touch(size):
            block = bytearray(size)
            for offset in range(0, size, 4096):
                block[offset] = 1

        @isolated(mem="32M")
        def test_oom():
            touch(256 << 20)

        @isolated(timeout=1)
        def test_timeout():
            time.sleep(60)

        @isolated
        def test_abort():
            os.kill(os.getpid(), signal.SIGABRT)

        @isolated(mem="32M", cpu=0.5, pids=8)
        def test_passes():
            touch(4 << 20)
        """
    )
    result = run(pytester, *workers)
    result.assert_outcomes(passed=1, failed=3)
    lines = sorted(failure_lines(result))
    assert lines[0] == "FAILED test_outcomes_serial_and_under_xdist.py::test_abort - isolated test died of signal SIGABRT"
    assert re.fullmatch(
        r"FAILED test_outcomes_serial_and_under_xdist.py::test_oom - isolated test was killed for exceeding "
        r"the memory limit mem='32M' \(peak 3[12]\.\d MiB\)",
        lines[1],
    ), lines[1]
    assert lines[2] == (
        "FAILED test_outcomes_serial_and_under_xdist.py::test_timeout - "
        "isolated test exceeded timeout=1s; all its processes were killed"
    )
