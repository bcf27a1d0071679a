"""The Markdown CI summary: --isolate-summary=PATH and $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import json
import re

import pytest
from conftest import CONTAINER
from helpers import run

from pytest_isolate.summary import _code

SUITE = """
from pytest_isolate import isolated

def touch(size):
    block = bytearray(size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    return block

@isolated(mem="512M", budget_mem="40M")
def test_allocates_64m():
    touch(64 << 20)

@isolated
def test_allocates_16m():
    touch(16 << 20)

@isolated
def test_idle():
    pass

def test_not_isolated():
    pass
"""

ROW = r"\| `test_ci\.py::{name}` \| [\d.]+ MiB \| {share} \| \d+\.\d\d \| - \| \d+\.\d\d \| passed \|"


@pytest.mark.requires(*CONTAINER)
def test_summary_file_and_github_step_summary(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_ci=SUITE)
    run(pytester, "--isolate-json=old.json").assert_outcomes(passed=4, warnings=1)
    old = json.loads((pytester.path / "old.json").read_text())
    for test in old["tests"]:
        if test["nodeid"].endswith("test_allocates_16m"):
            test["usage"]["peak_memory_bytes"] = 4 << 20  # pretend it used to be small
    (pytester.path / "old.json").write_text(json.dumps(old))
    github = pytester.path / "step-summary.md"
    github.write_text("# an earlier step's summary\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(github))

    result = run(pytester, "--isolate-summary=summary.md", "--isolate-compare=old.json", "-p", "no:warnings")
    result.assert_outcomes(passed=4)
    assert f"pytest-isolate: summary written to {pytester.path / 'summary.md'}" in result.outlines
    assert "pytest-isolate: summary appended to $GITHUB_STEP_SUMMARY" in result.outlines

    text = (pytester.path / "summary.md").read_text()
    assert github.read_text() == "# an earlier step's summary\n" + text + "\n"  # appended, as GitHub expects
    lines = text.splitlines()
    assert lines[:3] == ["## pytest-isolate", "", "**3 isolated test(s)**: 3 passed."]
    assert re.fullmatch(
        r"Host: cgroup v[12] \([a-z ]+\), root, storage driver overlay on \w+, kernel \S+\.", lines[4]
    ), lines[4]
    memory = lines.index("### Greediest by peak memory (top 10)")
    assert lines[memory + 2] == "| test | peak memory | of mem limit | CPU s | throttled s | wall s | outcome |"
    assert lines[memory + 3] == "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    assert re.fullmatch(ROW.format(name="test_allocates_64m", share=r"1\d%"), lines[memory + 4]), lines[memory + 4]
    assert re.fullmatch(ROW.format(name="test_allocates_16m", share="-"), lines[memory + 5]), lines[memory + 5]
    assert re.fullmatch(ROW.format(name="test_idle", share="-"), lines[memory + 6]), lines[memory + 6]
    assert lines[memory + 7 : memory + 9] == ["", "### Greediest by CPU time (top 10)"]
    budget = lines.index("### Over budget")
    assert lines[budget + 2 : budget + 4] == ["| test | over budget |", "| --- | --- |"]
    assert re.fullmatch(
        r"\| `test_ci\.py::test_allocates_64m` \| peak memory (6\d|7\d)\.\d MiB > budget_mem 40\.0 MiB \|", lines[budget + 4]
    ), lines[budget + 4]
    # The compare report's own title, with issue 12's absolute floors.
    [grew] = [n for n, line in enumerate(lines) if re.fullmatch(
        r"### Isolated tests that grew more than 20% \(and by at least [\d.]+ [KMG]iB or [\d.]+s\) since old\.json", line
    )]
    assert re.fullmatch(
        r"- `test_ci\.py::test_allocates_16m`: peak memory 4\.0 MiB -> \d\d\.\d MiB \(\+\d+%\)", lines[grew + 2]
    ), lines[grew + 2]
    assert lines[grew + 3 :] == []
    assert "### Flaky tests" not in text  # only with --isolate-repeat


FLAKY = """
def test_timing(request):
    run = int(request.node.name.split("isolate-run-")[1].split("/")[0])
    assert run != 2, f"took {run * 0.15:.2f}s | more than 0.1s"

def test_steady():
    pass
"""


@pytest.mark.requires(*CONTAINER)
def test_flaky_section(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ci=FLAKY)
    result = run(pytester, "--isolate-repeat=3", "--isolate-repeat-cpu=0.5", "--isolate-summary=summary.md")
    result.assert_outcomes(passed=5, failed=1)
    lines = (pytester.path / "summary.md").read_text().splitlines()
    assert lines[2] == "**6 isolated test(s)**: 5 passed, 1 failed."
    memory = lines.index("### Greediest by peak memory (top 10)")
    # The runs of a repeated test are one row, at the highest figure of its runs.
    assert re.fullmatch(
        r"\| `test_ci\.py::test_timing \(highest of 3 runs\)` \| [\d.]+ MiB \| - \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \| flaky \|",
        lines[memory + 4],
    ) or re.fullmatch(r"\| `test_ci\.py::test_steady \(highest of 3 runs\)` .* \| passed \|", lines[memory + 4]), lines[memory + 4]
    flaky = lines.index("### Flaky tests (3 runs per test, each in a fresh container, under pressure cpu=0.5)")
    assert lines[flaky + 1 :] == [
        "",
        "1 flaky and 0 always failing of 2 repeated test(s).",
        "",
        "| test | verdict | runs | passed | failed | distinct failures |",
        "| --- | --- | ---: | ---: | ---: | --- |",
        r"| `test_ci.py::test_timing` | flaky | 3 | 2 | 1 | 1x `AssertionError: took 0.30s \| more than 0.1s` |",
    ]


@pytest.mark.requires(*CONTAINER)
def test_github_summary_only_when_isolated_tests_ran(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    github = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(github))
    pytester.makepyfile(test_plain="def test_x(): pass")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert not github.exists()  # a job that isolates nothing gets no summary
    assert "pytest-isolate: summary appended to $GITHUB_STEP_SUMMARY" not in result.outlines
    pytester.makeini("[pytest]\nisolate_github_summary = false\n")
    run(pytester, "--isolate").assert_outcomes(passed=1)
    assert not github.exists()  # switched off
    pytester.makeini("[pytest]\nisolate_summary = reports/summary.md\n")
    (pytester.path / "reports").mkdir()
    run(pytester, "--isolate", "-n", "2").assert_outcomes(passed=1)  # the controller writes it
    assert github.read_text().startswith("## pytest-isolate\n\n**1 isolated test(s)**: 1 passed.\n")
    assert (pytester.path / "reports" / "summary.md").read_text() + "\n" == github.read_text()


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--isolate-summary=/nonexistent/summary.md"], "",
         "ERROR: --isolate-summary=/nonexistent/summary.md is invalid: expected the path of a file in an existing directory"),
        (["--isolate-summary=/tmp"], "", "ERROR: --isolate-summary=/tmp is invalid: expected the path of a file to write; that is a directory"),
        (["--isolate-summary="], "", "ERROR: --isolate-summary= is invalid: expected the path of a file to write, such as summary.md"),
        ([], "isolate_summary = missing/summary.md",
         "ERROR: ini option isolate_summary = missing/summary.md is invalid: expected the path of a file in an existing directory"),
    ],
)
def test_bad_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], ini: str, message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.lines


def test_code_spans_survive_pipes_and_backticks() -> None:
    assert _code("t.py::test_x[a|b]") == r"`t.py::test_x[a\|b]`"
    assert _code("t.py::test_x[`q`]") == "`` t.py::test_x[`q`] ``"
    assert _code("two\nlines") == "`two lines`"
    assert _code("![x](https://example.com/x.png) ``` <img>") == "```` ![x](https://example.com/x.png) ``` <img> ````"
