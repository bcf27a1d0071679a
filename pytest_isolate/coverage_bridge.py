"""Coverage of code run inside containers (pytest-cov, coverage.py).

The test process inherits coverage's tracer from pytest, but what it
measured would be lost: it leaves with ``os._exit``, and any file it writes
lands in its discarded writable layer.  So it sends its measurements to
pytest over the report pipe, and pytest stores them as a parallel data file
next to its own, which pytest-cov (or ``coverage combine``) merges at the
end like the data of any subprocess.

What travels is numbers, never a data file: coverage's own serialized form
is a SQL script, and handing a container's bytes to ``CoverageData.loads``
would let a test run SQL in pytest (``ATTACH DATABASE`` writes any file
root can).  The test sends, per measurement context, the line numbers (or
arcs) of each file; pytest checks them (``messages.py``) and adds them
through coverage's API.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_isolate.messages import Coverage


def _running() -> Any:
    if "coverage" not in sys.modules:
        return None  # never import coverage just to ask
    import coverage

    return coverage.Coverage.current()


def collect() -> dict[str, Any] | None:
    """In the test process: this process's measurements as plain numbers, or None without coverage."""
    cov = _running()
    if cov is None:
        return None
    cov.stop()
    data = cov.get_data()
    arcs = data.has_arcs()
    contexts: dict[str, dict[str, list[Any]]] = {}
    measured = sorted(data.measured_contexts()) or [""]
    for context in measured:
        if len(measured) > 1:
            data.set_query_contexts([f"^{re.escape(context)}$"])
        files: dict[str, list[Any]] = {}
        for path in data.measured_files():
            numbers = data.arcs(path) if arcs else data.lines(path)
            if numbers:
                files[path] = sorted(numbers)
        contexts[context] = files
    data.set_query_contexts(None)
    return {"arcs": arcs, "contexts": contexts}


def store(measured: Coverage) -> None:
    """In pytest: write checked measurements as a parallel data file for combining."""
    cov = _running()
    if cov is None:
        return
    import coverage

    data = coverage.CoverageData(basename=cov.config.data_file, suffix=True)
    for context, files in measured.contexts.items():
        data.set_context(context or None)
        if measured.arcs:
            data.add_arcs(files)
        else:
            data.add_lines(files)
    data.write()


def measures_arcs() -> bool | None:
    """Whether pytest's own coverage measures branches (None: no coverage running)."""
    cov = _running()
    return None if cov is None else bool(cov.config.branch)
