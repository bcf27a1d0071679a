"""Capability probes: tests that need a kernel feature skip when it is absent.

A probe asks the kernel, never the distro name.  In CI, the environment
variable PYTEST_ISOLATE_REQUIRE lists the capabilities the machine is known
to have; a test that would skip for one of those fails instead, so a broken
probe cannot hide a broken feature.
"""

from __future__ import annotations

import functools
import os
import shutil

ALL = (
    "root",
    "overlay",
    "cgroup",
    "cgroup_v1",
    "cgroup_v2",
    "cgroup_delegated",
    "systemd",
    "netns",
    "rootless",
    "fuse_overlayfs",
    "rootless_fuse",
    "mmdebstrap",
    "podman",
    "docker",
)

# Optional host tools: a test that needs one skips naming the package to
# install, so the README's test command is green on a fresh machine; CI names
# them in PYTEST_ISOLATE_REQUIRE, so there a missing tool is a failure.
PACKAGES = {"fuse_overlayfs": "fuse-overlayfs", "mmdebstrap": "mmdebstrap"}


def skip_reason(capability: str) -> str:
    """What a skip for a missing capability says."""
    package = PACKAGES.get(capability)
    if package is not None:
        return f"needs {capability}: install the package {package} (apt-get install {package})"
    return f"needs {capability}"


def _mounts() -> list[tuple[str, str, set[str]]]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            sep = fields.index("-")
            entries.append((fields[4], fields[sep + 1], set(fields[sep + 3].split(","))))
    return entries


def _kernel_module(name: str) -> bool:
    """Whether the running kernel has ``name`` as a loadable or built-in module."""
    base = os.path.join("/lib/modules", os.uname().release)
    for listing in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join(base, listing), encoding="utf-8") as handle:
                for line in handle:
                    module = os.path.basename(line.split(":", 1)[0].strip())
                    if module.split(".ko", 1)[0] == name:
                        return True
        except OSError:
            continue
    return False


def _own_cgroup_delegated() -> bool:
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    if len(lines) != 1 or not lines[0].startswith("0::"):
        return False  # v1 or hybrid: nothing to delegate
    mounts = [mount_point for mount_point, fstype, _ in _mounts() if fstype == "cgroup2"]
    if not mounts:
        return False
    directory = os.path.join(mounts[0], lines[0][3:].lstrip("/"))
    try:
        with open(os.path.join(directory, "cgroup.controllers"), encoding="ascii") as handle:
            controllers = handle.read().split()
    except OSError:
        return False
    files = ("cgroup.procs", "cgroup.subtree_control")
    return (
        "memory" in controllers
        and os.access(directory, os.W_OK)
        and all(os.access(os.path.join(directory, name), os.W_OK) for name in files)
    )


@functools.lru_cache(maxsize=None)
def has(capability: str) -> bool:
    if capability == "root":
        return os.geteuid() == 0
    if capability == "overlay":
        # Registered, or a module the kernel loads on the first overlay mount
        # (Debian, Ubuntu). Looked up, not loaded: loading it here would hide
        # whether the plugin finds it on a fresh host.
        with open("/proc/filesystems", encoding="ascii") as handle:
            if any(line.split()[-1] == "overlay" for line in handle):
                return True
        return _kernel_module("overlay")
    if capability == "cgroup_v1":
        return any(fstype == "cgroup" and "memory" in opts for _, fstype, opts in _mounts())
    if capability == "cgroup_v2":
        if has("cgroup_v1"):
            return False  # a hybrid host: the plugin uses v1 there
        for mount_point, fstype, _ in _mounts():
            if fstype == "cgroup2":
                with open(os.path.join(mount_point, "cgroup.controllers"), encoding="ascii") as handle:
                    return "memory" in handle.read().split()
        return False
    if capability == "cgroup_delegated":
        # Our own cgroup is a v2 subtree we may manage: writable, with the
        # memory controller (root's cgroup, or one systemd delegated to a user).
        return _own_cgroup_delegated()
    if capability == "systemd":
        # systemd is PID 1: the test sd_booted(3) makes.
        return os.path.isdir("/run/systemd/system")
    if capability == "cgroup":
        return has("cgroup_v1") or has("cgroup_v2")
    if capability == "netns":
        return os.path.exists("/proc/self/ns/net")
    if capability == "fuse_overlayfs":
        return shutil.which("fuse-overlayfs") is not None and os.path.exists("/dev/fuse")
    if capability == "rootless_fuse":
        # Not root, and fuse-overlayfs can be run by us: the program, and
        # /dev/fuse open to our user (root-only on some hosts).
        from pytest_isolate.container.overlay_probe import fuse_usable

        return os.geteuid() != 0 and fuse_usable()[0]
    if capability == "mmdebstrap":
        return shutil.which("mmdebstrap") is not None
    if capability == "rootless":
        # Not root, and the kernel lets us make a user namespace (where our
        # user is root): what rootless containers need.
        if os.geteuid() == 0:
            return False
        from pytest_isolate.container.userns import available

        return available()[0]
    if capability in ("podman", "docker"):
        # The engine runs a container here (docker: its daemon answers) and a base image can be made.
        from engine_helpers import usable

        return usable(capability)
    raise ValueError(f"unknown capability {capability!r}; known: {', '.join(ALL)}")


def required_by_environment() -> set[str]:
    value = os.environ.get("PYTEST_ISOLATE_REQUIRE", "")
    required = {word.strip() for word in value.split(",") if word.strip()}
    unknown = required - set(ALL)
    if unknown:
        raise ValueError(f"PYTEST_ISOLATE_REQUIRE names unknown capabilities {sorted(unknown)}; known: {', '.join(ALL)}")
    return required
