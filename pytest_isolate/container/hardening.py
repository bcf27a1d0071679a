"""What keeps root-in-a-container from being root on the host.

Applied in the test process after the container is built and before any
test code runs, in this order:

1. **Masked kernel paths** (as runc and Docker do): files that leak or
   change host state are covered with ``/dev/null``, directories with an
   empty read-only tmpfs, and ``/proc/sys`` & co. are made read-only.
2. **Capabilities**: the bounding set is cut to Docker's default set minus
   ``CAP_MKNOD`` (there is no device cgroup to stop a block device node) and
   ``CAP_SYS_CHROOT``; permitted, effective and inheritable follow, ambient
   is cleared.  Without ``CAP_SYS_ADMIN`` the test cannot mount (so no
   cgroup v1 ``release_agent``), unmount the masks, or change the hostname;
   without ``CAP_SYS_BOOT``, ``CAP_SYS_MODULE``, ``CAP_SYS_RAWIO``,
   ``CAP_SYS_TIME``, ``CAP_SYS_PTRACE`` or ``CAP_NET_ADMIN`` it cannot
   reboot, load modules, read raw memory, set the clock, trace or
   reconfigure the network.
3. ``PR_SET_NO_NEW_PRIVS``: nothing it executes can gain privileges.
4. A **seccomp filter** (x86-64 and aarch64) denying, with EPERM, the
   syscalls that have no business in a test, among them ``unshare`` and
   ``clone`` into a new user namespace (which would hand out a fresh full
   capability set) and ``clone3`` (denied with ENOSYS so libc falls back to
   ``clone``, whose flags the filter can see).  Written as a few lines of
   classic BPF rather than a dependency: the only Python bindings of
   libseccomp come from the distribution, not PyPI.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import platform
import struct

from pytest_isolate.container import libc
from pytest_isolate.container.capabilities import CAPABILITIES, DEFAULT_CAPABILITIES

MASKED_FILES = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/sysrq-trigger",
)
MASKED_DIRECTORIES = ("/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys")

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def mask_kernel_paths(files: tuple[str, ...], directories: tuple[str, ...], read_only: tuple[str, ...]) -> None:
    """Call after /proc and /sys of the container are mounted."""
    for path in files:
        libc.mount("/dev/null", path, None, libc.MS_BIND)
    for path in directories:
        libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "mode=0555")
    from pytest_isolate.container.rootfs import remount_read_only

    for path in read_only:
        libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
        remount_read_only(path)


def set_no_new_privs() -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as handle:
            return int(handle.read())
    except OSError:
        return max(CAPABILITIES.values())


def _prctl(option: int, argument: int) -> None:
    if libc.raw.prctl(option, argument, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


# ------------------------------------------------------------------ seccomp

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Syscall numbers per architecture: the deny list.
_DENIED = {
    "x86_64": {
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "open_by_handle_at": 304, "reboot": 169, "swapon": 167, "swapoff": 168,
        "mount": 165, "umount2": 166, "pivot_root": 155, "fsopen": 430, "fsmount": 432, "move_mount": 429,
        "open_tree": 428, "bpf": 321, "acct": 163, "iopl": 172, "ioperm": 173, "settimeofday": 164,
        "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "keyctl": 250, "add_key": 248,
        "request_key": 249, "userfaultfd": 323, "lookup_dcookie": 212, "quotactl": 179,
        "vhangup": 153, "syslog": 103, "setns": 308, "perf_event_open": 298,
    },
    "aarch64": {
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "open_by_handle_at": 265, "reboot": 142, "swapon": 224, "swapoff": 225,
        "mount": 40, "umount2": 39, "pivot_root": 41, "fsopen": 430, "fsmount": 432, "move_mount": 429,
        "open_tree": 428, "bpf": 280, "acct": 89, "settimeofday": 170, "clock_settime": 112,
        "clock_adjtime": 266, "adjtimex": 171, "keyctl": 219, "add_key": 217, "request_key": 218,
        "userfaultfd": 282, "lookup_dcookie": 18, "quotactl": 60, "vhangup": 58, "syslog": 116,
        "setns": 268, "perf_event_open": 241,
    },
}
_UNSHARE = {"x86_64": 272, "aarch64": 97}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = {"x86_64": 435, "aarch64": 435}

# Classic BPF opcodes and seccomp return values.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0_LOW = 0, 4, 16
_X32_SYSCALL_BIT = 0x40000000


def seccomp_supported() -> bool:
    return platform.machine() in _DENIED


def _instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


# Denied only while CAP_SYS_ADMIN is dropped: a test granted it (caps=) wants them.
_ADMIN_SYSCALLS = frozenset("mount umount2 pivot_root fsopen fsmount move_mount open_tree setns".split())


def build_filter(arch: str, *, admin: bool = False) -> bytes:
    """The BPF program: wrong arch -> kill; denied syscall -> EPERM; else allow."""
    eperm = _RET_ERRNO | errno.EPERM
    denied = [number for name, number in _DENIED[arch].items() if not (admin and name in _ADMIN_SYSCALLS)]
    program = [
        _instruction(_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        _instruction(_JEQ_K, 1, 0, _AUDIT_ARCH[arch]),
        _instruction(_RET_K, 0, 0, _RET_KILL_PROCESS),
        _instruction(_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if arch == "x86_64":
        # x32 syscall numbers (nr | 0x40000000) reach the same kernel code
        # under other numbers: refuse them all.
        program += [_instruction(_JSET_K, 0, 1, _X32_SYSCALL_BIT), _instruction(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    for number in denied:
        program += [_instruction(_JEQ_K, 0, 1, number), _instruction(_RET_K, 0, 0, eperm)]
    # clone3 hides its flags in memory the filter cannot read: ENOSYS makes
    # libc fall back to clone.
    program += [_instruction(_JEQ_K, 0, 1, _CLONE3[arch]), _instruction(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    # unshare(flags) and clone(flags, ...) with CLONE_NEWUSER: EPERM.
    for number in () if admin else (_UNSHARE[arch], _CLONE[arch]):
        program += [
            _instruction(_JEQ_K, 0, 4, number),
            _instruction(_LD_W_ABS, 0, 0, _OFFSET_ARG0_LOW),
            _instruction(_JSET_K, 0, 1, libc.CLONE_NEWUSER),
            _instruction(_RET_K, 0, 0, eperm),
            _instruction(_LD_W_ABS, 0, 0, _OFFSET_NR),
        ]
    program.append(_instruction(_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(program)


def install_seccomp_filter(code: bytes) -> None:
    """Needs no_new_privs (or CAP_SYS_ADMIN) first."""
    buffers = _filter_program(code)  # kept alive until the kernel has copied the filter
    _install_program(buffers[1])


def _filter_program(code: bytes) -> tuple[ctypes.Array[ctypes.c_char], ctypes.Array[ctypes.c_char]]:
    """The filter's instructions and the ``struct sock_fprog`` that points at them."""
    instructions = ctypes.create_string_buffer(code)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(instructions))
    return instructions, ctypes.create_string_buffer(fprog)


