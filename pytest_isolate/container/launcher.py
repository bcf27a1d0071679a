"""The processes of one container.

As root::

    pytest ─┬─ init (PID 1): spawned, not forked (``init_program``)
            └─ test (PID 2): a fork of pytest that builds the container,
                             then runs the test ── whatever the test starts

Fork cost grows with the size of the pytest process, so the test is the
only fork.  The PID namespace is entered by pytest itself, just around the
two process creations: ``unshare(CLONE_NEWPID)`` makes the next children of
the calling thread members of a new namespace, and ``setns`` back to its
own namespace undoes that at once (see ``runtime.Runtime.launch``).

Rootless (pytest is not root), a user namespace must come first, and pytest
cannot enter one itself (it has threads, and it must stay who it is)::

    pytest ── launcher: user + other namespaces ─┬─ init (PID 1), spawned
                                                 └─ test (PID 2), forked

The launcher reports the test's wait status and ends init when the test ends.

* **init** ignores SIGCHLD, so the kernel reaps every orphan reparented to
  it, and waits for end-of-file on a pipe only pytest holds: a tiny static
  program of ours (``init_program``), or a bare interpreter where that
  cannot run (``INIT_FALLBACK``).
  When pytest closes it (the test ended) or dies (even by SIGKILL), init
  exits, and the kernel kills every process left in the namespace -
  daemons that called ``setsid()`` included.  Init is PID 1 so the test is
  not: PID 1 ignores signals it has no handler for, even ``raise(SIGSEGV)``.
* **test** builds the root filesystem, mounts ``/proc`` of its PID
  namespace, sets the hostname, brings up its network, drops privileges,
  then runs pytest's own runtest protocol and sends each report to pytest
  as JSON.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from pytest_isolate.container import init_program, libc, rootfs, sysfiles, userns
from pytest_isolate.errors import ContainerError

if TYPE_CHECKING:
    from pytest_isolate.container.cgroups import TestCgroup
    from pytest_isolate.container.hardening import Hardening, Restriction
    from pytest_isolate.container.mountplan import MountPlan
    from pytest_isolate.container.netsetup import ContainerNetwork
    from pytest_isolate.environment import EnvironmentPlan
    from pytest_isolate.spec import IsolationSpec

INIT_NAME = "pytest-isolate-init"
# Where our own program cannot run (another architecture, a kernel that
# will not exec a memfd), init is the interpreter that runs pytest, with
# nothing imported but this: it ignores SIGCHLD (the kernel then reaps the
# orphans reparented to it), leaves SIGINT to the kernel (which ignores it
# for PID 1), says it runs, and reads until end-of-file (os.read retries
# when a signal interrupts it).  Not the shell: dash catches SIGCHLD to reap
# its own jobs, and the signal of an orphan that exits interrupts its
# `read`, which then ends init, and the test's container with it.
INIT_FALLBACK = (
    "import os, signal\n"
    "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "os.write(1, b'\\n')\n"
    "while os.read(0, 64):\n"
    "    pass\n"
)

# How long a spawned init may take to start (seconds under an emulator).
INIT_START_SECONDS = 60.0

# The OOM killer should pick the test's processes, not init: raising a score
# is always allowed (lowering one needs CAP_SYS_RESOURCE).
TEST_OOM_SCORE = 500


def spawn_init(pipe_read_fd: int, ready_fd: int = -1) -> int:
    """Start init with ``pipe_read_fd`` as its stdin; a vfork+exec, not a fork.

    With ``ready_fd``, init writes a newline there once it runs, and so has
    loaded what it runs from: only then may the root be switched away.
    """
    stdout = ready_fd if ready_fd >= 0 else None
    path, argv = init_command()
    try:
        return _spawn(path, argv, pipe_read_fd, stdout)
    except OSError:
        if path == sys.executable:
            raise
        init_program.refused()  # a kernel or security module that will not exec a memfd
        return _spawn(*init_command(), pipe_read_fd, stdout)


def init_command() -> tuple[str, list[str]]:
    """What to exec as init: our own tiny program where this host runs it, else the interpreter."""
    program = init_program.executable()
    if program is not None:
        return program, [INIT_NAME]
    return sys.executable, [INIT_NAME, "-I", "-S", "-c", INIT_FALLBACK]


def _spawn(path: str, argv: list[str], stdin: int, stdout: int | None) -> int:
    return os.posix_spawn(
        path,
        argv,
        {},
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1) if stdout is not None else (os.POSIX_SPAWN_DUP2, 2, 1),
        ],
    )


def wait_until_running(ready_read: int, seconds: float) -> None:
    """Until init runs (its newline on ``ready_read``), or why it could not; closes ``ready_read``.

    Only then may the root it loaded its libraries from be switched away:
    a root without them (a tiny directory) would leave init dead at its start.
    """
    deadline = time.monotonic() + seconds
    data = b""
    try:
        while len(data) < 4096 and not data.endswith(b"\n"):
            ready, _, _ = select.select([ready_read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise OSError(f"init did not start within {seconds:.0f}s")
            chunk = os.read(ready_read, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(ready_read)
    if data != b"\n":  # a forked init wrote why it failed, or it died
        raise OSError(data.decode(errors="replace").strip() or "init exited at its start")


class Channel(Protocol):
    """The container's line to pytest (``pytest_isolate.channel.ChannelWriter``)."""

    fd: int

    def send(self, kind: str, **fields: Any) -> None: ...

    def try_send(self, kind: str, **fields: Any) -> None: ...


