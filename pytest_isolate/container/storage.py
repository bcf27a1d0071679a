"""Storage drivers: how a container gets a writable view of read-only layers.

* ``overlay``: the kernel's overlayfs (the default, and the fastest).
* ``fuse``: fuse-overlayfs, where the kernel refuses overlayfs (inside some
  containers); a FUSE daemon per mount, which dies with the container's PID
  namespace.  About 3.5 ms per mount.
* ``copy``: a copy of the layers into the container's tmpfs; for small
  images and directories only (never the host's root).

``isolate_storage = auto`` (the default) takes the first that works here,
in that order (rootless: fuse-overlayfs first, see :func:`choose`); a value
forces one.  "Works" is tried, not read from /proc/filesystems (see
overlay_probe).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

from pytest_isolate.container import overlay_probe
from pytest_isolate.errors import ContainerError

DRIVERS = ("overlay", "fuse", "copy")


def kernel_overlay_available(rootless: bool | None = None) -> bool:
    """Whether a kernel overlay works here as a container uses it (tried, not read from a list)."""
    return overlay_probe.probe(_rootless(rootless)).usable


def fuse_overlayfs() -> str | None:
    path = overlay_probe.fuse_overlayfs_binary()
    return path if path and overlay_probe.fuse_usable()[0] else None


def _rootless(rootless: bool | None) -> bool:
    return os.geteuid() != 0 if rootless is None else rootless


def choose(setting: str, rootless: bool | None = None) -> str:
    """The driver for ``isolate_storage``; raises ContainerError for one this host lacks.

    Rootless, ``auto`` takes fuse-overlayfs with ``squash_to_root`` where
    this user may use it: every file is then the container root's, so a test
    may change or delete anything, ``/usr`` included, exactly as under root
    (issue 11).  It costs a FUSE daemon per mount and every file access
    through it (measured in README); ``isolate_storage = overlay`` takes the
    kernel's overlay instead, faster, but in a user namespace the host
    root's files are nobody's there and stay as they are (a test cannot
    delete ``/usr/share/doc`` or make ``/usr/share/x``).  Without a usable
    fuse-overlayfs, auto takes the kernel's overlay where a trial one can
    write (not on Linux < 6.6, whose tmpfs lacks user.* xattrs).
    """
    return explain(setting, rootless)[0]


def explain(setting: str, rootless: bool | None = None) -> tuple[str, str]:
    """(driver, why), for ``pytest-isolate info``; raises ContainerError as :func:`choose` does."""
    setting = (setting or "auto").strip()
    rootless = _rootless(rootless)
    if setting not in ("auto", *DRIVERS):
        raise ContainerError(
            "choose a storage driver",
            f"isolate_storage = {setting} is not one of auto, {', '.join(DRIVERS)}",
            "set isolate_storage to one of them",
        )
    kernel = overlay_probe.probe(rootless)
    fuse, no_fuse = overlay_probe.fuse_usable()
    if setting == "auto" and rootless:
        if fuse and kernel.usable:
            return "fuse", f"{ROOTLESS_FUSE_WHY}; isolate_storage = overlay is faster, but there {ROOTLESS_KERNEL_LIMIT}"
        if fuse:
            return "fuse", f"{ROOTLESS_FUSE_WHY}; the kernel's overlay failed in a user namespace ({kernel.failure})"
        if kernel.usable:
            return "overlay", f"the kernel's overlay in a user namespace: {ROOTLESS_KERNEL_LIMIT}; fuse-overlayfs, which would let it, cannot be used here: {no_fuse}"
        raise _rootless_refused(kernel, no_fuse)
    if setting == "auto":
        if kernel.usable:
            return "overlay", "the kernel's overlayfs"
        if fuse:
            return "fuse", f"the kernel's overlay failed ({kernel.failure})"
        return "copy", f"the kernel's overlay failed ({kernel.failure}) and {no_fuse}"
    if setting == "overlay" and not kernel.usable:
        if rootless and kernel.mounts:
            raise _rootless_refused(kernel, no_fuse)
        raise ContainerError("use kernel overlayfs", f"a trial overlay failed: {kernel.failure}", "modprobe overlay, or isolate_storage = fuse")
    if setting == "fuse" and not fuse:
        raise ContainerError("use fuse-overlayfs", no_fuse, "apt-get install fuse-overlayfs, and let this user open /dev/fuse")
    return setting, "isolate_storage = " + setting


ROOTLESS_FUSE_WHY = (
    "fuse-overlayfs with squash_to_root: rootless, every file is the container root's, "
    "so a test may change or delete any file, as under root"
)
ROOTLESS_KERNEL_LIMIT = "the test cannot change or delete the host root's files (they are nobody's in a user namespace)"


def _rootless_refused(kernel: overlay_probe.OverlayProbe, no_fuse: str) -> ContainerError:
    old_tmpfs = "" if kernel.tmpfs_user_xattrs is not False else (
        f"; this kernel's tmpfs takes no user.* xattrs (Linux {overlay_probe.TMPFS_USER_XATTRS} adds them), "
        "which the kernel's overlay needs in a user namespace"
    )
    if no_fuse:
        other = f"; fuse-overlayfs, the other way, cannot be used: {no_fuse}"
        advice = "install fuse-overlayfs and let this user open /dev/fuse (mode 0666 on most distributions), or run pytest as root"
    else:
        other, advice = "", "isolate_storage = auto or fuse: fuse-overlayfs works here"
    return ContainerError(
        "build the container's filesystem",
        f"pytest runs as uid {os.geteuid()}, and a trial overlay in a user namespace failed: {kernel.failure}{old_tmpfs}{other}",
        advice,
    )


def mount_fuse(lowers: str, upper: str, work: str, target: str, *, squash: bool = False) -> None:
    """fuse-overlayfs over ``target`` (``lowers`` already escaped and joined).

    ``squash``: every file shows as owned by the container's root
    (``squash_to_root``): rootless, root of the user namespace then has the
    power over the host root's files that root has in a root-mode container.
    """
    binary = fuse_overlayfs()
    if binary is None:
        raise ContainerError("mount fuse-overlayfs", overlay_probe.fuse_usable()[1], "apt-get install fuse-overlayfs")
    options = f"lowerdir={lowers},upperdir={upper},workdir={work}" + (",squash_to_root" if squash else "")
    result = subprocess.run([binary, "-o", options, target], capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerError("mount fuse-overlayfs", f"on {target}: {result.stderr.strip()}", "")


def copy_layers(layers: list[str], target: str) -> None:
    """Lowest layer first; overlay whiteouts (0/0 character devices) delete what is below."""
    for layer in reversed(layers):
        for current, dirs, files in os.walk(layer):
            relative = os.path.relpath(current, layer)
            destination = os.path.normpath(os.path.join(target, relative))
            os.makedirs(destination, exist_ok=True)
            for name in dirs + files:
                source = os.path.join(current, name)
                copy = os.path.join(destination, name)
                info = os.lstat(source)
                if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                    _remove(copy)
                elif stat.S_ISLNK(info.st_mode):
                    _remove(copy)
                    os.symlink(os.readlink(source), copy)
                elif stat.S_ISREG(info.st_mode):
                    _remove(copy)
                    shutil.copy2(source, copy)
                elif not stat.S_ISDIR(info.st_mode):
                    continue  # device nodes and sockets: the container has its own /dev


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
