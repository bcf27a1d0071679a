"""Per-test cgroups on cgroup v1 and v2, behind one small interface.

Layout: every pytest process (each xdist worker too) owns one *session
group* named ``pytest-isolate-<pid>-<start time>``, and each test gets a
``t<n>`` cgroup inside it.  The owner's pid and start time in the name let a
later run tell a dead owner's leftovers from a live run's (pids are reused,
start times are not), and remove them.

We only ever create, limit and remove cgroups we made ourselves; the cgroups
the host (or a CI sandbox) put us in are read, never changed - except that on
cgroup v2 a controller may have to be switched on in an ancestor's
``cgroup.subtree_control`` (see :class:`CgroupV2`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Protocol

from pytest_isolate.container import sysfiles
from pytest_isolate.container.mountinfo import read_mounts
from pytest_isolate.errors import ContainerError
from pytest_isolate.spec import IsolationSpec

GROUP_PREFIX = "pytest-isolate-"
_GROUP_RE = re.compile(r"^pytest-isolate-(\d+)-(\d+)$")
CFS_PERIOD_US = 100_000


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a test used, read from its cgroup after every process is gone."""

    peak_memory: int | None = None  # bytes
    cpu_seconds: float | None = None
    throttled_seconds: float | None = None
    oom_kills: int = 0
    pids_limit_hits: int = 0


class TestCgroup(Protocol):
    def attach(self) -> None:
        """Move the calling process into the cgroup (called in the child)."""

    def usage(self) -> Usage: ...

    def kill_all(self) -> None: ...

    def remove(self) -> None:
        """Kill what is left, then rmdir (waits for EBUSY to pass)."""

    def remove_if_empty(self) -> None:
        """rmdir, raising OSError(EBUSY) at once while processes remain."""


class CgroupBackend(Protocol):
    version: int

    def create(self, spec: IsolationSpec) -> TestCgroup: ...

    def remove_session_group(self) -> None: ...

    def remove_stale_groups(self) -> list[str]: ...

    def directories(self) -> list[str]:
        """The cgroups session groups go into (root may make them where it may write these)."""


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(b")", 1)[1].split()[19])


