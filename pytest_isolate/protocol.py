"""The runtest protocol of an isolated test, on the pytest side.

The same log sequence pytest itself produces (logstart, a report per phase,
logfinish), so terminal output, ``-ra``, junitxml, ``--lf`` and xdist see
an isolated test exactly like any other:

1. wider-scoped fixtures are set up here, in the pytest process;
2. the test runs in a container (``runtime.launch``);
3. its reports are rebuilt with ``pytest_report_from_serializable``; phases
   the container never reported (it crashed, was OOM-killed or timed out)
   get a failed report saying why;
4. every report carries the test's usage in ``user_properties``;
5. wider-scoped teardown runs here, at the normal time.
"""

from __future__ import annotations

import contextlib
import traceback
from typing import TYPE_CHECKING, Any

import pytest

from pytest_isolate import coverage_bridge, endpoints, rerun, scopes
from pytest_isolate.container import fsdiff
from pytest_isolate.errors import ContainerError
from pytest_isolate.forwarding import rebuild_warning
from pytest_isolate.messages import Error, RecordedWarning
from pytest_isolate.outcome import (
    NO_NETWORK_NOTE,
    SECTION,
    ContainerResult,
    IsolateBudgetWarning,
    budget_overruns,
    crash_message,
    image_library_note,
    limit_notes,
    looks_like_network_failure,
    usage_properties,
    violation_message,
)

if TYPE_CHECKING:
    from pytest_isolate.runtime import Runtime
    from pytest_isolate.spec import IsolationSpec

_RERAISE = (pytest.exit.Exception, KeyboardInterrupt)


def run_isolated(runtime: Runtime, item: pytest.Item, nextitem: pytest.Item | None, spec: IsolationSpec) -> None:
    """The whole protocol of one isolated test, logged as pytest logs any test."""
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    try:
        isolated_runtestprotocol(runtime, item, nextitem, spec, log=True)
    finally:
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def isolated_runtestprotocol(
    runtime: Runtime, item: pytest.Item, nextitem: pytest.Item | None, spec: IsolationSpec, *, log: bool
) -> list[pytest.TestReport]:
    """``runtestprotocol`` for an isolated test: one attempt, its reports returned.

    With ``log``, each report is logged as soon as it is final, so ``-x``
    sees a failure before the wider fixtures are torn down (as in pytest).
    Without, the caller logs them (pytest-rerunfailures does, per attempt).
    """
    ihook = item.ihook
    logged: list[pytest.TestReport] = []
    warnings_seen: list[RecordedWarning] = []
    rerunfailures = item.config.pluginmanager.hasplugin("rerunfailures")
    if rerunfailures:
        rerun.begin_attempt(item)

    def emit(report: pytest.TestReport) -> None:
        if rerunfailures:
            rerun.record_attempt(item, [report])
        logged.append(report)
        if log:
            ihook.pytest_runtest_logreport(report=report)

    try:
        setup = None  # nothing of pytest's to set up here (nearly every test): no capture, no CallInfo
        if not scopes.nothing_to_set_up(item):
            with _capture(item, "setup"):
                setup = pytest.CallInfo.from_call(lambda: scopes.setup_wider_fixtures(item), when="setup", reraise=_RERAISE)
        if setup is not None and setup.excinfo is not None:
            reports = [ihook.pytest_runtest_makereport(item=item, call=setup)]
            result = None
        else:
            spec = endpoints.with_exposed(item, spec)  # known only now that the wider fixtures are set up
            result = _run_container(runtime, item, spec)
            reports, warnings_seen = _rebuild(item, spec, result, budget_strict=runtime.settings.budget_strict)
            _apply_changes(item, result, reports, runtime.settings.diff, runtime.settings.diff_fail)
            if runtime.keep_mode != "none":
                from pytest_isolate import keep

                keep.finish(item, result, reports, runtime.keep_mode)
        child_teardown = reports.pop() if reports and reports[-1].when == "teardown" else None
        for report in reports:
            emit(report)
        if item.session.shouldfail or item.session.shouldstop:
            nextitem = None  # as runtestprotocol: tear everything down (#11706)
        teardown = None  # nothing of pytest's to tear down here before the next test: as for setup
        if child_teardown is None or not scopes.nothing_to_tear_down(item, nextitem):
            with _capture(item, "teardown"):
                teardown = pytest.CallInfo.from_call(
                    lambda: scopes.teardown_towards(item, nextitem), when="teardown", reraise=_RERAISE
                )
        if teardown is not None and (teardown.excinfo is not None or child_teardown is None):
            final = ihook.pytest_runtest_makereport(item=item, call=teardown)
            if result is not None:
                final.user_properties.extend(usage_properties(spec, result))
        else:
            assert child_teardown is not None
            final = child_teardown
            final.sections.extend(_parent_sections(item, "teardown"))
        emit(final)
    finally:
        scopes.release_request(item)
    for message in warnings_seen:
        ihook.pytest_warning_recorded.call_historic(
            kwargs=dict(warning_message=rebuild_warning(message), when=message.when, nodeid=item.nodeid, location=None)
        )
    return logged


