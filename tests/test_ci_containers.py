"""pytest-isolate inside a CI job's container (GitLab's docker executor, GitHub Actions ``container:``).

Each engine runs the same small project three ways: the engine's default
profile (root without CAP_SYS_ADMIN, seccomp, masked /proc, read-only
cgroups), the flags ``pytest-isolate info`` names there, and
``--privileged``.  The messages are asserted word for word, and nothing
may be left behind: no container, no cgroup, no mount.

Skips unless the engine runs here (``capabilities.has("podman")``); CI
prepares both and sets PYTEST_ISOLATE_REQUIRE, so a skip there fails.
"""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest
from engine_helpers import Engine, JobResult, engine, flags_from, image, plugin_wheel, run_job

pytestmark = pytest.mark.requires("root")

PROJECT = {
    "conftest.py": '''
import os
import socket


def pytest_configure(config):
    # A listener in the job's container: a test with net=False must not reach it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    config.stash[pytest_key] = listener
    os.environ["LANE_LISTENER_PORT"] = str(listener.getsockname()[1])


import pytest

pytest_key = pytest.StashKey()
''',
    "test_job.py": '''
import os
import socket

import pytest
from pytest_isolate import isolated


def test_plain():
    assert os.getpid() > 2


@isolated
def test_writes_etc():
    with open("/etc/lane-probe", "w") as handle:
        handle.write("x")


def test_etc_untouched():
    assert not os.path.exists("/etc/lane-probe")


@isolated(mem="64M")
def test_memory_bomb():
    block = bytearray(200 << 20)
    assert len(block)


@isolated(net=False)
def test_no_network():
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(os.environ["LANE_LISTENER_PORT"])), timeout=2)


@isolated(pids=16)
def test_fork_bomb():
    read, write = os.pipe()
    started = 0
    for _ in range(40):
        try:
            pid = os.fork()
        except BlockingIOError:
            break
        if pid == 0:
            os.read(read, 1)
            os._exit(0)
        started += 1
    os.close(write)
    assert started < 16


@isolated(net="private")
def test_private_link():
    assert [name for _, name in socket.if_nameindex()] == ["lo", "eth0"]
''',
}
ISOLATED = ("test_writes_etc", "test_memory_bomb", "test_no_network", "test_fork_bomb", "test_private_link")
MEMORY_BOMB = (
    "FAILED test_job.py::test_memory_bomb - isolated test was killed for exceeding the memory limit mem='64M' "
    "(peak 64.0 MiB)"
)

# What the default profile lacks, and the one set of flags that fixes it, per engine.
DEFAULT_REFUSAL = {
    "podman": (
        r"in a user namespace, refused at 'mount a fresh /proc' \(EPERM: Operation not permitted\): the engine "
        r"masks /proc \(\d+ mounts over its entries, e\.g\. /proc/\S+\), and the kernel mounts a fresh /proc in "
        r"a user namespace only where /proc is fully visible"
    ),
    "docker": (
        r"in a user namespace, refused at 'create a user namespace' \(EPERM: Operation not permitted\): "
        r"the seccomp filter refuses unshare\(CLONE_NEWUSER\)"
    ),
}
FLAGS = {
    "podman": "podman run --security-opt unmask=ALL -v /sys/fs/cgroup:/sys/fs/cgroup:rw --cap-add NET_ADMIN ...",
    "docker": (
        "docker run --security-opt seccomp=unconfined --security-opt systempaths=unconfined "
        "-v /sys/fs/cgroup:/sys/fs/cgroup:rw --cap-add NET_ADMIN ..."
    ),
}


class Lane:
    def __init__(self, runner: Engine, tag: str, wheels: str, project: str) -> None:
        self.runner, self.tag, self.wheels, self.project = runner, tag, wheels, project

    def job(self, flags: list[str], name: str | None = None) -> JobResult:
        return run_job(self.runner, self.tag, self.project, self.wheels, flags, name)


