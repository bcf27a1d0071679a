"""The containers' init as a tiny program of our own: PID 1 for the price of an exec.

Every container's PID 1 is an init (see ``launcher``) that ignores SIGCHLD,
so the kernel reaps the orphans reparented to it, and waits for end-of-file
on a pipe only pytest holds.  A shell cannot be trusted with it (dash's
``read`` ends when an orphan's SIGCHLD interrupts it, and the container
with it), an interpreter costs 18 ms, and even the shell cost 0.7 ms
of CPU to start (the loader, its relocations, glibc's CPU probing, which
traps under a hypervisor), once for every test.  The five system calls it
takes, as a static program of 330 bytes, cost about 0.12 ms.

The program is machine code written out here, its assembly beside it,
wrapped in the smallest ELF file the kernel runs, kept in a sealed memfd of
the process that starts inits and executed as ``/proc/self/fd/N``.  Where
it cannot be (another architecture, a kernel that refuses executable
memfds: ``vm.memfd_noexec=2``, a security module), ``executable()`` says so
and init is the interpreter (``launcher.INIT_FALLBACK``).
"""

from __future__ import annotations

import fcntl
import os
import struct

# Its name in `ps`: what /proc/<pid>/comm shows (at most 15 bytes), instead
# of the descriptor's number an exec through /proc/self/fd would give it.
COMM = "isolate-init"

# x86-64, Linux system call ABI (number in eax; arguments in edi, rsi, edx, r10).
# Offsets of the data are rip-relative, so the code runs at any address.
_X86_64 = bytes.fromhex(
    "b80d000000"      # mov  eax, 13               rt_sigaction(SIGCHLD, &ignore, NULL, 8)
    "bf11000000"      # mov  edi, 17
    "488d355b000000"  # lea  rsi, [rip + ignore]
    "31d2"            # xor  edx, edx
    "41ba08000000"    # mov  r10d, 8
    "0f05"            # syscall
    "b89d000000"      # mov  eax, 157              prctl(PR_SET_NAME, name)
    "bf0f000000"      # mov  edi, 15
    "488d3560000000"  # lea  rsi, [rip + name]
    "0f05"            # syscall
    "b801000000"      # mov  eax, 1                write(1, "\n", 1): init runs
    "bf01000000"      # mov  edi, 1
    "488d355a000000"  # lea  rsi, [rip + newline]
    "ba01000000"      # mov  edx, 1
    "0f05"            # syscall
    "4883ec40"        # sub  rsp, 64
    "31c0"            # again: xor eax, eax         read(0, rsp, 64) until end-of-file
    "31ff"            # xor  edi, edi
    "4889e6"          # mov  rsi, rsp
    "ba40000000"      # mov  edx, 64
    "0f05"            # syscall
    "4885c0"          # test rax, rax
    "7fed"            # jg   again                 read something: read on
    "4883f8fc"        # cmp  rax, -4
    "74e7"            # je   again                 EINTR: read on
    "b8e7000000"      # mov  eax, 231              exit_group(0)
    "31ff"            # xor  edi, edi
    "0f05"            # syscall
)

# AArch64 (number in x8; arguments in x0-x3; adr is pc-relative).
_AARCH64 = b"".join(
    struct.pack("<I", word)
    for word in (
        0xD28010C8,  # mov  x8, #134               rt_sigaction(SIGCHLD, &ignore, NULL, 8)
        0xD2800220,  # mov  x0, #17
        0x10000341,  # adr  x1, ignore
        0xD2800002,  # mov  x2, #0
        0xD2800103,  # mov  x3, #8
        0xD4000001,  # svc  #0
        0xD28014E8,  # mov  x8, #167               prctl(PR_SET_NAME, name)
        0xD28001E0,  # mov  x0, #15
        0x10000381,  # adr  x1, name
        0xD4000001,  # svc  #0
        0xD2800808,  # mov  x8, #64                write(1, "\n", 1): init runs
        0xD2800020,  # mov  x0, #1
        0x30000361,  # adr  x1, newline
        0xD2800022,  # mov  x2, #1
        0xD4000001,  # svc  #0
        0xD10103FF,  # sub  sp, sp, #64
        0xD28007E8,  # again: mov x8, #63           read(0, sp, 64) until end-of-file
        0xD2800000,  # mov  x0, #0
        0x910003E1,  # mov  x1, sp
        0xD2800802,  # mov  x2, #64
        0xD4000001,  # svc  #0
        0xF100001F,  # cmp  x0, #0
        0x54FFFF4C,  # b.gt again                  read something: read on
        0xB100101F,  # cmn  x0, #4
        0x54FFFF00,  # b.eq again                  EINTR: read on
        0xD2800BC8,  # mov  x8, #94                exit_group(0)
        0xD2800000,  # mov  x0, #0
        0xD4000001,  # svc  #0
    )
)

