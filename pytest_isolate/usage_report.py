"""Usage of isolated tests, for people (a summary) and for CI (a JSON file).

Registered only in the process that reports: the single pytest process, or
the xdist controller.  It reads the usage each isolated test's reports carry
in ``user_properties``, so it works the same with and without xdist.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any

import pytest

from pytest_isolate.spec import format_bytes

JSON_SCHEMA = "pytest-isolate/usage"
JSON_VERSION = 1
_PROPERTY_PREFIX = "isolate_"
_OUTCOME_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def wanted(config: pytest.Config) -> bool:
    return bool(
        config.getoption("isolate_report") or config.getini("isolate_report")
    ) or bool(config.getoption("isolate_json") or config.getoption("isolate_compare"))


@dataclasses.dataclass
class TestUsage:
    nodeid: str
    outcome: str = "passed"
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.properties.get(_PROPERTY_PREFIX + name)

    def as_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "outcome": self.outcome,
            "limits": {
                "mem_bytes": self.get("mem_limit_bytes"),
                "cpu_cores": self.get("cpu_limit"),
                "budget_mem_bytes": self.get("budget_mem_bytes"),
                "budget_cpu_seconds": self.get("budget_cpu_seconds"),
            },
            "usage": {
                "peak_memory_bytes": self.get("peak_memory_bytes"),
                "cpu_seconds": self.get("cpu_seconds"),
                "throttled_seconds": self.get("throttled_seconds"),
                "wall_seconds": self.get("wall_seconds"),
            },
        }


class UsageReporter:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tests: dict[str, TestUsage] = {}
        self.json_written: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = {name: value for name, value in report.user_properties if str(name).startswith(_PROPERTY_PREFIX)}
        if not properties and report.nodeid not in self.tests:
            return  # not an isolated test
        entry = self.tests.setdefault(report.nodeid, TestUsage(report.nodeid))
        entry.properties.update(properties)
        outcome = "skipped" if report.skipped and report.when != "teardown" else report.outcome
        if _OUTCOME_RANK.get(outcome, 0) > _OUTCOME_RANK.get(entry.outcome, 0):
            entry.outcome = outcome

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.config.getoption("isolate_report") or self.config.getini("isolate_report"):
            self._summary(terminalreporter)
        compare = self.config.getoption("isolate_compare")
        if compare:
            self._compare(terminalreporter, compare)
        if self.json_written is not None:  # as --junitxml says "generated xml file: ..."
            terminalreporter.write_sep("-", f"pytest-isolate usage written to {self.json_written}")

    def pytest_sessionfinish(self) -> None:
        from pytest_isolate.config_checks import prepare_json_path

        path = prepare_json_path(self.config)  # checked (and its directory made) at start
        if path:
            flakes = self.config.pluginmanager.get_plugin("pytest-isolate-flakes")  # --isolate-repeat (flakes.py)
            write_json(path, list(self.tests.values()), extra={"repeat": flakes.as_json()} if flakes else None)
            self.json_written = path

    # ---------------------------------------------------------- summary

    def _summary(self, terminalreporter: Any) -> None:
        from pytest_isolate.config_checks import read_report_top

        top = read_report_top(self.config)
        measured = [t for t in self.tests.values() if t.get("peak_memory_bytes") is not None]
        terminalreporter.section(f"isolated tests: {top} greediest by peak memory")
        by_memory = sorted(measured, key=lambda t: -t.get("peak_memory_bytes"))[:top]
        self._table(terminalreporter, by_memory)
        terminalreporter.section(f"isolated tests: {top} greediest by CPU time")
        by_cpu = sorted(measured, key=lambda t: -(t.get("cpu_seconds") or 0))[:top]
        self._table(terminalreporter, by_cpu)

    @staticmethod
    def _table(terminalreporter: Any, tests: list[TestUsage]) -> None:
        write = terminalreporter.write_line
        write(f"{'peak mem':>10} {'of limit':>8} {'cpu s':>7} {'thrott s':>8} {'wall s':>7}  outcome  test")
        for test in tests:
            peak = test.get("peak_memory_bytes")
            limit = test.get("mem_limit_bytes")
            share = f"{peak / limit:.0%}" if limit else "-"
            throttled = test.get("throttled_seconds")
            write(
                f"{format_bytes(peak):>10} {share:>8} {test.get('cpu_seconds') or 0:7.2f} "
                f"{'-' if throttled is None else f'{throttled:.2f}':>8} {test.get('wall_seconds') or 0:7.2f}  "
                f"{test.outcome:7}  {test.nodeid}"
            )

    # ---------------------------------------------------------- compare

    def _compare(self, terminalreporter: Any, old_path: str) -> None:
        from pytest_isolate import config_checks

        threshold = config_checks.read_compare_threshold(self.config)
        # Growth must pass both the fraction and an absolute floor: a test
        # going from 0.03 to 0.38 CPU seconds is noise, not a regression.
        min_mem = config_checks.read_compare_min_mem(self.config)
        min_cpu = config_checks.read_compare_min_cpu(self.config)
        try:
            old = {test["nodeid"]: test for test in read_json(old_path)["tests"]}
        except (OSError, ValueError, KeyError) as error:
            terminalreporter.write_line(f"pytest-isolate: cannot compare with {old_path}: {error}")
            return
        lines = []
        for test in self.tests.values():
            before = old.get(test.nodeid)
            if before is None:
                continue
            for key, floor, show in (
                ("peak_memory_bytes", min_mem, format_bytes),
                ("cpu_seconds", min_cpu, lambda value: f"{value:.2f}s"),
            ):
                was, now = before["usage"].get(key), test.get(key)
                if was and now and now - was >= floor and now > was * (1 + threshold):
                    label = "peak memory" if key == "peak_memory_bytes" else "CPU time"
                    lines.append(f"{test.nodeid}: {label} {show(was)} -> {show(now)} (+{now / was - 1:.0%})")
        terminalreporter.section(
            f"isolated tests that grew more than {threshold:.0%} (and by at least {format_bytes(min_mem)} "
            f"or {min_cpu:g}s) since {os.path.basename(old_path)}"
        )
        for line in lines or ["none"]:
            terminalreporter.write_line(line)


def write_json(path: str, tests: list[TestUsage], extra: dict[str, Any] | None = None) -> None:
    from pytest_isolate import hostinfo

    document = {
        "schema": JSON_SCHEMA,
        "version": JSON_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": hostinfo.summary_facts(),
        "tests": [test.as_json() for test in tests],
        **(extra or {}),  # optional sections, such as "repeat"
    }
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


def read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if document.get("schema") != JSON_SCHEMA or document.get("version") != JSON_VERSION:
        raise ValueError(f"not a {JSON_SCHEMA} version {JSON_VERSION} document")
    return document
