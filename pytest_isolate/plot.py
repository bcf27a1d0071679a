"""``pytest-isolate plot OLD.json ... NEW.json -o usage.svg``: usage over time, as a picture.

Two panels share the x axis, one point per ``--isolate-json`` report in the
order given (oldest first): the peak memory (MiB) and the CPU time (s) of
the top tests, chosen by their figure in the newest report.  A test's
budget (``budget_mem``, ``budget_cpu``) is drawn as a dashed line in the
test's colour.  The runs of a repeated test (``--isolate-repeat``) count as
one test, at the highest of its runs.

matplotlib is an optional extra (``pip install 'pytest-isolate[plot]'``):
the plugin's own dependencies stay small.  It is imported here only, and
without pyplot (no global state, no display needed).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

FORMATS = (".svg", ".png", ".pdf")
MISSING_EXTRA = "pytest-isolate plot needs matplotlib, which is not installed: pip install 'pytest-isolate[plot]'"
_RUN_TOKEN = re.compile(r"isolate-run-(\d+)/(\d+)")
NAME_LIMIT = 60  # characters of a test name in the legend


class PlotError(Exception):
    """A message for the user; the command exits with status 2."""


def load_runs(paths: list[str]) -> list[dict[str, Any]]:
    """Each report as {label, tests: {nodeid: {peak, cpu, budget_mem, budget_cpu}}}."""
    from pytest_isolate.usage_report import read_json

    runs = []
    for path in paths:
        try:
            document = read_json(path)
            entries = document["tests"]
            tests: dict[str, dict[str, float | None]] = {}
            for entry in entries:
                _merge(tests, _test_name(entry["nodeid"]), entry)
        except OSError as error:
            raise PlotError(f"pytest-isolate plot: cannot read {path}: {error.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise PlotError(f"pytest-isolate plot: {path} is not an --isolate-json report: {error}") from None
        created = str(document.get("created", ""))[:16].replace("T", " ")
        runs.append({"label": f"{os.path.basename(path)}\n{created}".strip(), "tests": tests})
    return runs


def _test_name(nodeid: str) -> str:
    """A repeated run's id without its run number: the runs of one test are one line."""
    from pytest_isolate.repeat import original_nodeid

    match = _RUN_TOKEN.search(nodeid)
    return original_nodeid(nodeid, int(match.group(1)), int(match.group(2))) if match else nodeid


def _merge(tests: dict[str, dict[str, float | None]], name: str, entry: dict[str, Any]) -> None:
    usage, limits = entry.get("usage") or {}, entry.get("limits") or {}
    figures = {
        "peak": _number(usage.get("peak_memory_bytes")),
        "cpu": _number(usage.get("cpu_seconds")),
        "budget_mem": _number(limits.get("budget_mem_bytes")),
        "budget_cpu": _number(limits.get("budget_cpu_seconds")),
    }
    known = tests.setdefault(name, dict.fromkeys(figures))
    for key, value in figures.items():
        if value is not None:
            known[key] = value if known[key] is None else max(known[key] or 0, value)


def _number(value: object) -> float | None:
    """Numbers only: a report is data, and a string or NaN in it draws nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def readable(nodeid: str) -> str:
    """``tests/unit/test_x.py::TestA::test_b[p]`` -> ``test_x.py::TestA::test_b[p]``, at most NAME_LIMIT characters."""
    path, sep, rest = nodeid.partition("::")
    name = f"{os.path.basename(path)}{sep}{rest}"
    if len(name) <= NAME_LIMIT:
        return name
    keep = NAME_LIMIT - 1
    return name[: keep // 2] + "…" + name[-(keep - keep // 2) :]


def top_tests(runs: list[dict[str, Any]], key: str, top: int) -> list[str]:
    newest = runs[-1]["tests"]
    ranked = sorted((name for name in newest if newest[name][key] is not None), key=lambda n: -(newest[n][key] or 0))
    return ranked[:top]


def draw(runs: list[dict[str, Any]], output: str, top: int) -> None:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(MISSING_EXTRA) from None

    panels = (
        ("peak", "budget_mem", "Peak memory", "peak memory (MiB)", 1 / (1 << 20)),
        ("cpu", "budget_cpu", "CPU time", "CPU time (s)", 1.0),
    )
    chosen = {key: top_tests(runs, key, top) for key, *_ in panels}
    names = list(dict.fromkeys(chosen["peak"] + chosen["cpu"]))
    palette = [f"C{i}" for i in range(10)]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    xs = list(range(len(runs)))

    figure = Figure(figsize=(12, 8.5), layout="constrained")
    axes = figure.subplots(2, 1, sharex=True)
    for ax, (key, budget_key, title, ylabel, scale) in zip(axes, panels):
        for name in chosen[key]:
            values = [_scaled(run["tests"].get(name, {}).get(key), scale) for run in runs]
            ax.plot(xs, values, marker="o", color=colours[name], label=readable(name))
            budgets = [_scaled(run["tests"].get(name, {}).get(budget_key), scale) for run in runs]
            if any(not math.isnan(b) for b in budgets):
                ax.plot(xs, budgets, linestyle="--", color=colours[name], label=f"budget of {readable(name)}")
        ax.set_title(f"{title} of the top {len(chosen[key])} tests (ranked by the newest run)", loc="left")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if chosen[key]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="solid: test, dashed: its budget", title_fontsize="small")
        else:
            ax.text(0.5, 0.5, "no measurements in the newest report", transform=ax.transAxes, ha="center")
    axes[-1].set_xticks(xs, [run["label"] for run in runs], fontsize="small")
    axes[-1].set_xlabel("run (--isolate-json report, oldest first)")
    if len(xs) == 1:
        axes[-1].set_xlim(-0.5, 0.5)
    figure.suptitle("pytest-isolate: usage of isolated tests across runs")
    # Text stays text in an SVG: test names can be searched and copied.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(output, dpi=110)


def _scaled(value: float | None, scale: float) -> float:
    return math.nan if value is None else value * scale


def run(paths: list[str], output: str, top: int) -> int:
    """The command; returns its exit status (messages go to stderr)."""
    import sys

    try:
        if not output.lower().endswith(FORMATS):
            raise PlotError(f"pytest-isolate plot: -o {output}: expected a file name ending in {', '.join(FORMATS)}")
        if top < 1:
            raise PlotError(f"pytest-isolate plot: --top {top}: expected a number of tests from 1 up")
        draw(load_runs(paths), output, top)
    except PlotError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "plot",
        help="draw peak memory and CPU time of the top tests across --isolate-json reports (needs pytest-isolate[plot])",
        description="Draw the peak memory and CPU time of the top tests across runs, budgets as dashed lines.",
    )
    parser.add_argument("reports", nargs="+", metavar="REPORT.json", help="--isolate-json reports, oldest first")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the picture: .svg, .png or .pdf")
    parser.add_argument("--top", type=int, default=8, metavar="N", help="how many tests each panel shows (8)")
