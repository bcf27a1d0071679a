"""The host's well-known credential files, hidden from isolated tests (``secrets=False``).

Found once per session, in pytest: only the paths that exist (and that this
user can see: what pytest cannot stat, its containers cannot read either)
become mask operations in each test's mount plan, as runc's ``maskedPaths``
do for /proc: a file becomes an empty file, a directory an empty read-only
tmpfs.  Both are made in the container's own mount namespace; the host's
files are never touched.

An empty regular file, not ``/dev/null``: a test that rewrites
``/etc/shadow`` (``useradd``) renames a new file over it, which works for a
file in the root's injected layer (see ``rootfs._Builder.inject_files``)
and fails with EBUSY on a mount point.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import stat

from pytest_isolate.container.mountplan import MountOp

SYSTEM_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
# Relative to each home: root's, $HOME, the user pytest runs as, and SUDO_USER's.
HOME_ENTRIES = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker/config.json",
    ".netrc",
    ".pypirc",
    ".git-credentials",
)


@dataclasses.dataclass(frozen=True)
class Secret:
    path: str  # the real path: a symlink is followed to what it shows
    directory: bool


def homes() -> list[str]:
    found = []
    candidates = [os.environ.get("HOME", "")]
    for lookup in (lambda: pwd.getpwuid(0), lambda: pwd.getpwuid(os.getuid()), lambda: pwd.getpwnam(os.environ["SUDO_USER"])):
        try:
            candidates.append(lookup().pw_dir)
        except (KeyError, OSError):
            pass
    for home in candidates:
        if home and os.path.isabs(home) and home not in found:
            found.append(home)
    return found


def existing_secrets() -> tuple[Secret, ...]:
    """The credential paths of this host, as they are now."""
    paths = list(SYSTEM_FILES) + [os.path.join(home, entry) for home in homes() for entry in HOME_ENTRIES]
    secrets: dict[str, Secret] = {}
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError:  # absent, or not ours to see
            continue
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            real = os.path.realpath(path)
            secrets.setdefault(real, Secret(real, stat.S_ISDIR(mode)))
    return tuple(secrets.values())


def mask_ops(secrets: tuple[Secret, ...], visible: list[str] | None) -> list[MountOp]:
    """Masks for the secrets a container shows: all on the host's root, else those under ``visible``."""
    ops = []
    for secret in secrets:
        if visible is None or any(_under(secret.path, tree) for tree in visible):
            ops.append(MountOp("mask_dir" if secret.directory else "mask_file", secret.path))
    return ops


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")