@pytest.fixture(scope="module")
def plugin_wheels(tmp_path_factory: pytest.TempPathFactory) -> str:
    into = tmp_path_factory.mktemp("plugin-wheel")
    plugin_wheel(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(into))
    os.chmod(into, 0o755)
    return str(into)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("job-project")
    for name, text in PROJECT.items():
        (directory / name).write_text(text.lstrip())
    os.chmod(directory, 0o755)
    return str(directory)


@pytest.fixture(
    scope="module",
    params=[pytest.param(name, marks=pytest.mark.requires(name), id=name) for name in ("podman", "docker")],
)
def lane(request: pytest.FixtureRequest, plugin_wheels: str, project: str) -> Lane:
    runner = engine(request.param)
    started = time.monotonic()
    tag = image(runner)
    print(f"{runner.name}: image ready in {time.monotonic() - started:.1f}s")
    return Lane(runner, tag, plugin_wheels, project)


@pytest.fixture
def nothing_left(lane: Lane, host_state):  # type: ignore[no-untyped-def]
    """No container of the lane outlives its test (host_state checks mounts and cgroups)."""
    yield
    assert lane.runner.containers_of_the_lane() == []


def test_default_profile_names_every_flag_at_once(lane: Lane, nothing_left: None) -> None:
    result = lane.job([])
    name = lane.runner.name
    assert result.info_value("Running As Root") == "yes, without CAP_SYS_ADMIN, CAP_NET_ADMIN"
    assert result.info_value("Container Engine") == {
        "podman": "podman (/run/.containerenv exists)",
        "docker": "docker (/.dockerenv exists)",
    }[name]
    assert result.info_value("Seccomp") == "filter"
    assert result.info_value("Cgroups Writable") == "no (mounted read-only)"
    assert result.flags_line() == FLAGS[name]
    assert "  pids      no: the kernel refuses both ways to build a container here (see Container Routes and the flags below)" in result.info

    failures = result.failure_lines()
    assert [line.split(" - ")[0] for line in failures] == [f"ERROR test_job.py::{test}" for test in ISOLATED]
    refusal = (
        r"pytest-isolate could not create the container: pytest runs as root without CAP_SYS_ADMIN and "
        rf"CAP_NET_ADMIN in this {name} container, and the kernel refused both ways to build one: as root, "
        r"refused at 'create the mount, PID, UTS, IPC and network namespaces' \(EPERM: Operation not permitted\): "
        rf"CAP_SYS_ADMIN is missing; {DEFAULT_REFUSAL[name]}"
    )
    for line in failures:
        assert re.fullmatch(rf"ERROR test_job\.py::\w+ - {refusal}", line), line
    # The whole set once, in the first error's text; later ones point to it.
    advice = (
        f"start this {name} container with {FLAGS[name]} (what each flag grants: pytest-isolate info), "
        f"or, granting far more, {name} run --privileged ..."
    )
    assert result.pytest.count(advice) == 1, result.output
    assert result.pytest.count("the flags that fix it: the first such error above, or `pytest-isolate info`") == 4
    assert re.search(r" 2 passed, 5 errors in ", result.pytest[-1]), result.output


def test_the_flags_info_names_make_every_test_work(lane: Lane, nothing_left: None) -> None:
    flags = flags_from(FLAGS[lane.runner.name], lane.runner.name)
    result = lane.job(flags)
    assert result.flags_line() is None, result.output
    assert [line for line in result.info if line.startswith("  user namespace (")] == [f"  {'user namespace (used)':22} works"]
    assert result.failure_lines() == [MEMORY_BOMB], result.output
    assert re.search(r" 1 failed, 6 passed in ", result.pytest[-1]), result.output


