"""Base root file systems for containers: recipes, a layered cache, imports.

The plugin asks :func:`resolve_layers` for an image's layer directories
(overlayfs ``lowerdir`` order, topmost first) and stacks them under the
container's writable layer.  See ``rootfs-images/README.md`` for the recipe
format and the cache layout.
"""

from __future__ import annotations

from pytest_isolate.images.api import (
    ImageInfo,
    LayerInfo,
    PruneResult,
    RemoveResult,
    import_image,
    list_images,
    prune,
    remove_image,
    resolve_layers,
)
from pytest_isolate.images.errors import (
    ArchiveError,
    ImageBuildError,
    ImageError,
    MissingToolError,
    NotBuiltError,
    RecipeError,
    UnknownImageError,
)

__all__ = [
    "ArchiveError",
    "ImageBuildError",
    "ImageError",
    "ImageInfo",
    "LayerInfo",
    "MissingToolError",
    "NotBuiltError",
    "PruneResult",
    "RecipeError",
    "RemoveResult",
    "UnknownImageError",
    "import_image",
    "list_images",
    "prune",
    "remove_image",
    "resolve_layers",
]
