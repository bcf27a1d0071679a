"""What the kernel lets this process do, asked once per session.

Inside a CI container (a GitLab docker executor, a GitHub Actions
``container:`` job, a Kubernetes pod) pytest is usually root *without*
``CAP_SYS_ADMIN``, under the engine's seccomp filter, with parts of
``/proc`` masked and ``/sys/fs/cgroup`` read-only.  ``euid == 0`` says
nothing there; so we read the facts (effective capabilities, the seccomp
mode, the masks, cgroup writability) and, for the two ways a container can
be built, *try* the steps in a throw-away child and keep the first refusal:

* the **root route**: namespaces made with our own ``CAP_SYS_ADMIN``;
* the **user-namespace route** (what rootless containers and bubblewrap do):
  a user namespace first, in which we are root of what we create next.

A trial is a fork, a handful of syscalls and an exit (a few milliseconds);
its mounts live in the child's private mount namespace and die with it.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os

from pytest_isolate.container.mountinfo import MountEntry, read_mounts

ROOT_ROUTE = "root"
USERNS_ROUTE = "user namespace"

# The steps a trial takes, in the order a container takes them.
STEP_USERNS = "create a user namespace"
STEP_UNSHARE = "create the mount, PID, UTS, IPC and network namespaces"
STEP_MOUNT = "mount a tmpfs"
STEP_LOOPBACK = "bring up loopback in the new network namespace"
STEP_PROC = "mount a fresh /proc"
STEP_HOSTNAME = "set the hostname"
STEP_PIVOT = "pivot_root into the new root"
NOT_TRIED = "not tried"

SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One route tried in a child: the step it failed at (None: it works) and the errno."""

    route: str
    failed_step: str | None = None
    error: int = 0

    @property
    def works(self) -> bool:
        return self.failed_step is None

    def describe(self) -> str:
        if self.works:
            return "works"
        if self.failed_step == NOT_TRIED:
            return "not tried (the root route works)"
        return f"refused at '{self.failed_step}' ({errno.errorcode.get(self.error, self.error)}: {os.strerror(self.error)})"


@dataclasses.dataclass(frozen=True)
class Confinement:
    """The facts, read from /proc and the mount table, plus the two trials."""

    euid: int
    capabilities: frozenset[str]  # effective
    seccomp: int | None  # 0 disabled, 1 strict, 2 filter; None: the kernel does not say
    masked_proc: tuple[str, ...]  # mounts on top of /proc's entries (the engine's masks)
    cgroup_read_only: bool  # /sys/fs/cgroup (or the hierarchy we would use) is mounted read-only
    proc_sys_read_only: bool  # engines mount /proc/sys read-only: a veth link's forwarding cannot be switched off
    apparmor: str | None  # the AppArmor profile we run under, None when unconfined or absent
    root_route: Trial
    userns_route: Trial

    @property
    def route(self) -> str | None:
        """The route containers take here: root's when it works, else the user namespace's."""
        if self.root_route.works:
            return ROOT_ROUTE
        if self.userns_route.works:
            return USERNS_ROUTE
        return None

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def plainly_privileged(self) -> bool:
        """Root with every capability we use and no seccomp filter: nothing to try."""
        return _plainly_privileged(self.euid, self.capabilities, self.seccomp)


