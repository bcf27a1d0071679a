"""Apply a MountPlan in a fresh mount namespace and pivot into it.

Runs in the container's launcher process, after ``unshare(CLONE_NEWNS)``.
Every mount happens in that private namespace: the host never sees one, and
they all vanish with the namespace's last process, even if pytest is
SIGKILLed (nothing to unmount, ever).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from pytest_isolate.container import libc, storage
from pytest_isolate.container.mountplan import MountOp, MountPlan
from pytest_isolate.errors import ContainerError

# An empty directory on the host: the per-test tmpfs is mounted over it in
# the private namespace only, so the host never sees anything in it.
STAGE_DIR = "/run/pytest-isolate"
NEW_ROOT = "root"
INJECTED = "injected"  # files a plan adds to the root, as a lower layer


def stage_dir() -> str:
    """Root's is under /run; a user's is its own, under /tmp (decided in pytest, before any namespace)."""
    return STAGE_DIR if os.geteuid() == 0 else f"/tmp/pytest-isolate-{os.geteuid()}"


def ensure_stage_dir() -> str:
    path = stage_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def remount_read_only(target: str) -> None:
    """Make a bind mount read-only, keeping its other flags.

    In a user namespace, flags inherited from a more privileged mount
    (nosuid, nodev, noexec) are locked: a remount that would clear them is
    refused, so they are passed along.
    """
    flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY
    current = os.statvfs(target).f_flag
    for st_flag, ms_flag in ((os.ST_NOSUID, libc.MS_NOSUID), (os.ST_NODEV, libc.MS_NODEV), (os.ST_NOEXEC, libc.MS_NOEXEC)):
        if current & st_flag:
            flags |= ms_flag
    libc.mount(None, target, None, flags)


def _escape_layer(path: str) -> str:
    # overlayfs splits its options on ',' and lowerdir on ':'.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _ensure_dir(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` in one ``stat`` where the directory exists.

    A host mount point is almost always already in the layer below (its
    parent filesystem has the directory): with dozens of host mounts, the
    three lookups ``makedirs`` makes per mount point add up.
    """
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


