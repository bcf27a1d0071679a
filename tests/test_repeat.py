"""--isolate-repeat: every run of a test in a fresh container, the flake table, pressure, xdist."""

from __future__ import annotations

import json
import re

import pytest
from conftest import CONTAINER
from helpers import guard_conftest, run

from pytest_isolate.repeat import original_nodeid

# Deterministic "flakes": the run number decides, so the table can be asserted exactly.
FLAKY = """
import os, pytest
from conftest import inside_container

def run_number(request):
    return int(request.node.name.split("isolate-run-")[1].split("/")[0])

def test_fresh_container_each_run():
    inside_container()
    assert not os.path.exists("/etc/isolate-run-marker"), "a run saw what an earlier run wrote"
    with open("/etc/isolate-run-marker", "w") as handle:
        handle.write("run")

def test_timing(request):
    run = run_number(request)
    assert run % 2, f"took {run * 0.15:.2f}s, more than 0.1s"

@pytest.fixture
def server(request):
    if run_number(request) == 3:
        raise ConnectionError("port 5432 busy")

def test_uses_server(server):
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n

def test_broken():
    assert False, "never works"
"""

TABLE = [
    " runs passed failed skipped  verdict  test",
    "    4      2      2       0  flaky    test_flaky.py::test_timing",
    "    4      3      1       0  flaky    test_flaky.py::test_uses_server",
    "    4      0      4       0  failed   test_flaky.py::test_broken",
    "    4      4      0       0  passed   test_flaky.py::test_fresh_container_each_run",
    "    4      4      0       0  passed   test_flaky.py::test_param[1]",
    "    4      4      0       0  passed   test_flaky.py::test_param[2]",
    "",
    "failures of test_flaky.py::test_timing:",
    "  2x AssertionError: took 0.30s, more than 0.1s  [run 2, 4]",
    "",
    "failures of test_flaky.py::test_uses_server:",
    "  1x (in setup) ConnectionError: port 5432 busy  [run 3]",
    "",
    "failures of test_flaky.py::test_broken:",
    "  4x AssertionError: never works  [run 1, 2, 3, 4]",
    "",
    "2 flaky test(s) of 6 repeated",
]


def _section(result: pytest.RunResult, title: str) -> list[str]:
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if title in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("="))
    return lines[start + 1 : end]


def _flaky_suite(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(guard_conftest())
    pytester.makepyfile(test_flaky=FLAKY)


@pytest.mark.requires(*CONTAINER)
def test_table_json_and_exit_status(pytester: pytest.Pytester) -> None:
    _flaky_suite(pytester)
    result = run(pytester, "--isolate-repeat=4", "--isolate-json=usage.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # any failed run fails the session
    result.assert_outcomes(passed=17, failed=6, errors=1)
    table = _section(result, "isolated repeats: 4 runs per test, each in a fresh container")
    assert table[: len(TABLE)] == TABLE
    assert "FAILED test_flaky.py::test_timing[isolate-run-2/4] - AssertionError: took 0.30s, more than 0.1s" in result.outlines
    assert "ERROR test_flaky.py::test_uses_server[isolate-run-3/4] - ConnectionError: port 5432 busy" in result.outlines

    document = json.loads((pytester.path / "usage.json").read_text())
    assert (document["schema"], document["version"]) == ("pytest-isolate/usage", 1)
    assert len(document["tests"]) == 24  # one entry per run, as any isolated test
    assert "test_flaky.py::test_param[2-isolate-run-3/4]" in {test["nodeid"] for test in document["tests"]}
    repeat = document["repeat"]
    assert (repeat["runs"], repeat["pressure"]) == (4, {"cpu_cores": None, "mem_bytes": None})
    tests = {test["nodeid"]: test for test in repeat["tests"]}
    assert tests["test_flaky.py::test_timing"] == {
        "nodeid": "test_flaky.py::test_timing", "runs": 4, "passed": 2, "failed": 2, "skipped": 0, "flaky": True,
        "failed_runs": [2, 4],
        "failures": [{"message": "AssertionError: took 0.30s, more than 0.1s", "phase": "call", "count": 2, "runs": [2, 4]}],
    }
    assert tests["test_flaky.py::test_uses_server"]["failures"] == [
        {"message": "ConnectionError: port 5432 busy", "phase": "setup", "count": 1, "runs": [3]}
    ]
    assert tests["test_flaky.py::test_param[1]"]["flaky"] is False


@pytest.mark.requires(*CONTAINER)
def test_flake_report_only(pytester: pytest.Pytester) -> None:
    _flaky_suite(pytester)
    result = run(pytester, "--isolate-repeat=4", "--isolate-flake-report-only")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=17, failed=6, errors=1)
    assert "--isolate-flake-report-only: 7 failed run(s) do not fail the session" in result.outlines
    # A failure of something that was not repeated (a doctest runs once) still fails the session.
    pytester.makepyfile(doc='def f():\n    """\n    >>> 1 + 1\n    3\n    """\n')
    result = run(pytester, "--isolate-repeat=4", "--isolate-flake-report-only", "--doctest-modules")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=17, failed=7, errors=1)


