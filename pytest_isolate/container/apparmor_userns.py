"""Ubuntu's AppArmor restriction of unprivileged user namespaces, diagnosed exactly.

Ubuntu 23.10 and later (and so GitHub Actions' ``ubuntu-24.04`` runners)
set ``kernel.apparmor_restrict_unprivileged_userns = 1``: an ordinary user's
``unshare(CLONE_NEWUSER)`` still succeeds, but the process is moved to a
profile with no capabilities in the new namespace, so writing its
``uid_map``, making the next namespaces or the first mount fails with EPERM.
bubblewrap, buildah, apptainer and Chrome hit the same wall; the ways out are
the same: run as root, switch the restriction off, or give one executable a
profile that grants ``userns``.

The diagnosis needs both the switch and the symptom: the sysctl reads 1,
*and* the user-namespace route (``confinement``'s trial) was refused with
EPERM at one of those steps, while a bare ``unshare(CLONE_NEWUSER)`` works.
The switch alone says nothing (a profile may already grant ``userns`` to this
Python); the symptom alone has other causes (seccomp, a disabled sysctl).
Kernels without AppArmor's switch (Debian's 6.1) have no such file.  Tests
point ``PYTEST_ISOLATE_APPARMOR_USERNS_SYSCTL`` at a stand-in file.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import sys

from pytest_isolate.container.confinement import NOT_TRIED, STEP_MOUNT, STEP_UNSHARE, STEP_USERNS, Trial
from pytest_isolate.errors import ContainerError

SYSCTL = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
SYSCTL_NAME = "kernel.apparmor_restrict_unprivileged_userns"
SYSCTL_VARIABLE = "PYTEST_ISOLATE_APPARMOR_USERNS_SYSCTL"

# The route's step that failed -> what the restriction made fail.
SYMPTOMS = {
    STEP_USERNS: "writing its uid_map",
    STEP_UNSHARE: "making the mount and other namespaces in it",
    STEP_MOUNT: "the first mount in it",
}
PROFILE_FILE = "/etc/apparmor.d/pytest-isolate"


def sysctl_path() -> str:
    return os.environ.get(SYSCTL_VARIABLE) or SYSCTL


def switch(path: str | None = None) -> str | None:
    """The switch's value ("0" or "1"); None where this kernel has no such switch."""
    try:
        with open(path or sysctl_path(), encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class Restriction:
    """The restriction is on and is what refused our user namespace."""

    symptom: str

    @property
    def reason(self) -> str:
        return (
            f"AppArmor restricts unprivileged user namespaces here ({SYSCTL_NAME} = 1, the default on Ubuntu 23.10 "
            f"and later, GitHub Actions' ubuntu-24.04 runners included): the user namespace is made, but with no "
            f"capabilities in it, so {self.symptom} fails with EPERM"
        )

    def error(self) -> ContainerError:
        return ContainerError("create the container", f"pytest runs as uid {os.geteuid()}, and {self.reason}", remedies())


def remedies(python: str | None = None) -> str:
    """The three ways out, the profile written for this Python."""
    python = python or os.path.realpath(sys.executable)
    return (
        "three ways out:\n"
        "  1. run pytest as root (root needs no user namespace): sudo -E env PATH=$PATH pytest ...\n"
        f"  2. lift the restriction for every program (until reboot): sudo sysctl -w {SYSCTL_NAME}=0\n"
        f"  3. allow user namespaces to this Python alone, with the AppArmor profile {PROFILE_FILE}:\n"
        f"{profile(python)}"
        f"     then load it: sudo apparmor_parser -r {PROFILE_FILE}"
    )


def profile(python: str) -> str:
    """The profile Ubuntu ships for such programs (chrome, buildah), for ``python``; indented for the message."""
    lines = (
        "abi <abi/4.0>,",
        "include <tunables/global>",
        f"profile pytest-isolate {python} flags=(unconfined) {{",
        "  userns,",
        "}",
    )
    return "".join(f"       {line}\n" for line in lines)


@functools.lru_cache(maxsize=None)
def diagnose(trial: Trial, path: str | None = None) -> Restriction | None:
    """The restriction, when the switch is on *and* it explains how ``trial`` (the user-namespace route) failed."""
    if trial.works or trial.failed_step == NOT_TRIED or trial.failed_step not in SYMPTOMS:
        return None
    if trial.error not in (errno.EPERM, errno.EACCES) or switch(path) != "1":
        return None
    # The restriction lets the namespace be made: if a bare unshare fails, something else refuses it.
    if trial.failed_step == STEP_USERNS and not bare_user_namespace_works():
        return None
    return Restriction(SYMPTOMS[trial.failed_step])


def bare_user_namespace_works() -> bool:
    """Whether ``unshare(CLONE_NEWUSER)`` alone succeeds (in a child, which then exits)."""
    from pytest_isolate.container import libc
    from pytest_isolate.container.child import answer_from_child

    def question() -> bytes:
        libc.unshare(libc.CLONE_NEWUSER)
        return b"ok"

    return answer_from_child(question) == b"ok"


def state(trial: Trial, path: str | None = None) -> str:
    """One line for ``pytest-isolate info``."""
    value = switch(path)
    if value is None:
        return f"no such switch on this kernel ({SYSCTL_NAME})"
    if value != "1":
        return f"off ({SYSCTL_NAME} = {value})"
    restriction = diagnose(trial, path)
    if restriction is not None:
        return f"on, and it refuses rootless containers: {restriction.reason}"
    if os.geteuid() == 0:
        return f"on ({SYSCTL_NAME} = 1), but root needs no user namespace"
    return f"on ({SYSCTL_NAME} = 1), but user namespaces work for this process"
