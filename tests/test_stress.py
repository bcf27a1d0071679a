"""benchmarks/stress.py in a small form: every outcome right, workers flat, host clean.

The script generates a suite that passes, fails, runs out of memory, times
out, crashes, fork-bombs and uses net="private", runs it under xdist and
checks outcomes, the workers' fds and RSS, and the host afterwards.  The
second test checks the checks: a suite that leaks must make it fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONTAINER

pytestmark = pytest.mark.requires(*CONTAINER)

STRESS = Path(__file__).resolve().parent.parent / "benchmarks" / "stress.py"


def stress(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    # Outer pytest and xdist variables must not reach the inner run.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, str(STRESS), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, env=env,
    )


def test_stress_120_tests_two_workers() -> None:
    result = stress("--tests", "120", "--workers", "2")
    output = result.stdout
    assert result.returncode == 0, output
    assert "stress: OK: 120 tests, every outcome right, workers flat, host clean" in output, output
    # pass 40%, fail 12%, oom 10%, timeout 4%, segv 5%, abort 5%, forkbomb 10%, private 14% of 120
    for kind, count in [("pass", 48), ("fail", 14), ("oom", 12), ("timeout", 5), ("segv", 6), ("abort", 6),
                        ("forkbomb", 12), ("private", 17)]:
        assert re.search(rf"^{kind} +{count} +{count} ", output, re.MULTILINE), (kind, output)
    assert re.search(r"^all +120 +120$", output, re.MULTILINE), output
    assert re.search(r"^pytest exit code 1; 120 test cases in the junitxml;", output, re.MULTILINE), output
    assert "host after the run: mounts +0/-0, leftover cgroups 0, iso links 0, marker processes 0, " \
           "pytest processes alive 0" in output, output
    assert len(re.findall(r"^  worker \d+ \(\d+ tests\): fds ", output, re.MULTILINE)) == 2, output


def test_stress_catches_leaks() -> None:
    result = stress("--tests", "40", "--workers", "2", "--inject-leaks")
    output = result.stdout
    assert result.returncode == 1, output
    assert re.search(r"^stress: FAILED: \d+ problem\(s\) in 40 tests$", output, re.MULTILINE), output
    assert re.search(r"^  - worker \d+: open fds grew from \d+ to \d+ ", output, re.MULTILINE), output
    assert re.search(r"^  - worker \d+: RSS grew from ", output, re.MULTILINE), output
    assert re.search(r"^  - \d+ process\(es\) with the marker isostress\w+ left: ", output, re.MULTILINE), output
    # The leaks are the conftest's, not the plugin's: the outcomes are still right.
    assert re.search(r"^all +40 +40$", output, re.MULTILINE), output
