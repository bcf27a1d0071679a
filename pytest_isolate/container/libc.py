"""Thin ctypes wrappers for the syscalls Python 3.11 lacks.

``os.unshare`` and ``os.setns`` arrive only in Python 3.12, and the standard
library never had ``mount``, ``umount2`` or ``pivot_root``.  Every wrapper
raises :class:`OSError` with the errno *and* the operation, so the caller can
turn it into advice (see ``container.errors``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
raw = _libc  # for wrappers elsewhere (hardening) that check errno themselves

# Namespace flags from <linux/sched.h>.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# Mount flags from <linux/mount.h>.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

# pivot_root has no glibc wrapper; its number differs per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}.get(
    platform.machine()
)

for _name, _argtypes in {
    "unshare": [ctypes.c_int],
    "setns": [ctypes.c_int, ctypes.c_int],
    "mount": [ctypes.c_char_p] * 4,
    "umount2": [ctypes.c_char_p, ctypes.c_int],
    "prctl": [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong],
    "capset": [ctypes.c_char_p, ctypes.c_char_p],
}.items():
    getattr(_libc, _name).argtypes = _argtypes
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(result: int, operation: str, path: str | None = None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{operation}: {os.strerror(err)}", path)


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    result = _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {fstype or 'bind'} on {target}", target)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_bytes(target), flags), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    if _SYS_PIVOT_ROOT is None:
        raise OSError(38, f"pivot_root: unsupported architecture {platform.machine()}")
    result = _libc.syscall(_SYS_PIVOT_ROOT, _bytes(new_root), _bytes(put_old))
    _check(result, "pivot_root", new_root)


def set_parent_death_signal(signum: int) -> None:
    # Fires when the *thread* that forked us exits (prctl(2)); the pytest
    # process forks from the thread that runs tests, which outlives the test.
    _check(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_process_name(name: str) -> None:
    """What ``ps``, ``top`` and ``/proc/PID/comm`` show for this process: 15 bytes at most."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.addressof(buffer), 0, 0, 0), "prctl(PR_SET_NAME)")


# close_range(2) has the same number on every architecture (kernel >= 5.9).
_SYS_CLOSE_RANGE = 436


def close_all_except(keep: tuple[int, ...] | list[int]) -> None:
    """Close every descriptor of this process but those in ``keep``.

    One close_range(2) per gap between the kept descriptors: the cost does
    not grow with RLIMIT_NOFILE (a CI container may allow a million).
    """
    first = 0
    for fd in sorted({fd for fd in keep if fd >= 0}) + [1 << 31]:
        if fd > first:
            _close_range(first, fd - 1)
        first = fd + 1


def open_descriptors() -> tuple[int, ...] | None:
    """This process's open descriptors, for ``blank_all_except`` in a child about to be forked.

    Listed here, in pytest, where ``/proc/self/fd`` costs about 20 us: in a
    freshly forked child the same listing costs 0.2 ms (procfs makes an
    inode for each descriptor of a new task).  None where there is no /proc
    or the kernel lacks close_range(2): the child lists its own.
    """
    if not _close_range_works():
        return None
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    return tuple(int(name) for name in names if _is_open(int(name)))  # not the listing's own, closed by now


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def blank_all_except(keep: tuple[int, ...] | list[int], blank: int, listed: tuple[int, ...] | None = None) -> None:
    """Point every descriptor of this process but those in ``keep`` at ``blank`` (``/dev/null``).

    Not closed: a Python object of pytest's may still hold the number (the
    default ``--log-file`` handler's ``/dev/null``, a session fixture's
    file).  Closed, the number goes to the next file the test opens, and
    that object writes into it - a log record in the test's own capture
    file.  Blanked, it writes nowhere, and the number stays taken.  Each is
    close-on-exec, as pytest's own are: the test's subprocesses get none.

    ``listed``: the parent's descriptors (``open_descriptors``), listed just
    before the fork.  A forked child has one thread, and its table is the
    parent's at the fork; only another of the parent's threads can have
    changed it since the listing.  So the listed are blanked and every other
    number but ``keep`` is closed, in one close_range(2) per gap: whatever
    another thread opened in between is closed, never left open in the
    container.
    """
    kept = {fd for fd in keep if fd >= 0} | {blank}
    if listed is not None:
        for fd in listed:
            if fd not in kept:
                os.dup2(blank, fd, inheritable=False)
        close_all_except((*kept, *listed))
        return
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: closed, as the one way left
        close_all_except(tuple(kept))
        return
    for name in names:
        fd = int(name)
        if fd in kept:
            continue
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)  # the listing's own descriptor is closed by now
        except OSError:
            continue
        os.dup2(blank, fd, inheritable=False)


_close_range_checked: bool | None = None


def _close_range_works() -> bool:
    """Whether close_range(2) is there (Linux 5.9) and allowed (a CI container's seccomp profile)."""
    global _close_range_checked
    if _close_range_checked is None:
        unused = 0x7FFFFFFE  # above any descriptor: nothing is closed
        _close_range_checked = _close_range_call(unused, unused) == 0
    return _close_range_checked


def _close_range_call(first: int, last: int) -> int:
    return _libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0))


def _close_range(first: int, last: int) -> None:
    if _close_range_call(first, last) != 0:  # an older kernel: close what is open, one by one
        for name in os.listdir("/proc/self/fd"):
            if first <= int(name) <= last:
                try:
                    os.close(int(name))
                except OSError:
                    pass
