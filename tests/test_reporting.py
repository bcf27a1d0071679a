"""Reports look the same as without isolation; bad input is named precisely."""

from __future__ import annotations

import re
import socket

import pytest
from conftest import CONTAINER
from helpers import failure_lines, run

SUITE = """
import logging, sys, warnings
import pytest

def test_passes():
    print("to stdout")

def test_fails():
    print("out before failing")
    sys.stderr.write("err before failing\\n")
    logging.getLogger("demo").warning("logged before failing")
    assert [1, 2] == [1, 3]

@pytest.mark.skip(reason="not today")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert False

def test_warns():
    warnings.warn(UserWarning("careful"))
"""


def _failure_section(result: pytest.RunResult) -> list[str]:
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "FAILURES" in line)
    end = next(i for i, line in enumerate(lines) if "short test summary" in line)
    return lines[start:end]


@pytest.mark.requires(*CONTAINER)
def test_reports_match_a_plain_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    plain = run(pytester, "-p", "no:isolate")
    isolated = run(pytester, "--isolate")
    for result in (plain, isolated):
        result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, warnings=1)
    assert _failure_section(isolated) == _failure_section(plain)
    assert failure_lines(isolated) == failure_lines(plain) == [
        "FAILED test_suite.py::test_fails - assert [1, 2] == [1, 3]"
    ]
    section = "\n".join(_failure_section(isolated))
    for expected in ("Captured stdout call", "out before failing", "Captured stderr call",
                     "err before failing", "Captured log call", "logged before failing"):
        assert expected in section
    isolated.stdout.fnmatch_lines(["*UserWarning: careful*", "SKIPPED [1] test_suite.py:13: not today", "XFAIL test_suite.py::test_xfails - known bug"])


@pytest.mark.requires(*CONTAINER)
def test_xdist_two_workers(pytester: pytest.Pytester, host_state) -> None:
    pytester.makepyfile(
        """
        import os, pytest
        from pytest_isolate import isolated

        @isolated(mem="64M", cpu=1, pids=32)
        @pytest.mark.parametrize("n", range(12))
        def test_many(n):
            assert os.getpid() == 2
            with open("/etc/shared-name", "w") as f:
                f.write(str(n))
        """
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=12)


@pytest.mark.requires(*CONTAINER)
def test_junitxml_and_failure_of_isolated_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(mem="32M")
        def test_oom():
            block = bytearray(256 << 20)
            for offset in range(0, len(block), 4096):
                block[offset] = 1
        """
    )
    result = run(pytester, "--junitxml=out.xml")
    result.assert_outcomes(failed=1)
    xml = (pytester.path / "out.xml").read_text()
    assert re.search(r"<failure message=\"isolated test was killed for exceeding the memory limit mem='32M' \(peak 3[12]\.\d MiB\)\"", xml)
    assert 'name="isolate_peak_memory_bytes"' in xml


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('mem="lots"', "@isolated(mem='lots') is invalid: expected a size: bytes as an int, or a string such as "
         '"512K", "64M", "1.5G" or "256MiB"'),
        ("cpu=-1", "@isolated(cpu=-1) is invalid: expected a number of cores from 0.01 up, such as 0.5 or 2"),
        ("pids=0", "@isolated(pids=0) is invalid: expected a whole number of processes from 1 up, such as 64"),
        ("timeout=0", "@isolated(timeout=0) is invalid: expected seconds of wall time greater than 0, such as 30 or 2.5"),
        ('rootfs="/no/such/dir"', "@isolated(rootfs='/no/such/dir') is invalid: expected \"host\" (an overlay snapshot "
         "of the host's own root), an image name from rootfs-images/ or isolate_images such as \"debian-bookworm\", "
         "or the path of a directory; no such directory"),
        ("memory=1", "@isolated got an unknown argument memory=1; the accepted arguments are mem, cpu, pids, "
         "timeout, net, hostname, rootfs, disk, caps, budget_mem, budget_cpu, net_rate, user, inherit_fds, secrets, env"),
        ('"64M"', "@isolated(positional argument='64M') is invalid: expected keyword arguments only, e.g. @isolated(mem=\"64M\")"),
    ],
)
def test_bad_marker_argument_is_a_collection_error(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(
        test_bad=f"""
        from pytest_isolate import isolated

        @isolated({marker})
        def test_it():
            raise SystemExit("the body ran")
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert failure_lines(result) == [f"ERROR test_bad.py - Failed: test_bad.py::test_it: {message}"]
    assert "INTERNALERROR" not in result.stdout.str()
    assert "the body ran" not in result.stdout.str()


