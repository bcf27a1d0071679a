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

from pytest_isolate import output

if TYPE_CHECKING:
    import pytest

    from pytest_isolate.channel import ChannelWriter
    from pytest_isolate.messages import RecordedWarning

ROUTED_HOOKS = (
    "pytest_runtest_logstart",
    "pytest_runtest_logreport",
    "pytest_runtest_logfinish",
    "pytest_warning_recorded",
)

# A failure's representation longer than this travels as its cut text.
LONGREPR_LIMIT = 2 << 20

# Set in the test process, so the plugin's protocol hook lets pytest's
# default protocol run the test there instead of forking again.
inside_container = False


class ReportForwarder:
    def __init__(self, config: pytest.Config) -> None:
        self.channel: ChannelWriter | None = None  # set only in a test process
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.channel is None:
            return
        # Some plugins settle a report's outcome in this hook from state kept
        # in the test process (pytest 9's subtests fail the test that
        # "contains 1 failed subtest" here), as pytest-xdist's workers do.
        self.config.hook.pytest_report_teststatus(report=report, config=self.config)
        # pytest takes only so much from a container: long output is cut to
        # its head and tail here, where the test can still say how much.
        report.sections = [(title, output.cut(text)) for title, text in report.sections]
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        if len(str(data.get("longrepr"))) > LONGREPR_LIMIT:
            data["longrepr"] = output.cut(report.longreprtext)
        self.channel.send("report", report=data)

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str, location: Any
    ) -> None:
        if self.channel is None:
            return
        category = warning_message.category
        self.channel.send(
            "warning",
            message=output.cut(str(warning_message.message)),
            category=f"{category.__module__}.{category.__qualname__}",
            filename=warning_message.filename,
            lineno=warning_message.lineno,
            when=when,
            nodeid=nodeid,
        )


class ReportRouting:
    """Made once per session in pytest; applied in each test process.

    Building the subset callers costs ~0.8 ms, which is most of a trivial
    test's budget, so it happens once, and the test process only swaps them in.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        manager = config.pluginmanager
        self.forwarder = ReportForwarder(config)
        # Registered in pytest too, where its hooks do nothing: registering
        # once here spares every test process the cost.
        manager.register(self.forwarder, "pytest-isolate-forwarder")
        keep = {manager.get_plugin("logging-plugin"), self.forwarder}
        self.callers = {}
        for name in ROUTED_HOOKS:
            others = [impl.plugin for impl in getattr(config.hook, name).get_hookimpls() if impl.plugin not in keep]
            self.callers[name] = manager.subset_hook_caller(name, remove_plugins=others)
        # The test runs once in its container: plugins that take the whole
        # protocol over (pytest-rerunfailures' attempts, which pytest drives
        # from outside) step aside there; wrappers (warnings, faulthandler)
        # and pytest's own runner stay.
        takers = [
            impl.plugin
            for impl in config.hook.pytest_runtest_protocol.get_hookimpls()
            if not (impl.hookwrapper or getattr(impl, "wrapper", False)) and impl.plugin_name not in ("runner", "isolate")
        ]
        self.callers["pytest_runtest_protocol"] = manager.subset_hook_caller("pytest_runtest_protocol", remove_plugins=takers)

    def apply(self, channel: ChannelWriter) -> None:
        """In the test process: send reports to ``channel`` instead of reporting them."""
        global inside_container
        inside_container = True
        self.forwarder.channel = channel
        for name, caller in self.callers.items():
            setattr(self.config.hook, name, caller)


def rebuild_warning(message: RecordedWarning) -> warnings.WarningMessage:
    """A WarningMessage for the parent's ``pytest_warning_recorded`` replay."""
    category = _resolve_category(message.category)
    return warnings.WarningMessage(category(message.message), category, message.filename, message.lineno)


def _resolve_category(qualified: str) -> type[Warning]:
    """The warning class by name, among modules pytest has already imported.

    Never import: the name comes from the container, and importing a module
    runs its code in pytest (``this`` prints, ``unittest.__main__`` runs).
    """
    import sys

    module_name, _, name = qualified.rpartition(".")
    module = sys.modules.get(module_name)
    candidate = getattr(module, name, None) if module is not None else None
    return candidate if isinstance(candidate, type) and issubclass(candidate, Warning) else UserWarning
