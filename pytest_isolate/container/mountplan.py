"""The container's filesystem as data: a list of mount operations.

Built once per session from the host's mount table, copied per test (so a
conftest hook can add to it), printed in error messages, and applied by
``container.rootfs`` in the child.  Like bubblewrap's ``SetupOp`` list: plan,
then apply.

Overlay does not cross mount points, so the host root alone would show
empty directories where the host has other filesystems (a venv on its own
disk, ``/home``, a tmpfs ``/tmp``).  Every such mount gets an overlay of its
own, with its own upper directory on the same tmpfs.  Kernel filesystems
(proc, sysfs, cgroup, ...) are never overlaid: the container gets fresh ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from pytest_isolate.container.mountinfo import MountEntry, read_mounts

# Filesystems that describe the kernel or another namespace, not files:
# overlaying them is meaningless or refused.
KERNEL_FSTYPES = frozenset(
    "proc sysfs devtmpfs devpts mqueue cgroup cgroup2 debugfs tracefs securityfs pstore bpf "
    "configfs fusectl hugetlbfs autofs binfmt_misc nsfs efivarfs rpc_pipefs selinuxfs".split()
)
# Trees the container gets fresh: its own /proc, a minimal /dev, a read-only /sys.
FRESH_TREES = ("/proc", "/sys", "/dev")
DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SYMLINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}


@dataclasses.dataclass(frozen=True)
class MountOp:
    """One step.  ``target`` is a path inside the container."""

    kind: str  # root_dir | overlay | readonly_mount | bind | node | tmpfs | sysfs | devpts | mkdir | symlink | copy_file | file
    # | mask_file | mask_dir (a host credential path hidden: container/credentials.py)
    target: str
    source: str | None = None  # host path for overlay (lower), bind and copy_file
    readonly: bool = False
    size: int | None = None  # tmpfs size in bytes
    layers: tuple[str, ...] = ()  # overlay lower layers, topmost first (an image); default: source

    def describe(self) -> str:
        if self.kind == "overlay" and self.layers:
            return f"overlay {self.target} (image of {len(self.layers)} layer(s), upper on tmpfs)"
        if self.kind == "overlay":
            return f"overlay {self.target} (lower {self.source}, upper on tmpfs)"
        if self.kind == "readonly_mount":
            return f"bind {self.target} (a read-only host mount, as it is)"
        if self.kind == "bind":
            return f"bind {self.source} -> {self.target}{' (read-only)' if self.readonly else ''}"
        if self.kind == "node":
            return f"mknod {self.target} (as {self.source})"
        if self.kind == "symlink":
            return f"symlink {self.target} -> {self.source}"
        if self.kind == "copy_file":
            return f"copy {self.source} -> {self.target}"
        if self.kind == "mask_file":
            return f"mask {self.target} (an empty file: secrets=False)"
        if self.kind == "mask_dir":
            return f"mask {self.target} (an empty read-only directory: secrets=False)"
        if self.kind == "file":
            return f"file {self.target} ({len(self.source or '')} bytes, outside the writable layer)"
        return f"{self.kind} {self.target}{' (read-only)' if self.readonly else ''}"


@dataclasses.dataclass
class MountPlan:
    """The ordered operations that build one container's root."""

    ops: list[MountOp]

    def add_bind(self, source: str, target: str | None = None, *, readonly: bool = True) -> None:
        """Make host ``source`` visible at ``target`` (default: the same path)."""
        self.ops.append(MountOp("bind", target or source, source=os.path.abspath(source), readonly=readonly))

    def add_tmpfs(self, target: str, size: int | None = None) -> None:
        """An empty, writable tmpfs at ``target`` (counted in the test's memory)."""
        self.ops.append(MountOp("tmpfs", target, size=size))

    def add_file(self, target: str, content: str) -> None:
        """A file with ``content`` at ``target``, kept out of the writable layer (and of --isolate-diff)."""
        self.ops.append(MountOp("file", target, source=content))

    def describe(self) -> str:
        return "\n".join(op.describe() for op in self.ops)


def _under(path: str, trees: Iterable[str]) -> bool:
    return any(path == tree or path.startswith(tree.rstrip("/") + "/") for tree in trees)