def _install_program(program: ctypes.Array[ctypes.c_char]) -> None:
    if libc.raw.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0) != 0:
        _raise_errno("prctl(PR_SET_SECCOMP)")


class Restriction:
    """What a test process gives up, made ready in pytest: the child only makes the calls.

    Each Python step in a freshly forked child costs copy-on-write faults; so
    the capability numbers, the capset structures and the filter's buffers
    are built once per session (per set of granted capabilities), and the
    child spends about 0.4 ms, most of it in the kernel.
    """

    def __init__(self, drop: tuple[int, ...], header: bytes, data: bytes, seccomp: bytes | None) -> None:
        self.drop = drop
        self.header = header
        self.data = data
        self.filter = None if seccomp is None else _filter_program(seccomp)

    @classmethod
    def made(cls, keep: frozenset[str], last_capability: int, seccomp: bytes | None) -> Restriction:
        kept = {CAPABILITIES[name] for name in keep}
        mask = sum(1 << number for number in kept)
        low, high = mask & 0xFFFFFFFF, mask >> 32
        return cls(
            drop=tuple(number for number in range(last_capability + 1) if number not in kept),
            header=struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0),
            data=struct.pack("6I", low, low, low, high, high, high),  # effective, permitted, inheritable x2
            seccomp=seccomp,
        )

    def apply(self) -> None:
        self.drop_capabilities()
        set_no_new_privs()
        self.install_seccomp_filter()

    def drop_capabilities(self) -> None:
        prctl = libc.raw.prctl
        for number in self.drop:
            if prctl(PR_CAPBSET_DROP, number, 0, 0, 0) != 0:
                _raise_errno(f"prctl(PR_CAPBSET_DROP, {number})")
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        if libc.raw.capset(self.header, self.data) != 0:
            _raise_errno("capset")

    def install_seccomp_filter(self) -> None:
        if self.filter is not None:
            _install_program(self.filter[1])


def _raise_errno(operation: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{operation}: {os.strerror(err)}")


@dataclasses.dataclass(frozen=True)
class Hardening:
    """Everything that can be worked out once per session, in pytest.

    The test process only applies it: a first ``open()`` in a freshly forked
    Python costs about a millisecond of copy-on-write faults, so nothing is
    read or built there.
    """

    masked_files: tuple[str, ...]
    masked_directories: tuple[str, ...]
    read_only: tuple[str, ...]
    last_capability: int
    seccomp: bytes | None  # the filter without CAP_SYS_ADMIN
    seccomp_admin: bytes | None  # the filter for tests granted CAP_SYS_ADMIN

    @classmethod
    def for_this_host(cls) -> Hardening:
        # The container's /proc and /sys show the same kernel as ours.
        arch = platform.machine()
        return cls(
            masked_files=tuple(p for p in MASKED_FILES if os.path.exists(p)),
            masked_directories=tuple(p for p in MASKED_DIRECTORIES if os.path.isdir(p)),
            read_only=tuple(p for p in READ_ONLY_PATHS if os.path.exists(p)),
            last_capability=last_capability(),
            seccomp=build_filter(arch) if seccomp_supported() else None,
            seccomp_admin=build_filter(arch, admin=True) if seccomp_supported() else None,
        )

    def mask(self) -> None:
        """The masks over kernel paths: mounts, so part of building the container."""
        mask_kernel_paths(self.masked_files, self.masked_directories, self.read_only)

    def restriction(self, extra_capabilities: frozenset[str]) -> Restriction:
        """What the test process gives up (capabilities, new privileges, syscalls): made in pytest,
        once per set of granted capabilities, and applied in the test process."""
        keep = DEFAULT_CAPABILITIES | extra_capabilities
        if keep not in _restrictions:
            code = self.seccomp_admin if "SYS_ADMIN" in keep else self.seccomp
            _restrictions[keep] = Restriction.made(keep, self.last_capability, code)
        return _restrictions[keep]


_restrictions: dict[frozenset[str], Restriction] = {}
