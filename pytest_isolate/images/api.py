"""What the plugin and the ``pytest-isolate images`` command call.

An image is a stack of cache layers.  :func:`resolve_layers` turns an image
name (a recipe, or an imported image) into the layer directories, building
what is missing; a path to a directory is a ready one-layer root.  The
other functions list, remove and prune what the cache holds.  Recipes are
found in ``extra_dirs`` first (in order), then in the built-in directory;
a recipe shadows an imported image of the same name.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from pytest_isolate.images import tools
from pytest_isolate.images.build import plan_recipe_layers
from pytest_isolate.images.cache import LayerCache, LayerRequest, Progress
from pytest_isolate.images.errors import ImageError, MissingToolError, NotBuiltError, UnknownImageError
from pytest_isolate.images.recipes import NAME_PATTERN, find_recipe, recipe_chain, recipe_dirs


@dataclasses.dataclass
class LayerInfo:
    key: str
    problem: str | None  # None: published and intact
    size: int | None
    created: str | None


@dataclasses.dataclass
class ImageInfo:
    name: str
    kind: str  # "recipe" or "import"
    source: str  # the recipe file, or the imported archive
    description: str
    layers: list[LayerInfo]
    note: str = ""

    @property
    def built(self) -> bool:
        return bool(self.layers) and all(layer.problem is None for layer in self.layers)

    @property
    def size(self) -> int:
        return sum(layer.size or 0 for layer in self.layers if layer.problem is None)

    @property
    def created(self) -> str | None:
        return max((layer.created for layer in self.layers if layer.created and layer.problem is None), default=None)

    @property
    def key(self) -> str | None:
        return self.layers[-1].key if self.layers else None


@dataclasses.dataclass
class RemoveResult:
    removed: list[str]  # layer keys deleted
    kept: list[str]  # layer keys other images still use
    freed: int


@dataclasses.dataclass
class PruneResult:
    removed: list[str]
    freed: int
    stale: list[str]  # directories of killed builds and interrupted deletions


def _is_path(name_or_path: str) -> bool:
    return "/" in name_or_path or name_or_path.startswith(".")


def _imported_requests(name: str, tag: dict[str, Any]) -> list[LayerRequest]:
    """An imported image's layers; they cannot be rebuilt, only imported again."""

    def cannot_rebuild(workdir: str) -> None:
        raise ImageError(
            f"imported image {name!r} has a missing or damaged layer and cannot be rebuilt from a recipe; "
            f"import it again: pytest-isolate images import {name} {tag.get('source', 'FILE')}"
        )

    keys = [str(key) for key in tag["layers"]]
    requests = []
    for number, key in enumerate(keys, 1):
        parent = keys[number - 2] if number > 1 else None
        requests.append(LayerRequest(key, parent, name, f"layer {number}", f"imported layer {number}", "", cannot_rebuild))
    return requests


def _image_layers(name: str, dirs: list[str], cache: LayerCache) -> tuple[list[LayerRequest], str, str]:
    """The image's layer requests (bottom first), its kind and its source."""

    def imported(parent: str) -> bool:
        tag = cache.read_tag(parent)
        return bool(tag and tag.get("kind") == "import")

    recipe = find_recipe(name, dirs)
    if recipe is None:
        tag = cache.read_tag(name)
        if tag and tag.get("kind") == "import":
            return _imported_requests(name, tag), "import", str(tag.get("source", ""))
        known = sorted(set(_recipe_names(dirs)) | set(cache.tags()))
        raise UnknownImageError(name, dirs, known)
    chain = recipe_chain(name, dirs, imported)
    below = None
    if chain[0].base is None and chain[0].parent is not None:
        tag = cache.read_tag(chain[0].parent)
        assert tag is not None
        below = _imported_requests(chain[0].parent, tag)
    return plan_recipe_layers(chain, cache, below), "recipe", recipe.path


def image_exists(name: str, extra_dirs: list[str] | tuple[str, ...] = (), cache_dir: str | None = None) -> None:
    """Raise ImageError unless ``name`` is a recipe or an imported image; builds nothing.

    What pytest checks at collection, so that a misspelt ``rootfs=`` is a
    collection error, not a failure of each test.
    """
    dirs = recipe_dirs(extra_dirs)
    if find_recipe(name, dirs) is not None:
        return
    cache = LayerCache(cache_dir)
    tag = cache.read_tag(name)
    if not (tag and tag.get("kind") == "import"):
        raise UnknownImageError(name, dirs, sorted(set(_recipe_names(dirs)) | set(cache.tags())))


def resolve_layers(
    name_or_path: str,
    extra_dirs: list[str] | tuple[str, ...] = (),
    cache_dir: str | None = None,
    build_if_missing: bool = True,
    progress: Progress = print,
) -> list[str]:
    """The absolute layer directories of an image, in overlayfs ``lowerdir`` order: topmost first.

    ``name_or_path`` containing a ``/`` (or starting with ``.``) is a path to a
    ready root directory, returned as the only layer.  Otherwise it names a
    recipe or an imported image; missing or damaged layers are built (under
    a lock: concurrent callers build once) unless ``build_if_missing`` is
    False, which raises :class:`NotBuiltError` instead.  ``progress`` gets
    one line when a layer starts and one when it ends; a warm cache prints
    nothing.  Do not remove or prune images while containers use them.
    """
    if _is_path(name_or_path):
        path = os.path.abspath(name_or_path)
        if not os.path.isdir(path):
            raise ImageError(f"rootfs {name_or_path!r}: no such directory (give an image name or a root directory)")
        return [path]
    cache = LayerCache(cache_dir)
    requests, kind, source = _image_layers(name_or_path, recipe_dirs(extra_dirs), cache)
    problems = [(number, why) for number, request in enumerate(requests, 1) if (why := cache.check(request.key))]
    if problems:
        if not build_if_missing:
            raise NotBuiltError(name_or_path, problems[0][0], len(requests), problems[0][1])
        for number, request in enumerate(requests, 1):
            cache.ensure(request, f"[{number}/{len(requests)}] {request.image}", progress)
    try:
        cache.write_tag(name_or_path, kind, [request.key for request in requests], source)
    except OSError:
        pass  # bookkeeping for list and prune; a read-only cache still resolves
    return [cache.rootfs(request.key) for request in reversed(requests)]


