"""Hooks other plugins and conftest files can implement to shape containers.

Added through ``pytest_addhooks``; see the README for an example conftest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_isolate.container.cgroups import Usage
    from pytest_isolate.container.mountplan import MountPlan
    from pytest_isolate.spec import IsolationSpec

hookspec = pytest.hookspec


@hookspec(firstresult=True)
def pytest_isolate_modify_spec(item: pytest.Item, spec: IsolationSpec) -> IsolationSpec | None:
    """Return a changed spec for ``item`` (``dataclasses.replace(spec, ...)``), or None.

    Called before each isolated test runs, after markers and options were
    merged.  The first non-None result is used.
    """


@hookspec
def pytest_isolate_mount_plan(item: pytest.Item, spec: IsolationSpec, plan: MountPlan) -> None:
    """Add to the container's mounts, e.g. ``plan.add_bind("/data")`` or ``plan.add_tmpfs("/scratch")``."""


@hookspec
def pytest_isolate_usage(item: pytest.Item, spec: IsolationSpec, usage: Usage | None) -> None:
    """Receive what an isolated test used (None where cgroups were not available)."""
