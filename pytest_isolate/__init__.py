"""pytest-isolate: run tests in real, throw-away Linux containers.

``from pytest_isolate import isolated`` gives the ``isolated`` marker, usable
bare (``@isolated``) or called (``@isolated(mem="256M", cpu=0.5)``).
"""

from __future__ import annotations

import pytest

from pytest_isolate.container.cgroups import Usage
from pytest_isolate.container.mountplan import MountPlan
from pytest_isolate.spec import IsolationSpec

__version__ = "0.1.0"

isolated = pytest.mark.isolated

__all__ = ["IsolationSpec", "MountPlan", "Usage", "isolated", "__version__"]