def import_image(
    name: str,
    path: str,
    extra_dirs: list[str] | tuple[str, ...] = (),
    cache_dir: str | None = None,
    progress: Progress = print,
) -> list[str]:
    """Import an archive as image ``name``; returns its layer directories, topmost first."""
    from pytest_isolate.images.importer import import_image as import_archive

    if not NAME_PATTERN.match(name):
        raise ImageError(f"image name {name!r} may use only a-z, 0-9, '.', '_', '-' and must start with a-z or 0-9")
    recipe = find_recipe(name, recipe_dirs(extra_dirs))
    if recipe is not None:
        raise ImageError(f"a recipe named {name!r} exists ({recipe.path}) and would hide the import; pick another name")
    tools.require_root(f"importing image {name!r}", f"pytest-isolate images import {name} FILE")
    cache = LayerCache(cache_dir)
    keys = import_archive(name, path, cache, progress)
    return [cache.rootfs(key) for key in reversed(keys)]


def _recipe_names(dirs: list[str]) -> list[str]:
    names: list[str] = []
    for directory in dirs:
        for entry in sorted(os.listdir(directory)):
            if entry.endswith(".toml") and entry[: -len(".toml")] not in names:
                names.append(entry[: -len(".toml")])
    return names


def _layer_info(cache: LayerCache, key: str) -> LayerInfo:
    problem = cache.check(key)
    manifest = cache.manifest(key) if problem is None else None
    return LayerInfo(key, problem, (manifest or {}).get("size"), (manifest or {}).get("created"))


def list_images(extra_dirs: list[str] | tuple[str, ...] = (), cache_dir: str | None = None) -> list[ImageInfo]:
    """Every recipe on the search path and every image the cache has a record of, by name."""
    cache = LayerCache(cache_dir)
    dirs = recipe_dirs(extra_dirs)
    tags = cache.tags()
    images: dict[str, ImageInfo] = {}
    for name in _recipe_names(dirs):
        keys: list[str] = []
        note = source = description = ""
        try:
            recipe = find_recipe(name, dirs)
            assert recipe is not None
            source, description = recipe.path, recipe.description
            keys = [request.key for request in _image_layers(name, dirs, cache)[0]]
        except MissingToolError as error:
            keys = [str(key) for key in tags.get(name, {}).get("layers", [])]
            note = f"{error}; showing the layers it was last built with"
        except ImageError as error:
            note = str(error)
        images[name] = ImageInfo(name, "recipe", source, description, [_layer_info(cache, k) for k in keys], note)
    for name, tag in tags.items():
        if name not in images:
            note = "" if tag.get("kind") == "import" else "its recipe is not on the search path"
            layers = [_layer_info(cache, str(key)) for key in tag["layers"]]
            images[name] = ImageInfo(name, str(tag.get("kind")), str(tag.get("source", "")), "", layers, note)
    return [images[name] for name in sorted(images)]


def remove_image(name: str, extra_dirs: list[str] | tuple[str, ...] = (), cache_dir: str | None = None) -> RemoveResult:
    """Delete an image's layers that no other image uses, and its record."""
    cache = LayerCache(cache_dir)
    images = {image.name: image for image in list_images(extra_dirs, cache_dir)}
    if name not in images:
        raise UnknownImageError(name, recipe_dirs(extra_dirs), sorted(images))
    others = {layer.key for image in images.values() if image.name != name for layer in image.layers}
    result = RemoveResult([], [], 0)
    for layer in images[name].layers:
        if layer.key in others:
            result.kept.append(layer.key)
        elif os.path.lexists(os.path.join(cache.layers, layer.key)):
            result.freed += cache.remove_layer(layer.key)
            result.removed.append(layer.key)
    cache.remove_tag(name)
    return result


def prune(extra_dirs: list[str] | tuple[str, ...] = (), cache_dir: str | None = None) -> PruneResult:
    """Delete layers no image uses (left by edited recipes or removed images) and killed builds' leftovers."""
    cache = LayerCache(cache_dir)
    used = {layer.key for image in list_images(extra_dirs, cache_dir) for layer in image.layers}
    result = PruneResult([], 0, [])
    for key in cache.layer_keys():
        if key not in used and re.fullmatch(r"[0-9a-f]{64}", key):
            result.freed += cache.remove_layer(key)
            result.removed.append(key)
    result.stale = cache.remove_stale_work()
    for entry in os.listdir(cache.logs) if os.path.isdir(cache.logs) else []:
        if entry.endswith(".log") and entry[: -len(".log")] not in used:
            os.unlink(os.path.join(cache.logs, entry))
    return result
