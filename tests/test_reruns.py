"""pytest-rerunfailures: each attempt of a flaky isolated test in a fresh container."""

from __future__ import annotations

import re

import pytest
from conftest import CONTAINER
from helpers import run

pytestmark = pytest.mark.requires(*CONTAINER)


def test_every_attempt_is_a_fresh_container(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_rerunfailures", reason="a test dependency: pip install -e '.[test]'")
    pytester.makepyfile(
        """
        import os, pytest
        from pytest_isolate import isolated

        @isolated(mem="32M")
        @pytest.mark.flaky(reruns=2)
        def test_oom_counts_as_a_failed_attempt():
            block = bytearray(128 << 20)
            for offset in range(0, len(block), 4096):
                block[offset] = 1

        @isolated
        @pytest.mark.flaky(reruns=3)
        def test_fresh_container_each_attempt():
            assert not os.path.exists("/etc/attempt-marker")  # what attempt 1 wrote is gone
            with open("/etc/attempt-marker", "w") as handle:
                handle.write("attempt")
            assert False, "fails every attempt"

        def test_plain_flaky_test_still_reruns_in_process():
            pass
        """
    )
    result = run(pytester, "-rRf")
    assert result.parseoutcomes() == {"passed": 1, "failed": 2, "rerun": 5}
    lines = result.outlines
    assert lines.count("RERUN test_every_attempt_is_a_fresh_container.py::test_oom_counts_as_a_failed_attempt") == 2
    assert lines.count("RERUN test_every_attempt_is_a_fresh_container.py::test_fresh_container_each_attempt") == 3
    assert (
        "FAILED test_every_attempt_is_a_fresh_container.py::test_oom_counts_as_a_failed_attempt - isolated test was "
        "killed for exceeding the memory limit mem='32M' (peak 32.0 MiB)" in lines
        or any(re.fullmatch(r"FAILED .*test_oom_counts_as_a_failed_attempt - isolated test was killed for exceeding "
                            r"the memory limit mem='32M' \(peak 3[12]\.\d MiB\)", line) for line in lines)
    )
    assert "FAILED test_every_attempt_is_a_fresh_container.py::test_fresh_container_each_attempt - AssertionError: fails every attempt" in lines
