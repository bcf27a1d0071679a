"""What works for an ordinary user (rootless), said exactly, for ``pytest-isolate info``.

Each answer is what a test asking for the argument gets when pytest runs as
this user on this host: the parts that need root are named, and each limit
says how it is enforced (a delegated cgroup, the rlimit fallback, or not at
all).  Only called when rootless containers work here at all.
"""

from __future__ import annotations

from typing import Any

V1_LIMIT = "cgroup v1 cannot be delegated to a user: run as root"


def rootless_support(facts: dict[str, Any], support: dict[str, tuple[bool, str]]) -> dict[str, tuple[bool, str]]:
    """The answers that differ for a user who is not root."""
    answers: dict[str, tuple[bool, str]] = {
        "net": (True, 'except net="private": a veth link to the host needs root; use net=False, True or ["127.0.0.1:PORT"]'),
        "rootfs": (
            True,
            '"host" and directories; an image only once it is in the cache: building or importing one needs root '
            "(sudo PYTEST_ISOLATE_CACHE=DIR pytest-isolate images build NAME, then isolate_cache = DIR)",
        ),
        "caps": (True, "within the container's own user namespace: no capability over the host"),
        "user": (True, "a rootless run is always in a user namespace"),
    }
    if facts["cgroup_version"] == 1:
        answers["mem"] = (False, f"{V1_LIMIT}; isolate_limits_fallback = rlimit makes it RLIMIT_AS (address space, weaker)")
        answers["pids"] = (False, f"{V1_LIMIT}; isolate_limits_fallback = rlimit makes it RLIMIT_NPROC (per user, weaker)")
        answers["cpu"] = (False, f"{V1_LIMIT}; isolate_limits_fallback = rlimit does not enforce it (each run lists the tests)")
    elif facts["cgroup_version"] == 2 and support["cpu"][0]:
        fallback = "; without one, isolate_limits_fallback = rlimit does not enforce cpu (each run lists the tests)"
        answers["cpu"] = (True, support["cpu"][1] + fallback)
    return answers
