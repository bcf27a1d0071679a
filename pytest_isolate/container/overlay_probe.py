"""Does the kernel's overlayfs work here, the way a container will use it?  Asked by trying.

``/proc/filesystems`` is no answer: Debian and Ubuntu build overlay as a
module that the kernel loads on the first overlay mount, so a fresh host
does not list it (issue 11).  A mount in a throwaway mount namespace loads
the module and answers the real question.

Rootless, a mount is not the whole answer either: in a user namespace the
overlay keeps its whiteouts and opaque marks in ``user.*`` xattrs
(``userxattr``), and tmpfs, where the container's writable layer lives,
accepts those only from Linux 6.6.  Before that the mount succeeds and the
first new directory or deleted file fails with EIO.  So the probe does what
a test does: it makes a directory, writes a file in it and deletes a file of
the lower layer, in a user namespace when pytest is not root.

One probe costs a fork and a few mounts (~7.5 ms); it runs once per process.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import shutil
import tempfile

from pytest_isolate.container import libc, userns
from pytest_isolate.container.child import answer_from_child

# The kernel release that taught tmpfs user.* xattrs (mm/shmem.c, 6.6).
TMPFS_USER_XATTRS = "6.6"


@dataclasses.dataclass(frozen=True)
class OverlayProbe:
    """What a throwaway overlay, made as a container makes it, did here."""

    mounts: bool  # the kernel mounted an overlay (the module loaded, if it is one)
    writes: bool  # a new directory, a new file and a deleted lower file all worked
    # tmpfs took a user.* xattr (rootless: what userxattr needs); None when
    # the probe failed before it could try (no mount at all: not the cause).
    tmpfs_user_xattrs: bool | None
    failure: str  # the step that failed, and the kernel's error; "" if none

    @property
    def usable(self) -> bool:
        return self.mounts and self.writes


@functools.lru_cache(maxsize=None)
def probe(in_user_namespace: bool) -> OverlayProbe:
    """Mount a tiny overlay (tmpfs lower, upper, work) in a child; cached per process."""
    base = tempfile.mkdtemp(prefix="pytest-isolate-probe-")

    def question() -> bytes:
        try:
            answer = _try(base, in_user_namespace)
        except BaseException as error:  # noqa: BLE001 - anything at all is the answer
            answer = {"mounts": False, "writes": False, "xattrs": None, "failure": f"probe: {error}"}
        return json.dumps(answer).encode()

    try:
        data = answer_from_child(question)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {"mounts": False, "writes": False, "xattrs": None, "failure": "probe: the child said nothing"}
    xattrs = None if answer["xattrs"] is None else bool(answer["xattrs"])
    return OverlayProbe(bool(answer["mounts"]), bool(answer["writes"]), xattrs, str(answer["failure"]))


def _try(base: str, in_user_namespace: bool) -> dict[str, object]:
    """In the child: the namespaces, then the overlay; every mount vanishes with the child."""
    answer: dict[str, object] = {"mounts": False, "writes": False, "xattrs": None, "failure": ""}
    step = "create a user namespace"
    try:
        if in_user_namespace:
            userns.enter_as_root()
        step = "create a mount namespace"
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        step = "mount a tmpfs"
        libc.mount("tmpfs", base, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "size=64k,mode=0755")
        for name in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(base, name))
        with open(os.path.join(base, "lower", "old"), "w") as handle:
            handle.write("lower")
        os.makedirs(os.path.join(base, "lower", "dir", "sub"))
        step = "set a user.* xattr on tmpfs"
        try:
            os.setxattr(os.path.join(base, "upper"), "user.pytest-isolate", b"1")
            answer["xattrs"] = True
        except OSError:
            answer["xattrs"] = False  # only the diagnosis needs it; the writes below decide
        step = "mount an overlay"
        options = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work"
        libc.mount("overlay", f"{base}/merged", "overlay", 0, options + (",userxattr" if in_user_namespace else ""))
        answer["mounts"] = True
        step = "make a directory in the overlay"
        os.mkdir(f"{base}/merged/new")
        step = "write a file in the overlay"
        with open(f"{base}/merged/new/file", "w") as handle:
            handle.write("upper")
        step = "delete a lower file in the overlay"
        os.remove(f"{base}/merged/old")
        # A lower directory is copied up first (origin and impure xattrs),
        # and a directory made where one was deleted is opaque.
        step = "write a file in a lower directory"
        with open(f"{base}/merged/dir/file", "w") as handle:
            handle.write("upper")
        step = "replace a lower directory"
        os.rmdir(f"{base}/merged/dir/sub")
        os.mkdir(f"{base}/merged/dir/sub")
        answer["writes"] = True
    except OSError as error:
        answer["failure"] = f"{step}: {error.strerror or error}" + (" (ENODEV)" if error.errno == errno.ENODEV else "")
    return answer


def fuse_overlayfs_binary() -> str | None:
    return shutil.which("fuse-overlayfs")


def fuse_usable() -> tuple[bool, str]:
    """Whether this user can run fuse-overlayfs: the program, and /dev/fuse open to it."""
    if fuse_overlayfs_binary() is None:
        return False, "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)"
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse is missing (modprobe fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        mode = oct(os.stat("/dev/fuse").st_mode & 0o777)[2:]
        return False, f"/dev/fuse (mode {mode}) is not open to uid {os.geteuid()}"
    return True, ""
