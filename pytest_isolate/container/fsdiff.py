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

The test controls that tmpfs and could have replaced the descriptor, so the
walk is guarded: the caller checks the descriptor still is the tmpfs the
machinery made; the walk never follows a link, and stops at a deadline (the
test's timeout) or after ``MAX_ENTRIES`` entries, saying so.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
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


# Most entries of the writable layers one diff walks; a test that made more
# gets the first ones and a note.
MAX_ENTRIES = 20_000
# Without a timeout, the longest a walk may take.
MAX_SECONDS = 30.0
NOT_READ = "not read: the test closed or replaced the descriptor of its writable layers"


def read_changes(stage_fd: int, plan: MountPlan, *, deadline: float | None = None) -> tuple[list[Change], str]:
    """The changes under ``stage_fd`` (the tmpfs of the upper directories), and a note if cut short."""
    deadline = min(deadline, time.monotonic() + MAX_SECONDS) if deadline is not None else time.monotonic() + MAX_SECONDS
    changes: list[Change] = []
    walked = 0
    try:
        for upper_name, target, lower in overlay_layers(plan):
            try:
                upper_stat = os.stat(upper_name, dir_fd=stage_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(upper_stat.st_mode):
                continue
            for change in _layer_changes(stage_fd, upper_name, target, lower):
                walked += 1
                if walked > MAX_ENTRIES:
                    return sorted(changes), f"the first {MAX_ENTRIES} changes: the layers hold more"
                if time.monotonic() > deadline:
                    return sorted(changes), f"cut short after {len(changes)} changes at the test's time limit"
                if change is not None:
                    changes.append(change)
    except OSError as error:  # the test changed its layers under the walk
        return sorted(changes), f"cut short: {error.strerror}"
    return sorted(changes), ""


def _layer_changes(stage_fd: int, upper: str, target: str, lowers: tuple[str, ...]) -> Iterator[Change | None]:
    """One item per entry of the upper directory (None for unchanged directories)."""
    for current, dirs, files, current_fd in os.fwalk(upper, dir_fd=stage_fd, follow_symlinks=False):
        relative_dir = os.path.relpath(current, upper)
        for name in sorted(dirs + files):
            relative = os.path.normpath(os.path.join(relative_dir, name))
            in_upper = os.stat(name, dir_fd=current_fd, follow_symlinks=False)
            in_container = os.path.join(target, relative)
            in_lower = any(os.path.lexists(os.path.join(lower, relative)) for lower in lowers)
            if stat.S_ISCHR(in_upper.st_mode) and in_upper.st_rdev == 0:
                yield Change(in_container, "D")
            elif not in_lower:
                yield Change(in_container, "A")
            elif not stat.S_ISDIR(in_upper.st_mode):
                yield Change(in_container, "C")
            else:
                yield None


def under(changes: list[Change], prefixes: list[str]) -> list[Change]:
    """The changes at or below any of ``prefixes``."""
    roots = [prefix.rstrip("/") or "/" for prefix in prefixes]
    return [
        change
        for change in changes
        if any(root == "/" or change.path == root or change.path.startswith(root + "/") for root in roots)
    ]