def explain(trial: Trial, found: Confinement) -> str:
    """A trial's refusal and its likely cause, from the facts (never "needs root" to root)."""
    if trial.works or trial.failed_step == NOT_TRIED:
        return trial.describe()
    cause = ""
    refused = trial.error in (errno.EPERM, errno.EACCES)
    filtered = found.seccomp == 2
    if refused and trial.failed_step == STEP_USERNS:
        cause = (
            "the seccomp filter refuses unshare(CLONE_NEWUSER)"
            if filtered
            else "user namespaces are disabled or restricted here (user.max_user_namespaces, "
            "kernel.apparmor_restrict_unprivileged_userns)"
        )
    elif refused and trial.failed_step == STEP_UNSHARE:
        if trial.route == ROOT_ROUTE and not found.has("SYS_ADMIN"):
            cause = "CAP_SYS_ADMIN is missing"
        elif filtered:
            cause = "the seccomp filter refuses unshare"
    elif refused and trial.failed_step == STEP_HOSTNAME and filtered:
        cause = "the seccomp filter refuses sethostname, and /proc/sys/kernel/hostname may not be written"
    elif refused and trial.failed_step == STEP_LOOPBACK:
        cause = "CAP_NET_ADMIN is missing"
    elif refused and trial.failed_step == STEP_PROC:
        if found.masked_proc:
            cause = (
                f"the engine masks /proc ({len(found.masked_proc)} mounts over its entries, "
                f"e.g. {found.masked_proc[0]}), and the kernel mounts a fresh /proc in a user namespace "
                "only where /proc is fully visible"
            )
    elif refused and trial.failed_step in (STEP_PIVOT, STEP_MOUNT):
        if filtered:
            cause = f"the seccomp filter refuses {'pivot_root' if trial.failed_step == STEP_PIVOT else 'mount'}"
        elif found.apparmor:
            cause = f"the AppArmor profile {found.apparmor} denies it"
    return trial.describe() + (f": {cause}" if cause else "")


def _status_fields() -> dict[str, str]:
    fields = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    except OSError:
        pass
    return fields


def effective_capabilities(status: dict[str, str] | None = None) -> frozenset[str]:
    from pytest_isolate.container.capabilities import CAPABILITIES

    status = _status_fields() if status is None else status
    mask = int(status.get("CapEff", "0"), 16)
    return frozenset(name for name, number in CAPABILITIES.items() if mask >> number & 1)


def seccomp_mode(status: dict[str, str] | None = None) -> int | None:
    status = _status_fields() if status is None else status
    value = status.get("Seccomp", "")
    return int(value) if value.isdigit() else None


def masked_proc_paths(entries: list[MountEntry]) -> tuple[str, ...]:
    """What is mounted over entries of /proc: runc's and podman's masks.

    The kernel lets a user namespace mount a new proc only where a fully
    visible one exists (``mount_too_revealing``); binfmt_misc sits on a
    permanently empty directory and does not count.
    """
    return tuple(
        entry.mount_point
        for entry in entries
        if entry.mount_point.startswith("/proc/") and entry.fstype != "binfmt_misc"
    )


def _cgroup_read_only(entries: list[MountEntry]) -> bool:
    hierarchies = [e for e in entries if e.fstype == "cgroup" and "memory" in e.super_options]
    hierarchies = hierarchies or [e for e in entries if e.fstype == "cgroup2"]
    return bool(hierarchies) and all("ro" in e.options for e in hierarchies)


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def apparmor_profile() -> str | None:
    for path in ("/proc/self/attr/apparmor/current", "/proc/self/attr/current"):
        try:
            with open(path, encoding="utf-8") as handle:
                label = handle.read().strip().rstrip("\x00")
        except OSError:
            continue
        if label and label != "unconfined" and "(enforce)" in label:
            return label.replace(" (enforce)", "")
        return None
    return None


def try_route(route: str, stage: str) -> Trial:
    """Build the skeleton of a container in a forked child; report the first refusal."""
    from pytest_isolate.container.child import answer_from_child

    def question() -> bytes:
        try:
            _trial_steps(route, stage)
        except _Refused as refused:
            return f"{refused.step}\n{refused.error}".encode()
        except BaseException:
            return f"{STEP_UNSHARE}\n{errno.EIO}".encode()
        return b"ok"

    data = answer_from_child(question)
    if data == b"ok":
        return Trial(route)
    step, _, number = data.decode(errors="replace").partition("\n")
    return Trial(route, step or STEP_UNSHARE, int(number) if number.isdigit() else errno.EIO)


class _Refused(Exception):
    def __init__(self, step: str, error: int) -> None:
        super().__init__(step)
        self.step = step
        self.error = error


