"""Flake hunting: ``--isolate-repeat=N`` runs each selected test N times, each run in a fresh container.

The runs are items of their own, made at collection by parametrizing every
test function with one more (function-scoped) parameter, as pytest-repeat
does: so xdist spreads them over its workers like any other items, ``-k``
and node ids select them, and junitxml lists each.  Their ids read
``test_x[isolate-run-3/10]``.

The tally (:mod:`pytest_isolate.flakes`) is made from the runs' reports
alone, by their node ids, in the process that reports (the single pytest
process or the xdist controller).  Every run also carries
``isolate_repeat_of`` (the test's own node id) and ``isolate_repeat_run`` in
its ``user_properties``, for junitxml and the JSON report's readers.

Under pressure: ``--isolate-repeat-cpu=0.2`` and ``--isolate-repeat-mem=64M``
run every repeated run under at most that limit (a test's own limit stays
when it is tighter), so a timing-dependent flake that hides on a fast, idle
machine shows on a laptop.

Kept cheap to import: ``plugin.py`` imports it on every run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pytest_isolate.errors import SpecError

REPEAT_HELP = "run each selected test N times, every run in a fresh container, and report the flaky ones"
REPORT_ONLY_HELP = (
    "with --isolate-repeat: failed runs do not fail the session (exit status 0); the table says which failed"
)
REPEAT_CPU_HELP = "with --isolate-repeat: run every repeated run under at most this many cores (tighter than the test's own)"
REPEAT_MEM_HELP = 'with --isolate-repeat: run every repeated run under at most this memory limit, e.g. "64M"'

RUN_FIXTURE = "_isolate_repeat_run"
OF_PROPERTY = "isolate_repeat_of"
RUN_PROPERTY = "isolate_repeat_run"


@dataclasses.dataclass(frozen=True)
class RepeatSettings:
    """What ``--isolate-repeat`` and its companions asked for (checked)."""

    runs: int
    report_only: bool = False
    cpu: float | None = None  # pressure: at most this many cores
    mem: int | None = None  # pressure: at most this many bytes
    mem_text: str | None = None

    @property
    def pressure(self) -> str:
        """The pressure in the user's words, for the reports ("" when none)."""
        parts = []
        if self.cpu is not None:
            parts.append(f"cpu={self.cpu:g}")
        if self.mem is not None:
            parts.append(f"mem={self.mem_text}")
        return ", ".join(parts)


SETTINGS_KEY = pytest.StashKey["RepeatSettings | None"]()


def add_options(group: Any, parser: pytest.Parser) -> None:
    group.addoption("--isolate-repeat", dest="isolate_repeat", metavar="N", default=None, help=REPEAT_HELP)
    parser.addini("isolate_repeat", REPEAT_HELP, default="")
    group.addoption("--isolate-flake-report-only", action="store_true", default=None, help=REPORT_ONLY_HELP)
    parser.addini("isolate_flake_report_only", REPORT_ONLY_HELP, type="bool", default=False)
    group.addoption("--isolate-repeat-cpu", dest="isolate_repeat_cpu", metavar="CORES", default=None, help=REPEAT_CPU_HELP)
    parser.addini("isolate_repeat_cpu", REPEAT_CPU_HELP, default="")
    group.addoption("--isolate-repeat-mem", dest="isolate_repeat_mem", metavar="SIZE", default=None, help=REPEAT_MEM_HELP)
    parser.addini("isolate_repeat_mem", REPEAT_MEM_HELP, default="")


def _raw(config: pytest.Config, name: str) -> tuple[str, str] | None:
    """(value, origin) of an option with an ini key; the command line wins."""
    cli = config.getoption(name)
    if cli is not None:
        return str(cli).strip(), "cli"
    ini = config.getini(name)
    if isinstance(ini, str) and ini.strip():
        return ini.strip(), "ini"
    return None


