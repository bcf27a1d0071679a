"""``images import NAME FILE``: a rootfs tarball, an OCI image layout, or a ``docker save`` tar.

Each archive layer becomes one cache layer (applied in order, bottom first),
keyed by the parent's key and the layer's digest, so importing the same
image twice reuses its layers.  OCI blobs are checked against their digest
while they are extracted; a mismatch publishes nothing.  The layers are
extracted by ``safetar``, confined to the layer directory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import platform
import posixpath
import tarfile
from collections.abc import Callable
from typing import IO, Any

from pytest_isolate.images.cache import ROOTFS, LayerCache, LayerRequest, Progress, layer_key
from pytest_isolate.images.errors import ArchiveError
from pytest_isolate.images.safetar import extract_layer

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class _HashingReader(io.RawIOBase):
    """Passes a stream through, hashing what was read, so a blob is read once."""

    def __init__(self, stream: IO[bytes], algorithm: str) -> None:
        self.stream = stream
        self.hash = hashlib.new(algorithm)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.hash.update(data)
        return len(data)

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.hash.hexdigest()


class _Source:
    """Files of an image layout: in a directory, or members of a tar."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if not os.path.isdir(path):
            try:
                self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
                self.members = {posixpath.normpath(m.name): m for m in self.tar}
            except (OSError, tarfile.TarError) as error:
                raise ArchiveError(path, f"not a directory and not a readable tar file ({error})") from None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def exists(self, name: str) -> bool:
        return name in self.members if self.tar else os.path.isfile(os.path.join(self.path, name))

    def open(self, name: str) -> IO[bytes]:
        if self.tar is None:
            return open(os.path.join(self.path, name), "rb")
        member = self.members.get(name)
        handle = self.tar.extractfile(member) if member else None
        if handle is None:
            raise ArchiveError(self.path, "the image refers to a file it does not contain", name)
        return handle

    def json(self, name: str) -> Any:
        try:
            with self.open(name) as handle:
                return json.load(handle)
        except ValueError as error:
            raise ArchiveError(self.path, f"invalid JSON ({error})", name) from None


@dataclasses.dataclass
class _Layer:
    digest: str  # "sha256:<hex>"
    open: Callable[[], IO[bytes]]
    verify: bool  # check the digest while extracting (OCI blobs); else it was computed here
    whiteouts: bool


def _blob_name(digest: str, source: _Source) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm not in ("sha256", "sha512") or not value.isalnum():
        raise ArchiveError(source.path, f"unsupported or malformed digest {digest!r}")
    return f"blobs/{algorithm}/{value}"


def _pick_manifest(index: dict[str, Any], source: _Source) -> dict[str, Any]:
    """Descend image indexes to the one manifest for this machine's architecture."""
    for _ in range(8):
        manifests = index.get("manifests") or []
        if len(manifests) != 1:
            arch = GOARCH.get(platform.machine(), platform.machine())
            manifests = [m for m in manifests if (m.get("platform") or {}).get("architecture") == arch]
            if len(manifests) != 1:
                raise ArchiveError(source.path, f"the index lists {len(index.get('manifests') or [])} manifests "
                                   f"and not exactly one for linux/{arch}")  # fmt: skip
        document = source.json(_blob_name(manifests[0]["digest"], source))
        if document.get("mediaType") in INDEX_TYPES or "manifests" in document:
            index = document
            continue
        return dict(document)
    raise ArchiveError(source.path, "image indexes nested too deep")


def _oci_layers(source: _Source) -> list[_Layer]:
    manifest = _pick_manifest(source.json("index.json"), source)
    layers = []
    for descriptor in manifest.get("layers") or []:
        name = _blob_name(descriptor["digest"], source)
        if not source.exists(name):
            raise ArchiveError(source.path, "a layer blob is missing (a foreign or non-distributable layer?)", name)
        layers.append(_Layer(descriptor["digest"], functools.partial(source.open, name), True, True))
    return layers


def _docker_layers(source: _Source) -> list[_Layer]:
    manifest = source.json("manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1:
        count = len(manifest) if isinstance(manifest, list) else "no"
        raise ArchiveError(source.path, f"a docker save archive with {count} images; save exactly one")
    layers = []
    for name in manifest[0].get("Layers") or []:
        layers.append(_Layer(_file_digest(source.open(name)), functools.partial(source.open, name), False, True))
    return layers


def _file_digest(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    with handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def archive_layers(source: _Source) -> tuple[str, list[_Layer]]:
    """What kind of archive ``source`` is, and its layers bottom first."""
    if source.exists("oci-layout") and source.exists("index.json"):
        return "OCI image layout", _oci_layers(source)
    if source.exists("manifest.json"):
        return "docker save archive", _docker_layers(source)
    if source.tar is None:
        raise ArchiveError(source.path, "a directory without oci-layout and index.json; a ready root directory "
                           "needs no import: pass its path as the rootfs")  # fmt: skip
    path = source.path

    def opener() -> IO[bytes]:
        return open(path, "rb")

    return "rootfs tarball", [_Layer(_file_digest(opener()), opener, False, False)]


def _fill(layer: _Layer, archive: str, workdir: str) -> None:
    algorithm, _, expected = layer.digest.partition(":")
    with layer.open() as stream:
        reader = _HashingReader(stream, algorithm)
        extract_layer(reader, os.path.join(workdir, ROOTFS), archive, layer.whiteouts)
        actual = reader.drain()
    if layer.verify and actual != expected:
        raise ArchiveError(archive, f"layer {layer.digest} has digest {algorithm}:{actual}: the file is damaged")


def import_image(name: str, path: str, cache: LayerCache, progress: Progress) -> list[str]:
    """Import ``path`` as image ``name``; returns its layer keys, bottom first."""
    if not os.path.exists(path):
        raise ArchiveError(path, "no such file or directory")
    source = _Source(path)
    try:
        return _import_layers(name, source, cache, progress)
    finally:
        source.close()


def _import_layers(name: str, source: _Source, cache: LayerCache, progress: Progress) -> list[str]:
    kind, layers = archive_layers(source)
    if not layers:
        raise ArchiveError(source.path, "the image has no layers")
    archive = os.path.abspath(source.path)
    cache.create()
    keys: list[str] = []
    for number, layer in enumerate(layers, 1):
        parent = keys[-1] if keys else None
        key = layer_key(parent, {"import": layer.digest, "whiteouts": layer.whiteouts})
        label = f"import {kind} layer {layer.digest[:19]}"
        origin = json.dumps({"import": archive, "kind": kind, "digest": layer.digest})
        fill = functools.partial(_fill, layer, archive)
        request = LayerRequest(key, parent, name, f"layer {number}", label, origin, fill)
        cache.ensure(request, f"[{number}/{len(layers)}] {name}", progress)
        keys.append(key)
    cache.write_tag(name, "import", keys, archive)
    return keys
