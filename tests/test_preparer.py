"""Whole containers built ahead of their test by the preparer (container/preparer.py)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from conftest import CONTAINER, require
from helpers import CgroupSandbox, run, wait_for

from pytest_isolate.container import libc, prepared, rootfs
from pytest_isolate.container.hardening import Hardening
from pytest_isolate.container.mountplan import MountOp, MountPlan, build_base_plan, device_ops, image_ops
from pytest_isolate.container.network import hosts_file
from pytest_isolate.container.preparer import AHEAD, Blueprint, Preparer

pytestmark = pytest.mark.requires(*CONTAINER)

DISK = 64 << 20
MARKER = "/prepared-container-marker"


def blueprint(hostname: str = "isolated", extra: tuple[MountOp, ...] = (), ops: tuple[MountOp, ...] | None = None) -> Blueprint:
    plan = build_base_plan(DISK)
    plan.add_file("/etc/hosts", hosts_file(hostname))
    hardening = Hardening.for_this_host()
    return Blueprint(
        ops=(*(plan.ops if ops is None else ops), *extra),
        stage=rootfs.ensure_stage_dir(),
        disk=DISK,
        hostname=hostname,
        own_network=True,
        masked_files=hardening.masked_files,
        masked_directories=hardening.masked_directories,
        read_only=hardening.read_only,
    )


@pytest.fixture
def preparer():
    made = Preparer()
    yield made
    made.close()


@pytest.fixture(params=["spawned init", "forked init"])
def either_preparer(request):
    """Both ways to make init: spawned, its /proc mounted with pidns= (Linux 6.15+), or forked (before)."""
    if request.param == "spawned init":
        require("proc_pidns")
    made = Preparer(forked_init=request.param == "forked init")
    yield made
    made.close()


def inside(container: prepared.PreparedPidNamespace, probe: Callable[[], dict]) -> dict:
    """Run ``probe`` in a process forked into the container, as the test process enters it."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    prepared.take(container)
    read_end, write_end = os.pipe()
    libc.setns(container.namespace_fd, libc.CLONE_NEWPID)
    try:
        pid = os.fork()
        if pid == 0:
            answer = b"{}"
            try:
                for fd, kind in container.joined:
                    libc.setns(fd, kind)
                answer = json.dumps(probe()).encode()
            except BaseException as error:
                answer = json.dumps({"error": repr(error)}).encode()
            finally:
                os.write(write_end, answer)
                os._exit(0)
    finally:
        libc.setns(own, libc.CLONE_NEWPID)
        os.close(own)
        container.close_namespace_fd()
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


def what_the_test_sees() -> dict:
    import socket

    with open("/proc/1/cmdline", "rb") as handle:
        init = handle.read().split(b"\0")[0].decode()
    seen = {"pid": os.getpid(), "init": init}
    # Only in a container of ours may the probe write to its root.
    if seen == {"pid": 2, "init": "pytest-isolate-init"}:
        seen["marker_before"] = os.path.exists(MARKER)
        with open(MARKER, "w") as handle:
            handle.write("written in a prepared container")
    with open("/proc/self/mountinfo") as own, open("/proc/1/mountinfo") as inits:
        seen["init_shares_the_mounts"] = own.read() == inits.read()
    root = [line.split(" - ")[1].split()[0] for line in open("/proc/self/mountinfo") if line.split()[4] == "/"]
    seen.update(hostname=socket.gethostname(), links=sorted(os.listdir("/sys/class/net")), root=root)
    return seen


