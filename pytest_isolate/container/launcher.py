"""The processes of one container.

    pytest ─┬─ init (PID 1): /bin/sh, spawned, not forked
            └─ test (PID 2): a fork of pytest that builds the container,
                             then runs the test ── whatever the test starts

Fork cost grows with the size of the pytest process, so the test is the
only fork.  The PID namespace is entered by pytest itself, just around the
two process creations: ``unshare(CLONE_NEWPID)`` makes the next children of
the calling thread members of a new namespace, and ``setns`` back to its
own namespace undoes that at once (see ``runtime.Runtime.launch``).

* **init** is a shell that ignores SIGCHLD, so the kernel reaps every orphan
  reparented to it, and waits for end-of-file on a pipe only pytest holds.
  When pytest closes it (the test ended) or dies (even by SIGKILL), init
  exits, and the kernel kills every process left in the namespace -
  daemons that called ``setsid()`` included.  Init is PID 1 so the test is
  not: PID 1 ignores signals it has no handler for, even ``raise(SIGSEGV)``.
* **test** joins its cgroup, unshares the other namespaces, builds the root
  filesystem, mounts ``/proc`` of its PID namespace, sets the hostname,
  brings up loopback, then runs pytest's own runtest protocol and sends each
  report to pytest as JSON.  Its wait status is the test's.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING, NoReturn

from pytest_isolate import coverage_bridge
from pytest_isolate.container import libc, rootfs
from pytest_isolate.errors import ContainerError

if TYPE_CHECKING:
    import pytest

    from pytest_isolate.channel import ChannelWriter
    from pytest_isolate.container.cgroups import TestCgroup
    from pytest_isolate.container.hardening import Hardening
    from pytest_isolate.container.netsetup import ContainerNetwork
    from pytest_isolate.container.mountplan import MountPlan
    from pytest_isolate.forwarding import ReportRouting
    from pytest_isolate.spec import IsolationSpec

INIT_NAME = "pytest-isolate-init"
# `trap '' CHLD` sets SIGCHLD to SIG_IGN: the kernel then reaps exited
# children itself.  `read` returns at end-of-file, when pytest lets go.
INIT_SCRIPT = "trap '' CHLD; read _"

# The OOM killer should pick the test's processes, not init: raising a score
# is always allowed (lowering one needs CAP_SYS_RESOURCE).
TEST_OOM_SCORE = 500


def spawn_init(pipe_read_fd: int) -> int:
    """Start init with ``pipe_read_fd`` as its stdin; a vfork+exec, not a fork."""
    return os.posix_spawn(
        "/bin/sh",
        [INIT_NAME, "-c", INIT_SCRIPT],
        {},
        file_actions=[
            (os.POSIX_SPAWN_DUP2, pipe_read_fd, 0),
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
    )


def run_test_process(
    *,
    item: pytest.Item,
    spec: IsolationSpec,
    plan: MountPlan,
    cgroup: TestCgroup | None,
    channel: ChannelWriter,
    pytest_pid: int,
    init_pipe_write_fd: int,
    test_oom_score: str,
    routing: ReportRouting,
    hardening: Hardening,
    net: ContainerNetwork,
    close_fds: tuple[int, ...] = (),
    keep_layers: bool = False,
) -> NoReturn:
    """Body of the forked test process.  Never returns.

    With ``keep_layers``, the process holds its writable layers open after
    the test and waits to be killed, so pytest can read what it changed.
    """
    stage = "start the container"
    try:
        # Only pytest may hold init's pipe, or init would outlive pytest.
        os.close(init_pipe_write_fd)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        # A session of its own: no controlling terminal, so no TIOCSTI into
        # the terminal pytest runs in, and /dev/tty refuses to open.
        os.setsid()
        # prctl(2): fires when the *thread* that forked us exits; pytest
        # forks from the thread that runs tests, which outlives the test.
        libc.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != pytest_pid:  # pytest died before prctl took effect
            os._exit(1)
        stage = "join the test's cgroup"
        if cgroup is not None:
            cgroup.attach()
        stage = "create the container's namespaces"
        flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
        if cgroup is not None:
            flags |= libc.CLONE_NEWCGROUP
        if spec.net.own_namespace:
            flags |= libc.CLONE_NEWNET
        cwd = os.getcwd()
        libc.unshare(flags)
        net.after_unshare()
        stage = "build the container's filesystem"
        stage_fd = rootfs.build_root(plan, rootfs.STAGE_DIR, spec.disk, keep_stage=keep_layers)
        rootfs.mount_proc()
        os.chdir(cwd)
        stage = "set up the container's hostname and network"
        socket.sethostname(spec.hostname)
        if spec.net.own_namespace:
            net.configure_inside()
        _raise_oom_score(test_oom_score)
        stage = "drop the test's privileges"
        hardening.apply(spec.caps)
    except ContainerError as error:
        channel.send("error", stage=error.stage, reason=error.reason, advice=error.advice)
        os._exit(1)
    except OSError as error:
        reason = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
        channel.send("error", stage=stage, reason=reason, advice=_advice(error))
        os._exit(1)
    except BaseException:
        channel.send("error", stage=stage, reason=traceback.format_exc(), advice="")
        os._exit(1)
    _run_test(item, channel, routing, stage_fd)


def _raise_oom_score(inherited: str) -> None:
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    try:
        os.write(fd, str(max(TEST_OOM_SCORE, int(inherited or 0))).encode())
    finally:
        os.close(fd)


def _advice(error: OSError) -> str:
    if error.errno in (1, 13):  # EPERM, EACCES
        return "creating namespaces, mounts and cgroups needs root: run pytest as root"
    return ""


def _run_test(item: pytest.Item, channel: ChannelWriter, routing: ReportRouting, stage_fd: int | None) -> NoReturn:
    code = 0
    try:
        routing.apply(channel)
        item.ihook.pytest_runtest_protocol(item=item, nextitem=item.parent)
        measured = coverage_bridge.collect()
        if measured is not None:
            channel.send("coverage", data=measured)
        _flush_std_streams()
        # Everything is reported: pytest may end the container from here on.
        channel.send("done", stage_fd=stage_fd, cpu_seconds=_cpu_seconds())
        if stage_fd is not None:
            while True:  # until pytest has read the layers and ends the namespace
                signal.pause()
    except BaseException:
        channel.send("error", stage="run the test", reason=traceback.format_exc(), advice="")
        code = 1
    finally:
        _flush_std_streams()
        os._exit(code)


def _cpu_seconds() -> float:
    """CPU time of this process and the children it waited for (cgroup-free measure)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