@pytest.mark.requires(*CONTAINER)
def test_spread_over_xdist_workers(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist", reason="a test dependency: pip install -e '.[test]'")
    _flaky_suite(pytester)
    result = run(pytester, "--isolate-repeat=4", "-n", "2", "-v", "--isolate-json=usage.json")
    result.assert_outcomes(passed=17, failed=6, errors=1)
    assert _section(result, "isolated repeats: 4 runs per test")[: len(TABLE)] == TABLE
    workers = {
        match.group(1)
        for line in result.outlines
        if (match := re.match(r"\[(gw\d)\] .* test_flaky.py::test_fresh_container_each_run\[isolate-run-\d/4\]", line))
    }
    assert workers == {"gw0", "gw1"}
    repeat = json.loads((pytester.path / "usage.json").read_text())["repeat"]
    assert {test["nodeid"]: test["failed_runs"] for test in repeat["tests"]}["test_flaky.py::test_timing"] == [2, 4]


PRESSURE = """
import time
from pytest_isolate import isolated

def test_busy_200ms_at_a_third_core_or_more():
    # Under cpu=0.2 (20 ms per 100 ms period) 200 ms of CPU need ten periods' quota, over
    # 800 ms of wall time, whatever else the machine does: this fails under pressure, every run.
    start, used = time.monotonic(), time.process_time()
    while time.process_time() - used < 0.2:
        pass
    wall, cpu = time.monotonic() - start, time.process_time() - used
    assert wall < 3 * cpu, f"took {wall:.2f}s for {cpu:.2f}s of CPU"

@isolated(cpu=0.1)
def test_own_limit_is_tighter():
    pass

def test_allocates_64m():
    block = bytearray(64 << 20)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
"""


@pytest.mark.requires(*CONTAINER)
def test_repeat_under_pressure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pressure=PRESSURE)
    result = run(pytester, "--isolate-repeat=2", "--isolate-repeat-cpu=0.2", "--isolate-repeat-mem=32M", "--isolate-json=u.json")
    result.assert_outcomes(passed=2, failed=4)
    table = _section(
        result,
        "isolated repeats: 2 runs per test, each in a fresh container, under pressure cpu=0.2, mem=32M "
        "(a test's own limit where tighter)",
    )
    assert table[:4] == [
        " runs passed failed skipped  verdict  test",
        "    2      0      2       0  failed   test_pressure.py::test_allocates_64m",
        "    2      0      2       0  failed   test_pressure.py::test_busy_200ms_at_a_third_core_or_more",
        "    2      2      0       0  passed   test_pressure.py::test_own_limit_is_tighter",
    ]
    assert any(
        re.fullmatch(r"  2x isolated test was killed for exceeding the memory limit mem='32M' \(peak 3\d\.\d MiB\)  \[run 1, 2\]", line)
        for line in table
    ), table
    assert any(
        re.fullmatch(r"  2x AssertionError: took \d\.\d\ds for 0\.2\ds of CPU  \[run 1, 2\]", line) for line in table
    ), table
    document = json.loads((pytester.path / "u.json").read_text())
    limits = {test["nodeid"]: test["limits"] for test in document["tests"]}
    assert limits["test_pressure.py::test_busy_200ms_at_a_third_core_or_more[isolate-run-1/2]"]["cpu_cores"] == 0.2
    assert limits["test_pressure.py::test_busy_200ms_at_a_third_core_or_more[isolate-run-1/2]"]["mem_bytes"] == 32 << 20
    assert limits["test_pressure.py::test_own_limit_is_tighter[isolate-run-2/2]"]["cpu_cores"] == 0.1
    assert document["repeat"]["pressure"] == {"cpu_cores": 0.2, "mem_bytes": 32 << 20}


