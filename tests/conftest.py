from __future__ import annotations

import os

import pytest
from capabilities import has, required_by_environment, skip_reason

pytest_plugins = ["pytester"]

# Everything an isolated test needs on this host.
CONTAINER = ("root", "overlay", "cgroup", "netns")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*capabilities): skip unless the host has them (see tests/capabilities.py)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires"):
        for capability in marker.args:
            require(capability)


def require(capability: str) -> None:
    """Skip (or, where PYTEST_ISOLATE_REQUIRE names it, fail) unless the host has ``capability``."""
    if has(capability):
        return
    if capability in required_by_environment():
        pytest.fail(
            f"capability {capability!r} probed as missing, but PYTEST_ISOLATE_REQUIRE says this "
            "machine has it: the probe or the feature is broken"
        )
    pytest.skip(skip_reason(capability))


@pytest.fixture
def host_state():
    """Mounts, our cgroups and processes before a test; assert they are the same after."""
    from helpers import snapshot_host

    before = snapshot_host()
    yield before
    after = snapshot_host()
    assert (set(after.mounts) - set(before.mounts), set(before.mounts) - set(after.mounts)) == (set(), set())
    assert set(after.cgroups) - set(before.cgroups) == set()


@pytest.fixture(autouse=True)
def _no_leaked_children():
    yield
    # A test of a plugin that forks must not leave zombies in this process.
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    assert pid == 0, f"a child process ({pid}) was left behind"


@pytest.fixture(autouse=True)
def _no_ci_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pytest runs tests start must not append to this CI job's own step summary.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest shortens '-ra' lines to the terminal width; assertions read them whole.
    monkeypatch.setenv("COLUMNS", "1000")
