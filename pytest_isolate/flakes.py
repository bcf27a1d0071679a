"""The tally of ``--isolate-repeat``: per test, its runs, passes, failures and failure messages.

Registered only in the process that reports (the single pytest process, or
the xdist controller), and fed by ``pytest_runtest_logreport`` alone: a run's node id
(``test_x[isolate-run-3/10]``) names the test it repeats and the run, so
the tally is the same with and without xdist.

A run failed if any of its phases failed (setup, call or teardown, the
container's crash reports included); it was skipped if it was skipped or
xfailed; otherwise it passed.  A test is flaky when at least one run passed
and at least one failed.

Exit status: any failed run fails the session, as any failed test does;
with ``--isolate-flake-report-only`` the failed runs of repeated tests do
not (the session still fails for anything else: a collection error, a
failure of a test that was not repeated, an interrupt).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from pytest_isolate.repeat import RepeatSettings, original_nodeid

_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?")
MESSAGE_LIMIT = 300  # characters of a failure message kept per distinct failure


@dataclasses.dataclass
class Failure:
    """One distinct failure: messages that differ only in their numbers count as one."""

    message: str  # the one of the earliest run
    phase: str
    runs: list[int] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"message": self.message, "phase": self.phase, "count": len(self.runs), "runs": sorted(self.runs)}


@dataclasses.dataclass
class Tally:
    nodeid: str
    outcomes: dict[int, str] = dataclasses.field(default_factory=dict)  # run -> passed/failed/skipped
    failures: dict[tuple[str, str], Failure] = dataclasses.field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome)

    @property
    def flaky(self) -> bool:
        return self.count("passed") > 0 and self.count("failed") > 0

    @property
    def verdict(self) -> str:
        if self.flaky:
            return "flaky"
        if self.count("failed"):
            return "failed"
        if self.count("passed"):
            return "passed"
        return "skipped"

    def as_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "runs": len(self.outcomes),
            "passed": self.count("passed"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "flaky": self.flaky,
            "failed_runs": sorted(run for run, outcome in self.outcomes.items() if outcome == "failed"),
            "failures": [failure.as_json() for failure in self.failures.values()],
        }


def failure_message(report: pytest.TestReport) -> str:
    """What ``-ra`` shows for a failure: the first line of the crash message, else the report's last line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    lines = [line for line in (getattr(crash, "message", None) or "").splitlines() if line.strip()]
    if lines:
        message = lines[0].strip()
    else:
        lines = [line for line in report.longreprtext.splitlines() if line.strip()]
        message = lines[-1].strip() if lines else "failed"
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"


class FlakeReporter:
    def __init__(self, config: pytest.Config, settings: RepeatSettings) -> None:
        self.config = config
        self.settings = settings
        self.tallies: dict[str, Tally] = {}
        self.other_failures = 0  # failed reports of tests that were not repeated

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.other_failures += 1

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun":  # pytest-rerunfailures: an attempt, not the run's result
            return
        found = self._run_of(report.nodeid)
        if found is None:
            if report.failed:
                self.other_failures += 1
            return
        of, run = found
        tally = self.tallies.setdefault(of, Tally(of))
        previous = tally.outcomes.get(run, "passed")
        if report.failed:
            outcome = "failed"
            message = failure_message(report)
            key = (report.when, _NUMBER.sub("N", message))
            failure = tally.failures.setdefault(key, Failure(message, report.when))
            if run < min(failure.runs, default=run + 1):  # the earliest run's words, in any arrival order
                failure.message = message
            failure.runs.append(run)
        elif report.skipped and report.when != "teardown":
            outcome = "skipped"
        else:
            outcome = "passed"
        rank = {"passed": 0, "skipped": 1, "failed": 2}
        tally.outcomes[run] = outcome if rank[outcome] >= rank[previous] else previous

    def _run_of(self, nodeid: str) -> tuple[str, int] | None:
        """(the repeated test's node id, the run) from a run's node id, or None.

        Read from the node id, never from what a report says of itself
        (``user_properties`` come back from the container): a test can only
        count for its own runs.
        """
        matches = re.findall(rf"isolate-run-(\d+)/{self.settings.runs}(?=[\]-])", nodeid)
        if not matches:
            return None
        run = int(matches[-1])
        if not 1 <= run <= self.settings.runs:
            return None
        return original_nodeid(nodeid, run, self.settings.runs), run

    # ------------------------------------------------------------- output

    def title(self) -> str:
        title = f"isolated repeats: {self.settings.runs} runs per test, each in a fresh container"
        if self.settings.pressure:
            title += f", under pressure {self.settings.pressure} (a test's own limit where tighter)"
        return title

    def table_lines(self) -> list[str]:
        lines = [f"{'runs':>5} {'passed':>6} {'failed':>6} {'skipped':>7}  verdict  test"]
        order = {"flaky": 0, "failed": 1, "passed": 2, "skipped": 3}
        tallies = sorted(self.tallies.values(), key=lambda t: (order[t.verdict], t.nodeid))
        for tally in tallies:
            lines.append(
                f"{len(tally.outcomes):>5} {tally.count('passed'):>6} {tally.count('failed'):>6} "
                f"{tally.count('skipped'):>7}  {tally.verdict:7}  {tally.nodeid}"
            )
        for tally in tallies:
            if not tally.failures:
                continue
            lines.append("")
            lines.append(f"failures of {tally.nodeid}:")
            for failure in sorted(tally.failures.values(), key=lambda f: -len(f.runs)):
                phase = "" if failure.phase == "call" else f" (in {failure.phase})"
                runs = ", ".join(map(str, sorted(failure.runs)))
                lines.append(f"  {len(failure.runs)}x{phase} {failure.message}  [run {runs}]")
        return lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section(self.title())
        for line in self.table_lines():
            terminalreporter.write_line(line)
        flaky = [t.nodeid for t in self.tallies.values() if t.flaky]
        terminalreporter.write_line("")
        terminalreporter.write_line(f"{len(flaky)} flaky test(s) of {len(self.tallies)} repeated")
        if self.settings.report_only and self._failed_runs():
            terminalreporter.write_line(
                f"--isolate-flake-report-only: {self._failed_runs()} failed run(s) do not fail the session"
            )

    def _failed_runs(self) -> int:
        return sum(t.count("failed") for t in self.tallies.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "runs": self.settings.runs,
            "pressure": {"cpu_cores": self.settings.cpu, "mem_bytes": self.settings.mem},
            "tests": [tally.as_json() for tally in self.tallies.values()],
        }

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Only a failed-tests status is forgiven, and only when every failure was a repeated run.
        if (
            self.settings.report_only
            and session.exitstatus == pytest.ExitCode.TESTS_FAILED
            and self.other_failures == 0
        ):
            session.exitstatus = pytest.ExitCode.OK