# What the code refers to, right after it (the offsets above):
# the kernel's struct sigaction (handler SIG_IGN, no flags, empty mask), the
# name, the newline.
_DATA = struct.pack("<4Q", 1, 0, 0, 0) + COMM.encode() + b"\0" + b"\n"

# e_machine, by the kernel's name for the architecture.
_PROGRAMS = {"x86_64": (62, _X86_64), "aarch64": (183, _AARCH64)}

_BASE = 0x400000
_ELF_HEADER = 64
_PROGRAM_HEADER = 56
PT_LOAD, PT_GNU_STACK = 1, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4

MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_EXEC = 0x1, 0x2, 0x10


def elf_image(machine: int, code: bytes) -> bytes:
    """A static executable: code and data in one read-only, executable segment; a stack that is not."""
    start = _ELF_HEADER + 2 * _PROGRAM_HEADER
    size = start + len(code) + len(_DATA)
    ident = b"\x7fELF" + bytes((2, 1, 1, 0)) + bytes(8)  # 64-bit, little-endian, version 1, System V
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        ident, 2, machine, 1,  # ET_EXEC, version 1
        _BASE + start,  # entry: the first instruction
        _ELF_HEADER, 0, 0,  # program headers right after; no sections; no flags
        _ELF_HEADER, _PROGRAM_HEADER, 2, 64, 0, 0,
    )
    load = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, 0, _BASE, _BASE, size, size, 0x1000)
    stack = struct.pack("<IIQQQQQQ", PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 0, 16)
    return header + load + stack + code + _DATA


_created: tuple[int, tuple[int, int]] | None = None  # (descriptor, (device, inode)); a fork's copy too
_refused = False  # this host will not run it: init is the interpreter


def executable() -> str | None:
    """The path to exec for init, in this process; None: this host will not run it."""
    global _created, _refused
    if _refused:
        return None
    if _created is None or not _still_ours(*_created):
        # Not made yet, or the number no longer leads to it (a test process
        # leads pytest's descriptors to /dev/null): a fork's copy is kept
        # only while it does.
        program = _PROGRAMS.get(os.uname().machine)
        fd = _sealed_memfd(elf_image(*program)) if program is not None else None
        if fd is None:
            _refused = True
            return None
        stat = os.fstat(fd)
        _created = (fd, (stat.st_dev, stat.st_ino))
    return f"/proc/self/fd/{_created[0]}"


def _still_ours(fd: int, identity: tuple[int, int]) -> bool:
    try:
        stat = os.fstat(fd)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == identity


def refused() -> None:
    """Starting it failed here: init is the interpreter from now on, in this process."""
    global _refused
    _refused = True
    close()


def close() -> None:
    """Let go of this process's copy (a process that starts no more inits)."""
    global _created
    if _created is not None:
        try:
            os.close(_created[0])
        except OSError:
            pass
        _created = None


def _sealed_memfd(image: bytes) -> int | None:
    try:
        try:
            fd = os.memfd_create("pytest-isolate-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC)
        except OSError:  # before Linux 6.3, MFD_EXEC is unknown (EINVAL): memfds were executable
            fd = os.memfd_create("pytest-isolate-init", MFD_CLOEXEC | MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        os.write(fd, image)
        os.fchmod(fd, 0o500)
        # Nothing can change it now, whoever holds it.
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError:
        os.close(fd)
        return None
    return fd