def _step(name: str, action, *args) -> object:  # type: ignore[no-untyped-def]
    try:
        return action(*args)
    except OSError as error:
        raise _Refused(name, error.errno or errno.EIO) from None


def _trial_steps(route: str, stage: str) -> None:  # pragma: no cover - runs in the forked child
    import socket

    from pytest_isolate.container import libc, network, sysfiles, userns

    if route == USERNS_ROUTE:
        _step(STEP_USERNS, userns.enter_as_root)
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWNET | libc.CLONE_NEWPID
    _step(STEP_UNSHARE, libc.unshare, flags)
    _step(STEP_MOUNT, libc.mount, None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    _step(STEP_MOUNT, libc.mount, "tmpfs", stage, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "size=1m,mode=0755")
    _step(STEP_LOOPBACK, network.bring_up_loopback)
    root = os.path.join(stage, "root")
    os.mkdir(root)
    os.mkdir(os.path.join(root, "proc"))
    _step(STEP_MOUNT, libc.mount, root, root, None, libc.MS_BIND)
    # /proc of the new PID namespace can only be mounted from inside it;
    # the hostname is set there too, as the container's test process does.
    answer_read, answer_write = os.pipe()
    child = os.fork()
    if child == 0:
        step = STEP_PROC
        try:
            proc = os.path.join(root, "proc")
            libc.mount("proc", proc, "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
            step = STEP_HOSTNAME
            try:
                socket.sethostname("isolated")
            except PermissionError:
                sysfiles.write(os.path.join(proc, "sys/kernel/hostname"), "isolated")
            os.write(answer_write, b"ok")
        except OSError as error:
            os.write(answer_write, f"{step}\n{error.errno or errno.EIO}".encode())
        finally:
            os._exit(0)  # whatever happens, the child never returns into pytest
    os.close(answer_write)
    answer = os.read(answer_read, 512)
    os.close(answer_read)
    os.waitpid(child, 0)
    if answer != b"ok":
        step, _, number = answer.decode(errors="replace").partition("\n")
        raise _Refused(step or STEP_PROC, int(number) if number.isdigit() else errno.EIO)
    os.chdir(root)
    _step(STEP_PIVOT, libc.pivot_root, ".", ".")
    _step(STEP_PIVOT, libc.umount2, ".", libc.MNT_DETACH)


def _plainly_privileged(euid: int, capabilities: frozenset[str], seccomp: int | None) -> bool:
    return euid == 0 and {"SYS_ADMIN", "NET_ADMIN"} <= capabilities and seccomp == 0


@functools.lru_cache(maxsize=None)
def probe(*, try_both: bool = False) -> Confinement:
    """The facts and the trials, once per process.

    Root with ``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN`` and no seccomp filter
    (a host, or a privileged container) takes the root route untried, unless
    ``try_both`` (``pytest-isolate info``): every session pays nothing there.
    """
    from pytest_isolate.container import rootfs

    status = _status_fields()
    entries = read_mounts()
    capabilities = effective_capabilities(status)
    seccomp = seccomp_mode(status)
    euid = os.geteuid()
    if _plainly_privileged(euid, capabilities, seccomp) and not try_both:
        root_trial, userns_trial = Trial(ROOT_ROUTE), Trial(USERNS_ROUTE, NOT_TRIED)
    else:
        stage = rootfs.ensure_stage_dir()
        # An ordinary user cannot take the root route: not worth a try.
        root_trial = try_route(ROOT_ROUTE, stage) if euid == 0 else Trial(ROOT_ROUTE, STEP_UNSHARE, errno.EPERM)
        userns_trial = try_route(USERNS_ROUTE, stage)
    return Confinement(
        euid=euid,
        capabilities=capabilities,
        seccomp=seccomp,
        masked_proc=masked_proc_paths(entries),
        cgroup_read_only=_cgroup_read_only(entries),
        proc_sys_read_only=_read_only("/proc/sys"),
        apparmor=apparmor_profile(),
        root_route=root_trial,
        userns_route=userns_trial,
    )