class Capture(Protocol):
    """Where the test's output goes (``pytest_isolate.output.CaptureFiles``)."""

    null_fd: int  # pytest's /dev/null

    def redirect(self) -> None: ...

    def kept_fds(self) -> tuple[int, ...]: ...


@dataclasses.dataclass
class ContainerJob:
    """Everything one container's processes need, prepared by pytest before the fork.

    The sandbox knows nothing of pytest: what runs inside, once the container
    is built and hardened, is ``run_test()`` (pytest's runtest protocol,
    which reports on the same channel, see ``runtime``).
    """

    run_test: Callable[[], None]
    spec: IsolationSpec
    plan: MountPlan
    cgroup: TestCgroup | None
    channel: Channel
    net: ContainerNetwork
    pytest_pid: int
    init_pipe_read: int
    init_pipe_write: int
    close_fds: tuple[int, ...]  # with inherit_fds: what must be closed all the same
    capture: Capture
    test_oom_score: str
    hardening: Hardening
    stage: str  # the host directory the container's tmpfs is mounted on
    keep_layers: bool = False  # hold the writable layers open for --isolate-diff
    rootless: bool = False
    rlimits: tuple[tuple[int, int], ...] = ()  # the fallback when cgroups cannot limit
    user_sync: tuple[int, int] | None = None  # user=True as root: (ready pipe write end, go pipe read end)
    storage: str = "overlay"  # the storage driver: overlay, fuse or copy
    status_fd: int = -1  # rootless: the launcher reports the test's wait status here, apart from the test
    inherit_fds: bool = False  # keep pytest's descriptors (trusted tests only)
    environment: EnvironmentPlan | None = None  # env=: the variables to drop (None: keep all)
    # A container built ahead (``preparer``): its namespaces, (descriptor, CLONE_NEW*), to join.
    joined: tuple[tuple[int, int], ...] = ()
    # pytest's descriptors, listed in pytest just before the fork (``libc.open_descriptors``):
    # cheaper there than in the child.  None: the child lists them.
    pytest_fds: tuple[int, ...] | None = None
    restriction: Restriction = dataclasses.field(init=False)  # what the test gives up, made in pytest

    def __post_init__(self) -> None:
        self.restriction = self.hardening.restriction(self.spec.caps)


def run_test_process(job: ContainerJob) -> NoReturn:
    """As root: the forked test process (pytest already made the PID namespace)."""
    with _reported(job.channel) as step:
        _start_as_root(job, step)
        step("create the container's namespaces")
        libc.unshare(_namespace_flags(job))
        job.net.after_unshare()
        stage_fd = _build_container(job, step)
    _run_test(job, stage_fd)


