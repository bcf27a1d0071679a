"""Which container engine we run inside, and the one set of flags it needs.

A CI job's container (docker, podman, a Kubernetes pod) takes away what
pytest-isolate builds containers with.  The fix is a handful of flags on the
job's container, and a user should read all of them at once, not one wall
per run: this module turns the probed facts (``container.confinement``)
into that set, spelled for the engine it detects, minimal first and
``--privileged`` (which grants far more) last.
"""

from __future__ import annotations

import dataclasses
import errno
import os

from pytest_isolate.container.confinement import (
    STEP_MOUNT,
    STEP_PIVOT,
    STEP_PROC,
    STEP_UNSHARE,
    STEP_USERNS,
    Confinement,
)

DOCKER, PODMAN, KUBERNETES, UNKNOWN = "docker", "podman", "kubernetes", "unknown"


def detect() -> tuple[str, str]:
    """(engine, the evidence); ``unknown`` with no evidence on a host or an engine we do not know.

    Kubernetes first: its pods may also carry the marker file of the
    engine underneath (``/.dockerenv`` on a docker-backed node).
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return KUBERNETES, "KUBERNETES_SERVICE_HOST is set"
    if os.path.exists("/var/run/secrets/kubernetes.io"):
        return KUBERNETES, "/var/run/secrets/kubernetes.io exists"
    if os.path.exists("/run/.containerenv"):
        return PODMAN, "/run/.containerenv exists"
    if os.path.exists("/.dockerenv"):
        return DOCKER, "/.dockerenv exists"
    return UNKNOWN, ""


@dataclasses.dataclass(frozen=True)
class Flag:
    key: str  # unmask, seccomp, apparmor, cgroup, net_admin
    grants: str  # what it lets the kernel allow
    needed_for: str  # what of pytest-isolate needs it

    def spelled(self, engine: str) -> str:
        return SPELLING[self.key][engine]


SPELLING = {
    "unmask": {
        PODMAN: "--security-opt unmask=ALL",
        DOCKER: "--security-opt systempaths=unconfined",
        KUBERNETES: "securityContext.procMount: Unmasked (with hostUsers: false)",
        UNKNOWN: "unmask /proc (podman: --security-opt unmask=ALL; docker: --security-opt systempaths=unconfined)",
    },
    "seccomp": {
        PODMAN: "--security-opt seccomp=unconfined",
        DOCKER: "--security-opt seccomp=unconfined",
        KUBERNETES: "securityContext.seccompProfile.type: Unconfined",
        UNKNOWN: "no seccomp filter (docker/podman: --security-opt seccomp=unconfined)",
    },
    "apparmor": {
        PODMAN: "--security-opt apparmor=unconfined",
        DOCKER: "--security-opt apparmor=unconfined",
        KUBERNETES: "securityContext.appArmorProfile.type: Unconfined",
        UNKNOWN: "no AppArmor profile (docker/podman: --security-opt apparmor=unconfined)",
    },
    "cgroup": {
        PODMAN: "-v /sys/fs/cgroup:/sys/fs/cgroup:rw",
        DOCKER: "-v /sys/fs/cgroup:/sys/fs/cgroup:rw",
        KUBERNETES: "a hostPath volume /sys/fs/cgroup mounted read-write at /sys/fs/cgroup",
        UNKNOWN: "/sys/fs/cgroup mounted read-write (docker/podman: -v /sys/fs/cgroup:/sys/fs/cgroup:rw)",
    },
    "net_admin": {
        PODMAN: "--cap-add NET_ADMIN",
        DOCKER: "--cap-add NET_ADMIN",
        KUBERNETES: "securityContext.capabilities.add: [NET_ADMIN]",
        UNKNOWN: "the NET_ADMIN capability (docker/podman: --cap-add NET_ADMIN)",
    },
    "sys_admin": {
        PODMAN: "--cap-add SYS_ADMIN",
        DOCKER: "--cap-add SYS_ADMIN",
        KUBERNETES: "securityContext.capabilities.add: [SYS_ADMIN]",
        UNKNOWN: "the SYS_ADMIN capability (docker/podman: --cap-add SYS_ADMIN)",
    },
    "privileged": {
        PODMAN: "--privileged",
        DOCKER: "--privileged",
        KUBERNETES: "securityContext.privileged: true",
        UNKNOWN: "a privileged container (docker/podman: --privileged)",
    },
}

UNMASK = Flag(
    "unmask",
    "a /proc without the engine's masks, so the kernel lets a user namespace mount a fresh /proc",
    "every isolated test",
)
UNMASK_FOR_LINKS = Flag(
    "unmask", "a writable /proc/sys, to switch off forwarding on the host's end of a veth link", 'net="private"'
)
SECCOMP = Flag(
    "seccomp",
    "the syscalls the engine's seccomp profile refuses: unshare of a user namespace, mount, pivot_root",
    "every isolated test",
)
APPARMOR = Flag("apparmor", "mounts, which the engine's AppArmor profile denies", "every isolated test")
CGROUP = Flag(
    "cgroup",
    "a writable cgroup tree, for the test cgroups that enforce limits (made inside this container's cgroup)",
    "mem=, cpu=, pids=",
)
NET_ADMIN = Flag("net_admin", "CAP_NET_ADMIN, to create a veth link from this container to the test's", 'net="private"')
SYS_ADMIN = Flag(
    "sys_admin",
    "CAP_SYS_ADMIN, to create namespaces and mount as root (the root route)",
    "every isolated test",
)
PRIVILEGED = Flag("privileged", "every capability, no seccomp, no masks, writable cgroups: far more than needed", "all")

# Engines whose default seccomp profile refuses unshare(CLONE_NEWUSER) and
# mount without CAP_SYS_ADMIN, and pivot_root even with it (docker's, which
# containerd and CRI-O follow); podman's allows what a user namespace needs.
_STRICT_SECCOMP = (DOCKER, KUBERNETES)


def needed_flags(confinement: Confinement, engine: str, cgroup_writable: bool) -> list[Flag]:
    """The one complete set: after it, every marker argument works (minimal: the user-namespace route)."""
    flags: list[Flag] = []
    if confinement.route is None and engine == KUBERNETES:
        # A pod's /proc is unmasked only with procMount: Unmasked, which
        # needs a user-namespaced pod (hostUsers: false): the root route is
        # the one a plain pod spec can ask for.
        flags.append(SYS_ADMIN)
        if confinement.seccomp == 2:
            flags.append(SECCOMP)
        if confinement.apparmor:
            flags.append(APPARMOR)
        if confinement.proc_sys_read_only:
            flags.append(UNMASK_FOR_LINKS)
    elif confinement.route is None:
        trial = confinement.userns_route
        refused_by_filter = trial.error == errno.EPERM and trial.failed_step in (
            STEP_USERNS,
            STEP_UNSHARE,
            STEP_MOUNT,
            STEP_PIVOT,
        )
        if confinement.seccomp == 2 and (engine in _STRICT_SECCOMP or refused_by_filter):
            flags.append(SECCOMP)
        if confinement.masked_proc or trial.failed_step == STEP_PROC:
            flags.append(UNMASK)
        if confinement.apparmor:
            flags.append(APPARMOR)
    elif confinement.proc_sys_read_only:
        flags.append(UNMASK_FOR_LINKS)
    if not cgroup_writable:
        flags.append(CGROUP)
    if confinement.euid == 0 and not confinement.has("NET_ADMIN"):
        flags.append(NET_ADMIN)
    return flags


def command_line(engine: str, flags: list[Flag]) -> str:
    """The flags as the engine spells them, on one line."""
    spelled = [flag.spelled(engine) for flag in flags]
    if engine in (DOCKER, PODMAN):
        return f"{engine} run {' '.join(spelled)} ..."
    return "; ".join(spelled)


def advice(confinement: Confinement, engine: str, cgroup_writable: bool) -> str:
    """One sentence for an error message: the whole set, then --privileged."""
    flags = needed_flags(confinement, engine, cgroup_writable)
    where = f"this {engine} container" if engine != UNKNOWN else "this container"
    blunt = command_line(engine, [PRIVILEGED])
    if not flags:
        return ""
    return (
        f"start {where} with {command_line(engine, flags)} (what each flag grants: pytest-isolate info), "
        f"or, granting far more, {blunt}"
    )