def test_a_container_built_ahead_is_whole_and_used_once(either_preparer: Preparer) -> None:
    preparer = either_preparer
    wanted = blueprint()
    for _ in range(2):
        preparer.request(wanted)
        container = preparer.take(wanted)
        assert container is not None
        assert not container.init_is_ours
        assert [kind for _, kind in container.joined] == [
            libc.CLONE_NEWUTS,
            libc.CLONE_NEWIPC,
            libc.CLONE_NEWNET,
            libc.CLONE_NEWNS,
        ]
        seen = inside(container, what_the_test_sees)
        assert seen == {
            "pid": 2,
            "init": "pytest-isolate-init",
            "marker_before": False,  # the first container's write did not reach the second
            "init_shares_the_mounts": True,
            "hostname": "isolated",
            "links": ["lo"],
            "root": ["overlay"],
        }
        container.discard()  # pytest lets go: init ends, and the container with it
        init = f"/proc/{container.init_pid}"
        assert wait_for(lambda: not os.path.exists(init), 10)  # noqa: B023 - waited for here, in the loop
    assert not os.path.exists(MARKER)


def test_a_root_without_a_shell_still_gets_its_init(either_preparer: Preparer, tmp_path) -> None:
    # An image or a directory given as rootfs= may have no /bin/sh: init is
    # the host's, started before the switch of root (found in the VM lane,
    # where the kernel takes the forked way).
    tiny = tmp_path / "tiny-root"
    (tiny / "etc").mkdir(parents=True)
    python_paths = sorted({sys.base_prefix, sys.prefix, sys.exec_prefix, *(p for p in sys.path if os.path.isdir(p))})
    plan = MountPlan(image_ops([str(tiny)], python_paths) + device_ops(shm_size=DISK, nodes_by_mknod=True))
    plan.ops.append(MountOp("sysfs", "/sys", readonly=True))
    wanted = blueprint(ops=tuple(plan.ops))
    either_preparer.request(wanted)
    container = either_preparer.take(wanted)
    assert container is not None, either_preparer.last_error
    seen = inside(container, what_the_test_sees)
    assert (seen["pid"], seen["init"], seen["init_shares_the_mounts"], seen["root"]) == (
        2,
        "pytest-isolate-init",
        True,
        ["overlay"],
    )
    assert not (tiny / "bin").exists()  # init's shell is the host's
    container.discard()


def test_a_container_built_to_another_blueprint_is_thrown_away(preparer: Preparer) -> None:
    preparer.request(blueprint("predicted"))  # AHEAD of them
    first = preparer.take(blueprint("predicted"))
    assert first is not None
    first.discard()
    assert preparer._socket is not None
    assert select.select([preparer._socket], [], [], 30)[0], "the second was never built"
    assert preparer.take(blueprint("wanted")) is None  # built, but to the prediction that missed
    assert not preparer.disabled
    # Its init exits as soon as pytest lets go of its pipe; the preparer reaps it.
    assert wait_for(lambda: _children(preparer) == [], 10), _children(preparer)
    preparer.request(blueprint("wanted"))
    container = preparer.take(blueprint("wanted"))
    assert container is not None
    assert inside(container, what_the_test_sees)["hostname"] == "wanted"
    container.discard()


def test_a_container_still_being_built_to_another_blueprint_is_not_waited_for(preparer: Preparer) -> None:
    predicted = blueprint("predicted")
    preparer.request(predicted)
    # Asked for at once (the preparer is still starting): not built yet.
    assert preparer.take(blueprint("wanted")) is None
    assert len(preparer._awaited) == AHEAD  # still coming, to be thrown away when they come
    preparer.request(blueprint("wanted"))
    assert list(preparer._awaited) == [predicted] * AHEAD + [blueprint("wanted")] * AHEAD
    container = None
    for _ in range(200):  # bounded: 10 s
        container = preparer.take(blueprint("wanted"))  # once the two before it are built and thrown away
        if container is not None:
            break
        time.sleep(0.05)
    assert container is not None
    assert len(preparer._awaited) == AHEAD - 1
    assert inside(container, what_the_test_sees)["hostname"] == "wanted"
    container.discard()


