"""Whole containers built ahead of their test, by a small process of their own.

Building a container - its namespaces, the root's mounts, ``/proc``, the
hostname, loopback, the masks over kernel paths - does not depend on which
test will use it, only on its *blueprint*.  Done in the test's own process it
costs 5-7 ms per test (19 ms with 60 host mounts), and every page of pytest's
heap that the Python code touches on the way is copied.  So, as root, a
*preparer* builds the next containers while the current test runs::

    pytest ── preparer: a fresh interpreter (python -I -S), started with the
              │         session's first isolated test, a few MB, knowing
              │         nothing of pytest
              └── init: PID 1 of a container built ahead, waiting
                        for end-of-file on its pipe (``launcher.spawn_init``)

For each container the preparer moves itself into new mount, UTS, IPC and
network namespaces, builds the root there (``rootfs.build_root``), sets the
hostname, brings up loopback, starts init in a new PID namespace and masks
the kernel paths, then goes back to its own namespaces (``_build``).  It
hands pytest descriptors of the five namespaces and the write end of init's
pipe, and closes its own copy: as with every container, only pytest holds
it, and when pytest lets go (or dies, even by SIGKILL) init exits and the
kernel ends the namespace.  The test's path is a fork into that PID
namespace, the cgroup, four ``setns`` and the dropping of privileges
(``launcher.run_prepared_test_process``).

Each prepared container is used by exactly one test, or thrown away: the
prediction is that the next tests' blueprint equals the current one's,
which holds in nearly every suite.  Two are kept in the making (``AHEAD``),
so that a build that takes longer than one short test is ready in time.  A
preparer that fails or stalls costs only speed: the test builds its own
container, as without one, and reports what fails.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys

from pytest_isolate.container import hardening, init_program, libc, network, rootfs, sysfiles
from pytest_isolate.container.launcher import init_command, spawn_init, wait_until_running
from pytest_isolate.container.mountplan import MountOp, MountPlan
from pytest_isolate.container.prepared import PreparedPidNamespace, pending
from pytest_isolate.errors import ContainerError

# A blueprint (the mount plan, mostly) travels as one datagram: a plan that
# does not fit (a hook's huge injected file) is simply not prepared.
MAX_BLUEPRINT_BYTES = 128 << 10  # under a Unix socket's default send buffer
MAX_REPLY_BYTES = 64 << 10
# How long a container may take to build before the preparer gives up on it
# (seconds under an emulator; milliseconds here).
BUILD_SECONDS = 60.0
# How long pytest waits, at the next test, for a container still being built.
TAKE_SECONDS = 60.0
# Containers built ahead: the next test's, and the one after it, so that a
# build that takes longer than one short test is still ready in time.
AHEAD = 2
# After this many failed preparations in a row, stop trying for the session.
FAILURES_BEFORE_GIVING_UP = 3
# Its name in `ps` and `top`, beside its containers' "isolate-init": not one
# more "python3" that a user (or a profile) cannot tell from pytest's.
PROCESS_NAME = "isolate-prepare"

NAMESPACE_FLAGS = (
    ("pid", libc.CLONE_NEWPID),
    ("uts", libc.CLONE_NEWUTS),
    ("ipc", libc.CLONE_NEWIPC),
    ("net", libc.CLONE_NEWNET),
    ("mnt", libc.CLONE_NEWNS),  # last: setns into it changes the root and the working directory
)


@dataclasses.dataclass(frozen=True)
class Blueprint:
    """What a container is built from: equal blueprints, identical containers."""

    ops: tuple[MountOp, ...]
    stage: str
    disk: int
    hostname: str
    own_network: bool
    masked_files: tuple[str, ...]
    masked_directories: tuple[str, ...]
    read_only: tuple[str, ...]

    def encode(self) -> bytes:
        # By hand, not dataclasses.asdict: this runs once per test, in pytest.
        ops = [[op.kind, op.target, op.source, op.readonly, op.size, op.layers] for op in self.ops]
        fields = [ops, self.stage, self.disk, self.hostname, self.own_network]
        return json.dumps([*fields, self.masked_files, self.masked_directories, self.read_only]).encode()

    @classmethod
    def decode(cls, data: bytes) -> Blueprint:
        ops, stage, disk, hostname, own_network, masked_files, masked_directories, read_only = json.loads(data)
        return cls(
            ops=tuple(MountOp(kind, target, source, readonly, size, tuple(layers)) for kind, target, source, readonly, size, layers in ops),
            stage=stage,
            disk=disk,
            hostname=hostname,
            own_network=own_network,
            masked_files=tuple(masked_files),
            masked_directories=tuple(masked_directories),
            read_only=tuple(read_only),
        )


class Preparer:
    """pytest's side: asks for the next container, and takes it at the next test."""

    def __init__(self, *, forked_init: bool = False) -> None:
        self.forked_init = forked_init  # the way kernels before 6.15 take, wherever this one runs (tests)
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._awaited: collections.deque[Blueprint] = collections.deque()  # asked for, oldest first
        self._failures = 0
        self._encoded: tuple[Blueprint, bytes] | None = None
        self.disabled = False
        self.last_error: str | None = None  # the preparer's word on the last container it could not build

    def start(self) -> None:
        """Start the process now: its start-up (~0.1 s) then overlaps the first tests instead of delaying a later one."""
        if self.disabled:
            return
        try:
            self._start()
        except OSError:
            self._give_up()

    def request(self, blueprint: Blueprint) -> None:
        """Have ``AHEAD`` containers built for ``blueprint`` while the current test runs.

        Those asked for another blueprint stay in the queue until they are
        built and thrown away (``take``), at most ``AHEAD`` of them.
        """
        while list(self._awaited).count(blueprint) < AHEAD and len(self._awaited) < 2 * AHEAD:
            if self.disabled or not self._send(blueprint):
                return

    def _send(self, blueprint: Blueprint) -> bool:
        if self._encoded is None or self._encoded[0] != blueprint:  # the same as last time, nearly always
            self._encoded = (blueprint, blueprint.encode())
        data = self._encoded[1]
        if len(data) > MAX_BLUEPRINT_BYTES:
            return False
        try:
            self._start()
            assert self._socket is not None
            self._socket.send(data)
        except OSError:
            self._give_up()
            return False
        self._awaited.append(blueprint)
        return True

    def take(self, blueprint: Blueprint | None) -> PreparedPidNamespace | None:
        """A container built for ``blueprint``; None: the test builds its own.

        The preparer builds in order: containers built to another blueprint
        (a prediction that missed) are thrown away as they come, and one of
        them still being built is not waited for (the test builds its own
        instead); the next one built for this blueprint is waited for.
        """
        while self._awaited:
            wanted = self._awaited[0] == blueprint
            if not wanted and not self._reply_ready():
                return None
            self._awaited.popleft()
            prepared = self._receive()
            if prepared is None or wanted:
                return prepared
            prepared.discard()
        return None

    def _reply_ready(self) -> bool:
        assert self._socket is not None
        return bool(select.select([self._socket], [], [], 0)[0])

    def close(self) -> None:
        """At the session's end: throw away what was asked for, and end the preparer."""
        while self._awaited and self._socket is not None:
            self._awaited.popleft()
            prepared = self._receive()
            if prepared is not None:
                prepared.discard()
        self._stop()

    # ------------------------------------------------------------------

    def _start(self) -> None:
        if self._process is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", _MAIN, str(theirs.fileno()), str(os.getpid()), str(int(self.forked_init))],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        finally:
            theirs.close()
        self._socket = ours
        pending.add((ours.fileno(),))  # no test, fixture child or init may hold it

    def _receive(self) -> PreparedPidNamespace | None:
        assert self._socket is not None
        try:
            ready, _, _ = select.select([self._socket], [], [], TAKE_SECONDS)
            if not ready:
                raise TimeoutError
            message, fds, _, _ = socket.recv_fds(self._socket, MAX_REPLY_BYTES, len(NAMESPACE_FLAGS) + 1)
        except OSError:
            self._give_up()
            return None
        if not message and not fds:  # end-of-file: the preparer died
            self._give_up()
            return None
        prepared = _prepared_from(message, fds)
        if prepared is None:
            self.last_error = message[:MAX_REPLY_BYTES].decode(errors="replace")  # for whoever debugs it
            self._failures += 1
            if self._failures >= FAILURES_BEFORE_GIVING_UP:
                self._give_up()
            return None
        self._failures = 0
        pending.add(prepared.descriptors())
        return prepared

    def _give_up(self) -> None:
        """The preparer failed: the session's tests build their own containers."""
        self.disabled = True
        self._awaited.clear()
        self._stop()

    def _stop(self) -> None:
        if self._socket is not None:
            pending.discard((self._socket.fileno(),))
            self._socket.close()
            self._socket = None
        if self._process is not None:
            # Killed, not waited for: it may still be starting (a short
            # session), and nothing it holds outlives it (a container being
            # built dies with its init's pipe, its mounts with its namespaces).
            self._process.kill()
            self._process.wait()
            self._process = None


