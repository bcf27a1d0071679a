"""The life of one container's processes, from creation to the last reap.

A test that finished cleanly says "done" as its last message.  From then
on nothing it does can change its reports, so pytest ends the container
(closing init's pipe makes the kernel kill the whole PID namespace) and
moves on to the next test at once; the exit of the old processes, the
teardown of their namespaces and the removal of the cgroup happen on the
other core meanwhile, and are collected before the next container starts
and, blocking, at the end of the session.  A test that crashed, timed out
or was interrupted is waited for on the spot, so its report can say why.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal

from pytest_isolate.container.cgroups import TestCgroup


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclasses.dataclass
class ContainerProcesses:
    """init and the test process of one container, and the pipe that keeps init alive."""

    init_pid: int = 0
    test_pid: int = 0
    init_write: int = -1  # closing it ends init, and with it the PID namespace
    test_status: int | None = None
    test_cpu_seconds: float | None = None  # from wait4: the test process and children it waited for
    init_reaped: bool = False
    init_is_ours: bool = True  # rootless: init is the launcher's child, not pytest's

    def end_namespace(self) -> None:
        if self.init_write >= 0:
            os.close(self.init_write)
            self.init_write = -1

    def reap_test(self, *, block: bool = True) -> bool:
        if self.test_status is None and self.test_pid:
            try:
                pid, status, rusage = os.wait4(self.test_pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                # Reaped by someone else (a test's own os.wait() in pytest's
                # process, say): gone all the same, its status unknown.
                self.test_pid = 0
                return True
            if pid == 0:
                return False
            self.test_status = status
            self.test_cpu_seconds = rusage.ru_utime + rusage.ru_stime
        return True

    def reap_init(self, *, block: bool = True) -> bool:
        if not self.init_reaped and self.init_pid and self.init_is_ours:
            try:
                pid, _ = os.waitpid(self.init_pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid = self.init_pid  # reaped by someone else: gone all the same
            if pid == 0:
                return False
        self.init_reaped = True
        return True

    def stop(self) -> None:
        """Kill, close and reap everything, now (a crash, a timeout, Ctrl-C)."""
        if self.test_status is None and self.test_pid:
            kill(self.test_pid)
        self.reap_test()
        self.end_namespace()
        self.reap_init()


@dataclasses.dataclass
class _Retired:
    processes: ContainerProcesses
    cgroup: TestCgroup | None


class Graveyard:
    """Containers that were told to end and are still exiting."""

    def __init__(self) -> None:
        self._retired: list[_Retired] = []

    def retire(self, processes: ContainerProcesses, cgroup: TestCgroup | None) -> None:
        processes.end_namespace()
        self._retired.append(_Retired(processes, cgroup))

    def sweep(self, *, block: bool) -> None:
        still_exiting = []
        for entry in self._retired:
            if not (entry.processes.reap_test(block=block) and entry.processes.reap_init(block=block)):
                still_exiting.append(entry)
                continue
            if entry.cgroup is not None and not _remove(entry.cgroup, block=block):
                still_exiting.append(entry)
        self._retired = still_exiting


def _remove(cgroup: TestCgroup, *, block: bool) -> bool:
    if block:
        cgroup.remove()
        return True
    try:
        cgroup.remove_if_empty()
    except OSError as error:
        if error.errno == errno.EBUSY:  # the last processes are still exiting
            return False
        raise
    return True