def test_a_blueprint_that_cannot_be_built_gives_nothing_and_three_in_a_row_end_the_preparer(
    preparer: Preparer,
) -> None:
    broken = blueprint(extra=(MountOp("symlink", "/etc", source="elsewhere"),))  # /etc exists: EEXIST
    for attempt in range(3):
        assert not preparer.disabled, attempt
        preparer.request(broken)
        assert preparer.take(broken) is None
        if attempt < 2:  # the half-built container's init was killed, and reaped
            assert wait_for(lambda: _children(preparer) == [], 10), _children(preparer)
    assert preparer.disabled
    preparer.request(blueprint())  # asks nothing any more: the tests build their own
    assert preparer.take(blueprint()) is None


def test_a_dead_preparer_ends_preparing_for_the_session(preparer: Preparer) -> None:
    wanted = blueprint()
    preparer.request(wanted)
    process = preparer._process
    assert process is not None
    container = preparer.take(wanted)
    assert container is not None
    container.discard()
    preparer.request(wanted)
    process.kill()
    # What it sent before it died may still be taken (AHEAD at most); then nothing.
    for _ in range(AHEAD):
        container = preparer.take(wanted)
        if container is None:
            break
        container.discard()
    assert preparer.take(wanted) is None
    assert preparer.disabled
    assert process.poll() is not None


def test_the_preparer_has_a_name_of_its_own_in_ps(preparer: Preparer) -> None:
    preparer.start()
    process = preparer._process
    assert process is not None

    def name() -> str:
        with open(f"/proc/{process.pid}/comm") as handle:
            return handle.read()

    # Its interpreter starts first: "python3" (or the like) until then.
    assert wait_for(lambda: name() == "isolate-prepare\n", 10), name()


def _children(preparer: Preparer) -> list[int]:
    process = preparer._process
    assert process is not None
    with open(f"/proc/{process.pid}/task/{process.pid}/children") as handle:
        return [int(pid) for pid in handle.read().split()]


# --------------------------------------------------------- through the plugin

# In a test module: whether its container was built ahead.  The preparer's
# init made the container and lives in it; pytest's own init (a test that
# builds its container itself) stays in the host's mounts.
BUILT_AHEAD_CHECK = """
def built_ahead():
    with open("/proc/self/mountinfo") as own, open("/proc/1/mountinfo") as inits:
        return own.read() == inits.read()
"""

# In a conftest: the command lines of pytest's children (the preparer's is one).
CHILDREN_COMMANDS = """
import os

def children_commands():
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as handle:
        pids = handle.read().split()
    commands = {}
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            commands[int(pid)] = cmdline.read()
    return commands
"""

BUILT_AHEAD = BUILT_AHEAD_CHECK + """
import os, socket
from pytest_isolate import isolated

def test_first():
    assert not built_ahead()  # nothing to predict it from

def test_second():
    assert not built_ahead()  # its blueprint is seen twice in a row only now

def test_third():
    assert built_ahead()

@isolated(hostname="other")
def test_another_hostname():
    assert socket.gethostname() == "other"
    assert not built_ahead()  # nothing was built to its blueprint yet

@isolated(hostname="other")
def test_another_hostname_2():
    assert socket.gethostname() == "other"

@isolated(hostname="other")
def test_another_hostname_3():
    assert socket.gethostname() == "other"

@isolated(hostname="other")
def test_another_hostname_4():
    assert socket.gethostname() == "other"
    assert built_ahead()  # the predictions that missed are gone by now

@isolated(net="host")
def test_host_network():
    assert not built_ahead()

@isolated(net="host")
def test_host_network_2():
    pass

@isolated(net="host")
def test_host_network_3():
    pass

@isolated(net="host")
def test_host_network_4():
    assert built_ahead()
    assert "lo" in os.listdir("/sys/class/net")
"""


def test_each_test_after_the_first_runs_in_a_container_built_to_its_predecessors_blueprint(
    pytester: pytest.Pytester, host_state
) -> None:
    pytester.makepyfile(test_ahead=BUILT_AHEAD)
    result = run(pytester, "--isolate", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=11)