def run_prepared_test_process(job: ContainerJob) -> NoReturn:
    """As root: the forked test process, into a container the preparer built ahead."""
    with _reported(job.channel) as step:
        _start_as_root(job, step)
        step("enter the container's namespaces")
        cwd = os.getcwd()
        for fd, kind in job.joined:  # the mount namespace last: it moves us to its root
            libc.setns(fd, kind)
            os.close(fd)
        if job.cgroup is not None:
            libc.unshare(libc.CLONE_NEWCGROUP)
        _enter_working_directory(cwd)
        _settle(job, step)
    _run_test(job, None)


def _start_as_root(job: ContainerJob, step) -> None:  # type: ignore[no-untyped-def]
    step("start the container")
    # pytest is outside our PID namespace: getppid() shows it as 0.
    _leave_pytest(job, parent=0)
    step("join the test's cgroup")
    if job.cgroup is not None:
        job.cgroup.attach()


def run_rootless_launcher(job: ContainerJob) -> NoReturn:
    """Rootless: the forked launcher makes the namespaces, init and the test."""
    with _reported(job.channel) as step:
        step("start the container")
        _leave_pytest(job, parent=job.pytest_pid)
        step("join the test's cgroup")
        if job.cgroup is not None:  # a delegated cgroup: writable by our user, outside the user namespace
            job.cgroup.attach()
        step("create the container's user namespace")
        if job.user_sync is not None:
            userns.enter_mapped_by_parent(*job.user_sync)
        else:
            userns.enter_as_root()
        step("create the container's namespaces")
        libc.unshare(_namespace_flags(job) | libc.CLONE_NEWPID)
        job.net.after_unshare()
        ready_read, ready_write = os.pipe()
        init_pid = spawn_init(job.init_pipe_read, ready_write)
        os.close(ready_write)
        wait_until_running(ready_read, INIT_START_SECONDS)  # before the test switches the root away
        test_pid = os.fork()
        if test_pid == 0:
            with _reported(job.channel) as step:
                libc.set_parent_death_signal(signal.SIGKILL)
                # The launcher's own descriptors: the test may not report its status.
                for fd in (job.status_fd, job.init_pipe_read, *(job.user_sync or ())):
                    _close_quietly(fd)
                init_program.close()
                stage_fd = _build_container(job, step)
            _run_test(job, stage_fd)
        _, status = os.waitpid(test_pid, 0)
        # The test ended: so does its namespace (pytest may not have closed
        # init's pipe yet, for a test that crashed).
        os.kill(init_pid, signal.SIGKILL)
        os.waitpid(init_pid, 0)
        try:
            os.write(job.status_fd, b"%d\n" % status)
        except OSError:
            pass  # pytest has what it needs and closed its end
    os._exit(0)


def _namespace_flags(job: ContainerJob) -> int:
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
    if job.cgroup is not None:
        flags |= libc.CLONE_NEWCGROUP
    if job.spec.net.own_namespace:
        flags |= libc.CLONE_NEWNET
    return flags


def _leave_pytest(job: ContainerJob, *, parent: int) -> None:
    """Drop what belongs to pytest, and die with it."""
    # Output goes to this test's own memory files, inside its limits.
    job.capture.redirect()
    # Only pytest may hold init's pipe, or init would outlive pytest.
    os.close(job.init_pipe_write)
    if job.inherit_fds:
        for fd in job.close_fds:
            _blank_quietly(fd, job.capture.null_fd)
    else:
        # Nothing of pytest's but what the container needs: an inherited
        # socket ignores the network namespace, an inherited file the
        # writable layer (pytest's --log-file, a session fixture's files).
        # Blanked, not closed, for the Python objects that still hold them.
        libc.blank_all_except(_descriptors_needed(job), job.capture.null_fd, listed=job.pytest_fds)
    # A session of its own: no controlling terminal, so no TIOCSTI into the
    # terminal pytest runs in, and /dev/tty refuses to open.
    os.setsid()
    # prctl(2): fires when the *thread* that forked us exits; pytest forks
    # from the thread that runs tests, which outlives the test.
    libc.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # pytest died before prctl took effect
        os._exit(1)


