"""Inside the build sandbox: assemble a step's root, then become the step's shell.

Run as ``python -m pytest_isolate.images.stepenv SPEC_JSON`` by
``build.py`` through ``runner.run_sandboxed``, so every mount below is in a
private mount namespace that vanishes with the step (the "unmount after"):

- an overlay of the previous layers (lower) with the new layer's directory
  as the upper: whatever the step changes lands in the new layer, including
  deletions as whiteouts;
- a fresh ``/proc`` (of the sandbox's PID namespace), a minimal ``/dev``
  (tmpfs with binds of the harmless nodes, a private devpts, ``/dev/shm``)
  and a read-only ``/sys``;
- a copy of the host's ``/etc/resolv.conf`` so apt can resolve names; the
  builder deletes it from the layer afterwards.
"""

from __future__ import annotations

import json
import os
import sys

from pytest_isolate.container import libc

DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}  # fmt: skip
# Layers must be plain directories that any kernel can stack: no redirects,
# no metacopy-only files, no index (which ties an upper to its lower's identity).
OVERLAY_OPTIONS = "index=off,redirect_dir=off,metacopy=off"


def _mkdir(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def mount_overlay(lowers: list[str], upper: str, work: str, merged: str) -> None:
    # ``lowers`` are short paths relative to the cwd (the cache's layers/):
    # absolute ones overflow the one-page mount data after ~70 layers.
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},{OVERLAY_OPTIONS}"
    libc.mount("overlay", merged, "overlay", 0, options)


def mount_minimal_dev(root: str) -> None:
    dev = os.path.join(root, "dev")
    _mkdir(dev)
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC, "mode=755,size=1m")
    for name in DEVICE_NODES:
        target = os.path.join(dev, name)
        open(target, "w").close()
        libc.mount(f"/dev/{name}", target, None, libc.MS_BIND)
    _mkdir(os.path.join(dev, "pts"))
    libc.mount("devpts", os.path.join(dev, "pts"), "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=620")  # fmt: skip
    _mkdir(os.path.join(dev, "shm"))
    libc.mount("tmpfs", os.path.join(dev, "shm"), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777")
    for name, destination in DEV_LINKS.items():
        os.symlink(destination, os.path.join(dev, name))


def copy_resolv_conf(root: str) -> None:
    target = os.path.join(root, "etc", "resolv.conf")
    if not os.path.isdir(os.path.dirname(target)):
        return
    if os.path.lexists(target):
        os.unlink(target)  # a symlink into /run would point nowhere in the chroot
    try:
        with open("/etc/resolv.conf", "rb") as source:
            content = source.read()
    except OSError:
        return
    with open(target, "wb") as handle:
        handle.write(content)


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    os.chdir(spec["layers_dir"])
    merged = spec["merged"]
    mount_overlay(spec["lowers"], spec["upper"], spec["work"], merged)
    _mkdir(os.path.join(merged, "proc"))
    libc.mount("proc", os.path.join(merged, "proc"), "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    mount_minimal_dev(merged)
    _mkdir(os.path.join(merged, "sys"))
    libc.mount("sysfs", os.path.join(merged, "sys"), "sysfs", libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)
    copy_resolv_conf(merged)
    os.chroot(merged)
    os.chdir("/")
    # -e: a multi-line step stops at its first failing command; -x: the log
    # (and the error's output tail) shows which command that was.
    os.execve("/bin/sh", ["/bin/sh", "-e", "-x", "-c", spec["run"]], spec["env"])


if __name__ == "__main__":
    main(sys.argv)
