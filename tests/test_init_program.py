"""The containers' init: our own tiny program where the host runs it, the shell where not."""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from capabilities import has
from conftest import CONTAINER
from helpers import run

from pytest_isolate.container import init_program, launcher, libc

SIGCHLD_BIT = 1 << (signal.SIGCHLD - 1)


def _status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        return next(line.split(":", 1)[1].strip() for line in handle if line.startswith(name + ":"))


def _spawned_init() -> tuple[int, int, int]:
    """init started as the launcher starts it: (pid, its pipe's write end, the ready pipe's read end)."""
    pipe_read, pipe_write = os.pipe()
    ready_read, ready_write = os.pipe()
    try:
        pid = launcher.spawn_init(pipe_read, ready_write)
    finally:
        os.close(pipe_read)
        os.close(ready_write)
    return pid, pipe_write, ready_read


@pytest.fixture
def fresh_init_program():
    """This process's init program made anew, and made anew again after the test."""
    init_program.close()
    init_program._refused = False
    yield
    init_program.close()
    init_program._refused = False


@pytest.mark.requires("memfd_exec")
def test_init_is_our_program_and_waits_for_end_of_file_with_sigchld_ignored(fresh_init_program) -> None:
    pid, pipe_write, ready_read = _spawned_init()
    try:
        assert os.read(ready_read, 16) == b"\n"  # it runs
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            assert handle.read() == b"pytest-isolate-init\0"
        with open(f"/proc/{pid}/comm", encoding="ascii") as handle:
            assert handle.read() == "isolate-init\n"
        assert os.readlink(f"/proc/{pid}/exe") == "/memfd:pytest-isolate-init (deleted)"
        assert int(_status_field(pid, "SigIgn"), 16) & SIGCHLD_BIT  # the kernel reaps its orphans
        os.write(pipe_write, b"a line, and more\n" * 10)  # only end-of-file ends it
        time.sleep(0.1)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    finally:
        os.close(pipe_write)
        os.close(ready_read)
    assert os.waitpid(pid, 0) == (pid, 0)  # exit status 0


@pytest.mark.requires("memfd_exec")
def test_the_program_cannot_be_changed_by_whoever_holds_it(fresh_init_program) -> None:
    path = init_program.executable()
    assert path is not None
    fd = int(path.rsplit("/", 1)[1])
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"\x90", 200)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 0)
    with open(path, "rb") as handle:
        machine, code = init_program._PROGRAMS[os.uname().machine]
        assert handle.read() == init_program.elf_image(machine, code)


def test_a_host_that_will_not_run_the_program_gets_the_interpreter_as_init(fresh_init_program, tmp_path) -> None:
    # A file the kernel refuses to exec (EACCES), as where memfds may not be run.
    data = tmp_path / "not-a-program"
    data.write_bytes(b"not a program")
    fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
    init_program._created = (fd, (os.fstat(fd).st_dev, os.fstat(fd).st_ino))
    pid, pipe_write, ready_read = _spawned_init()
    try:
        assert os.read(ready_read, 16) == b"\n"
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            assert handle.read().split(b"\0")[:4] == [b"pytest-isolate-init", b"-I", b"-S", b"-c"]
        assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(sys.executable)
        assert int(_status_field(pid, "SigIgn"), 16) & SIGCHLD_BIT
        os.write(pipe_write, b"a line\n")
        time.sleep(0.1)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
        assert init_program.executable() is None  # the interpreter, from now on, in this process
    finally:
        os.close(pipe_write)
        os.close(ready_read)
    assert os.waitpid(pid, 0) == (pid, 0)