def host_mount_ops(entries: list[MountEntry]) -> list[MountOp]:
    """Overlay ops for the host root and every file-holding mount below it."""
    visible: dict[str, MountEntry] = {}
    for entry in entries:
        # A later mount on the same point covers the earlier one.
        visible[entry.mount_point] = entry
    ops = [MountOp("overlay", "/", source="/")]
    skipped: list[str] = list(FRESH_TREES)
    for mount_point in sorted(visible, key=lambda p: (p.count("/"), p)):
        entry = visible[mount_point]
        if mount_point == "/" or _under(mount_point, skipped):
            continue
        if entry.fstype in KERNEL_FSTYPES:
            skipped.append(mount_point)
        elif os.path.isdir(mount_point):
            # A read-only mount (a snap's squashfs, a ro bind) needs no
            # writable layer: writes fail there as on the host.  A bind costs
            # a fraction of an overlay, and a laptop has dozens of them.
            kind = "readonly_mount" if "ro" in entry.options else "overlay"
            ops.append(MountOp(kind, mount_point, source=mount_point))
        elif os.path.isfile(mount_point):
            # A single-file bind mount (resolv.conf in a container): overlay
            # needs a directory, so the file's content is copied into the upper.
            ops.append(MountOp("copy_file", mount_point, source=mount_point))
    return ops


def with_overlays_only(ops: list[MountOp]) -> list[MountOp]:
    """Read-only host mounts as overlays too: for a test granted CAP_SYS_ADMIN.

    Such a test could remount a bind of the host's filesystem read-write,
    superblock and all; an overlay keeps the host's mount out of its reach.
    """
    return [MountOp("overlay", op.target, source=op.source) if op.kind == "readonly_mount" else op for op in ops]


def rootless_host_ops(entries: list[MountEntry]) -> list[MountOp]:
    """The host's root for a rootless container, one overlay per subtree.

    In a user namespace the kernel refuses to use a directory as an overlay
    lower layer while mounts it did not make sit below it ("locked" mounts:
    they could hide what is underneath).  ``/`` always has some (``/proc``),
    so the container's root is a directory of its own, and each top-level
    entry of the host gets an overlay, a symlink or a copy; a directory with
    mounts below it is walked one level deeper.
    """
    mount_points = {entry.mount_point for entry in entries if entry.mount_point != "/"}
    kernel = {entry.mount_point for entry in entries if entry.fstype in KERNEL_FSTYPES}
    ops = [MountOp("root_dir", "/")]

    def walk(directory: str) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            path = os.path.join(directory, name)
            if path in FRESH_TREES or path in kernel:
                ops.append(MountOp("mkdir", path))
            elif os.path.islink(path):
                ops.append(MountOp("symlink", path, source=os.readlink(path)))
            elif os.path.isdir(path):
                if any(point.startswith(path + "/") for point in mount_points):
                    ops.append(MountOp("mkdir", path))
                    walk(path)
                else:
                    ops.append(MountOp("overlay", path, source=path))
            elif os.path.isfile(path):
                ops.append(MountOp("copy_file", path, source=path))

    walk("/")
    return ops


def image_ops(layers: list[str], host_paths: list[str]) -> list[MountOp]:
    """An image's layers as the root, and the host paths the test's Python needs on top.

    The interpreter, its venv and the project stay at their host paths
    (writable, with the writes thrown away), so the forked test keeps
    working; /usr, /etc and the rest come from the image.
    """
    ops = [MountOp("overlay", "/", source=layers[0], layers=tuple(layers))]
    covered: list[str] = []
    for path in sorted(set(host_paths), key=lambda p: (p.count("/"), p)):
        if path in ("/", "") or _under(path, covered) or _under(path, FRESH_TREES):
            continue
        covered.append(path)
        ops.append(MountOp("overlay", path, source=path))
    return ops


def device_ops(shm_size: int, *, nodes_by_mknod: bool = False) -> list[MountOp]:
    """A minimal /dev: the harmless nodes, a private devpts and /dev/shm.

    As root the nodes are made with mknod (a few microseconds each); in a
    user namespace mknod is refused, so the host's nodes are bound in
    (tens of microseconds each).
    """
    ops = [MountOp("tmpfs", "/dev", size=1 << 20)]
    kind = "node" if nodes_by_mknod else "bind"
    ops += [MountOp(kind, f"/dev/{name}", source=f"/dev/{name}") for name in DEVICE_NODES]
    ops.append(MountOp("devpts", "/dev/pts"))
    ops.append(MountOp("tmpfs", "/dev/shm", size=shm_size))
    ops += [MountOp("symlink", f"/dev/{name}", source=dest) for name, dest in DEV_SYMLINKS.items()]
    return ops


def build_base_plan(disk: int, entries: list[MountEntry] | None = None) -> MountPlan:
    """The plan every container starts from (before hooks add to it)."""
    entries = read_mounts() if entries is None else entries
    ops = host_mount_ops(entries)
    ops += device_ops(shm_size=disk)
    ops.append(MountOp("sysfs", "/sys", readonly=True))
    return MountPlan(ops)
