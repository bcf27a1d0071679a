"""What a test created, changed and deleted: read from its writable layers.

``docker diff`` style: ``A`` added, ``C`` changed, ``D`` deleted.  The
upper directory of each overlay holds exactly what the test touched:

* a character device 0/0 is a whiteout: the lower file was deleted;
* a file, link or directory that the lower layer has at the same path was
  changed (copied up); one it lacks was added.  A directory that exists
  below is listed only through its changed entries.

The upper directories live on a tmpfs that only the container's mount
namespace ever had mounted.  The test process keeps an ``O_PATH`` handle on
it, and pytest, which can read another process's file descriptors through
``/proc/PID/fd``, walks it there before the container ends.  The lower
layers are the host's own paths, which pytest sees directly.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator

from pytest_isolate.container.mountplan import MountPlan


@dataclasses.dataclass(frozen=True, order=True)
class Change:
    path: str
    kind: str  # "A", "C" or "D"

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def overlay_layers(plan: MountPlan) -> list[tuple[str, str, tuple[str, ...]]]:
    """(upper directory name, container path, host lower paths) per overlay, as rootfs numbers them."""
    layers: list[tuple[str, str, tuple[str, ...]]] = []
    for op in plan.ops:
        if op.kind == "overlay":
            assert op.source is not None
            layers.append((f"u{len(layers) + 1}", op.target, op.layers or (op.source,)))
    return layers


def read_changes(stage: str, plan: MountPlan) -> list[Change]:
    """``stage`` is the tmpfs holding the upper directories (a /proc/PID/fd/N path)."""
    changes: list[Change] = []
    for upper_name, target, lower in overlay_layers(plan):
        upper = os.path.join(stage, upper_name)
        if os.path.isdir(upper):
            changes.extend(_layer_changes(upper, target, lower))
    return sorted(changes)


def _layer_changes(upper: str, target: str, lowers: tuple[str, ...]) -> Iterator[Change]:
    for current, dirs, files in os.walk(upper):
        relative_dir = os.path.relpath(current, upper)
        for name in sorted(dirs + files):
            relative = os.path.normpath(os.path.join(relative_dir, name))
            in_upper = os.lstat(os.path.join(current, name))
            in_container = os.path.join(target, relative)
            in_lower = any(os.path.lexists(os.path.join(lower, relative)) for lower in lowers)
            if stat.S_ISCHR(in_upper.st_mode) and in_upper.st_rdev == 0:
                yield Change(in_container, "D")
            elif not in_lower:
                yield Change(in_container, "A")
            elif not stat.S_ISDIR(in_upper.st_mode):
                yield Change(in_container, "C")


def under(changes: list[Change], prefixes: list[str]) -> list[Change]:
    """The changes at or below any of ``prefixes``."""
    roots = [prefix.rstrip("/") or "/" for prefix in prefixes]
    return [
        change
        for change in changes
        if any(root == "/" or change.path == root or change.path.startswith(root + "/") for root in roots)
    ]
