"""Rootless containers: a user namespace in which our user is root.

After ``unshare(CLONE_NEWUSER)`` a process may map exactly its own user
and group to root in the new namespace, once ``setgroups`` is denied
(user_namespaces(7)).  Root there owns the namespaces it creates next:
it can mount an overlay (Linux >= 5.11), tmpfs, proc and sysfs, but it
gains nothing over the host's files that the user did not have.
"""

from __future__ import annotations

import os

from pytest_isolate.container import libc, sysfiles


def enter_as_root() -> None:
    uid, gid = os.geteuid(), os.getegid()
    libc.unshare(libc.CLONE_NEWUSER)
    sysfiles.write("/proc/self/setgroups", "deny")
    sysfiles.write("/proc/self/uid_map", f"0 {uid} 1")
    sysfiles.write("/proc/self/gid_map", f"0 {gid} 1")


# user=True as root: root inside the container is this user outside.
NOBODY = 65534


def enter_mapped_by_parent(ready_write: int, go_read: int) -> None:
    """In the launcher: a user namespace whose maps pytest writes (only it may map another uid)."""
    libc.unshare(libc.CLONE_NEWUSER)
    os.write(ready_write, b"u")
    if os.read(go_read, 1) != b"g":
        raise OSError(1, "pytest did not map the container's user")
    # Become root of the namespace: nobody outside, from now on.
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def map_root_to_nobody(pid: int) -> None:
    """In pytest (root): the launcher's root is nobody outside."""
    sysfiles.write(f"/proc/{pid}/uid_map", f"0 {NOBODY} 1")
    sysfiles.write(f"/proc/{pid}/gid_map", f"0 {NOBODY} 1")


def available() -> tuple[bool, str]:
    """Can this (non-root) process make a user namespace?  Asked by trying, in a child."""
    from pytest_isolate.container.child import answer_from_child

    def question() -> bytes:
        try:
            enter_as_root()
        except OSError as error:
            return f"{error.strerror}".encode()
        return b"ok"

    answer = answer_from_child(question).decode(errors="replace")
    return (answer == "ok", answer)