def setup_error_reports(item: pytest.Item, message: str, log: bool) -> list[pytest.TestReport]:
    """The reports of an item that fails at setup with ``message`` (for pytest-rerunfailures' loop)."""
    report = _failed_report(item, "setup", message, [], ContainerResult())
    if log:
        item.ihook.pytest_runtest_logreport(report=report)
    return [report]


def report_setup_error(item: pytest.Item, message: str) -> None:
    """Fail ``item`` at setup without running anything of it."""
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    ihook.pytest_runtest_logreport(report=_failed_report(item, "setup", message, [], ContainerResult()))
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _run_container(runtime: Runtime, item: pytest.Item, spec: IsolationSpec) -> ContainerResult:
    try:
        enforcement = runtime.check_host(spec)
        plan = runtime.plan_for(item, spec)
        result = runtime.launch(item, spec, plan, rlimits=enforcement == "rlimit")
    except ContainerError as error:
        return ContainerResult(error=Error(error.stage, error.reason, error.advice))
    except (OSError, ValueError, RuntimeError) as error:
        # A bug or an unforeseen host: fail this test with the reason, keep
        # the session going (never an INTERNALERROR).
        reason = "".join(traceback.format_exception_only(type(error), error)).strip()
        return ContainerResult(error=Error("run the container", reason, ""))
    item.config.hook.pytest_isolate_usage(item=item, spec=spec, usage=result.usage)
    return result


def _rebuild(
    item: pytest.Item, spec: IsolationSpec, result: ContainerResult, *, budget_strict: bool
) -> tuple[list[pytest.TestReport], list[RecordedWarning]]:
    reports = _reports_from(item, result)
    _store_coverage(result)
    notes = limit_notes(spec, result)
    for report in reports:
        report_notes = list(notes)
        if spec.net.mode == "none" and report.failed and looks_like_network_failure(report.longreprtext):
            report_notes.append(NO_NETWORK_NOTE)
        if spec.rootfs != "host" and report.failed:
            text = report.longreprtext + "".join(content for _, content in report.sections)
            library_note = image_library_note(spec.rootfs, text)
            if library_note:
                report_notes.append(library_note)
        if report.failed and report_notes and report.when != "teardown":
            report.sections.append((SECTION, "\n".join(report_notes)))
    reports = _complete(item, spec, result, reports)
    _fail_for_violation(item, result, reports)
    properties = usage_properties(spec, result)
    for report in reports:
        report.user_properties.extend(properties)
    # A container that broke the protocol is heard no further than its reports.
    warnings_seen = list(result.warnings) if result.violation is None else []
    warnings_seen += _check_budgets(item, spec, result, reports, strict=budget_strict)
    return reports, warnings_seen


def _reports_from(item: pytest.Item, result: ContainerResult) -> list[pytest.TestReport]:
    """The container's reports as pytest reports; the first that pytest cannot rebuild is a violation."""
    config = item.config
    keywords: dict[str, Any] = dict.fromkeys(item.keywords, 1)
    reports = []
    for message in result.reports:
        try:
            report = _from_json(config, message.data)
            if report.failed:
                report.longreprtext  # noqa: B018  renders it: a representation that cannot render fails here, not in the summary
        except Exception as error:  # the container chose the data: any failure to rebuild is its fault
            result.violation = f"a {message.when} report pytest cannot rebuild ({type(error).__name__}: {error})"
            break
        # Which test and where: the host's knowledge, never the container's word.
        report.nodeid = item.nodeid
        report.location = item.location
        report.keywords = keywords  # type: ignore[assignment]
        reports.append(report)
    return reports


def _store_coverage(result: ContainerResult) -> None:
    if not result.coverage or result.violation is not None:
        return
    branch = coverage_bridge.measures_arcs()
    for measured in result.coverage:
        if branch is not None and measured.arcs != branch:
            result.violation = "coverage data measured as " + ("arcs" if measured.arcs else "lines") + ", unlike pytest's"
            return
        coverage_bridge.store(measured)


def _fail_for_violation(item: pytest.Item, result: ContainerResult, reports: list[pytest.TestReport]) -> None:
    """A container that broke the protocol fails its test, even after reporting a pass."""
    if result.violation is None:
        return
    message = violation_message(result.violation)
    target = next((report for report in reports if report.when == "call"), reports[-1] if reports else None)
    if target is None or message in target.longreprtext:
        return
    if target.failed:
        target.sections.append((SECTION, message))
    else:
        target.outcome = "failed"
        target.longrepr = crash_longrepr(item, message)


