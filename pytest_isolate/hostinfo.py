"""What this host gives the plugin: read from the kernel, never guessed.

Used by ``pytest-isolate info``, pytest's header line, and the JSON report.
"""

from __future__ import annotations

import os
from typing import Any

from pytest_isolate.container.mountinfo import read_mounts


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def kernel() -> str:
    return os.uname().release


def root_filesystem() -> str:
    entries = [entry for entry in read_mounts() if entry.mount_point == "/"]
    return entries[-1].fstype if entries else "unknown"


def cgroup_facts() -> dict[str, Any]:
    from pytest_isolate.container.cgroups import CgroupV1, CgroupV2

    v1 = CgroupV1.detect()
    if v1 is not None:
        memory = next(e for e in read_mounts() if e.fstype == "cgroup" and "memory" in e.super_options)
        return {
            "version": 1,
            "mount": os.path.dirname(memory.mount_point),
            "controllers": sorted(v1.parents),
            "cgroup": v1.parents["memory"],
        }
    v2 = CgroupV2.detect()
    if v2 is not None:
        controllers = (_read(os.path.join(v2.mount_point, "cgroup.controllers")) or "").split()
        return {"version": 2, "mount": v2.mount_point, "controllers": controllers, "cgroup": v2.own_dir}
    return {"version": None, "mount": None, "controllers": [], "cgroup": None}


def user_namespaces() -> dict[str, Any]:
    limit = _read("/proc/sys/user/max_user_namespaces")
    return {"max": int(limit) if limit and limit.isdigit() else None, "allowed": bool(limit and limit != "0")}


def confinement_facts() -> dict[str, Any]:
    """Inside a CI container: what the kernel allows, both routes tried, and the flags that fix the rest."""
    from pytest_isolate import engines
    from pytest_isolate.container import apparmor_userns
    from pytest_isolate.container.confinement import explain, probe

    found = probe(try_both=True)
    engine, evidence = engines.detect()
    writable = cgroups_writable()
    flags = engines.needed_flags(found, engine, writable)
    return {
        "engine": engine,
        "engine_evidence": evidence or None,
        "effective_capabilities": sorted(found.capabilities),
        "missing_capabilities": [name for name in ("SYS_ADMIN", "NET_ADMIN") if not found.has(name)],
        "seccomp": _seccomp_name(found.seccomp),
        "masked_proc": list(found.masked_proc),
        "apparmor": found.apparmor,
        "cgroup_read_only": found.cgroup_read_only,
        "proc_sys_read_only": found.proc_sys_read_only,
        "cgroup_writable": writable,
        "routes": {found.root_route.route: explain(found.root_route, found), found.userns_route.route: explain(found.userns_route, found)},
        "apparmor_userns": apparmor_userns.state(found.userns_route),
        "apparmor_userns_restricted": apparmor_userns.diagnose(found.userns_route) is not None,
        "apparmor_userns_remedies": apparmor_userns.remedies() if apparmor_userns.diagnose(found.userns_route) else None,
        "route": found.route,
        "flags": [{"flag": flag.spelled(engine), "grants": flag.grants, "needed_for": flag.needed_for} for flag in flags],
        "command_line": engines.command_line(engine, flags) if flags else None,
        "privileged": engines.command_line(engine, [engines.PRIVILEGED]),
    }


def _seccomp_name(mode: int | None) -> str:
    from pytest_isolate.container.confinement import SECCOMP_MODES

    return "unknown" if mode is None else SECCOMP_MODES.get(mode, str(mode))


def cgroups_writable() -> bool:
    """Whether test cgroups can be made here (root: a writable tree; a user: a delegated v2 subtree)."""
    from pytest_isolate.container.cgroups import detect_backend

    backend = detect_backend()
    if backend is None:
        return False
    if os.geteuid() == 0:
        return all(os.access(path, os.W_OK) for path in backend.directories())
    return backend.version == 2 and all(os.access(path, os.W_OK) for path in backend.directories())


def storage_driver(setting: str = "auto") -> str | None:
    return storage_choice(setting)[0]