def test_isolate_prepare_false_builds_every_container_in_its_test(pytester: pytest.Pytester, host_state) -> None:
    pytester.makepyfile(
        test_own=BUILT_AHEAD_CHECK + """

def test_a():
    assert not built_ahead()

def test_b():
    assert not built_ahead()
"""
    )
    result = run(pytester, "--isolate", "-o", "isolate_prepare=false")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2)


def test_the_preparer_starts_with_the_sessions_first_isolated_test(pytester: pytest.Pytester, host_state) -> None:
    # Its start-up (an interpreter and the container modules) then overlaps
    # the first tests instead of delaying the first test that takes a container.
    pytester.makeconftest(
        CHILDREN_COMMANDS
        + """
def pytest_runtest_logfinish(nodeid):
    running = any(b"preparer_main.py" in command for command in children_commands().values())
    print(f"preparer after {nodeid.split('::')[-1]}:", running)
"""
    )
    pytester.makepyfile(test_one="def test_only():\n    pass\n")
    result = run(pytester, "--isolate", "-s")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1)
    assert "preparer after test_only: True" in result.stdout.str()


def test_a_preparer_killed_mid_session_only_costs_speed(pytester: pytest.Pytester, host_state) -> None:
    pytester.makeconftest(
        CHILDREN_COMMANDS
        + """
import signal

def pytest_runtest_logfinish(nodeid):
    if not nodeid.endswith("test_third"):
        return
    for pid, command in children_commands().items():
        if b"preparer_main.py" in command:
            os.kill(pid, signal.SIGKILL)
            print("killed the preparer")
"""
    )
    pytester.makepyfile(
        test_killed=BUILT_AHEAD_CHECK + """

def test_first():
    assert not built_ahead()

def test_second():
    pass

def test_third():
    assert built_ahead()

def test_fourth():
    pass  # built ahead or not: the preparer had sent it, or was killed building it

def test_fifth():
    pass

def test_sixth():
    assert not built_ahead()  # nobody prepares any more
"""
    )
    result = run(pytester, "--isolate", "-s")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=6)
    assert "killed the preparer" in result.stdout.str()


def test_sigkill_of_pytest_ends_the_preparer_and_the_containers_it_built(pytester: pytest.Pytester, host_state) -> None:
    marker = uuid.uuid4().hex
    pytester.makepyfile(
        test_hang=f"""
import time

def test_quick():
    pass

def test_hang():
    print("{marker}", flush=True)
    time.sleep(3600)
"""
    )
    sandbox = CgroupSandbox()
    try:
        pytest_run = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--isolate", "-s"],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=sandbox.enter,
        )
        try:
            assert pytest_run.stdout is not None
            seen = b""
            while marker.encode() not in seen and len(seen) < 1 << 20:
                chunk = pytest_run.stdout.readline()
                if not chunk:
                    break
                seen += chunk
            assert marker.encode() in seen, seen.decode(errors="replace")
            # test_hang runs in a container the preparer built, and the next is being built.
            assert wait_for(lambda: any(b"preparer_main.py" in _cmdline(pid) for pid in _in_sandbox(sandbox)), 10)
        finally:
            pytest_run.send_signal(signal.SIGKILL)
            pytest_run.wait()
            assert pytest_run.stdout is not None
            pytest_run.stdout.close()
        # The preparer, its inits and the test: nothing of the run is left.
        assert wait_for(lambda: _in_sandbox(sandbox) == [], 5), [_cmdline(pid) for pid in _in_sandbox(sandbox)]
    finally:
        sandbox.remove()


def _in_sandbox(sandbox: CgroupSandbox) -> list[int]:
    pids = []
    for top in sandbox.dirs:
        for current, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with open(os.path.join(current, "cgroup.procs")) as handle:
                    pids += [int(pid) for pid in handle.read().split()]
    return sorted(set(pids))


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""
