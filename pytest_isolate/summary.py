"""A Markdown summary of the isolated tests for CI systems that render it.

Written by the process that reports (the single pytest process, or the
xdist controller) after the run:

- to ``--isolate-summary=PATH`` (ini ``isolate_summary``), replacing the file;
- to the file ``$GITHUB_STEP_SUMMARY`` names, appended to (GitHub Actions
  shows each step's summary from it, and several steps may write to it),
  when isolated tests ran and ``isolate_github_summary`` is not false.

It holds the greediest tests, budget overruns, growth against
``--isolate-compare``, flaky tests of ``--isolate-repeat``, and the host facts
that explain the numbers.  Plain pipe tables and bullet lists: readable as
text too.  The numbers come from the usage report (:mod:`usage_report`) and
the repeat tally (:mod:`flakes`), never measured twice.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from pytest_isolate.errors import SpecError

SUMMARY_HELP = "after the run, write a Markdown summary of the isolated tests to this file (for CI)"
GITHUB_HELP = "append the Markdown summary to $GITHUB_STEP_SUMMARY when it is set (default true)"
CELL_LIMIT = 160  # characters of a failure message in a table cell


def add_options(group: Any, parser: pytest.Parser) -> None:
    group.addoption("--isolate-summary", dest="isolate_summary", metavar="PATH", default=None, help=SUMMARY_HELP)
    parser.addini("isolate_summary", SUMMARY_HELP, default="")
    parser.addini("isolate_github_summary", GITHUB_HELP, type="bool", default=True)


def summary_path(config: pytest.Config) -> str | None:
    """The explicit summary file, checked: its directory must exist."""
    cli = config.getoption("isolate_summary")
    ini = str(config.getini("isolate_summary")).strip()
    value, origin = (cli, "cli") if cli is not None else (ini, "ini")
    if not value:
        if origin == "cli":
            raise SpecError(origin, "summary", value, "the path of a file to write, such as summary.md")
        return None
    path = os.path.abspath(os.path.join(str(config.rootpath) if origin == "ini" else "", value))
    if os.path.isdir(path):
        raise SpecError(origin, "summary", value, "the path of a file to write; that is a directory")
    if not os.path.isdir(os.path.dirname(path)):
        raise SpecError(origin, "summary", value, "the path of a file in an existing directory")
    return path


def github_path(config: pytest.Config) -> str | None:
    path = os.environ.get("GITHUB_STEP_SUMMARY", "").strip()
    return path if path and config.getini("isolate_github_summary") else None


def configure(config: pytest.Config) -> None:
    """Check the option; register the writer in the process that reports."""
    explicit = summary_path(config)
    if hasattr(config, "workerinput") or (explicit is None and github_path(config) is None):
        return
    if config.pluginmanager.get_plugin("pytest-isolate-usage-report") is None:  # the numbers come from it
        from pytest_isolate.usage_report import UsageReporter

        config.pluginmanager.register(UsageReporter(config), "pytest-isolate-usage-report")
    config.pluginmanager.register(SummaryWriter(config, explicit), "pytest-isolate-summary")


class _Recorder:
    """Stands in for the terminal reporter to keep the lines the compare report writes."""

    def __init__(self) -> None:
        self.title = ""
        self.lines: list[str] = []

    def section(self, title: str, *args: Any, **kwargs: Any) -> None:
        self.title = title

    def write_line(self, line: str, **kwargs: Any) -> None:
        self.lines.append(line)


class SummaryWriter:
    def __init__(self, config: pytest.Config, explicit: str | None) -> None:
        self.config = config
        self.explicit = explicit
        self.written = False

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self._write():
            terminalreporter.write_line(line)

    def pytest_unconfigure(self) -> None:
        self._write()  # no terminal reporter (-p no:terminal): write it all the same

    def _write(self) -> list[str]:
        if self.written:
            return []
        self.written = True
        usage = self.config.pluginmanager.get_plugin("pytest-isolate-usage-report")
        tests = list(usage.tests.values()) if usage is not None else []
        flakes = self.config.pluginmanager.get_plugin("pytest-isolate-flakes")
        text = render(self.config, tests, flakes, usage)
        said = []
        if self.explicit:
            with open(self.explicit, "w", encoding="utf-8") as handle:
                handle.write(text)
            said.append(f"pytest-isolate: summary written to {self.explicit}")
        github = github_path(self.config)
        if github and (tests or flakes is not None):
            try:
                with open(github, "a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except OSError as error:
                said.append(f"pytest-isolate: cannot append the summary to $GITHUB_STEP_SUMMARY ({github}): {error.strerror}")
            else:
                said.append("pytest-isolate: summary appended to $GITHUB_STEP_SUMMARY")
        return said


# ------------------------------------------------------------------ Markdown


def render(config: pytest.Config, tests: list[Any], flakes: Any, usage: Any) -> str:
    """The whole summary; ``tests`` are usage_report.TestUsage, ``flakes`` a FlakeReporter or None."""
    from pytest_isolate.spec import format_bytes

    top = int(config.getini("isolate_report_top"))
    out = ["## pytest-isolate", ""]
    outcomes = [test.outcome for test in tests]
    counts = ", ".join(f"{outcomes.count(name)} {name}" for name in ("passed", "failed", "skipped") if name in outcomes)
    out.append(f"**{len(tests)} isolated test(s)**" + (f": {counts}" if counts else "") + ".")
    out.append("")
    out.append(f"Host: {host_line(str(config.getini('isolate_storage')))}")
    out.append("")

    measured = [t for t in per_test(tests) if t.get("peak_memory_bytes") is not None]
    for title, key in (("peak memory", "peak_memory_bytes"), ("CPU time", "cpu_seconds")):
        out.append(f"### Greediest by {title} (top {top})")
        out.append("")
        chosen = sorted(measured, key=lambda t: -(t.get(key) or 0))[:top]
        if not chosen:
            out += ["No usage was measured.", ""]
            continue
        out.append("| test | peak memory | of mem limit | CPU s | throttled s | wall s | outcome |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for test in chosen:
            peak, limit = test.get("peak_memory_bytes"), test.get("mem_limit_bytes")
            throttled = test.get("throttled_seconds")
            out.append(
                f"| {_code(test.nodeid)} | {format_bytes(peak)} | {f'{peak / limit:.0%}' if limit else '-'} "
                f"| {test.get('cpu_seconds') or 0:.2f} | {'-' if throttled is None else f'{throttled:.2f}'} "
                f"| {test.get('wall_seconds') or 0:.2f} | {test.outcome} |"
            )
        out.append("")

    out.append("### Over budget")
    out.append("")
    overruns = [(test, line) for test in per_test(tests) for line in over_budget(test)]
    if overruns:
        out.append("| test | over budget |")
        out.append("| --- | --- |")
        out += [f"| {_code(test.nodeid)} | {_cell(line)} |" for test, line in overruns]
    else:
        out.append("No test went over its budget_mem or budget_cpu.")
    out.append("")

    compare = config.getoption("isolate_compare")
    if compare and usage is not None:
        # The compare report's own rule and words: usage_report writes them, we keep them.
        recorder = _Recorder()
        usage._compare(recorder, compare)
        out.append(f"### {recorder.title[:1].upper()}{recorder.title[1:]}")
        out.append("")
        grown = [line for line in recorder.lines if line != "none"]
        out += [f"- {_grown_line(line)}" for line in grown] or ["No test grew."]
        out.append("")

    if flakes is not None:
        out += flaky_section(flakes)
    return "\n".join(out).rstrip("\n") + "\n"


def flaky_section(flakes: Any) -> list[str]:
    settings = flakes.settings
    title = f"### Flaky tests ({settings.runs} runs per test, each in a fresh container"
    title += f", under pressure {settings.pressure})" if settings.pressure else ")"
    out = [title, ""]
    tallies = sorted(flakes.tallies.values(), key=lambda t: (not t.flaky, t.verdict != "failed", t.nodeid))
    shown = [t for t in tallies if t.verdict in ("flaky", "failed")]
    flaky = sum(1 for t in tallies if t.flaky)
    out.append(f"{flaky} flaky and {sum(1 for t in tallies if t.verdict == 'failed')} always failing of {len(tallies)} repeated test(s).")
    out.append("")
    if shown:
        out.append("| test | verdict | runs | passed | failed | distinct failures |")
        out.append("| --- | --- | ---: | ---: | ---: | --- |")
        for tally in shown:
            failures = sorted(tally.failures.values(), key=lambda f: -len(f.runs))
            listed = "<br>".join(
                f"{len(f.runs)}x {_code(_short(f.message))}" + ("" if f.phase == "call" else f" (in {f.phase})")
                for f in failures
            )
            out.append(
                f"| {_code(tally.nodeid)} | {tally.verdict} | {len(tally.outcomes)} | {tally.count('passed')} "
                f"| {tally.count('failed')} | {listed} |"
            )
        out.append("")
    if settings.report_only:
        out += ["Flake report only (`--isolate-flake-report-only`): failed runs did not fail the session.", ""]
    return out


def per_test(tests: list[Any]) -> list[Any]:
    """One row per test: the runs of a repeated test merged, each figure the highest of its runs."""
    from pytest_isolate.repeat import OF_PROPERTY
    from pytest_isolate.usage_report import TestUsage

    rows: dict[str, Any] = {}
    runs: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    for test in tests:
        of = test.properties.get(OF_PROPERTY)
        if not isinstance(of, str):
            rows[test.nodeid] = test
            continue
        runs[of] = runs.get(of, 0) + 1
        seen.setdefault(of, set()).add(test.outcome)
        merged = rows.setdefault(of, TestUsage(of, outcome=test.outcome))
        for name, value in test.properties.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged.properties[name] = max(value, merged.properties.get(name, value))
        if rank.get(test.outcome, 0) > rank.get(merged.outcome, 0):
            merged.outcome = test.outcome
    for of, count in runs.items():
        rows[of].nodeid = f"{of} (highest of {count} runs)"
        if {"passed", "failed"} <= seen[of]:
            rows[of].outcome = "flaky"
    return list(rows.values())


def over_budget(test: Any) -> list[str]:
    from pytest_isolate.spec import format_bytes

    lines = []
    peak, budget = test.get("peak_memory_bytes"), test.get("budget_mem_bytes")
    if peak is not None and budget is not None and peak > budget:
        lines.append(f"peak memory {format_bytes(peak)} > budget_mem {format_bytes(budget)}")
    cpu, budget_cpu = test.get("cpu_seconds"), test.get("budget_cpu_seconds")
    if cpu is not None and budget_cpu is not None and cpu > budget_cpu:
        lines.append(f"CPU time {cpu:.2f}s > budget_cpu {budget_cpu:g}s")
    return lines


def host_line(storage_setting: str) -> str:
    from pytest_isolate import hostinfo

    facts = hostinfo.summary_facts(storage_setting)
    cgroup = f"cgroup v{facts['cgroup_version']}" if facts["cgroup_version"] else "no cgroups"
    controllers = " ".join(facts["cgroup_controllers"])
    user = "root" if facts["root"] else f"rootless (uid {os.geteuid()})"
    storage = facts["storage_driver"] or "none (no overlay filesystem)"
    return (
        f"{cgroup}{f' ({controllers})' if controllers else ''}, {user}, storage driver {storage} "
        f"on {facts['root_filesystem']}, kernel {facts['kernel']}."
    )


def _grown_line(line: str) -> str:
    nodeid, sep, rest = line.partition(": ")
    return f"{_code(nodeid)}: {rest}" if sep else line


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= CELL_LIMIT else text[: CELL_LIMIT - 1] + "…"


def _cell(text: str) -> str:
    """Text safe in a table cell: one line, pipes escaped (GitHub needs it inside code spans too)."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    """A code span around ``text``, safe in a table cell.

    Test names and failure messages come from the tests: inside a code span
    GitHub renders no links, images or HTML they might carry.  The fence is
    one backtick longer than the longest run of them in the text.
    """
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"
