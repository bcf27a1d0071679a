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

ALL = ("root", "overlay", "cgroup", "cgroup_v1", "cgroup_v2", "netns", "rootless", "fuse_overlayfs", "mmdebstrap", "podman", "docker")

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


@functools.lru_cache(maxsize=None)
def has(capability: str) -> bool:
    if capability == "root":
        return os.geteuid() == 0
    if capability == "overlay":
        with open("/proc/filesystems", encoding="ascii") as handle:
            return any(line.split()[-1] == "overlay" for line in handle)
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
    if capability == "cgroup":
        return has("cgroup_v1") or has("cgroup_v2")
    if capability == "netns":
        return os.path.exists("/proc/self/ns/net")
    if capability == "fuse_overlayfs":
        return shutil.which("fuse-overlayfs") is not None and os.path.exists("/dev/fuse")
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
