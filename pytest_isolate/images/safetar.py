"""Extract one tar layer into a directory, confined to it, converting OCI whiteouts.

``tarfile.extractall`` trusts the archive (before Python 3.12's filters), and
the ``data`` filter refuses what a root file system needs (device nodes,
absolute symlinks, setuid bits).  So every member goes through
:func:`_confine` and is written by this module, one type at a time:

- a name that is absolute or has a ``..`` component is refused;
- an entry whose parent directory, in this layer, is a symlink is refused:
  writing through it could land anywhere (tar never stores such entries
  for a real tree, so a well-formed archive never trips this);
- a hard link must name an earlier regular entry of this layer: it is
  resolved now, so it must not leave the layer;
- symlink *targets* are stored as they are: they are resolved inside the
  container, at run time, never here;
- an existing entry is removed first (never opened, so never followed).

With ``whiteouts=True`` (OCI and ``docker save`` layers), ``.wh.NAME``
becomes the overlayfs whiteout ``NAME`` (a 0/0 character device) and
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` attribute on its
directory.  Extended attributes in the archive are kept only for
``security.capability`` and ``user.*``: an archive must not steer overlayfs
through ``trusted.overlay.*``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile

from pytest_isolate.images import fsutil
from pytest_isolate.images.errors import ArchiveError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
KEPT_XATTR_PREFIXES = ("security.capability", "user.")


def _confine(name: str, archive: str, member: str | None = None, what: str = "") -> str:
    """``name`` relative to the layer ("" for the root), or refuse the member."""
    if name.startswith("/"):
        raise ArchiveError(archive, f"{what}absolute paths are not allowed in an image layer", member or name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(archive, f"{what}'..' in a path would write outside the layer", member or name)
    return "/".join(parts)


class LayerExtractor:
    def __init__(self, dest: str, archive: str, whiteouts: bool) -> None:
        self.dest = dest
        self.archive = archive
        self.whiteouts = whiteouts
        self.written: set[str] = set()  # paths this layer wrote (a whiteout never hides them)
        self.dirs: list[tuple[str, tarfile.TarInfo]] = []  # attributes set last, deepest first

    def _parent(self, relative: str, member: str) -> str:
        """The host path of ``relative``'s parent directory, created as needed, never through a symlink."""
        current = self.dest
        for part in relative.split("/")[:-1]:
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise ArchiveError(self.archive, f"its parent {part!r} is a symlink; extracting through it "
                                   "could write outside the layer", member)  # fmt: skip
            if not os.path.isdir(current):
                if os.path.lexists(current):
                    os.unlink(current)
                os.mkdir(current, 0o755)
        return current

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        relative = _confine(member.name, self.archive)
        if relative == "":
            if member.isdir():
                self.dirs.append((self.dest, member))
            return
        parent = self._parent(relative, member.name)
        base = posixpath.basename(relative)
        if self.whiteouts and base.startswith(WHITEOUT):
            self._whiteout(parent, relative, base, member.name)
            return
        target = os.path.join(parent, base)
        self._clear(target, keep_dir=member.isdir())
        self._write(tar, member, target)
        self.written.add(relative)
        if member.isdir():
            self.dirs.append((target, member))
        else:
            self._set_attributes(member, target)

    def _whiteout(self, parent: str, relative: str, base: str, member: str) -> None:
        if base == OPAQUE:
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply
        hidden = base[len(WHITEOUT):]
        if hidden in ("", ".", ".."):
            raise ArchiveError(self.archive, "a whiteout must name an entry", member)
        if posixpath.join(posixpath.dirname(relative), hidden) in self.written:
            return  # the same layer also adds it: the whiteout only hides the lower layers' entry
        target = os.path.join(parent, hidden)
        self._clear(target, keep_dir=False)
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(0, 0))

    def _clear(self, target: str, keep_dir: bool) -> None:
        if not os.path.lexists(target):
            return
        if os.path.isdir(target) and not os.path.islink(target):
            if not keep_dir:
                fsutil.remove_tree(target)
        else:
            os.unlink(target)

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        if member.isdir():
            if not os.path.isdir(target):
                os.mkdir(target, 0o755)
        elif member.isreg():
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "xb") as handle:
                shutil.copyfileobj(source, handle, 1 << 20)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            self._hardlink(member, target)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(target, 0o600 | kind, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(target, 0o600)
        else:
            raise ArchiveError(self.archive, f"unsupported tar entry type {member.type!r}", member.name)

    def _hardlink(self, member: tarfile.TarInfo, target: str) -> None:
        linked = _confine(member.linkname, self.archive, member.name, f"hard link to {member.linkname!r}: ")
        if linked not in self.written:
            raise ArchiveError(self.archive, f"hard link to {member.linkname!r}, which is not an earlier "
                               "entry of this layer", member.name)  # fmt: skip
        source = os.path.join(self._parent(linked, member.name), posixpath.basename(linked))
        if os.path.isdir(source) and not os.path.islink(source):
            raise ArchiveError(self.archive, f"hard link to the directory {member.linkname!r}", member.name)
        os.link(source, target, follow_symlinks=False)

    def _set_attributes(self, member: tarfile.TarInfo, target: str) -> None:
        # chown first: it clears setuid/setgid bits that chmod then restores.
        os.chown(target, member.uid, member.gid, follow_symlinks=False)
        if not member.issym():
            os.chmod(target, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            name = key[len("SCHILY.xattr."):] if key.startswith("SCHILY.xattr.") else None
            if name and name.startswith(KEPT_XATTR_PREFIXES) and not member.issym():
                os.setxattr(target, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def finish(self) -> None:
        for path, member in sorted(self.dirs, key=lambda item: item[0].count("/"), reverse=True):
            self._set_attributes(member, path)


def extract_layer(fileobj, dest: str, archive: str, whiteouts: bool) -> None:  # type: ignore[no-untyped-def]
    """Read the tar stream ``fileobj`` (plain, gzip, bzip2 or xz) into the new directory ``dest``."""
    os.mkdir(dest, 0o755)
    extractor = LayerExtractor(dest, archive, whiteouts)
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                extractor.add(tar, member)
    except tarfile.TarError as error:
        raise ArchiveError(archive, f"not a readable tar stream ({error}); zstd layers are not supported") from None
    extractor.finish()
