"""File-system helpers the cache needs: atomic JSON, sizes, and removal that never leaves the tree.

A build killed halfway may in principle leave a mount (``/proc``, a bind of
``/dev``) under its directory; ``shutil.rmtree`` would walk into it and
delete the host's files.  Builds mount only inside a private mount namespace
that dies with them, but :func:`remove_tree` still refuses to cross a mount:
it detaches any mount below the path first, then removes only entries on
the tree's own file system.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from typing import Any


def write_json_atomic(path: str, document: Any) -> None:
    """Write, flush to disk, then rename: readers see the old file or the whole new one."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str) -> Any | None:
    """The parsed file, or None if it is absent or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def tree_size(path: str) -> int:
    """Disk usage in bytes (allocated blocks, each hard-linked inode once), like ``du -s``."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for current, dirs, files in os.walk(path):
        for name in dirs + files:
            info = os.lstat(os.path.join(current, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def mounts_below(path: str) -> list[str]:
    """Mount points at or under ``path`` in this mount namespace, deepest first."""
    from pytest_isolate.container.mountinfo import read_mounts

    prefix = os.path.realpath(path).rstrip("/") + "/"
    found = {entry.mount_point for entry in read_mounts() if (entry.mount_point + "/").startswith(prefix)}
    return sorted(found, key=lambda point: point.count("/"), reverse=True)


def remove_tree(path: str) -> None:
    """Delete ``path`` and everything under it, without crossing into another file system."""
    if not os.path.lexists(path):
        return
    leftover = mounts_below(path)
    if leftover:
        from pytest_isolate.container import libc

        for point in leftover:
            libc.umount2(point, libc.MNT_DETACH)
    top = os.lstat(path)
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        return
    _remove_dir(path, top.st_dev)


def _remove_dir(path: str, device: int) -> None:
    with os.scandir(path) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                if info.st_dev != device:
                    raise OSError(f"refusing to delete {entry.path}: it is another file system (a mount?)")
                _remove_dir(entry.path, device)
            else:
                os.unlink(entry.path)
    os.rmdir(path)