def session_group_name(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{GROUP_PREFIX}{pid}-{process_start_time(pid)}"


def owner_is_alive(group_name: str) -> bool:
    match = _GROUP_RE.match(group_name)
    if not match:
        return True  # not ours to judge
    pid, started = int(match.group(1)), int(match.group(2))
    return process_start_time(pid) == started


def _read_int(path: str) -> int | None:
    text = sysfiles.read(path)
    return int(text) if text and text.strip().lstrip("-").isdigit() else None


def _read_keyed(path: str, key: str) -> int | None:
    """The number after ``key`` in a flat-keyed file such as memory.events."""
    text = sysfiles.read(path)
    if text is None:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


def kill_cgroup_processes(directory: str, attempts: int = 200) -> None:
    """SIGKILL every process listed in ``directory`` until none is left.

    Bounded: a process stuck in uninterruptible sleep cannot hold us forever.
    """
    for _ in range(attempts):
        text = sysfiles.read(os.path.join(directory, "cgroup.procs"))
        pids = [int(line) for line in (text or "").split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def remove_tree(directory: str) -> None:
    """rmdir a cgroup and its children, deepest first, killing what is inside."""
    for current, subdirs, _ in os.walk(directory, topdown=False):
        del subdirs
        kill_cgroup_processes(current)
        for attempt in range(100):
            try:
                os.rmdir(current)
                break
            except FileNotFoundError:
                break
            except OSError as error:
                # EBUSY while the last killed processes are still exiting.
                if error.errno != errno.EBUSY or attempt == 99:
                    raise
                time.sleep(0.01)


def _rmdir(directory: str) -> None:
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass


def _own_cgroup_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> our cgroup path, from /proc/self/cgroup."""
    paths = {}
    with open("/proc/self/cgroup", encoding="ascii") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _join(mount_point: str, mount_root: str, path: str) -> str | None:
    """The directory of our cgroup ``path`` on a mount of its hierarchy, or None if the mount does not show it.

    ``/proc/self/cgroup`` paths and mountinfo's root field are both relative
    to our cgroup namespace's root.  A mount may show a subtree of the
    hierarchy (root ``/libpod_parent/libpod-ID``), or - under a private
    cgroup namespace with the host's tree bind-mounted (``podman run
    --cgroupns=private -v /sys/fs/cgroup:/sys/fs/cgroup``) - a tree *above*
    our namespace's root: then the root reads ``/../..`` and the names of
    the levels in between are hidden from us (see :func:`_find_below`).
    """
    parts = [part for part in mount_root.split("/") if part]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ups:
        if ups < len(parts):
            return None  # a tree beside ours: our cgroup is not in it
        return _find_below(mount_point, ups, path)
    if mount_root != "/":
        if path != mount_root and not path.startswith(mount_root.rstrip("/") + "/"):
            return None
        path = path[len(mount_root) :]
    return os.path.join(mount_point, path.lstrip("/"))


# How many cgroup directories a search for our own may read (a host with
# thousands of containers stays bounded; we then refuse rather than guess).
_SEARCH_LIMIT = 20_000


def _find_below(mount_point: str, levels: int, path: str) -> str | None:
    """The cgroup ``levels`` below ``mount_point`` plus ``path`` that lists our pid in cgroup.procs."""
    pid = str(os.getpid())
    level = [mount_point]
    read = 0
    for _ in range(levels):
        below = []
        for directory in level:
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            read += 1
            below += [os.path.join(directory, name) for name in names if os.path.isfile(os.path.join(directory, name, "cgroup.procs"))]
            if read > _SEARCH_LIMIT:
                return None
        level = below
    for directory in level:
        candidate = os.path.join(directory, path.lstrip("/"))
        if pid in (sysfiles.read(os.path.join(candidate, "cgroup.procs")) or "").split():
            return candidate.rstrip("/")
    return None


def _namespace_root(own_dir: str, path: str) -> str:
    """Our cgroup namespace's root on the mount: ``own_dir`` less the components of ``path``."""
    depth = len([part for part in path.split("/") if part])
    for _ in range(depth):
        own_dir = os.path.dirname(own_dir.rstrip("/"))
    return own_dir


# ---------------------------------------------------------------- cgroup v1


@dataclasses.dataclass
class _V1TestCgroup:
    dirs: dict[str, str]  # controller -> directory

    def attach(self) -> None:
        pid = str(os.getpid())
        for directory in dict.fromkeys(self.dirs.values()):
            sysfiles.write(os.path.join(directory, "cgroup.procs"), pid)

    def usage(self) -> Usage:
        memory = self.dirs.get("memory")
        cpuacct = self.dirs.get("cpuacct")
        cpu = self.dirs.get("cpu")
        pids = self.dirs.get("pids")
        cpu_ns = _read_int(os.path.join(cpuacct, "cpuacct.usage")) if cpuacct else None
        throttled_ns = _read_keyed(os.path.join(cpu, "cpu.stat"), "throttled_time") if cpu else None
        return Usage(
            peak_memory=_read_int(os.path.join(memory, "memory.max_usage_in_bytes")) if memory else None,
            cpu_seconds=None if cpu_ns is None else cpu_ns / 1e9,
            throttled_seconds=None if throttled_ns is None else throttled_ns / 1e9,
            oom_kills=(_read_keyed(os.path.join(memory, "memory.oom_control"), "oom_kill") or 0) if memory else 0,
            pids_limit_hits=(_read_keyed(os.path.join(pids, "pids.events"), "max") or 0) if pids else 0,
        )

    def kill_all(self) -> None:
        for directory in dict.fromkeys(self.dirs.values()):
            kill_cgroup_processes(directory)

    def remove(self) -> None:
        for directory in dict.fromkeys(self.dirs.values()):
            remove_tree(directory)

    def remove_if_empty(self) -> None:
        for directory in list(dict.fromkeys(self.dirs.values())):
            _rmdir(directory)


class CgroupV1:
    """One hierarchy per controller, e.g. /sys/fs/cgroup/memory/<our path>/."""

    version = 1

    def __init__(self, parents: dict[str, str]) -> None:
        # controller -> the cgroup directory we were started in
        self.parents = parents
        self.group = session_group_name()
        self._counter = 0
        self._created_groups: set[str] = set()

    @classmethod
    def detect(cls) -> CgroupV1 | None:
        own = _own_cgroup_paths()
        parents: dict[str, str] = {}
        for entry in read_mounts():
            if entry.fstype != "cgroup":
                continue
            for controller in ("memory", "cpu", "cpuacct", "pids"):
                if controller in entry.super_options and controller in own:
                    # The last mount wins: a later one (a bind of the host's tree) hides earlier ones.
                    directory = _join(entry.mount_point, entry.root, own[controller])
                    if directory is not None:
                        parents[controller] = directory
        return cls(parents) if "memory" in parents else None

    def directories(self) -> list[str]:
        return list(dict.fromkeys(self.parents.values()))

    def _needed_controllers(self, spec: IsolationSpec) -> list[str]:
        # memory measures every test; cpu, cpuacct and pids come with a limit.
        # Each v1 hierarchy is one more migration of the test process into
        # it, about half a millisecond each (the kernel waits for an RCU grace
        # period), so without a cpu limit CPU time comes from the process's
        # own rusage instead of cpuacct.
        wanted = ["memory"]
        if spec.cpu is not None:
            wanted += ["cpu", "cpuacct"]
        if spec.pids is not None:
            wanted.append("pids")
        missing = [c for c in wanted if c not in self.parents and (c != "cpuacct")]
        if missing:
            raise ContainerError(
                "set the test's limits",
                f"the cgroup v1 controller {missing[0]!r} is not mounted on this host",
                f"mount it (mount -t cgroup -o {missing[0]} cgroup /sys/fs/cgroup/{missing[0]}) "
                "or drop the limit that needs it",
            )
        return [c for c in wanted if c in self.parents]

    def create(self, spec: IsolationSpec) -> _V1TestCgroup:
        self._counter += 1
        dirs: dict[str, str] = {}
        try:
            for controller in self._needed_controllers(spec):
                group_dir = os.path.join(self.parents[controller], self.group)
                if group_dir not in self._created_groups:
                    os.makedirs(group_dir, exist_ok=True)
                    self._created_groups.add(group_dir)
                directory = os.path.join(group_dir, f"t{self._counter}")
                if directory not in dirs.values():
                    os.mkdir(directory)
                dirs[controller] = directory
            cgroup = _V1TestCgroup(dirs)
            self._apply_limits(cgroup, spec)
        except OSError as error:
            _V1TestCgroup(dirs).remove()
            raise cgroup_error(error) from None
        return cgroup

    @staticmethod
    def _apply_limits(cgroup: _V1TestCgroup, spec: IsolationSpec) -> None:
        if spec.mem is not None:
            memory = cgroup.dirs["memory"]
            sysfiles.write(os.path.join(memory, "memory.limit_in_bytes"), str(spec.mem))
            # memsw exists only with swap accounting; it must be >= the limit.
            memsw = os.path.join(memory, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                sysfiles.write(memsw, str(spec.mem))
        if spec.cpu is not None:
            cpu = cgroup.dirs["cpu"]
            sysfiles.write(os.path.join(cpu, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
            sysfiles.write(os.path.join(cpu, "cpu.cfs_quota_us"), str(round(spec.cpu * CFS_PERIOD_US)))
        if spec.pids is not None:
            sysfiles.write(os.path.join(cgroup.dirs["pids"], "pids.max"), str(spec.pids))

    def remove_session_group(self) -> None:
        for group_dir in self._created_groups:
            remove_tree(group_dir)
        self._created_groups.clear()

    def remove_stale_groups(self) -> list[str]:
        removed = []
        for parent in dict.fromkeys(self.parents.values()):
            for name in _stale_groups(parent):
                remove_tree(os.path.join(parent, name))
                removed.append(os.path.join(parent, name))
        return removed


def _stale_groups(parent: str) -> Iterator[str]:
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if name.startswith(GROUP_PREFIX) and not owner_is_alive(name):
            yield name


# ---------------------------------------------------------------- cgroup v2


@dataclasses.dataclass
class _V2TestCgroup:
    directory: str

    def attach(self) -> None:
        sysfiles.write(os.path.join(self.directory, "cgroup.procs"), str(os.getpid()))

    def usage(self) -> Usage:
        d = self.directory
        cpu_us = _read_keyed(os.path.join(d, "cpu.stat"), "usage_usec")
        throttled_us = _read_keyed(os.path.join(d, "cpu.stat"), "throttled_usec")
        # memory.peak arrived in Linux 5.19; before it only the current value exists.
        peak = _read_int(os.path.join(d, "memory.peak"))
        return Usage(
            peak_memory=peak if peak is not None else _read_int(os.path.join(d, "memory.current")),
            cpu_seconds=None if cpu_us is None else cpu_us / 1e6,
            throttled_seconds=None if throttled_us is None else throttled_us / 1e6,
            oom_kills=_read_keyed(os.path.join(d, "memory.events"), "oom_kill") or 0,
            pids_limit_hits=_read_keyed(os.path.join(d, "pids.events"), "max") or 0,
        )

    def kill_all(self) -> None:
        kill_file = os.path.join(self.directory, "cgroup.kill")
        if os.path.exists(kill_file):  # Linux 5.14+: one write kills the subtree
            try:
                sysfiles.write(kill_file, "1")
            except OSError:
                pass
        kill_cgroup_processes(self.directory)

    def remove(self) -> None:
        remove_tree(self.directory)

    def remove_if_empty(self) -> None:
        _rmdir(self.directory)


class CgroupV2:
    """The unified hierarchy.

    The no-internal-process rule forbids switching controllers on in a cgroup
    that has processes, and we are in one.  So the session group is made a
    *sibling* of our own cgroup, under the nearest ancestor whose
    ``cgroup.subtree_control`` has (or accepts) the controllers we need; the
    root cgroup is exempt from the rule and is the last resort.
    """

    version = 2
    CONTROLLERS = ("memory", "cpu", "pids")

    def __init__(self, mount_point: str, own_dir: str, top: str | None = None) -> None:
        self.mount_point = mount_point
        self.own_dir = own_dir
        # The highest cgroup a session group may go under: our cgroup
        # namespace's root (a CI container's own cgroup), never above it.
        self.top = os.path.normpath(top or mount_point)
        self.group = session_group_name()
        self._group_dir: str | None = None
        self._counter = 0

    @classmethod
    def detect(cls) -> CgroupV2 | None:
        own = _own_cgroup_paths()
        if "" not in own:
            return None
        for entry in read_mounts():
            if entry.fstype == "cgroup2":
                own_dir = _join(entry.mount_point, entry.root, own[""])
                controllers = (sysfiles.read(os.path.join(entry.mount_point, "cgroup.controllers")) or "").split()
                if own_dir is not None and "memory" in controllers:
                    return cls(entry.mount_point, own_dir, _namespace_root(own_dir, own[""]))
        return None

    def directories(self) -> list[str]:
        return list(self._candidates())[:1]

    def _candidates(self) -> Iterator[str]:
        """Where a session group may go: from our cgroup's parent up to ``top``, or ``top`` itself."""
        candidate = os.path.normpath(self.own_dir)
        if candidate != self.top:
            candidate = os.path.dirname(candidate)
        while True:
            yield candidate
            if candidate == self.top or candidate == os.path.dirname(candidate):
                return
            candidate = os.path.dirname(candidate)

    def _parent_with_controllers(self) -> str:
        for candidate in self._candidates():
            if self._enable_controllers(candidate):
                return candidate
        raise ContainerError(
            "set up cgroup v2 limits",
            f"no cgroup from {self.own_dir} up to {self.top} lets the controllers "
            f"{', '.join(self.CONTROLLERS)} be enabled",
            "run pytest in a delegated cgroup, e.g. "
            "systemd-run --scope -p Delegate=yes pytest ...",
        )

    def _enable_controllers(self, directory: str) -> bool:
        available = (sysfiles.read(os.path.join(directory, "cgroup.controllers")) or "").split()
        if not all(c in available for c in self.CONTROLLERS):
            return False
        enabled = (sysfiles.read(os.path.join(directory, "cgroup.subtree_control")) or "").split()
        missing = [c for c in self.CONTROLLERS if c not in enabled]
        if missing:
            try:
                sysfiles.write(os.path.join(directory, "cgroup.subtree_control"), " ".join("+" + c for c in missing))
            except OSError:
                return False
        return True

    def _session_group(self) -> str:
        if self._group_dir is None:
            group_dir = os.path.join(self._parent_with_controllers(), self.group)
            os.makedirs(group_dir, exist_ok=True)
            sysfiles.write(os.path.join(group_dir, "cgroup.subtree_control"), " ".join("+" + c for c in self.CONTROLLERS))
            self._group_dir = group_dir
        return self._group_dir

    def create(self, spec: IsolationSpec) -> _V2TestCgroup:
        self._counter += 1
        directory = None
        try:
            directory = os.path.join(self._session_group(), f"t{self._counter}")
            os.mkdir(directory)
            if spec.mem is not None:
                sysfiles.write(os.path.join(directory, "memory.max"), str(spec.mem))
                if os.path.exists(os.path.join(directory, "memory.swap.max")):
                    sysfiles.write(os.path.join(directory, "memory.swap.max"), "0")
            if spec.cpu is not None:
                sysfiles.write(os.path.join(directory, "cpu.max"), f"{round(spec.cpu * CFS_PERIOD_US)} {CFS_PERIOD_US}")
            if spec.pids is not None:
                sysfiles.write(os.path.join(directory, "pids.max"), str(spec.pids))
        except OSError as error:
            if directory and os.path.isdir(directory):
                remove_tree(directory)
            raise cgroup_error(error) from None
        return _V2TestCgroup(directory)

    def remove_session_group(self) -> None:
        if self._group_dir is not None:
            remove_tree(self._group_dir)
            self._group_dir = None

    def remove_stale_groups(self) -> list[str]:
        removed = []
        # Look where _parent_with_controllers could have put a group.
        for candidate in self._candidates():
            for name in _stale_groups(candidate):
                remove_tree(os.path.join(candidate, name))
                removed.append(os.path.join(candidate, name))
        return removed


def cgroup_error(error: OSError) -> ContainerError:
    """errno becomes advice."""
    advice = {
        errno.EACCES: "run pytest as root, or in a cgroup delegated to your user",
        errno.EPERM: "run pytest as root, or in a cgroup delegated to your user",
        errno.EROFS: "the cgroup filesystem is mounted read-only here (inside a container?): "
        "mount it read-write or run on the host",
        errno.ENOSPC: "the host has too many cgroups; remove stale ones",
        errno.EBUSY: "a limit lower than the memory already in use was refused",
    }.get(error.errno or 0, "")
    return ContainerError("set up the test's cgroup", f"{error.strerror} ({error.filename})", advice)


def detect_backend() -> CgroupBackend | None:
    """v1 where the memory controller is mounted as v1 (hybrid hosts too), else v2."""
    return CgroupV1.detect() or CgroupV2.detect()