class _Builder:
    def __init__(self, stage: str, rootless: bool = False, storage_driver: str = "overlay") -> None:
        self.stage = stage
        self.storage = storage_driver
        # Overlay in a user namespace must keep its whiteouts and opaque
        # marks in user.* xattrs: trusted.* are root's of the host only.
        self.overlay_extra = ",userxattr" if rootless else ""
        # fuse-overlayfs in a user namespace: the host root's files shown as
        # the container root's, so the test may change them (issue 11).
        self.squash = rootless
        self.root = os.path.join(stage, NEW_ROOT)
        self.layers = 0
        self.injected = False  # whether a lower layer of injected files exists
        self.files = 0

    def inject_files(self, ops: list[MountOp]) -> list[MountOp]:
        """Put ``file`` ops for the root overlay into a lower layer of their own.

        Above the host's root and below the writable layer: the test sees
        ordinary files it may change or delete, and only its own changes
        land in the writable layer (and in --isolate-diff).
        """
        submounts = [op.target for op in ops if op.kind == "overlay" and op.target != "/"]
        remaining = []
        for op in ops:
            if op.kind in ("file", "mask_file") and not any(op.target.startswith(m.rstrip("/") + "/") for m in submounts):
                path = _inside(os.path.join(self.stage, INJECTED), op.target)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, (op.source or "").encode())
                finally:
                    os.close(fd)
                self.injected = True
            else:
                remaining.append(op)
        return remaining

    def apply(self, op: MountOp) -> None:
        target = _inside(self.root, op.target)
        getattr(self, f"_{op.kind}")(op, target)

    def _overlay(self, op: MountOp, target: str) -> None:
        self.layers += 1
        upper = os.path.join(self.stage, f"u{self.layers}")
        work = os.path.join(self.stage, f"w{self.layers}")
        os.mkdir(upper)
        os.mkdir(work)
        assert op.source is not None
        lower = ":".join(_escape_layer(layer) for layer in op.layers) if op.layers else _escape_layer(op.source)
        if op.target == "/" and self.injected:
            lower = f"{_escape_layer(os.path.join(self.stage, INJECTED))}:{lower}"
        options = f"lowerdir={lower},upperdir={upper},workdir={work}{self.overlay_extra}"
        if op.target == "/":
            os.mkdir(self.root)
        else:
            _ensure_dir(target)
        if self.storage == "copy":
            if not op.layers and op.source == "/":
                raise ContainerError(
                    "copy the root filesystem",
                    "isolate_storage = copy cannot copy the host's whole root for every test",
                    'use a small image or directory with rootfs=, or isolate_storage = fuse',
                )
            if op.target != "/":
                # Host paths in an image (the interpreter, the project): far
                # too big to copy per test, so shown read-only instead.
                libc.mount(op.source, target, None, libc.MS_BIND | libc.MS_REC)
                remount_read_only(target)
                return
            storage.copy_layers(list(op.layers or (op.source,)), target)
            libc.mount(target, target, None, libc.MS_BIND)  # a mount point, for pivot_root
            return
        if self.storage == "fuse":
            try:
                storage.mount_fuse(lower, upper, work, target, squash=self.squash)
            except ContainerError:
                if op.target == "/":
                    raise
                # As below: fuse-overlayfs refuses some lowers (a 9p share in
                # the VM lane): shown read-only rather than not at all.
                libc.mount(op.source, target, None, libc.MS_BIND | libc.MS_REC)
                remount_read_only(target)
            return
        try:
            libc.mount("overlay", target, "overlay", 0, options)
        except OSError:
            if op.target == "/":
                raise
            # Some filesystems (FUSE, NFS with odd options) refuse to be a
            # lower layer: show them read-only rather than not at all.
            libc.mount(op.source, target, None, libc.MS_BIND | libc.MS_REC)
            remount_read_only(target)

    def _readonly_mount(self, op: MountOp, target: str) -> None:
        # Not recursive: mounts below get ops of their own, and kernel
        # filesystems below (a host /proc) must stay out.
        assert op.source is not None
        _ensure_dir(target)
        libc.mount(op.source, target, None, libc.MS_BIND)
        # A bind keeps its source's per-mount flags, "ro" included: one
        # mount call, not two, for each of a laptop's dozens of snaps.
        if not os.statvfs(target).f_flag & os.ST_RDONLY:
            remount_read_only(target)

    def _root_dir(self, op: MountOp, target: str) -> None:
        # A directory of the stage tmpfs, made a mount point for pivot_root.
        os.mkdir(target)
        libc.mount(target, target, None, libc.MS_BIND)

    def _mkdir(self, op: MountOp, target: str) -> None:
        os.makedirs(target, exist_ok=True)

    def _bind(self, op: MountOp, target: str) -> None:
        assert op.source is not None
        if os.path.isdir(op.source):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
        libc.mount(op.source, target, None, libc.MS_BIND | libc.MS_REC)
        if op.readonly:
            remount_read_only(target)

    def _node(self, op: MountOp, target: str) -> None:
        assert op.source is not None
        host = os.stat(op.source)  # read in the host's /dev, before pivot_root
        os.mknod(target, host.st_mode, host.st_rdev)
        os.chmod(target, host.st_mode & 0o7777)  # mknod applies the umask

    def _tmpfs(self, op: MountOp, target: str) -> None:
        os.makedirs(target, exist_ok=True)
        data = "mode=0755" if op.size is None else f"mode=0755,size={op.size}"
        if op.target == "/dev/shm":
            data = data.replace("0755", "1777")
        libc.mount("tmpfs", target, "tmpfs", libc.MS_NOSUID, data)

    def _devpts(self, op: MountOp, target: str) -> None:
        os.makedirs(target, exist_ok=True)
        # newinstance: the container's ptys are its own, not the host's.
        libc.mount("devpts", target, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")

    def _sysfs(self, op: MountOp, target: str) -> None:
        os.makedirs(target, exist_ok=True)  # an image or directory may lack it
        flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_RDONLY
        try:
            libc.mount("sysfs", target, "sysfs", flags)
        except OSError:
            # Without our own network namespace the kernel refuses a fresh
            # sysfs; show the host's read-only instead.
            libc.mount("/sys", target, None, libc.MS_BIND | libc.MS_REC)
            remount_read_only(target)

    def _file(self, op: MountOp, target: str) -> None:
        assert op.source is not None
        self.files += 1
        content = os.path.join(self.stage, f"f{self.files}")
        fd = os.open(content, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, op.source.encode())
        finally:
            os.close(fd)
        self._bind(MountOp("bind", op.target, source=content), target)

    def _mask_file(self, op: MountOp, target: str) -> None:
        # Under a mount of its own (a home on its own filesystem, rootless
        # roots): an empty file bound over it.
        if _maskable(target, stat.S_ISREG):
            self._file(MountOp("file", op.target, source=""), target)

    def _mask_dir(self, op: MountOp, target: str) -> None:
        if not _maskable(target, stat.S_ISDIR):
            return
        flags = libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
        libc.mount("tmpfs", target, "tmpfs", flags, "mode=0555,size=4k")

    def _symlink(self, op: MountOp, target: str) -> None:
        assert op.source is not None
        os.symlink(op.source, target)

    def _copy_file(self, op: MountOp, target: str) -> None:
        assert op.source is not None
        try:
            with open(op.source, "rb") as source:
                content = source.read()
        except OSError:
            return  # unreadable for this user: absent in the container, as good as unreadable
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)


