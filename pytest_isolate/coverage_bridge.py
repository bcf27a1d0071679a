"""Coverage of code run inside containers (pytest-cov, coverage.py).

The test process inherits coverage's tracer from pytest, but what it
measured would be lost: it leaves with ``os._exit``, and any file it writes
lands in its discarded writable layer.  So it sends its measurements to
pytest over the report pipe, and pytest stores them as a parallel data file
next to its own, which pytest-cov (or ``coverage combine``) merges at the
end like the data of any subprocess.
"""

from __future__ import annotations

import base64
import sys


def _running() -> object | None:
    if "coverage" not in sys.modules:
        return None  # never import coverage just to ask
    import coverage

    return coverage.Coverage.current()


def collect() -> str | None:
    """In the test process: this process's measurements, or None without coverage."""
    cov = _running()
    if cov is None:
        return None
    cov.stop()  # type: ignore[attr-defined]
    data = cov.get_data()  # type: ignore[attr-defined]
    return base64.b64encode(data.dumps()).decode("ascii")


def store(payload: str) -> None:
    """In pytest: write the measurements as a parallel data file for combining."""
    cov = _running()
    if cov is None:
        return
    import coverage

    data = coverage.CoverageData(basename=cov.config.data_file, suffix=True)  # type: ignore[attr-defined]
    data.loads(base64.b64decode(payload))
    data.write()
