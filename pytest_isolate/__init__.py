"""pytest-isolate: run tests in real, throw-away Linux containers.

``from pytest_isolate import isolated`` gives the ``isolated`` marker, usable
bare (``@isolated``) or called (``@isolated(mem="256M", cpu=0.5)``).
``expose(request, host, port)`` lets a wider-scoped fixture hand its server's
address to the isolated tests that use it.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING

import pytest

from pytest_isolate.container.cgroups import Usage
from pytest_isolate.container.mountplan import MountPlan
from pytest_isolate.endpoints import expose
from pytest_isolate.spec import IsolationSpec

__version__ = "0.1.0"

if TYPE_CHECKING:
    isolated: pytest.MarkDecorator


def __getattr__(name: str) -> object:
    # ``isolated`` is made on each import, not once here: without the plugin
    # (-p no:isolate) pytest warns about an unknown mark, and the warning
    # must point at the test module that imports it, not at this file.
    if name != "isolated":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        marker = pytest.mark.isolated
    # ``from pytest_isolate import isolated`` asks twice: importlib's
    # hasattr() first, then the importing module: warn that one only.
    if not sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
        for warning in caught:
            warnings.warn(warning.message, stacklevel=2)
    return marker


__all__ = ["IsolationSpec", "MountPlan", "Usage", "expose", "isolated", "__version__"]
