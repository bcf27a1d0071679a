"""The layer cache: content-addressed layers, built once, published atomically, never changed.

Layout under the cache directory::

    layers/<key>/rootfs/         the layer's files: one overlayfs lower directory
    layers/<key>/manifest.json   written last, before the publishing rename
    layers/.tmp-<key>-<random>/  a build in progress (or one that was killed)
    layers/.trash-<key>-<random>/ a layer being deleted
    locks/<key>.lock             one lock per key: concurrent builders build once
    images/<name>.json           which layers an image is made of (a tag)
    logs/<key>.log               the whole output of the layer's last build

A key is ``sha256`` of the parent layer's key and of everything the layer's
content depends on (the recipe step, the tool versions, the architecture),
so an edited recipe gets new keys and old layers are never reused wrongly.

A layer counts only if ``layers/<key>`` holds a manifest naming that key and
its ``rootfs`` still has the modification time recorded at publication (a
cheap tamper check: adding or deleting an entry at the top changes it).
Anything else (no manifest, another key, a vanished ``rootfs``) is damaged:
it is never mounted, and the next build moves it aside and rebuilds it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

from filelock import FileLock, Timeout

from pytest_isolate.images import fsutil

FORMAT = 1
MANIFEST = "manifest.json"
ROOTFS = "rootfs"

Progress = Callable[[str], Any]


def default_cache_dir(explicit: str | None = None) -> str:
    """The parameter, else ``$PYTEST_ISOLATE_CACHE``, else ``$XDG_CACHE_HOME/pytest-isolate``, else ``~/.cache/...``."""
    if explicit:
        return os.path.abspath(explicit)
    if os.environ.get("PYTEST_ISOLATE_CACHE"):
        return os.path.abspath(os.environ["PYTEST_ISOLATE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(xdg), "pytest-isolate")


def layer_key(parent: str | None, content: dict[str, Any]) -> str:
    """The chained content hash: the parent's key plus a canonical JSON of what the layer is made from."""
    document = {"format": FORMAT, "parent": parent or "", "content": content}
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class LayerRequest:
    """One layer to look up and, if missing, to build.

    ``fill(workdir)`` must create ``workdir/rootfs`` with the layer's files;
    it may use ``workdir`` for scratch space (deleted before publishing) and
    raises to publish nothing.
    """

    key: str
    parent: str | None
    image: str
    step: str  # "base", "step 2", "layer 1 of 3"
    label: str  # what a person reads in the progress line
    recipe: str  # the recipe text (or the import source) kept in the manifest
    fill: Callable[[str], None]