def _descriptors_needed(job: ContainerJob) -> tuple[int, ...]:
    needed = [*job.capture.kept_fds(), job.channel.fd, job.status_fd, *job.net.container_fds()]
    needed += [fd for fd, _ in job.joined]
    if job.rootless:  # the launcher starts init and may wait for its user map
        needed += [job.init_pipe_read, *(job.user_sync or ())]
    return tuple(needed)


def _blank_quietly(fd: int, blank: int) -> None:
    if fd >= 0:
        try:
            os.dup2(blank, fd, inheritable=False)
        except OSError:
            pass


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _build_container(job: ContainerJob, step) -> int | None:  # type: ignore[no-untyped-def]
    """In the test process, inside the namespaces: the container itself."""
    spec = job.spec
    cwd = os.getcwd()
    step("build the container's filesystem")
    stage_fd = rootfs.build_root(
        job.plan, job.stage, spec.disk, keep_stage=job.keep_layers, rootless=job.rootless, storage_driver=job.storage
    )
    _enter_working_directory(cwd)
    step("set up the container's hostname and network")
    sysfiles.set_hostname(spec.hostname)
    if spec.net.own_namespace:
        job.net.configure_inside()
    step("drop the test's privileges")
    job.hardening.mask()
    _settle(job, step)
    return stage_fd


def _enter_working_directory(cwd: str) -> None:
    try:
        os.chdir(cwd)
    except PermissionError:
        raise ContainerError(
            "enter the working directory",
            f"{cwd} is not reachable by the container's user (uid {userns.NOBODY} outside, with user=True)",
            "run pytest from a directory every user may enter, or drop user=True",
        ) from None


def _settle(job: ContainerJob, step) -> None:  # type: ignore[no-untyped-def]
    """The test process's own part, once the container is built: limits, then privileges dropped."""
    _raise_oom_score(job.test_oom_score)
    for limit, value in job.rlimits:
        resource.setrlimit(limit, (value, value))
    step("drop the test's privileges")
    job.restriction.apply()
    if job.environment is not None:
        job.environment.apply()


class _reported:
    """Turn any failure of the container machinery into an "error" message, then exit."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.stage = "start the container"

    def __enter__(self):  # type: ignore[no-untyped-def]
        def step(stage: str) -> None:
            self.stage = stage

        return step

    def __exit__(self, kind, error, _traceback) -> None:  # type: ignore[no-untyped-def]
        if error is None:
            return
        if isinstance(error, ContainerError):
            self.channel.try_send("error", stage=error.stage, reason=error.reason, advice=error.advice)
        elif isinstance(error, OSError):
            reason = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
            self.channel.try_send("error", stage=self.stage, reason=reason, advice=_advice(error))
        else:
            text = "".join(traceback.format_exception(kind, error, _traceback))
            self.channel.try_send("error", stage=self.stage, reason=text, advice="")
        os._exit(1)


def _raise_oom_score(inherited: str) -> None:
    try:
        sysfiles.write("/proc/self/oom_score_adj", str(max(TEST_OOM_SCORE, int(inherited or 0))))
    except PermissionError:
        pass  # user=True: the file is root's outside, and we are nobody now; a preference, not a limit


def _advice(error: OSError) -> str:
    if error.errno in (1, 13):  # EPERM, EACCES
        # Root may be refused too (a CI container's seccomp profile or missing
        # capabilities): info names what is missing and the flags.
        return "the kernel refused it: `pytest-isolate info` shows what this host or container refuses, and the fix"
    return ""


def _run_test(job: ContainerJob, stage_fd: int | None) -> NoReturn:
    channel = job.channel
    code = 0
    try:
        # The last word of the machinery: from here on the test's code runs
        # in this process, and pytest trusts nothing it says about the container.
        if stage_fd is None:
            channel.send("ready", stage_fd=None)
        else:
            stage = os.fstat(stage_fd)
            channel.send("ready", stage_fd=stage_fd, stage_id=[stage.st_dev, stage.st_ino])
        job.run_test()
        _flush_std_streams()
        # Everything is reported: pytest may end the container from here on.
        channel.send("done", cpu_seconds=_cpu_seconds(), peak_rss=_peak_rss())
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


def _peak_rss() -> int:
    """The largest resident set of this process or a child it waited for, in bytes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return max(own.ru_maxrss, children.ru_maxrss) * 1024


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
