"""`pytest-isolate plot`: usage across --isolate-json reports, as a picture (needs matplotlib)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_isolate.plot import readable

MiB = 1 << 20


def _report(path: Path, created: str, tests: dict[str, tuple[int, float, int | None]]) -> Path:
    """A report as --isolate-json writes it: nodeid -> (peak bytes, CPU s, budget_mem bytes)."""
    document = {
        "schema": "pytest-isolate/usage",
        "version": 1,
        "created": created,
        "host": {},
        "tests": [
            {
                "nodeid": nodeid,
                "outcome": "passed",
                "limits": {"mem_bytes": None, "cpu_cores": None, "budget_mem_bytes": budget, "budget_cpu_seconds": None},
                "usage": {"peak_memory_bytes": peak, "cpu_seconds": cpu, "throttled_seconds": None, "wall_seconds": cpu},
            }
            for nodeid, (peak, cpu, budget) in tests.items()
        ],
    }
    path.write_text(json.dumps(document))
    return path


def _plot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_isolate.cli", "plot", *args], capture_output=True, text=True)


@pytest.fixture
def reports(tmp_path: Path) -> list[str]:
    pytest.importorskip("matplotlib", reason="pytest-isolate[plot]: pip install -e '.[test]'")
    old = _report(tmp_path / "old.json", "2026-11-01T09:00:00+00:00", {
        "tests/unit/test_cache.py::test_warm_cache": (40 * MiB, 0.5, 100 * MiB),
        "tests/unit/test_cache.py::test_cold": (10 * MiB, 0.1, None),
        "tests/test_tiny.py::test_tiny": (1 * MiB, 0.01, None),
    })
    new = _report(tmp_path / "new.json", "2026-12-01T09:00:00+00:00", {
        "tests/unit/test_cache.py::test_warm_cache": (120 * MiB, 0.9, 100 * MiB),
        # Two runs of one repeated test: one line, at the higher figure.
        "tests/unit/test_cache.py::test_cold[isolate-run-1/2]": (12 * MiB, 0.2, None),
        "tests/unit/test_cache.py::test_cold[isolate-run-2/2]": (30 * MiB, 0.3, None),
        "tests/test_tiny.py::test_tiny": (1 * MiB, 0.01, None),
    })
    return [str(old), str(new)]


def test_svg_has_labelled_axes_names_and_budgets(reports: list[str], tmp_path: Path) -> None:
    output = tmp_path / "usage.svg"
    result = _plot(*reports, "-o", str(output), "--top", "2")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"wrote {output}\n", "")
    svg = output.read_text()
    for text in (
        "peak memory (MiB)",
        "CPU time (s)",
        "Peak memory of the top 2 tests (ranked by the newest run)",
        "run (--isolate-json report, oldest first)",
        "test_cache.py::test_warm_cache",
        "test_cache.py::test_cold",
        "budget of test_cache.py::test_warm_cache",
        "old.json",
        "2026-12-01 09:00",
    ):
        assert text in svg, text
    assert "isolate-run" not in svg
    assert "test_tiny" not in svg  # not in the top 2
    assert "tests/unit/" not in svg  # names are shortened to the file and the test


def test_png(reports: list[str], tmp_path: Path) -> None:
    output = tmp_path / "usage.png"
    assert _plot(*reports, "-o", str(output)).returncode == 0
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_missing_extra_names_it(tmp_path: Path) -> None:
    report = _report(tmp_path / "r.json", "2026-12-01T09:00:00+00:00", {"t.py::test": (MiB, 0.1, None)})
    code = (
        "import sys; sys.modules['matplotlib'] = None; from pytest_isolate.cli import main; "
        f"sys.exit(main(['plot', {str(report)!r}, '-o', {str(tmp_path / 'u.svg')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (
        2, "pytest-isolate plot needs matplotlib, which is not installed: pip install 'pytest-isolate[plot]'\n"
    )


def test_bad_input(tmp_path: Path) -> None:
    (tmp_path / "junk.json").write_text("[1, 2")
    (tmp_path / "other.json").write_text('{"schema": "something else"}')
    cases = [
        ([str(tmp_path / "missing.json"), "-o", "u.svg"], f"pytest-isolate plot: cannot read {tmp_path / 'missing.json'}: No such file or directory\n"),
        ([str(tmp_path / "other.json"), "-o", "u.svg"],
         f"pytest-isolate plot: {tmp_path / 'other.json'} is not an --isolate-json report: not a pytest-isolate/usage version 1 document\n"),
        ([str(tmp_path / "other.json"), "-o", "u.jpeg"], "pytest-isolate plot: -o u.jpeg: expected a file name ending in .svg, .png, .pdf\n"),
        ([str(tmp_path / "other.json"), "-o", "u.svg", "--top", "0"], "pytest-isolate plot: --top 0: expected a number of tests from 1 up\n"),
    ]
    for args, message in cases:
        result = _plot(*args)
        assert (result.returncode, result.stderr) == (2, message)
    result = _plot(str(tmp_path / "junk.json"), "-o", str(tmp_path / "u.svg"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"pytest-isolate plot: {tmp_path / 'junk.json'} is not an --isolate-json report: ")


def test_readable_names() -> None:
    assert readable("tests/unit/test_x.py::TestA::test_b[p]") == "test_x.py::TestA::test_b[p]"
    long = "tests/test_x.py::test_" + "a" * 80
    assert len(readable(long)) == 60 and readable(long).startswith("test_x.py::test_aaa") and "…" in readable(long)