@pytest.mark.requires("root")
@pytest.mark.parametrize("program", ["ours", "interpreter"])
def test_init_outlives_the_orphans_it_reaps(fresh_init_program, program: str) -> None:
    """As PID 1: orphans that exit are reaped at once, and init ends only at end-of-file.

    (The shell init of earlier versions ended at the first orphan's exit:
    dash's ``read`` returned when the SIGCHLD interrupted it, and the
    kernel killed the test.)
    """
    if program == "interpreter":
        init_program._refused = True
    elif init_program.executable() is None:
        pytest.skip("this host does not run our init program (the memfd_exec capability)")
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    pipe_read, pipe_write = os.pipe()
    ready_read, ready_write = os.pipe()
    libc.unshare(libc.CLONE_NEWPID)  # our next children: a new PID namespace, init first
    try:
        init = launcher.spawn_init(pipe_read, ready_write)
        assert os.read(ready_read, 16) == b"\n"
        test = os.fork()
        if test == 0:  # PID 2: orphans whose exit init sees, then how many are left unreaped
            try:
                # A /proc of this PID namespace alone, in a mount namespace of its own.
                libc.unshare(libc.CLONE_NEWNS)
                libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
                libc.mount("proc", "/proc", "proc", 0)
                os._exit(len(_left_of(_leave_orphans())))
            finally:
                os._exit(100)
    finally:
        libc.setns(own, libc.CLONE_NEWPID)
        for fd in (own, pipe_read, ready_write, ready_read):
            os.close(fd)
    try:
        assert os.waitpid(test, 0) == (test, 0)  # not killed, and every orphan reaped
        assert os.waitpid(init, os.WNOHANG) == (0, 0)  # init lives on
    finally:
        os.close(pipe_write)
    assert os.waitpid(init, 0) == (init, 0)


def _leave_orphans() -> list[int]:
    """Five grandchildren that exit after their parent did, reparented to init by then; their pids."""
    orphans = []
    for _ in range(5):
        pid_read, pid_write = os.pipe()
        child = os.fork()
        if child == 0:
            grandchild = os.fork()
            if grandchild == 0:
                time.sleep(0.05)
            else:
                os.write(pid_write, str(grandchild).encode())
            os._exit(0)
        os.close(pid_write)
        os.waitpid(child, 0)
        orphans.append(int(os.read(pid_read, 32)))
        os.close(pid_read)
    return orphans


def _left_of(pids: list[int], seconds: float = 30.0) -> list[str]:
    """Those of ``pids`` still in /proc, alive or as zombies, once they had ``seconds`` to go (slow under TCG)."""
    deadline = time.monotonic() + seconds
    while True:
        left = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                    left.append(f"{pid} {handle.read().rsplit(')', 1)[1].split()[0]}")
            except (FileNotFoundError, ProcessLookupError):  # gone before, or while, /proc was read
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


@pytest.mark.requires("qemu_aarch64")
def test_the_aarch64_program_says_it_runs_and_exits_at_end_of_file(tmp_path) -> None:
    program = tmp_path / "init-aarch64"
    program.write_bytes(init_program.elf_image(*init_program._PROGRAMS["aarch64"]))
    program.chmod(0o500)
    emulator = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    assert emulator is not None
    done = subprocess.run(
        [emulator, str(program)], input=b"a line\nanother\n", capture_output=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"\n", b"")


# Harmless anywhere (five bounded forks): no guard needed.
ORPHANS = (
    "import os, time\nfrom pytest_isolate import isolated\n\n"
    + inspect.getsource(_leave_orphans)
    + inspect.getsource(_left_of)
    + """
@isolated
def test_leaves_orphans():
    assert os.getpid() == 2  # in a container's PID namespace
    orphans = _leave_orphans()
    with open("/proc/1/comm") as handle:
        print("init:", handle.read().strip())
    assert _left_of(orphans) == []  # each one reaped, none a zombie
"""
)


def _orphans_are_reaped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(ORPHANS)
    result = run(pytester, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*init: isolate-init" if has("memfd_exec") else "*init: python*"])


@pytest.mark.requires(*CONTAINER)
def test_orphans_of_a_test_are_reaped_by_its_init(pytester: pytest.Pytester, host_state) -> None:
    _orphans_are_reaped(pytester)


@pytest.mark.requires("rootless", "overlay", "netns")
def test_orphans_of_a_rootless_test_are_reaped_by_its_init(pytester: pytest.Pytester) -> None:
    _orphans_are_reaped(pytester)