def test_module_marker_and_closest_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mod="""
        import pytest
        from pytest_isolate import isolated

        pytestmark = pytest.mark.isolated(cpu="much")

        @isolated(cpu=0.5)
        def test_overrides():
            pass

        def test_inherits():
            pass
        """
    )
    result = run(pytester)
    assert failure_lines(result) == [
        "ERROR test_mod.py - Failed: test_mod.py::test_inherits: @isolated(cpu='much') is invalid: "
        "expected a number of cores from 0.01 up, such as 0.5 or 2"
    ]


@pytest.mark.requires(*CONTAINER)
def test_a_marker_added_by_a_conftest_hook_isolates_the_test(pytester: pytest.Pytester) -> None:
    """The README's way to isolate part of a suite: a collection hook marks the tests."""
    pytester.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                if "writes" in item.name:
                    item.add_marker(pytest.mark.isolated(hostname="marked-by-hook"))
                if "bad" in item.name:
                    item.add_marker(pytest.mark.isolated(cpu="much"))
        """
    )
    pytester.makepyfile(
        test_part=f"""
        import socket

        def test_writes_etc():
            assert socket.gethostname() == "marked-by-hook"

        def test_stays_on_the_host():
            assert socket.gethostname() == {socket.gethostname()!r}

        def test_bad_marker():
            pass
        """
    )
    result = run(pytester, "-rA")
    assert failure_lines(result) == [
        "ERROR test_part.py::test_bad_marker - test_part.py::test_bad_marker: @isolated(cpu='much') is invalid: "
        "expected a number of cores from 0.01 up, such as 0.5 or 2"
    ]
    result.assert_outcomes(passed=2, errors=1)


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--isolate-mem=lots"], "", "ERROR: --isolate-mem=lots is invalid: expected a size: bytes as an int, "
         'or a string such as "512K", "64M", "1.5G" or "256MiB"'),
        ([], "isolate_pids = zero", "ERROR: ini option isolate_pids = zero is invalid: expected a whole number "
         "of processes from 1 up, such as 64"),
        (["--isolate-timeout=-3"], "isolate_timeout = 10", "ERROR: --isolate-timeout=-3 is invalid: expected "
         "seconds of wall time greater than 0, such as 30 or 2.5"),
    ],
)
def test_bad_option_is_a_usage_error(pytester: pytest.Pytester, args: list[str], ini: str, message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.lines


def test_marker_is_registered_with_its_signature(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(
        ['@pytest.mark.isolated(mem=None, cpu=None, pids=None, timeout=None, net=False, hostname="isolated", '
         'rootfs="host", disk="1G", caps=(), budget_mem=None, budget_cpu=None, net_rate=None, user=False, inherit_fds=False, secrets=False, env="default"): run the test in its own throw-away Linux container*']
    )


@pytest.mark.requires(*CONTAINER)
def test_precedence_ini_cli_marker(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nisolate_hostname = from-ini\nisolate_disk = 16M\n")
    pytester.makepyfile(
        """
        import os, socket
        from pytest_isolate import isolated

        @isolated
        def test_cli_beats_ini():
            assert socket.gethostname() == "from-cli"
            assert os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize == 16 << 20

        @isolated(hostname="from-marker")
        def test_marker_beats_cli():
            assert socket.gethostname() == "from-marker"
        """
    )
    run(pytester, "--isolate-hostname=from-cli").assert_outcomes(passed=2)


@pytest.mark.requires("root", "cgroup_v1", "overlay")
def test_rootless_mode() -> None:
    """As an ordinary user: a rootless container, and limits refused with the way to get them."""
    import os
    import shutil
    import subprocess
    import sys

    # Outside pytest's temporary tree, which only root may enter.
    project = __import__("pathlib").Path(f"/tmp/pytest-isolate-rootless-{os.getpid()}")
    project.mkdir(mode=0o777, exist_ok=True)
    try:
        (project / "test_rootless.py").write_text(
            "import os\n"
            "from pytest_isolate import isolated\n\n"
            "@isolated\n"
            "def test_contained():\n"
            "    assert os.getpid() == 2\n"
            "    with open('/etc/rootless-probe', 'w') as handle:\n"
            "        handle.write('x')\n\n"
            "@isolated(mem='64M')\n"
            "def test_limited():\n"
            "    pass\n"
        )
        # Drop root in the child pytest only (setpriv is part of util-linux); the
        # inherited right to read files lets it start this venv's Python.
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "--inh-caps=+dac_override,+dac_read_search", "--ambient-caps=+dac_override,+dac_read_search",
             sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra"],
            cwd=project, capture_output=True, text=True, env={**os.environ, "COLUMNS": "1000"},
        )
        lines = result.stdout.splitlines()
        assert not os.path.exists("/etc/rootless-probe")
        assert [line for line in lines if line.startswith(("FAILED", "ERROR"))] == [
            "ERROR test_rootless.py::test_limited - pytest-isolate could not set the test's limits: pytest runs "
            "as uid 65534 and may not create cgroups here (cgroup v1)"
        ], result.stdout
        assert "cgroup v1 cannot be delegated to a user: run pytest as root; or set isolate_limits_fallback = " \
            "rlimit for weaker limits (RLIMIT_AS, RLIMIT_NPROC)" in lines
        assert "1 passed, 1 error" in lines[-1]
    finally:
        shutil.rmtree(project)
@pytest.mark.requires(*CONTAINER)
def test_subtests_reach_the_report(pytester: pytest.Pytester) -> None:
    if int(pytest.__version__.split(".")[0]) < 9:
        pytest.skip("the subtests fixture arrived in pytest 9")
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated
        def test_with_subtests(subtests):
            for n in range(4):
                with subtests.test(n=n):
                    assert n != 2
        """
    )
    result = run(pytester)
    result.stdout.fnmatch_lines(
        [
            "SUBFAILED(n='2') test_subtests_reach_the_report.py::test_with_subtests - assert 2 != 2",
            "FAILED test_subtests_reach_the_report.py::test_with_subtests - contains 1 failed subtest",
            "*= 2 failed in *",
        ]
    )


