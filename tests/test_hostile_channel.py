"""The hostile-channel suite (fixtures/dangerous/channel): a container that lies, floods or stalls fails alone.

Each hostile test sends the pytest process something outside the protocol,
or more than it may, or tries to use what pytest left open.  The run must
finish with every outcome and message exactly as listed here, serially and
under each pytest-xdist scheduler, with the right exit code; and the host
must show no trace: no file made on a container's word, no host file listed
in a diff, no forged log line, and the pytest processes' memory within a
bound (the caps of ``channel.py``, not the size of what was sent).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import CONTAINER
from helpers import ARGS

pytestmark = pytest.mark.requires(*CONTAINER)

DANGEROUS = Path(__file__).resolve().parent.parent / "fixtures" / "dangerous"
INVALID = "the isolated test sent an invalid message: {}; its container was ended"
NODE = "test_hostile_channel.py::test_hostile_channel"


def _not_json(line: bytes) -> str:
    return f"a line that is not JSON: {line[:60]!r}"


# Each hostile test's outcome and its failure message (None: it passes).
EXPECTED = {
    "test_coverage_sql_is_never_run": INVALID.format("coverage data that says neither lines nor arcs"),
    "test_coverage_of_a_relative_path": INVALID.format("coverage for '../../etc/passwd', which is not an absolute path"),
    "test_report_for_another_test": INVALID.format(
        "a report for 'test_made_up.py::test_never_existed' while "
        "test_hostile_channel.py::test_report_for_another_test was running"
    ),
    "test_second_call_report": INVALID.format("a call report after ['setup', 'call'] report(s)"),
    "test_malformed_line[list]": INVALID.format("a message that is not a JSON object: []"),
    "test_malformed_line[no-kind]": INVALID.format("a message of unknown kind None"),
    "test_malformed_line[old-status]": INVALID.format("a message of unknown kind 'status'"),
    "test_malformed_line[not-json]": INVALID.format(_not_json(b"{{{")),
    "test_malformed_line[deep]": INVALID.format(_not_json(b"[" * 60)),
    "test_malformed_line[huge-number]": INVALID.format(_not_json(b'{"kind": "done", "cpu_seconds": ' + b"9" * 29)),
    "test_malformed_line[ready-again]": INVALID.format("a message of unknown kind 'ready'"),
    "test_malformed_report[type]": INVALID.format("a report of type 'CollectReport' (only test reports are expected)"),
    "test_malformed_report[outcome]": INVALID.format(
        "the report's outcome 'won', expected one of passed, failed, skipped"
    ),
    "test_malformed_report[shadowing]": INVALID.format("a report attribute 'toterminal' that reports may not carry"),
    "test_malformed_report[shadowing-private]": INVALID.format(
        "a report attribute '_to_json' that reports may not carry"
    ),
    "test_malformed_report[pdb-shown]": INVALID.format("a report attribute '_pdbshown' that reports may not carry"),
    "test_malformed_report[longrepr]": INVALID.format(
        "a failure's location with the fields ['path'], expected ['lineno', 'message', 'path']"
    ),
    "test_malformed_report[location]": INVALID.format("a report location 'everywhere' that is not (path, line, name)"),
    "test_malformed_report[sections]": INVALID.format("a report section ['title', 3] that is not a (title, text) pair"),
    "test_line_without_end": INVALID.format("a line longer than 16 MiB"),
    "test_flood_of_lines": INVALID.format("it sent more than 64 MiB (the most one test may send)"),
    "test_output_is_charged_to_the_test": "isolated test was killed for exceeding the memory limit mem='64M' (peak ",
    "test_long_output_is_cut": "AssertionError: failed after printing 20 MiB",
    "test_descriptors_are_only_the_containers": None,
    "test_inherit_fds_keeps_them": None,
    "test_diff_descriptor_swapped": None,
    "test_diff_of_many_files": None,
    "test_well_behaved_neighbour": None,
}
# A prefix, not the whole message: the peak the kernel measured varies.
PREFIX_ONLY = {"test_output_is_charged_to_the_test"}
# The pytest process reads at most a 16 MiB line and 64 MiB per test; with
# Python's own size and JSON decoding, it stays far below what was sent
# (over 500 MiB in all).
RSS_BOUND = 400 << 20


def _copy_suite(pytester: pytest.Pytester) -> None:
    shutil.copyfile(DANGEROUS / "conftest.py", pytester.path / "conftest.py")  # the guard
    shutil.copyfile(DANGEROUS / "channel" / "test_hostile_channel.py", pytester.path / "test_hostile_channel.py")


def _outcomes(junit: Path) -> dict[str, tuple[str, str | None, str]]:
    """test name -> (outcome, failure message, the whole failure text and output)."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        outcome = "passed" if failure is None else "failed"
        text = "" if failure is None else (failure.text or "")
        for tag in ("system-out", "system-err"):
            for element in case.iter(tag):
                text += element.text or ""
        found[case.get("name", "")] = (outcome, None if failure is None else failure.get("message"), text)
    return found


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="serial"),
        pytest.param(("-n", "2", "--dist", "load"), id="xdist-load"),
        pytest.param(("-n", "2", "--dist", "loadfile"), id="xdist-loadfile"),
        pytest.param(("-n", "2", "--dist", "worksteal"), id="xdist-worksteal"),
    ],
)
def test_hostile_channel_fails_only_the_liars(
    pytester: pytest.Pytester, host_state, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    if args:
        pytest.importorskip("xdist")
    pytest.importorskip("pytest_cov", reason="pytest-cov is a test dependency: pip install -e '.[test]'")
    _copy_suite(pytester)
    hostile_dir = tmp_path / "host"
    hostile_dir.mkdir()
    monkeypatch.setenv("HOSTILE_DIR", str(hostile_dir))
    log_file = tmp_path / "pytest.log"
    junit = tmp_path / "junit.xml"
    # pytest's temporary files (its capture files among them) on a tmpfs of
    # 100 MiB, in a mount namespace of the run's own: if a test's 400 MiB of
    # output went there, its writes would fail with ENOSPC instead of the
    # OOM kill that charges them to the test.
    small_tmp = tmp_path / "small-tmp"
    small_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(small_tmp))
    pytest_command = shlex.join([
        sys.executable, "-m", "pytest", *ARGS, "--isolate", "--isolate-diff", f"--log-file={log_file}",
        "--log-file-level=INFO", "--cov=conftest", "--cov-report=", f"--junitxml={junit}",
        "-o", "junit_logging=system-out", "-rA", f"--basetemp={tmp_path / 'basetemp'}", *args,
    ])  # fmt: skip
    result = pytester.run(
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f"mount -t tmpfs -o size=100m tmpfs {shlex.quote(str(small_tmp))} && exec {pytest_command}",
        timeout=600,
    )  # fmt: skip
    outcomes = _outcomes(junit)
    assert sorted(outcomes) == sorted(EXPECTED), result.stdout.lines[-30:]
    for name, expected in EXPECTED.items():
        outcome, message, _ = outcomes[name]
        if expected is None:
            assert (name, outcome) == (name, "passed"), outcomes[name]
        elif name in PREFIX_ONLY:
            assert (name, outcome) == (name, "failed")
            assert message is not None and message.startswith(expected), (name, message)
        else:
            assert (name, outcome, message) == (name, "failed", expected)
    failed = sum(1 for value in EXPECTED.values() if value is not None)
    result.assert_outcomes(passed=len(EXPECTED) - failed, failed=failed)
    assert result.ret == pytest.ExitCode.TESTS_FAILED

    # Nothing of what the liars said reached the host.
    text = junit.read_text()
    assert 'name="test_never_existed"' not in text  # only in the message naming the lie
    assert not (hostile_dir / "attached-by-coverage.db").exists()
    assert "FORGED LOG LINE" not in log_file.read_text()
    # The long output arrived cut, with its size said.
    _, _, long_output = outcomes["test_long_output_is_cut"]
    assert "[... pytest-isolate cut 20447233 characters of output here ...]" in long_output
    assert len(long_output) < 2 << 20
    # A swapped layers descriptor is not followed; a huge diff is cut.
    swapped = result.stdout.str()
    assert "(not read: the test closed or replaced the descriptor of its writable layers)" in swapped
    assert "(the first 20000 changes: the layers hold more)" in swapped
    assert "A /usr/bin" not in swapped and "C /usr/bin" not in swapped
    # 400 MiB written to fd 1 grew neither pytest's temporary files (above) nor its memory.
    peaks = {path.name: int(path.read_text()) for path in hostile_dir.glob("rss-*")}
    assert peaks and max(peaks.values()) < RSS_BOUND, peaks
    # Under xdist the run still reports every test, with no internal error.
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert json.dumps(outcomes)  # plain data throughout