def _prepared_from(message: bytes, fds: list[int]) -> PreparedPidNamespace | None:
    """The preparer's reply: our own process's word, checked all the same."""
    try:
        reply = json.loads(message)
        init_pid = int(reply["init_pid"])
        kinds = [dict(NAMESPACE_FLAGS)[name] for name in reply["namespaces"]]
    except (ValueError, KeyError, TypeError):
        reply, init_pid, kinds = None, 0, []
    if reply is None or init_pid <= 0 or len(fds) != len(kinds) + 1 or kinds[:1] != [libc.CLONE_NEWPID]:
        for fd in fds:
            os.close(fd)
        return None
    *namespace_fds, init_write = fds
    return PreparedPidNamespace(
        init_pid=init_pid,
        init_write=init_write,
        namespace_fd=namespace_fds[0],
        joined=tuple(zip(namespace_fds[1:], kinds[1:])),
        init_is_ours=False,
    )


_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preparer_main.py")


# ---------------------------------------------------------------- the preparer


def serve(socket_fd: int, pytest_pid: int, *, forked_init: bool = False) -> None:
    """The preparer's loop: one blueprint in, one container's descriptors out, until pytest goes."""
    global _spawn_init_works
    if forked_init:
        _spawn_init_works = False
    libc.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != pytest_pid:
        os._exit(0)
    libc.set_process_name(PROCESS_NAME)
    # Each init is our child until its container ends: the kernel reaps them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    os.set_inheritable(socket_fd, False)
    channel = socket.socket(fileno=socket_fd)
    own = {kind: os.open(f"/proc/self/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name, kind in NAMESPACE_FLAGS}
    last: tuple[bytes, Blueprint] | None = None  # the same blueprint, nearly always: decoded once
    while True:
        try:
            data = channel.recv(MAX_BLUEPRINT_BYTES)
        except OSError:
            return
        if not data:
            return
        if last is None or last[0] != data:
            last = (data, Blueprint.decode(data))
        reply, fds = _build(last[1], own)
        try:
            socket.send_fds(channel, [reply], fds)
        except OSError:
            return
        finally:
            for fd in fds:
                os.close(fd)


def _build(blueprint: Blueprint, own: dict[int, int]) -> tuple[bytes, list[int]]:
    """Build the container in this process's own new namespaces, then hand over its init's.

    The preparer builds the root itself, not in a fork of itself: a child
    running the mount plan's Python would copy every page it touched, and
    tear them all down again at its exec.  init is started just before the
    switch of root (an image or a tiny root may have no program to run),
    and ``/proc`` of its PID namespace mounted:
    by the preparer where the kernel takes ``pidns=`` (Linux 6.15), else by
    init itself, forked, before it execs.
    """
    global _spawn_init_works
    life_read, life_write = os.pipe()
    init = _Init(life_read, own[libc.CLONE_NEWPID], spawn=_spawn_init_works is not False)
    try:
        try:
            flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
            libc.unshare(flags | (libc.CLONE_NEWNET if blueprint.own_network else 0))
            proc = init.spawn_with_proc if init.spawn else init.fork_with_proc
            rootfs.build_root(MountPlan(list(blueprint.ops)), blueprint.stage, blueprint.disk, proc=proc)
            sysfiles.set_hostname(blueprint.hostname)
            if blueprint.own_network:
                network.bring_up_loopback()
            hardening.mask_kernel_paths(blueprint.masked_files, blueprint.masked_directories, blueprint.read_only)
        finally:
            if init.pid != 0:  # not in a forked init
                _return_to(own)
            os.close(life_read)
    except _NoPidnsOption:
        _spawn_init_works = False
        init.kill()
        os.close(life_write)
        return _build(blueprint, own)
    except (ContainerError, OSError) as error:
        init.kill()
        os.close(life_write)
        reason = f"{error.stage}: {error.reason}" if isinstance(error, ContainerError) else str(error)
        return json.dumps({"error": reason}).encode(), []
    fds: list[int] = []
    names = [name for name, _ in NAMESPACE_FLAGS if name != "net" or blueprint.own_network]
    try:
        fds = [os.open(f"/proc/{init.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name in names]
    except OSError as error:
        for fd in (*fds, life_write):
            os.close(fd)
        init.kill()
        return json.dumps({"error": str(error)}).encode(), []
    return json.dumps({"init_pid": init.pid, "namespaces": names}).encode(), [*fds, life_write]


# Whether proc takes pidns= here (None: not tried yet).
_spawn_init_works: bool | None = None


class _NoPidnsOption(Exception):
    """This kernel mounts proc only for the caller's own PID namespace."""


class _Init:
    """PID 1 of the container being built: started, with its /proc, while the host's root is in view."""

    def __init__(self, life_read: int, own_pid_namespace: int, *, spawn: bool) -> None:
        self.life_read = life_read
        self.own_pid_namespace = own_pid_namespace
        self.spawn = spawn
        self.pid = -1

    def spawn_with_proc(self, target: str) -> None:
        """init spawned (no fork), and its /proc mounted here, for its PID namespace."""
        ready_read, ready_write = os.pipe()
        libc.unshare(libc.CLONE_NEWPID)  # our next child is PID 1 of a new namespace
        try:
            self.pid = spawn_init(self.life_read, ready_write)
        finally:
            libc.setns(self.own_pid_namespace, libc.CLONE_NEWPID)
            os.close(ready_write)
        try:
            os.makedirs(target, exist_ok=True)
            libc.mount("proc", target, "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, f"pidns=/proc/{self.pid}/ns/pid")
        except OSError as error:
            os.close(ready_read)
            if error.errno == errno.EINVAL:
                raise _NoPidnsOption from None
            raise
        wait_until_running(ready_read, BUILD_SECONDS)

    def fork_with_proc(self, target: str) -> None:
        """init forked, to mount its /proc itself before it execs."""
        init_program.executable()  # made here, once: each forked init execs this copy
        ready_read, ready_write = os.pipe()
        libc.unshare(libc.CLONE_NEWPID)
        try:
            self.pid = os.fork()
            if self.pid == 0:
                _become_init(target, self.life_read, ready_write)
        finally:
            if self.pid != 0:
                libc.setns(self.own_pid_namespace, libc.CLONE_NEWPID)
                os.close(ready_write)
        wait_until_running(ready_read, BUILD_SECONDS)

    def kill(self) -> None:
        if self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _return_to(own: dict[int, int]) -> None:
    """Back to the preparer's own namespaces (the mount namespace resets root and working directory)."""
    try:
        for kind, fd in own.items():
            libc.setns(fd, kind)
    except OSError:
        # A preparer stuck in a container's namespaces must build nothing
        # more: pytest sees its end, and the tests build their own.
        os._exit(1)


def _become_init(proc: str, life_read: int, ready_write: int) -> None:
    """A forked init: the /proc of its PID namespace, then the program that waits for pytest to let go."""
    try:
        rootfs.mount_proc(proc)
        os.dup2(life_read, 0)
        os.dup2(ready_write, 1)  # init says it runs there
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        path, argv = init_command()
        try:
            os.execv(path, argv)
        except OSError:
            init_program.refused()
            os.execv(*init_command())
    except BaseException as error:
        try:
            os.write(ready_write, f" {type(error).__name__}: {error}".encode())
        finally:
            os._exit(1)
    finally:
        os._exit(1)