def read_settings(config: pytest.Config) -> RepeatSettings | None:
    """The repeat settings, or None when not repeating; a bad value raises SpecError.

    The pressure options only mean something with ``--isolate-repeat``: on
    the command line without it they are a usage error; in the ini file they
    wait for a run that repeats.
    """
    from pytest_isolate.spec import _Invalid, parse_cpu, parse_size

    runs = _raw(config, "isolate_repeat")
    pressure: dict[str, Any] = {}
    for argument, parse in (("repeat_cpu", parse_cpu), ("repeat_mem", parse_size)):
        raw = _raw(config, f"isolate_{argument}")
        if raw is None:
            continue
        value, origin = raw
        try:
            pressure[argument] = (parse(value), value)
        except _Invalid as invalid:
            raise SpecError(origin, argument, value, invalid.expected) from None
        if runs is None and origin == "cli":
            flag = f"--isolate-{argument.replace('_', '-')}"
            raise pytest.UsageError(f"{flag}={value} needs --isolate-repeat=N: it sets the pressure of repeated runs")
    report_only = config.getoption("isolate_flake_report_only")
    if report_only is None:
        report_only = bool(config.getini("isolate_flake_report_only"))
    elif runs is None:
        raise pytest.UsageError("--isolate-flake-report-only needs --isolate-repeat=N: it sets the exit status of repeated runs")
    if runs is None:
        return None
    value, origin = runs
    if not value.isdigit() or int(value) < 1:
        raise SpecError(origin, "repeat", value, "a whole number of runs per test from 1 up, such as 10")
    cpu = pressure.get("repeat_cpu")
    mem = pressure.get("repeat_mem")
    return RepeatSettings(
        runs=int(value),
        report_only=bool(report_only),
        cpu=cpu[0] if cpu else None,
        mem=mem[0] if mem else None,
        mem_text=mem[1] if mem else None,
    )


def configure(config: pytest.Config) -> RepeatSettings | None:
    """Read and store the settings; register the collection when repeating.

    The caller registers the tally (``flakes``, which imports this module).
    """
    settings = read_settings(config)
    config.stash[SETTINGS_KEY] = settings
    if settings is not None:
        config.pluginmanager.register(RepeatCollection(settings), "pytest-isolate-repeat")
    return settings


def settings_of(config: pytest.Config) -> RepeatSettings | None:
    return config.stash.get(SETTINGS_KEY, None)


def run_id(run: int, runs: int) -> str:
    return f"isolate-run-{run}/{runs}"


def original_nodeid(nodeid: str, run: int, runs: int) -> str:
    """``test_x[a-isolate-run-3/10]`` -> ``test_x[a]``; ``test_x[isolate-run-3/10]`` -> ``test_x``."""
    token = run_id(run, runs)
    for with_brackets, without in ((f"[{token}]", ""), (f"-{token}]", "]"), (f"[{token}-", "[")):
        if with_brackets in nodeid:
            return nodeid.replace(with_brackets, without, 1)
    return nodeid.replace(f"-{token}-", "-", 1)


class RepeatCollection:
    """Makes the runs at collection and marks each with what it repeats."""

    def __init__(self, settings: RepeatSettings) -> None:
        self.settings = settings

    @pytest.fixture
    def _isolate_repeat_run(self, request: pytest.FixtureRequest) -> int:
        return int(request.param)

    # trylast: after the test's own parametrization, so our id comes last.
    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        runs = self.settings.runs
        metafunc.fixturenames.append(RUN_FIXTURE)
        metafunc.parametrize(
            RUN_FIXTURE, range(1, runs + 1), indirect=True, ids=[run_id(run, runs) for run in range(1, runs + 1)]
        )

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        runs = self.settings.runs
        for item in items:
            callspec = getattr(item, "callspec", None)
            if callspec is None or RUN_FIXTURE not in callspec.params:
                continue  # not a Python test function (a doctest, another plugin's item): runs once
            run = int(callspec.params[RUN_FIXTURE])
            item.user_properties.append((OF_PROPERTY, original_nodeid(item.nodeid, run, runs)))
            item.user_properties.append((RUN_PROPERTY, run))


def under_pressure(item: pytest.Item, spec: Any) -> Any:
    """``spec`` with the repeat pressure applied: the tighter of the test's own limit and the pressure."""
    settings = settings_of(item.config)
    if settings is None or not settings.pressure:
        return spec
    changes: dict[str, Any] = {}
    if settings.cpu is not None and (spec.cpu is None or settings.cpu < spec.cpu):
        changes["cpu"] = settings.cpu
    if settings.mem is not None and (spec.mem is None or settings.mem < spec.mem):
        changes["mem"] = settings.mem
        changes["mem_text"] = settings.mem_text
    return dataclasses.replace(spec, **changes) if changes else spec
