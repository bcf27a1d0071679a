"""The host programs a build needs, and their versions (part of every base layer's key).

``mmdebstrap --version`` starts perl and takes a noticeable fraction of a
second; a warm cache lookup must not pay that on every pytest session, so
the answer is remembered in the cache directory next to the binary's
identity (path, inode, size, mtime) and asked again only when it changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from pytest_isolate.images import fsutil
from pytest_isolate.images.errors import ImageError, MissingToolError

INSTALL_MMDEBSTRAP = "install mmdebstrap: apt-get install mmdebstrap (on a non-Debian host also debian-archive-keyring)"


def find_mmdebstrap() -> str:
    path = shutil.which("mmdebstrap")
    if path is None:
        raise MissingToolError("mmdebstrap", INSTALL_MMDEBSTRAP)
    return path


def mmdebstrap_version(cache_root: str | None) -> str:
    """``mmdebstrap --version`` ("mmdebstrap 1.3.5"), remembered in ``cache_root/tools.json``."""
    path = find_mmdebstrap()
    info = os.stat(path)
    identity = [os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns]
    memo_path = os.path.join(cache_root, "tools.json") if cache_root else None
    memo = fsutil.read_json(memo_path) if memo_path else None
    if isinstance(memo, dict) and memo.get("mmdebstrap_identity") == identity:
        return str(memo["mmdebstrap"])
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise MissingToolError("a working mmdebstrap", f"{path} --version failed ({error}); {INSTALL_MMDEBSTRAP}") from None
    version = result.stdout.strip()
    if memo_path and cache_root:
        try:
            os.makedirs(cache_root, exist_ok=True)
            fsutil.write_json_atomic(memo_path, {"mmdebstrap": version, "mmdebstrap_identity": identity})
        except OSError:
            pass  # only a shortcut: a read-only cache asks again next time
    return version


def require_root(what: str, command: str = "pytest-isolate images build NAME") -> None:
    if os.geteuid() != 0:
        raise ImageError(
            f"{what} needs root (it mounts overlays and runs chroot); this process runs as uid {os.geteuid()}: "
            f"run `sudo {command}` first (with the same cache: PYTEST_ISOLATE_CACHE or isolate_cache), "
            "or run pytest as root in CI"
        )


def require_programs(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            raise MissingToolError(name, f"install util-linux, which provides {name} (apt-get install util-linux)")