# What Hypothesis does: a plugin sets attributes of its own on the report in
# the test's process (here, the container) and reads them back in pytest's
# terminal summary, as it would from a pytest-xdist worker.
PLUGIN_ATTRIBUTES = """
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "teardown":
        report.__dict__["_demo_stats"] = f"stats of {item.name}: pid {__import__('os').getpid() > 0}"
        report.extra = [{"name": "log", "content": "x" * 3}]

def pytest_terminal_summary(terminalreporter):
    for reports in terminalreporter.stats.values():
        for report in reports:
            if "_demo_stats" in report.__dict__:
                terminalreporter.write_line(f"{report.__dict__['_demo_stats']} extra={report.extra}")
"""


@pytest.mark.requires(*CONTAINER)
def test_a_plugins_own_report_attributes_reach_pytest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(PLUGIN_ATTRIBUTES)
    pytester.makepyfile("def test_one(): pass\n\ndef test_two(): pass\n")
    plain = run(pytester, "-p", "no:isolate")
    isolated = run(pytester, "--isolate")
    expected = [
        "stats of test_one: pid True extra=[{'name': 'log', 'content': 'xxx'}]",
        "stats of test_two: pid True extra=[{'name': 'log', 'content': 'xxx'}]",
    ]
    for result in (plain, isolated):
        result.assert_outcomes(passed=2)
        assert [line for line in result.outlines if line.startswith("stats of")] == expected


@pytest.mark.requires(*CONTAINER)
def test_a_faked_clocks_negative_duration_is_reported_as_is(pytester: pytest.Pytester) -> None:
    # A test that fakes time (freezegun, a patched perf_counter: pytest's own
    # suite does) gets reports whose duration is negative, in a plain run too.
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(item, call):
            report = (yield).get_result()
            if report.when == "call":
                report.duration = -1590118297.5
        """
    )
    pytester.makepyfile("def test_frozen(): pass\n")
    for args in (("-p", "no:isolate"), ("--isolate",)):
        result = run(pytester, *args, "--durations=0", "--durations-min=-1e12")
        result.assert_outcomes(passed=1)
        assert "-1590118297.50s call     test_a_faked_clocks_negative_duration_is_reported_as_is.py::test_frozen" in result.outlines
