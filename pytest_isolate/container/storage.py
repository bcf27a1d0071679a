"""Storage drivers: how a container gets a writable view of read-only layers.

* ``overlay``: the kernel's overlayfs (the default, and the fastest).
* ``fuse``: fuse-overlayfs, where the kernel refuses overlayfs (inside some
  containers); a FUSE daemon per mount, which dies with the container's PID
  namespace.  About 3.5 ms per mount.
* ``copy``: a copy of the layers into the container's tmpfs; for small
  images and directories only (never the host's root).

``isolate_storage = auto`` (the default) takes the first that works here,
in that order; a value forces one.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

from pytest_isolate.errors import ContainerError

DRIVERS = ("overlay", "fuse", "copy")


def kernel_overlay_available() -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii") as handle:
            return any(line.split()[-1] == "overlay" for line in handle if line.split())
    except OSError:
        return False


def fuse_overlayfs() -> str | None:
    path = shutil.which("fuse-overlayfs")
    return path if path and os.path.exists("/dev/fuse") else None


def choose(setting: str) -> str:
    """The driver for ``isolate_storage``; raises ContainerError for one this host lacks."""
    setting = (setting or "auto").strip()
    if setting == "auto":
        if kernel_overlay_available():
            return "overlay"
        return "fuse" if fuse_overlayfs() else "copy"
    if setting not in DRIVERS:
        raise ContainerError(
            "choose a storage driver",
            f"isolate_storage = {setting} is not one of auto, {', '.join(DRIVERS)}",
            "set isolate_storage to one of them",
        )
    if setting == "overlay" and not kernel_overlay_available():
        raise ContainerError("use kernel overlayfs", "this kernel has no overlay filesystem", "modprobe overlay, or isolate_storage = fuse")
    if setting == "fuse" and not fuse_overlayfs():
        raise ContainerError("use fuse-overlayfs", "fuse-overlayfs or /dev/fuse is missing", "apt-get install fuse-overlayfs")
    return setting


def mount_fuse(lowers: str, upper: str, work: str, target: str) -> None:
    """fuse-overlayfs over ``target`` (``lowers`` already escaped and joined)."""
    binary = fuse_overlayfs()
    if binary is None:
        raise ContainerError("mount fuse-overlayfs", "fuse-overlayfs or /dev/fuse is missing", "apt-get install fuse-overlayfs")
    options = f"lowerdir={lowers},upperdir={upper},workdir={work}"
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
