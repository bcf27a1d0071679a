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
    "proc_pidns",
    "rootless",
    "fuse_overlayfs",
    "rootless_fuse",
    "mmdebstrap",
    "podman",
    "docker",
    "memfd_exec",
    "qemu_aarch64",
)

# What a test cgroup limits: the controllers a delegated subtree must hand on.
LIMIT_CONTROLLERS = ("memory", "cpu", "pids")

# Optional host tools: a test that needs one skips naming the package to
# install, so the README's test command is green on a fresh machine; CI names
# them in PYTEST_ISOLATE_REQUIRE, so there a missing tool is a failure.
PACKAGES = {"fuse_overlayfs": "fuse-overlayfs", "mmdebstrap": "mmdebstrap", "qemu_aarch64": "qemu-user"}


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
    if capability == "cgroup":
        return has("cgroup_v1") or has("cgroup_v2")
    if capability == "cgroup_delegated":
        return os.geteuid() != 0 and has("cgroup_v2") and _delegated_cgroup() is not None
    if capability == "systemd":
        # systemd is PID 1: the test sd_booted(3) makes.
        return os.path.isdir("/run/systemd/system")
    if capability == "netns":
        return os.path.exists("/proc/self/ns/net")
    if capability == "proc_pidns":
        # Linux 6.15+: proc mounted for another PID namespace (pidns=), what
        # lets the preparer spawn init rather than fork it.  Tried as root.
        return os.geteuid() == 0 and _proc_takes_pidns()
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
    if capability == "memfd_exec":
        # The kernel runs a program from a memfd (not refused by
        # vm.memfd_noexec=2), on an architecture the containers' own init is
        # written for: then init is that program, not the shell.
        try:
            with open("/proc/sys/vm/memfd_noexec", encoding="ascii") as handle:
                refused = handle.read().strip() == "2"
        except OSError:
            refused = False  # before Linux 6.3: every memfd may be executed
        return not refused and os.uname().machine in ("x86_64", "aarch64")
    if capability == "qemu_aarch64":
        # Runs the AArch64 init on any host, as a user-mode emulator.
        return shutil.which("qemu-aarch64") is not None or shutil.which("qemu-aarch64-static") is not None
    if capability in ("podman", "docker"):
        # The engine runs a container here (docker: its daemon answers) and a base image can be made.
        from engine_helpers import usable

        return usable(capability)
    raise ValueError(f"unknown capability {capability!r}; known: {', '.join(ALL)}")


@functools.lru_cache(maxsize=None)
def _proc_takes_pidns() -> bool:
    """Mount a proc with pidns= in a throw-away child's private mount namespace."""
    from pytest_isolate.container import libc, rootfs
    from pytest_isolate.container.child import answer_from_child

    def question() -> bytes:
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        libc.mount("proc", rootfs.ensure_stage_dir(), "proc", 0, "pidns=/proc/self/ns/pid")
        return b"yes"

    return answer_from_child(question) == b"yes"


def _delegated_cgroup() -> str | None:
    """A cgroup v2 directory this user may make children in, with the limit controllers for them.

    What systemd's ``Delegate=yes`` gives a user (``user@UID.service``, or
    ``systemd-run --user --scope -p Delegate=yes``): the directories from our
    own cgroup's parent up to the mount point are looked at, as the plugin
    does (a cgroup with processes in it may not hand controllers on, the
    "no internal processes" rule of cgroups(7)).  Asked by making and
    removing a child, never by reading ownership alone.
    """
    mount_point = next((point for point, fstype, _ in _mounts() if fstype == "cgroup2"), None)
    if mount_point is None:
        return None
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        own = next((line.strip()[3:] for line in handle if line.startswith("0::")), None)
    if own is None:
        return None
    candidate = os.path.normpath(mount_point + own)
    while candidate.startswith(mount_point) and candidate != mount_point:
        candidate = os.path.dirname(candidate)
        if _delegates_limits(candidate):
            return candidate
    return None


def _delegates_limits(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "cgroup.controllers"), encoding="ascii") as handle:
            available = handle.read().split()
        with open(os.path.join(directory, "cgroup.subtree_control"), encoding="ascii") as handle:
            enabled = handle.read().split()
    except OSError:
        return False
    if not all(controller in available for controller in LIMIT_CONTROLLERS):
        return False
    # Controllers not yet handed on must be ours to enable.
    if not all(controller in enabled for controller in LIMIT_CONTROLLERS) and not os.access(
        os.path.join(directory, "cgroup.subtree_control"), os.W_OK
    ):
        return False
    probe = os.path.join(directory, f"pytest-isolate-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def required_by_environment() -> set[str]:
    value = os.environ.get("PYTEST_ISOLATE_REQUIRE", "")
    required = {word.strip() for word in value.split(",") if word.strip()}
    unknown = required - set(ALL)
    if unknown:
        raise ValueError(f"PYTEST_ISOLATE_REQUIRE names unknown capabilities {sorted(unknown)}; known: {', '.join(ALL)}")
    return required