def _maskable(target: str, is_kind) -> bool:  # type: ignore[no-untyped-def]
    """Whether a credential path is there to hide: present, of its kind, and readable by us.

    Absent (an image), or closed to the container's user (user=True and
    rootless see root's 0640 /etc/shadow as "other"): it stays as it is, as
    closed to the test as to us.
    """
    try:
        return bool(is_kind(os.lstat(target).st_mode)) and os.access(target, os.R_OK)
    except OSError:
        return False


def build_root(
    plan: MountPlan,
    stage: str,
    disk: int,
    *,
    keep_stage: bool = False,
    rootless: bool = False,
    storage_driver: str = "overlay",
    proc: Callable[[str], None] | None = None,
) -> int | None:
    """Mount everything under ``stage``, then make it ``/``.

    ``proc`` mounts ``/proc`` at the path it is given, before the switch
    (default: ``mount_proc``, for a caller inside the container's PID
    namespace); the preparer, whose own is the host's, brings its own.

    With ``keep_stage``, return an ``O_PATH`` descriptor of the tmpfs that
    holds the writable layers, for reading them after the test (fsdiff).
    """
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    libc.mount("tmpfs", stage, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, f"size={disk},mode=0755")
    stage_fd = os.open(stage, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if keep_stage else None
    builder = _Builder(stage, rootless, storage_driver)
    ops = builder.inject_files(plan.ops)
    for op in ops:
        try:
            builder.apply(op)
        except OSError as error:
            if error.errno == errno.ENOENT and _vanished_host_mount(op):
                # The plan is the host's mount table at the session's start;
                # a container runtime or an automounter may have unmounted
                # this one since.  Gone on the host, gone in the container.
                continue
            if error.errno == errno.EACCES and rootless and op.target != "/":
                # In a user namespace path lookups run as the container's
                # root, which is nobody to the host: a host mount below a
                # directory only the host's root may enter (podman's
                # /var/lib/containers, a 0700 home) cannot be reached, and
                # the test could not reach it on the host either.  Left out.
                continue
            raise mount_error(op, error) from None
    # /proc of our PID namespace, mounted while the host's /proc is still in
    # view: in a user namespace the kernel allows a new proc (and sysfs)
    # only where a fully visible one already exists.
    (proc or mount_proc)(os.path.join(builder.root, "proc"))
    try:
        # pivot_root(".", ".") stacks the old root under the new one, so no
        # directory for it is needed; detaching it then hides the host.
        os.chdir(builder.root)
        libc.pivot_root(".", ".")
        libc.umount2(".", libc.MNT_DETACH)
        os.chdir("/")
    except OSError as error:
        # strerror already reads "pivot_root: Operation not permitted".
        advice = _CONFINED if error.errno == errno.EPERM else ""
        raise ContainerError("switch to the container's root", f"{error.strerror}", advice) from None
    return stage_fd


def _vanished_host_mount(op: MountOp) -> bool:
    """A host filesystem other than the root that is no longer where the plan found it."""
    source = op.source if op.kind != "overlay" else (op.layers or (op.source,))[0]
    return op.kind in ("overlay", "bind", "readonly_mount") and op.target != "/" and bool(source) and not os.path.exists(
        str(source)
    )


def mount_proc(target: str) -> None:
    """Mount the proc of the calling process's PID namespace (call from inside it)."""
    flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    try:
        os.makedirs(target, exist_ok=True)
        libc.mount("proc", target, "proc", flags)
    except OSError as error:
        failure = mount_error(MountOp("proc", "/proc"), error)
        if error.errno == errno.EPERM:
            # Not "needs root": in a user namespace the kernel mounts a new
            # proc only where one is fully visible (mount_too_revealing).
            failure = ContainerError(
                failure.stage,
                failure.reason,
                "the kernel mounts a fresh /proc in a user namespace only where /proc is fully visible, "
                f"and a container engine's masks hide parts of it; {_CONFINED}",
            )
        raise failure from None


# Inside a CI container the refusal is the engine's, not a missing root.
_CONFINED = "`pytest-isolate info` shows what this host or container refuses, and the flags that fix it"

_ADVICE = {
    errno.EPERM: f"the kernel refused the mount (it needs CAP_SYS_ADMIN, as root or in a user namespace); {_CONFINED}",
    errno.EACCES: f"the kernel refused the mount (it needs CAP_SYS_ADMIN, as root or in a user namespace); {_CONFINED}",
    errno.ENODEV: "the kernel lacks this filesystem: for overlay run 'modprobe overlay'",
    errno.ENOSPC: "the container's writable layer is full: raise disk=",
    errno.ELOOP: "overlay directories may not overlap",
    errno.EINVAL: "the kernel refused the mount options (an overlay lower layer on an unsupported filesystem?)",
}


def mount_error(op: MountOp, error: OSError) -> ContainerError:
    return ContainerError(
        "build the container's filesystem",
        f"{op.describe()}: {error.strerror or error}",
        _ADVICE.get(error.errno or 0, ""),
    )
