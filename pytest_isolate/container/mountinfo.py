"""Parse /proc/self/mountinfo (proc(5)) into records."""

from __future__ import annotations

import dataclasses
import re

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclasses.dataclass(frozen=True)
class MountEntry:
    mount_point: str
    root: str  # the path inside the filesystem that is mounted here
    fstype: str
    source: str
    options: frozenset[str]  # per-mount options, e.g. "ro", "nosuid"
    super_options: frozenset[str]  # per-superblock options, e.g. "memory" for cgroup v1


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mounts(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            entries.append(
                MountEntry(
                    mount_point=_unescape(fields[4]),
                    root=_unescape(fields[3]),
                    fstype=fields[separator + 1],
                    source=_unescape(fields[separator + 2]),
                    options=frozenset(fields[5].split(",")),
                    super_options=frozenset(fields[separator + 3].split(",")),
                )
            )
    return entries