class LayerCache:
    def __init__(self, root: str | None = None) -> None:
        self.root = default_cache_dir(root)
        self.layers = os.path.join(self.root, "layers")
        self.locks = os.path.join(self.root, "locks")
        self.images = os.path.join(self.root, "images")
        self.logs = os.path.join(self.root, "logs")

    def create(self) -> None:
        for directory in (self.layers, self.locks, self.images, self.logs):
            os.makedirs(directory, exist_ok=True)

    def rootfs(self, key: str) -> str:
        return os.path.join(self.layers, key, ROOTFS)

    def log_path(self, key: str) -> str:
        return os.path.join(self.logs, f"{key}.log")

    def lock(self, key: str) -> FileLock:
        return FileLock(os.path.join(self.locks, f"{key}.lock"))

    # -- looking up -------------------------------------------------------

    def manifest(self, key: str) -> dict[str, Any] | None:
        document = fsutil.read_json(os.path.join(self.layers, key, MANIFEST))
        return document if isinstance(document, dict) else None

    def check(self, key: str) -> str | None:
        """None if the layer is published and intact, else why it cannot be used."""
        manifest = self.manifest(key)
        if manifest is None:
            if not os.path.lexists(os.path.join(self.layers, key)):
                return "is not in the cache"
            return "is damaged: its manifest is missing or unreadable"
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            return "is damaged: its manifest does not match its key"
        try:
            mtime = os.stat(self.rootfs(key)).st_mtime_ns
        except OSError:
            return "is damaged: its rootfs directory is missing"
        if mtime != manifest.get("rootfs_mtime_ns"):
            return "is damaged: its rootfs changed after it was published"
        return None

    def layer_keys(self) -> list[str]:
        if not os.path.isdir(self.layers):
            return []
        return sorted(entry for entry in os.listdir(self.layers) if not entry.startswith("."))

    # -- building ---------------------------------------------------------

    def ensure(self, request: LayerRequest, prefix: str, progress: Progress) -> str:
        """The layer's rootfs, built under its lock if it is missing.  Returns "cached", "built" or "waited"."""
        if self.check(request.key) is None:
            progress(f"{prefix}: {request.label}: cached ({request.key[:12]})")
            return "cached"
        self.create()
        lock = self.lock(request.key)
        started = time.monotonic()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            progress(f"{prefix}: waiting for another process to build {request.label} ({request.key[:12]}) ...")
            lock.acquire()
        try:
            if self.check(request.key) is None:
                elapsed = time.monotonic() - started
                progress(f"{prefix}: {request.label}: built by another process ... {elapsed:.1f} s")
                return "waited"
            self._discard_leftovers(request.key)
            progress(f"{prefix}: {request.label} ...")
            started = time.monotonic()
            self._build_and_publish(request, started)
            progress(f"{prefix}: {request.label} ... {time.monotonic() - started:.1f} s")
            return "built"
        finally:
            lock.release()

    def _build_and_publish(self, request: LayerRequest, started: float) -> None:
        import tempfile

        work = tempfile.mkdtemp(prefix=f".tmp-{request.key}-", dir=self.layers)
        try:
            request.fill(work)
            rootfs = os.path.join(work, ROOTFS)
            for entry in os.listdir(work):
                if entry != ROOTFS:
                    fsutil.remove_tree(os.path.join(work, entry))
            manifest = {
                "format": FORMAT,
                "key": request.key,
                "parent": request.parent,
                "name": request.image,
                "step": request.step,
                "label": request.label,
                "created": now_iso(),
                "build_seconds": round(time.monotonic() - started, 3),
                "size": fsutil.tree_size(rootfs),
                "recipe": request.recipe,
                "rootfs_mtime_ns": os.stat(rootfs).st_mtime_ns,
            }
            # The manifest is the completion marker: written (and synced) last,
            # then one rename publishes the whole layer.
            fsutil.write_json_atomic(os.path.join(work, MANIFEST), manifest)
            os.chmod(work, 0o755)
            os.rename(work, os.path.join(self.layers, request.key))
            _fsync_dir(self.layers)
        finally:
            fsutil.remove_tree(work)

    def _discard_leftovers(self, key: str) -> None:
        """Under the key's lock: remove a killed build's directory and a damaged layer."""
        for entry in os.listdir(self.layers):
            if entry.startswith((f".tmp-{key}-", f".trash-{key}-")):
                fsutil.remove_tree(os.path.join(self.layers, entry))
        if os.path.lexists(os.path.join(self.layers, key)):
            self._trash(key)

    def _trash(self, key: str) -> None:
        import tempfile

        trash = tempfile.mkdtemp(prefix=f".trash-{key}-", dir=self.layers)
        # Rename first: the layer stops being visible in one step, then is deleted.
        os.rename(os.path.join(self.layers, key), os.path.join(trash, "layer"))
        fsutil.remove_tree(trash)

    # -- removing ---------------------------------------------------------

    def remove_layer(self, key: str) -> int:
        """Delete a layer under its lock; returns the bytes it held (from its manifest)."""
        with self.lock(key):
            manifest = self.manifest(key) or {}
            if os.path.lexists(os.path.join(self.layers, key)):
                self._trash(key)
            size = manifest.get("size", 0)
            return size if isinstance(size, int) else 0

    def remove_stale_work(self) -> list[str]:
        """Directories of killed builds and interrupted deletions whose lock is free."""
        removed = []
        for entry in sorted(os.listdir(self.layers)) if os.path.isdir(self.layers) else []:
            if not entry.startswith((".tmp-", ".trash-")):
                continue
            key = entry.split("-", 2)[1]
            lock = self.lock(key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a live build owns it
            try:
                fsutil.remove_tree(os.path.join(self.layers, entry))
                removed.append(entry)
            finally:
                lock.release()
        return removed

    # -- tags: image name -> layers ---------------------------------------

    def tag_path(self, name: str) -> str:
        return os.path.join(self.images, f"{name}.json")

    def read_tag(self, name: str) -> dict[str, Any] | None:
        document = fsutil.read_json(self.tag_path(name))
        return document if isinstance(document, dict) and isinstance(document.get("layers"), list) else None

    def write_tag(self, name: str, kind: str, layers: list[str], source: str) -> None:
        """Record an image's layers (bottom first); skipped when the tag already says so."""
        current = self.read_tag(name)
        if current and current.get("layers") == layers and current.get("kind") == kind:
            return
        self.create()
        document = {"name": name, "kind": kind, "layers": layers, "source": source, "updated": now_iso()}
        fsutil.write_json_atomic(self.tag_path(name), document)

    def remove_tag(self, name: str) -> None:
        if os.path.lexists(self.tag_path(name)):
            os.unlink(self.tag_path(name))

    def tags(self) -> dict[str, dict[str, Any]]:
        if not os.path.isdir(self.images):
            return {}
        found = {}
        for entry in sorted(os.listdir(self.images)):
            if entry.endswith(".json") and not entry.startswith("."):
                tag = self.read_tag(entry[: -len(".json")])
                if tag is not None:
                    found[entry[: -len(".json")]] = tag
        return found


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