def _apply_changes(
    item: pytest.Item, result: ContainerResult, reports: list[pytest.TestReport], show: bool, fail_under: tuple[str, ...]
) -> None:
    """--isolate-diff: list what the test touched; isolate_diff_fail: fail it for writing there."""
    if result.changes is None:
        return
    call = next((report for report in reports if report.when == "call"), None)
    if call is None:
        return
    from pytest_isolate.tmpdirs import given_basetemp, without_bookkeeping

    # pytest's own base-directory bookkeeping is not what the test wrote.
    result.changes = without_bookkeeping(result.changes, given_basetemp(item.config.option))
    if show:
        listing = "\n".join(map(str, result.changes)) or "none"
        if result.changes_note:
            listing += f"\n({result.changes_note})"
        call.sections.append((f"{SECTION}: files changed", listing))
    offending = fsdiff.under(result.changes, list(fail_under))
    if offending and call.passed:
        call.outcome = "failed"
        listed = ", ".join(map(str, offending))
        call.longrepr = crash_longrepr(
            item, f"isolated test wrote under {' '.join(fail_under)} (isolate_diff_fail): {listed}"
        )


def _check_budgets(
    item: pytest.Item, spec: IsolationSpec, result: ContainerResult, reports: list[pytest.TestReport], *, strict: bool
) -> list[RecordedWarning]:
    """A passing test over a soft budget: a warning, or (strict) a failure."""
    overruns = budget_overruns(spec, result.usage)
    call = next((report for report in reports if report.when == "call"), None)
    if not overruns or call is None or not call.passed:
        return []
    message = "isolated test went over its budget: " + "; ".join(overruns)
    if strict:
        call.outcome = "failed"
        call.longrepr = crash_longrepr(item, message)
        return []
    category = f"{IsolateBudgetWarning.__module__}.{IsolateBudgetWarning.__qualname__}"
    return [RecordedWarning(message, category, str(item.path), (item.location[1] or 0) + 1, "runtest")]


def _from_json(config: pytest.Config, data: dict[str, Any]) -> pytest.TestReport:
    report = config.hook.pytest_report_from_serializable(config=config, data=data)
    # JSON has no tuples: a skip's (path, line, reason) and the user
    # properties come back as lists, and pytest's summaries expect tuples.
    if isinstance(report.longrepr, list):
        report.longrepr = tuple(report.longrepr)
    report.user_properties = [tuple(entry) for entry in report.user_properties]
    return report


def _complete(
    item: pytest.Item,
    spec: IsolationSpec,
    result: ContainerResult,
    reports: list[pytest.TestReport],
) -> list[pytest.TestReport]:
    """Add a failed report for the phase the container died in, and close the rest."""
    phases = [report.when for report in reports if report.nodeid == item.nodeid]
    if "teardown" in phases:
        return reports
    setup_failed = any(r.when == "setup" and not r.passed for r in reports)
    dead_in = "setup" if "setup" not in phases else ("teardown" if "call" in phases or setup_failed else "call")
    if dead_in == "teardown" and result.violation is not None and "call" in phases:
        # Ended for what it sent, after its call: the call report fails (see
        # _fail_for_violation); the teardown only closes the sequence.
        reports.append(_closing_teardown(item, result))
        return reports
    out, err = result.leftover_output
    sections = [(f"Captured stdout {dead_in}", out)] if out else []
    sections += [(f"Captured stderr {dead_in}", err)] if err else []
    reports.append(_failed_report(item, dead_in, crash_message(spec, result), sections, result))
    return reports


def _closing_teardown(item: pytest.Item, result: ContainerResult) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome="passed",
        longrepr=None,
        when="teardown",
        duration=0.0,
        user_properties=list(item.user_properties),
    )


def _failed_report(item: pytest.Item, when: str, message: str, sections: list[tuple[str, str]], result: ContainerResult) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome="failed",
        longrepr=crash_longrepr(item, message),
        when=when,  # type: ignore[arg-type]
        sections=sections,
        duration=result.wall_seconds,
        user_properties=list(item.user_properties),
    )


def crash_longrepr(item: pytest.Item, message: str) -> Any:
    """A failure representation that says ``message`` without faking an exception.

    A plain string would do on pytest 9, but pytest 8's ``-ra`` summary only
    shows ``longrepr.reprcrash.message``, and pytest-xdist serializes only
    exception representations with their structure.  pytest has no public
    constructor for one, so this uses its representation classes, and falls
    back to the string if they ever move.
    """
    try:
        from _pytest._code.code import ExceptionChainRepr, ReprFileLocation, ReprTracebackNative
    except ImportError:
        return message
    first_line = message.splitlines()[0]
    location = ReprFileLocation(str(item.path), (item.location[1] or 0) + 1, first_line)
    return ExceptionChainRepr([(ReprTracebackNative([message + "\n"]), location, None)])


@contextlib.contextmanager
def _capture(item: pytest.Item, when: str):  # type: ignore[no-untyped-def]
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.item_capture(when, item):
        yield


def _parent_sections(item: pytest.Item, when: str) -> list[tuple[str, str]]:
    return [
        (f"Captured {key} {when}", content)
        for section_when, key, content in getattr(item, "_report_sections", [])
        if section_when == when and content
    ]
