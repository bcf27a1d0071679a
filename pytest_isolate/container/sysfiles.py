"""Small reads and writes of kernel files (/proc, /sys, cgroupfs).

os-level calls on purpose: these happen several times per test, some of
them in a freshly forked process, where Python's buffered text files cost
more than the read or write itself.
"""

from __future__ import annotations

import os


def write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read(path: str) -> str | None:
    """The file's text, or None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def set_hostname(name: str) -> None:
    """sethostname(2), or the same through /proc/sys/kernel/hostname.

    Podman's default seccomp profile refuses sethostname without
    CAP_SYS_ADMIN, even in a UTS namespace of our own user namespace.  The
    sysctl file sets the calling process's UTS namespace as well, by a
    write(2) no filter looks at; the kernel lets the host's root (uid 0,
    which root in a CI container is) write it.  Call it with our own /proc
    mounted, before it is made read-only.
    """
    import socket

    try:
        socket.sethostname(name)
    except PermissionError:
        write("/proc/sys/kernel/hostname", name)
