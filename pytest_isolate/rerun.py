"""pytest-rerunfailures: every attempt of a flaky isolated test in a fresh container.

pytest-rerunfailures drives its own loop of attempts around pytest's
``runtestprotocol``, logging each attempt (and "rerun" outcomes) itself.
For isolated tests, the plugin's ``runtestprotocol`` is pointed at ours, so
each attempt is one container; a crash, OOM or timeout is a failed attempt
like any other, and can be rerun.  Installed only when pytest-rerunfailures
is active.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def install(config: pytest.Config, isolated_protocol: Callable[..., list[pytest.TestReport] | None]) -> None:
    import pytest_rerunfailures

    original = pytest_rerunfailures.runtestprotocol

    def runtestprotocol(item: pytest.Item, log: bool = True, nextitem: pytest.Item | None = None) -> Any:
        reports = isolated_protocol(item, nextitem, log)
        return original(item, log=log, nextitem=nextitem) if reports is None else reports

    pytest_rerunfailures.runtestprotocol = runtestprotocol


def drives(item: pytest.Item) -> bool:
    """Whether pytest-rerunfailures runs this item's attempts."""
    if not item.config.pluginmanager.hasplugin("rerunfailures"):
        return False
    import pytest_rerunfailures

    return pytest_rerunfailures.get_reruns_count(item) is not None


def begin_attempt(item: pytest.Item) -> None:
    """The per-attempt state pytest-rerunfailures keeps on the item.

    It fills it in its ``pytest_runtest_makereport`` wrapper, which for an
    isolated test runs in the container (setup, call) and only for the
    teardown here: so it is started here, and filled from the reports.
    """
    for name in ("_test_failed_statuses", "_terminal_errors", "_test_xfailed", "_rerun_condition_excinfos", "_rerun_condition_results"):
        setattr(item, name, {})


def record_attempt(item: pytest.Item, reports: list[pytest.TestReport]) -> None:
    statuses = item._test_failed_statuses  # type: ignore[attr-defined]
    for report in reports:
        statuses[report.when] = statuses.get(report.when, False) or report.failed
        item._terminal_errors.setdefault(report.when, False)  # type: ignore[attr-defined]
        item._test_xfailed[report.when] = item._test_xfailed.get(report.when, False) or hasattr(report, "wasxfail")  # type: ignore[attr-defined]
