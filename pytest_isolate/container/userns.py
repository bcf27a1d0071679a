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


def available() -> tuple[bool, str]:
    """Can this (non-root) process make a user namespace?  Asked by trying, in a child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            enter_as_root()
            os.write(write, b"ok")
        except OSError as error:
            os.write(write, f"{error.strerror}".encode())
        os._exit(0)
    os.close(write)
    answer = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return (answer == "ok", answer)