# Root with CAP_SYS_ADMIN: the root route (docker's seccomp profile also refuses pivot_root to it).
# A writable /proc/sys too: net="private" switches forwarding off on the host's end of its link.
ROOT_ROUTE_FLAGS = {
    "podman": ["--cap-add", "SYS_ADMIN,NET_ADMIN", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--security-opt", "unmask=/proc/sys"],
    "docker": [
        "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--security-opt", "seccomp=unconfined",
        "--security-opt", "systempaths=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    ],
}


@pytest.mark.parametrize("how", ["capabilities", "privileged"])
def test_root_route_with_sys_admin_or_privileged(lane: Lane, nothing_left: None, how: str) -> None:
    flags = ROOT_ROUTE_FLAGS[lane.runner.name] if how == "capabilities" else ["--privileged"]
    if how == "privileged":
        # docker asks the kernel for every capability, and root here lacks CAP_SYS_RESOURCE.
        tried = lane.runner.run("run", "--rm", "--network", "none", "--privileged", lane.tag, "true")
        if tried.returncode != 0 and "unable to apply caps" in tried.stderr:
            pytest.skip(f"{lane.runner.name} cannot start a --privileged container on this machine: {tried.stderr.strip()}")
    result = lane.job(flags)
    assert result.info_value("Running As Root") == "yes", result.output
    assert [line for line in result.info if line.startswith("  root (")] == [f"  {'root (used)':22} works"]
    assert result.flags_line() is None, result.output
    assert result.failure_lines() == [MEMORY_BOMB], result.output
    assert re.search(r" 1 failed, 6 passed in ", result.pytest[-1]), result.output


def test_root_route_without_unmask_refuses_only_the_private_link(lane: Lane, nothing_left: None) -> None:
    """The GitLab docker executor's recipe: its config.toml cannot unmask /proc (systempaths is a CLI option)."""
    name = lane.runner.name
    flags = ["--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
    if name == "docker":
        flags += ["--security-opt", "seccomp=unconfined"]
    result = lane.job(flags)
    unmask = {"podman": "--security-opt unmask=ALL", "docker": "--security-opt systempaths=unconfined"}[name]
    assert result.flags_line() == f"{name} run {unmask} ..."
    assert '  net       yes, but net="private" needs a writable /proc/sys (see the flags below)' in result.info
    assert result.failure_lines() == [
        "ERROR test_job.py::test_private_link - pytest-isolate could not create the container's private network "
        f"link: /proc/sys is mounted read-only in this {name} container, and forwarding, which is on here, must be "
        "switched off on the host's end of a veth link",
        MEMORY_BOMB,
    ], result.output
    assert (
        f"start this {name} container with {name} run {unmask} ... (what each flag grants: pytest-isolate info), "
        f"or, granting far more, {name} run --privileged ..."
    ) in result.pytest


def test_private_cgroup_namespace_keeps_test_cgroups_in_the_job(lane: Lane, nothing_left: None) -> None:
    """``--cgroupns=private`` with the host's tree mounted (mountinfo shows its root as ``/../..``): the session group goes under the job's cgroup."""
    name = f"pytest-isolate-lane-{uuid.uuid4().hex[:8]}"
    flags = [*flags_from(FLAGS[lane.runner.name], lane.runner.name), "--cgroupns=private"]
    import threading

    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        # The session group lives from the job's mem= test to its session's end: look for it meanwhile.
        while not stop.wait(0.05):
            for current, dirs, _ in os.walk("/sys/fs/cgroup/memory"):
                seen.update(os.path.join(current, d) for d in dirs if d.startswith("pytest-isolate-"))
                if current.count("/") > 8:
                    dirs[:] = []

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = lane.job(flags, name)
    finally:
        stop.set()
        watcher.join()
    own = result.info_value("Own Cgroup")
    assert re.fullmatch(r"/sys/fs/cgroup/memory/(.+/)?(libpod-|docker/)[0-9a-f]{64}", own), own
    # Before the fix it was made at the hierarchy's root, outside the job's cgroup.
    assert [path for path in seen if os.path.dirname(path) == own], (own, seen)
    assert result.failure_lines() == [MEMORY_BOMB], result.output