def storage_choice(setting: str = "auto") -> tuple[str | None, str]:
    """(the driver a test gets here, why): each tried by a trial mount, not read from a list."""
    from pytest_isolate.container import storage
    from pytest_isolate.errors import ContainerError

    try:
        return storage.explain(setting)
    except ContainerError as error:
        return None, f"{error.reason}; {error.advice}" if error.advice else error.reason


def summary_facts(storage_setting: str = "auto") -> dict[str, Any]:
    cgroups = cgroup_facts()
    driver, why = storage_choice(storage_setting)
    return {
        "kernel": kernel(),
        "root": os.geteuid() == 0,
        "storage_driver": driver,
        "storage_why": why,
        "root_filesystem": root_filesystem(),
        "cgroup_version": cgroups["version"],
        "cgroup_controllers": cgroups["controllers"],
    }


def argument_support(facts: dict[str, Any], confined: dict[str, Any] | None = None) -> dict[str, tuple[bool, str]]:
    """Marker argument -> (works here, why not and the fix).

    ``confined`` (from :func:`confinement_facts`) makes the answers honest
    inside a CI container, where root may lack what root usually has.
    """
    root = facts["root"]
    storage = facts["storage_driver"] in ("overlay", "fuse")
    userns = root or user_namespaces()["allowed"]
    container = storage and userns
    fix = " (see the flags below)" if confined and confined["command_line"] else ""
    # The AppArmor restriction comes first: it also fails the trial overlay
    # (no mount in the user namespace), so "no overlay" would send the user
    # after the wrong cause.
    if confined and not root and confined["apparmor_userns_restricted"]:
        container = False
        why_not = "AppArmor restricts unprivileged user namespaces here: see AppArmor Userns above for the three ways out"
    elif not storage:
        why_not = "needs the overlay filesystem (modprobe overlay) or fuse-overlayfs"
    elif confined and root and confined["route"] is None:
        container = False
        why_not = "the kernel refuses both ways to build a container here (see Container Routes and the flags below)"
    elif not userns:
        why_not = "needs root, or user namespaces for rootless containers (sysctl user.max_user_namespaces=15000)"
    else:
        why_not = ""
    controllers = set(facts["cgroup_controllers"])

    def limit(controller: str) -> tuple[bool, str]:
        if not container:
            return False, why_not
        if controller not in controllers:
            return False, f"needs the {controller} cgroup controller, which this host does not offer"
        if confined and root and not confined["cgroup_writable"]:
            state = "is mounted read-only" if confined["cgroup_read_only"] else "may not be written"
            return False, f"the cgroup filesystem {state}{fix}"
        if not root and facts["cgroup_version"] == 1:
            return False, "cgroup v1 cannot be delegated to a user: run as root, or isolate_limits_fallback = rlimit"
        if not root:
            return True, "only in a cgroup delegated to you (systemd-run --user --scope -p Delegate=yes pytest ...)"
        return True, ""

    names = ("net", "net_rate", "hostname", "rootfs", "disk", "timeout", "caps", "user")
    support = {name: (container, why_not) for name in names}
    if container and confined and root and "NET_ADMIN" in confined["missing_capabilities"]:
        support["net"] = (True, f'but net="private" needs CAP_NET_ADMIN{fix}')
    elif container and confined and root and confined["proc_sys_read_only"]:
        support["net"] = (True, f'but net="private" needs a writable /proc/sys{fix}')
    support["mem"] = limit("memory")
    support["cpu"] = limit("cpu")
    support["pids"] = limit("pids")
    if not root and container:
        from pytest_isolate.rootless_info import rootless_support

        support.update(rootless_support(facts, support))
    return support


def header_line(storage_setting: str = "auto") -> str:
    facts = summary_facts(storage_setting)
    cgroup = f"cgroup v{facts['cgroup_version']}" if facts["cgroup_version"] else "no cgroups"
    storage = facts["storage_driver"] or "no overlay"
    user = "root" if facts["root"] else f"uid {os.geteuid()} (rootless)"
    return f"isolate: {storage} on {facts['root_filesystem']}, {cgroup} ({' '.join(facts['cgroup_controllers'])}), {user}"
