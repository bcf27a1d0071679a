"""Session-wide container machinery, and running one container.

Made when the first isolated test runs (so a session without isolated tests
pays nothing), closed at the end of the session.  What can be done once -
reading the host's mount table, finding the cgroup hierarchy, removing a
dead run's leftovers - is done here once.
"""

from __future__ import annotations

import os
import select
import signal
import time
import warnings
from typing import TYPE_CHECKING

from pytest_isolate.channel import ChannelReader, ChannelWriter
from pytest_isolate.container import rootfs
from pytest_isolate.container.cgroups import CgroupBackend, TestCgroup, detect_backend
from pytest_isolate.container.launcher import run_launcher
from pytest_isolate.container.mountinfo import read_mounts
from pytest_isolate.container.mountplan import MountOp, MountPlan, device_ops, host_mount_ops
from pytest_isolate.errors import ContainerError
from pytest_isolate.outcome import ContainerResult

if TYPE_CHECKING:
    import pytest

    from pytest_isolate.spec import IsolationSpec

# After a timeout kill, how long to wait for the pipe to close before giving up.
KILL_GRACE_SECONDS = 10.0


class Runtime:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.cgroups: CgroupBackend | None = detect_backend() if os.geteuid() == 0 else None
        self.host_ops: list[MountOp] = host_mount_ops(read_mounts())
        self.test_oom_score = _read_text("/proc/self/oom_score_adj", "0").strip()
        self.cleaned: list[str] = []
        if os.geteuid() == 0:
            rootfs.ensure_stage_dir()
        if self.cgroups is not None:
            self.cleaned = self.cgroups.remove_stale_groups()

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.remove_session_group()

    def plan_for(self, item: pytest.Item, spec: IsolationSpec) -> MountPlan:
        plan = MountPlan(self.host_ops + device_ops(shm_size=spec.disk) + [MountOp("sysfs", "/sys", readonly=True)])
        item.config.hook.pytest_isolate_mount_plan(item=item, spec=spec, plan=plan)
        return plan

    def check_host(self, spec: IsolationSpec) -> None:
        """Refuse early, with the fix, what this host cannot do."""
        if os.geteuid() != 0:
            raise ContainerError(
                "create the container",
                f"pytest runs as uid {os.geteuid()}, and mounting an overlay and creating "
                "namespaces and cgroups needs root",
                "run pytest as root (for example: sudo -E pytest ...)",
            )
        if spec.has_limits and self.cgroups is None:
            raise ContainerError(
                "set the test's limits",
                "no usable cgroup hierarchy with the memory controller was found "
                "(neither cgroup v1 nor v2)",
                "mount cgroup2 at /sys/fs/cgroup with the memory, cpu and pids controllers, "
                "or drop mem=, cpu= and pids=",
            )

    def launch(self, item: pytest.Item, spec: IsolationSpec, plan: MountPlan) -> ContainerResult:
        """Run the item in a fresh container; all of it is gone when this returns."""
        cgroup = self.cgroups.create(spec) if self.cgroups is not None else None
        result = ContainerResult(messages=[])
        launcher_pid = None
        drained = False
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        try:
            with warnings.catch_warnings():
                # Python 3.12 warns about fork() in a process with threads
                # (pytest-xdist's execnet has one); the child touches none
                # of their locks, and filterwarnings=error must not turn the
                # warning into an exception *after* the child exists.
                warnings.simplefilter("ignore", DeprecationWarning)
                launcher_pid = os.fork()
            if launcher_pid == 0:
                os.close(read_fd)
                run_launcher(
                    item=item,
                    spec=spec,
                    plan=plan,
                    cgroup=cgroup,
                    channel=ChannelWriter(write_fd),
                    pytest_pid=os.getppid(),
                    test_oom_score=self.test_oom_score,
                )
            os.close(write_fd)
            write_fd = -1
            self._collect(result, read_fd, launcher_pid, spec.timeout, cgroup, started)
            drained = True
        finally:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)
            if launcher_pid:
                _reap(launcher_pid, kill_first=not drained)
            result.wall_seconds = time.monotonic() - started
            if cgroup is not None:
                cgroup.kill_all()
                result.usage = cgroup.usage()
                cgroup.remove()
        for message in result.messages:
            if message["kind"] == "exit":
                result.status = message["status"]
        return result

    @staticmethod
    def _collect(
        result: ContainerResult,
        fd: int,
        launcher_pid: int,
        timeout: float | None,
        cgroup: TestCgroup | None,
        started: float,
    ) -> None:
        """Read messages until every process holding the pipe is gone."""
        reader = ChannelReader()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = None if timeout is None else started + timeout
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not poller.poll(wait_ms):
                if result.timed_out:
                    raise ContainerError(
                        "stop the container",
                        f"its processes still held the report pipe {KILL_GRACE_SECONDS:g}s after SIGKILL",
                    )
                result.timed_out = True
                _kill(launcher_pid)
                if cgroup is not None:
                    cgroup.kill_all()
                deadline = time.monotonic() + KILL_GRACE_SECONDS
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                return
            result.messages.extend(reader.feed(data))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int, *, kill_first: bool) -> None:
    """Wait for the launcher; on an interrupted run (Ctrl-C) kill it first."""
    if kill_first:
        _kill(pid)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _read_text(path: str, default: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return default
