"""The Linux capability names and numbers, and the set a test keeps by default.

Plain data, importable from anywhere: ``spec`` checks ``caps=`` names
against it, ``confinement`` reads a capability mask with it, ``hardening``
drops the rest.  (``spec`` used to import ``hardening`` for this table, and
``hardening`` imports ``rootfs`` -> ``storage`` -> ``errors`` -> ``spec``: a circle.)
"""

from __future__ import annotations

CAPABILITIES = {
    name: number
    for number, name in enumerate(
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
        "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
        "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
        "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE".split()
    )
}
DEFAULT_CAPABILITIES = frozenset(
    "CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW "
    "AUDIT_WRITE SETFCAP".split()
)
