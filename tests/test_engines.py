"""The one set of flags, per engine, from probed facts (data in, text out: no kernel involved)."""

from __future__ import annotations

import errno

from pytest_isolate import engines
from pytest_isolate.container.confinement import (
    ROOT_ROUTE,
    STEP_PROC,
    STEP_UNSHARE,
    STEP_USERNS,
    USERNS_ROUTE,
    Confinement,
    Trial,
    explain,
)

DEFAULT_CAPS = frozenset("CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SETFCAP".split())


def confined(userns: Trial, **overrides: object) -> Confinement:
    facts: dict[str, object] = dict(
        euid=0,
        capabilities=DEFAULT_CAPS,
        seccomp=2,
        masked_proc=("/proc/kcore", "/proc/sys"),
        cgroup_read_only=True,
        proc_sys_read_only=True,
        apparmor=None,
        root_route=Trial(ROOT_ROUTE, STEP_UNSHARE, errno.EPERM),
        userns_route=userns,
    )
    facts.update(overrides)
    return Confinement(**facts)  # type: ignore[arg-type]


def test_podman_default_profile() -> None:
    found = confined(Trial(USERNS_ROUTE, STEP_PROC, errno.EPERM))
    flags = engines.needed_flags(found, engines.PODMAN, cgroup_writable=False)
    assert engines.command_line(engines.PODMAN, flags) == (
        "podman run --security-opt unmask=ALL -v /sys/fs/cgroup:/sys/fs/cgroup:rw --cap-add NET_ADMIN ..."
    )
    assert explain(found.userns_route, found) == (
        "refused at 'mount a fresh /proc' (EPERM: Operation not permitted): the engine masks /proc (2 mounts over "
        "its entries, e.g. /proc/kcore), and the kernel mounts a fresh /proc in a user namespace only where /proc "
        "is fully visible"
    )
    assert explain(found.root_route, found) == (
        "refused at 'create the mount, PID, UTS, IPC and network namespaces' (EPERM: Operation not permitted): "
        "CAP_SYS_ADMIN is missing"
    )


def test_docker_default_profile_with_apparmor() -> None:
    found = confined(Trial(USERNS_ROUTE, STEP_USERNS, errno.EPERM), apparmor="docker-default")
    flags = engines.needed_flags(found, engines.DOCKER, cgroup_writable=False)
    assert engines.command_line(engines.DOCKER, flags) == (
        "docker run --security-opt seccomp=unconfined --security-opt systempaths=unconfined "
        "--security-opt apparmor=unconfined -v /sys/fs/cgroup:/sys/fs/cgroup:rw --cap-add NET_ADMIN ..."
    )
    assert explain(found.userns_route, found).endswith(": the seccomp filter refuses unshare(CLONE_NEWUSER)")


def test_kubernetes_takes_the_root_route() -> None:
    found = confined(Trial(USERNS_ROUTE, STEP_USERNS, errno.EPERM))
    flags = engines.needed_flags(found, engines.KUBERNETES, cgroup_writable=False)
    assert engines.command_line(engines.KUBERNETES, flags) == (
        "securityContext.capabilities.add: [SYS_ADMIN]; securityContext.seccompProfile.type: Unconfined; "
        "securityContext.procMount: Unmasked (with hostUsers: false); "
        "a hostPath volume /sys/fs/cgroup mounted read-write at /sys/fs/cgroup; "
        "securityContext.capabilities.add: [NET_ADMIN]"
    )


def test_a_working_route_needs_only_what_limits_and_links_need() -> None:
    found = confined(Trial(USERNS_ROUTE), capabilities=DEFAULT_CAPS | {"NET_ADMIN"}, proc_sys_read_only=False)
    assert engines.needed_flags(found, engines.PODMAN, cgroup_writable=True) == []
    assert engines.advice(found, engines.PODMAN, cgroup_writable=True) == ""
    flags = engines.needed_flags(found, engines.PODMAN, cgroup_writable=False)
    assert engines.command_line(engines.PODMAN, flags) == "podman run -v /sys/fs/cgroup:/sys/fs/cgroup:rw ..."


def test_user_namespaces_off_is_not_an_engine_flag() -> None:
    """No seccomp filter, no masks: nothing an engine flag changes (a host sysctl does)."""
    found = confined(
        Trial(USERNS_ROUTE, STEP_USERNS, errno.ENOSPC), seccomp=0, masked_proc=(), proc_sys_read_only=False,
        capabilities=DEFAULT_CAPS | {"NET_ADMIN"},
    )
    assert engines.needed_flags(found, engines.UNKNOWN, cgroup_writable=True) == []