@pytest.mark.requires(*CONTAINER)
def test_a_test_cannot_count_for_another(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_forge="""
        def test_victim():
            pass

        def test_appends(record_property):
            record_property("isolate_repeat_of", "test_forge.py::test_victim")
            assert False, "forged"

        def test_replaces(request):
            request.node.user_properties[:] = [("isolate_repeat_of", "test_forge.py::test_victim"), ("isolate_repeat_run", 1)]
            assert False, "forged"
        """
    )
    result = run(pytester, "--isolate-repeat=2")
    result.assert_outcomes(passed=2, failed=4)
    assert _section(result, "isolated repeats: 2 runs per test") == [
        " runs passed failed skipped  verdict  test",
        "    2      0      2       0  failed   test_forge.py::test_appends",
        "    2      0      2       0  failed   test_forge.py::test_replaces",
        "    2      2      0       0  passed   test_forge.py::test_victim",
        "",
        "failures of test_forge.py::test_appends:",
        "  2x AssertionError: forged  [run 1, 2]",
        "",
        "failures of test_forge.py::test_replaces:",
        "  2x AssertionError: forged  [run 1, 2]",
        "",
        "0 flaky test(s) of 3 repeated",
    ]


def test_run_ids(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_a():
            pass

        @pytest.mark.parametrize("n", [7])
        def test_b(n):
            pass
        """
    )
    result = run(pytester, "--isolate-repeat=3", "--collect-only", "-q")
    assert result.outlines[:6] == [
        "test_run_ids.py::test_a[isolate-run-1/3]",
        "test_run_ids.py::test_a[isolate-run-2/3]",
        "test_run_ids.py::test_a[isolate-run-3/3]",
        "test_run_ids.py::test_b[7-isolate-run-1/3]",
        "test_run_ids.py::test_b[7-isolate-run-2/3]",
        "test_run_ids.py::test_b[7-isolate-run-3/3]",
    ]


@pytest.mark.parametrize(
    ("nodeid", "run_number", "runs", "original"),
    [
        ("t.py::test_x[isolate-run-3/10]", 3, 10, "t.py::test_x"),
        ("t.py::test_x[a-isolate-run-3/10]", 3, 10, "t.py::test_x[a]"),
        ("t.py::test_x[isolate-run-1/2-b]", 1, 2, "t.py::test_x[b]"),
        ("t.py::test_x[a-isolate-run-1/2-b]", 1, 2, "t.py::test_x[a-b]"),
    ],
)
def test_original_nodeid(nodeid: str, run_number: int, runs: int, original: str) -> None:
    assert original_nodeid(nodeid, run_number, runs) == original


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--isolate-repeat=0"], "", "ERROR: --isolate-repeat=0 is invalid: expected a whole number of runs per test from 1 up, such as 10"),
        ([], "isolate_repeat = many", "ERROR: ini option isolate_repeat = many is invalid: expected a whole number of runs per test from 1 up, such as 10"),
        (["--isolate-repeat-cpu=0.2"], "", "ERROR: --isolate-repeat-cpu=0.2 needs --isolate-repeat=N: it sets the pressure of repeated runs"),
        (["--isolate-repeat=3", "--isolate-repeat-cpu=slow"], "", "ERROR: --isolate-repeat-cpu=slow is invalid: expected a number of cores from 0.01 up, such as 0.5 or 2"),
        (["--isolate-repeat=3"], "isolate_repeat_mem = lots", "ERROR: ini option isolate_repeat_mem = lots is invalid: expected a size: bytes as an int, "
         'or a string such as "512K", "64M", "1.5G" or "256MiB"'),
        (["--isolate-flake-report-only"], "", "ERROR: --isolate-flake-report-only needs --isolate-repeat=N: it sets the exit status of repeated runs"),
    ],
)
def test_bad_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], ini: str, message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.lines


@pytest.mark.requires(*CONTAINER)
def test_ini_keys(pytester: pytest.Pytester) -> None:
    # Pressure in the ini file waits for a run that repeats; isolate_repeat switches repeating on.
    pytester.makeini("[pytest]\nisolate_repeat_cpu = 0.5\n")
    pytester.makepyfile("def test_x(): pass")
    run(pytester).assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nisolate_repeat = 2\nisolate_repeat_cpu = 0.5\nisolate_flake_report_only = true\n")
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert any("under pressure cpu=0.5" in line for line in result.outlines)
