"""A limit that was asked for but not enforced is said once per run, in the terminal.

Rootless without a delegated cgroup, ``isolate_limits_fallback = rlimit``
enforces ``mem`` and ``pids`` with rlimits but has nothing for ``cpu``: a
test asking ``cpu=0.5`` then runs unlimited, and a junit property alone is
easy to miss.  Registered in the reporting process; it reads the usage
properties every isolated report carries (so it works under xdist).
"""

from __future__ import annotations

from typing import Any

import pytest


class UnenforcedLimits:
    def __init__(self) -> None:
        self.cpu_not_enforced: dict[str, None] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        enforced_by = str(properties.get("isolate_limits_enforced_by", ""))
        if enforced_by.startswith("rlimit") and properties.get("isolate_cpu_limit") is not None:
            self.cpu_not_enforced[report.nodeid] = None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.cpu_not_enforced:
            return
        tests = list(self.cpu_not_enforced)
        terminalreporter.write_line(
            f"pytest-isolate: cpu= was not enforced for {len(tests)} test(s): rootless without a delegated cgroup, "
            f"isolate_limits_fallback = rlimit has no CPU limit: {', '.join(tests)}"
        )
