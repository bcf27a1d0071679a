"""Inside the container: send what the test reports to the pytest process.

The test process is a fork of pytest, so every plugin is still registered
in it.  Reporting hooks must not run there: the terminal reporter would
print twice, and pytest-xdist's worker would write to its execnet channel
from a forked process.  So, in the child only, each reporting hook is
replaced by a subset caller (pluggy's public ``subset_hook_caller``) that
reaches just the forwarder and pytest's logging plugin (which keeps the
live-log state of the phases), and the parent replays the reports.

Subtests (pytest 9) log their reports through ``pytest_runtest_logreport``
while the test runs, not in the list ``runtestprotocol`` returns; routing
the hook, not the list, keeps them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from pytest_isolate.channel import ChannelWriter

ROUTED_HOOKS = (
    "pytest_runtest_logstart",
    "pytest_runtest_logreport",
    "pytest_runtest_logfinish",
    "pytest_warning_recorded",
)

# Set in the test process, so the plugin's protocol hook lets pytest's
# default protocol run the test there instead of forking again.
inside_container = False


class ReportForwarder:
    def __init__(self, channel: ChannelWriter, config: pytest.Config) -> None:
        self.channel = channel
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.channel.send("report", report=data)

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str, location: Any
    ) -> None:
        category = warning_message.category
        self.channel.send(
            "warning",
            message=str(warning_message.message),
            category=f"{category.__module__}.{category.__qualname__}",
            filename=warning_message.filename,
            lineno=warning_message.lineno,
            when=when,
            nodeid=nodeid,
        )


def route_reports_to(channel: ChannelWriter, config: pytest.Config) -> None:
    global inside_container
    inside_container = True
    manager = config.pluginmanager
    forwarder = ReportForwarder(channel, config)
    # Register first: registering looks hooks up on config.hook, which must
    # still be the real callers then.
    manager.register(forwarder, "pytest-isolate-forwarder")
    keep = {manager.get_plugin("logging-plugin"), forwarder}
    for name in ROUTED_HOOKS:
        others = [impl.plugin for impl in getattr(config.hook, name).get_hookimpls() if impl.plugin not in keep]
        setattr(config.hook, name, manager.subset_hook_caller(name, remove_plugins=others))


def rebuild_warning(message: dict[str, Any]) -> warnings.WarningMessage:
    """A WarningMessage for the parent's ``pytest_warning_recorded`` replay."""
    category = _resolve_category(message["category"])
    return warnings.WarningMessage(
        category(message["message"]), category, message["filename"], message["lineno"]
    )


def _resolve_category(qualified: str) -> type[Warning]:
    import importlib

    module_name, _, name = qualified.rpartition(".")
    try:
        candidate = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return UserWarning
    return candidate if isinstance(candidate, type) and issubclass(candidate, Warning) else UserWarning
