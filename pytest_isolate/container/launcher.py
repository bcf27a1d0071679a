"""The three processes of one container, all forked from pytest.

    pytest ── launcher ── init (PID 1) ── test (PID 2) ── whatever the test starts

* **launcher**: joins the test's cgroup, unshares the namespaces, builds the
  root filesystem, sets the hostname and brings up loopback.  A new PID
  namespace applies only to children, so it then forks:
* **init**: PID 1 of the new PID namespace.  Mounts ``/proc`` (which must
  be done from inside the namespace), forks the test, reaps every orphan,
  and reports the test's exit status.  When init exits, the kernel kills
  every process left in the namespace - daemons that called ``setsid()``
  included.  The test is *not* PID 1, because PID 1 ignores signals it has
  no handler for, even ``raise(SIGSEGV)``.
* **test**: runs pytest's own runtest protocol for the item and sends each
  report to the parent as JSON.

Parent-death signals chain the three to pytest: if pytest is SIGKILLed,
the launcher dies, then init, and the kernel empties the namespace.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING, NoReturn

from pytest_isolate.container import libc, rootfs
from pytest_isolate.container.network import bring_up_loopback
from pytest_isolate.errors import ContainerError

if TYPE_CHECKING:
    import pytest

    from pytest_isolate.channel import ChannelWriter
    from pytest_isolate.container.cgroups import TestCgroup
    from pytest_isolate.container.mountplan import MountPlan
    from pytest_isolate.spec import IsolationSpec

# The launcher and init must survive the test's OOM: the OOM killer should
# pick the test, and init must live to report what happened.  Lowering a
# score needs CAP_SYS_RESOURCE (CI sandboxes often drop it); raising the
# test's is always allowed, so the test process and its children are made
# the preferred victims instead.
TEST_OOM_SCORE = 500


def _raise_oom_score(inherited: str) -> None:
    with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
        handle.write(str(max(TEST_OOM_SCORE, int(inherited or 0))))


def _die_with_parent(parent_pid: int) -> None:
    libc.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def run_launcher(
    *,
    item: pytest.Item,
    spec: IsolationSpec,
    plan: MountPlan,
    cgroup: TestCgroup | None,
    channel: ChannelWriter,
    pytest_pid: int,
    test_oom_score: str,
) -> NoReturn:
    """Body of the first child.  Never returns."""
    code = 1
    try:
        _die_with_parent(pytest_pid)
        stage = "join the test's cgroup"
        if cgroup is not None:
            cgroup.attach()
        stage = "create the container's namespaces"
        flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWPID
        if cgroup is not None:
            flags |= libc.CLONE_NEWCGROUP
        if not spec.net:
            flags |= libc.CLONE_NEWNET
        cwd = os.getcwd()
        libc.unshare(flags)
        stage = "build the container's filesystem"
        rootfs.build_root(plan, rootfs.STAGE_DIR, spec.disk)
        stage = "set up the container's hostname and network"
        socket.sethostname(spec.hostname)
        if not spec.net:
            bring_up_loopback()
        init_pid = os.fork()
        if init_pid == 0:
            _run_init(item, channel, cwd, test_oom_score)
        os.waitpid(init_pid, 0)
        code = 0
    except ContainerError as error:
        channel.send("error", stage=error.stage, reason=error.reason, advice=error.advice)
    except OSError as error:
        channel.send("error", stage=stage, reason=f"{error.strerror or error} ({error.filename or ''})".replace(" ()", ""), advice=_advice(error))
    except BaseException:
        channel.send("error", stage=stage, reason=traceback.format_exc(), advice="")
    finally:
        os._exit(code)


def _advice(error: OSError) -> str:
    if error.errno in (1, 13):  # EPERM, EACCES
        return "creating namespaces and cgroups needs root: run pytest as root"
    return ""


def _run_init(item: pytest.Item, channel: ChannelWriter, cwd: str, test_oom_score: str) -> NoReturn:
    try:
        # The launcher is outside our PID namespace: getppid() shows it as 0.
        _die_with_parent(0)
        rootfs.mount_proc()
        os.chdir(cwd)
        test_pid = os.fork()
        if test_pid == 0:
            _run_test(item, channel, test_oom_score)
        while True:  # reap orphans until the test itself exits
            pid, status = os.waitpid(-1, 0)
            if pid == test_pid:
                break
        channel.send("exit", status=status)
    except ContainerError as error:
        channel.send("error", stage=error.stage, reason=error.reason, advice=error.advice)
    except BaseException:
        channel.send("error", stage="run the container's init", reason=traceback.format_exc(), advice="")
    finally:
        # Exiting as PID 1 makes the kernel SIGKILL the rest of the namespace.
        os._exit(0)


def _run_test(item: pytest.Item, channel: ChannelWriter, test_oom_score: str) -> NoReturn:
    from pytest_isolate import forwarding

    code = 0
    try:
        _raise_oom_score(test_oom_score)
        forwarding.route_reports_to(channel, item.config)
        item.ihook.pytest_runtest_protocol(item=item, nextitem=item.parent)
    except BaseException:
        channel.send("error", stage="run the test", reason=traceback.format_exc(), advice="")
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
