"""``pytest-isolate images ...``: build, list, remove, prune and import base images.

``cli.py`` adds these subcommands with :func:`add_parser` and hands the
parsed arguments to :func:`run`; the work is done by ``images.api``.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    images = commands.add_parser("images", help="build, list, remove and import base images (rootfs)")
    images.add_argument("--cache", metavar="DIR", help="the layer cache (default: $PYTEST_ISOLATE_CACHE, "
                        "else $XDG_CACHE_HOME/pytest-isolate, else ~/.cache/pytest-isolate)")  # fmt: skip
    images.add_argument("--recipes", metavar="DIR", action="append", default=[],
                        help="a directory of recipes searched before the built-in ones (repeatable)")  # fmt: skip
    actions = images.add_subparsers(dest="images_command", required=True)
    build = actions.add_parser(
        "build", help="build an image's missing layers",
        description="Build the layers of an image that the cache lacks, under a lock (a warm cache builds nothing), "
        "and print its layer directories, topmost first.",
    )
    build.add_argument("name", help="the image: a recipe name (NAME.toml in rootfs-images/ or a --recipes "
                       "directory), such as debian-bookworm")  # fmt: skip
    actions.add_parser("list", help="images: layers, size, when built, cache key")
    remove = actions.add_parser("rm", help="delete an image's layers that no other image uses")
    remove.add_argument("name")
    actions.add_parser("prune", help="delete layers no image uses and leftovers of killed builds")
    imports = actions.add_parser("import", help="import a rootfs tarball, OCI layout (dir or tar) or docker save tar")
    imports.add_argument("name")
    imports.add_argument("file")


def _size(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size / 1024:.0f} KiB"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _list(arguments: argparse.Namespace) -> int:
    from pytest_isolate.images.api import list_images

    rows = [["NAME", "LAYERS", "SIZE", "BUILT", "KEY"]]
    notes = []
    for image in list_images(arguments.recipes, arguments.cache):
        present = sum(layer.problem is None for layer in image.layers)
        built = (image.created or "").replace("T", " ").replace("Z", " UTC") if image.built else "not built"
        key = (image.key or "-")[:12]
        rows.append([image.name, f"{present}/{len(image.layers)}", _size(image.size) if present else "-", built, key])
        if image.note:
            notes.append(f"{image.name}: {image.note}")
    print(_table(rows))
    for note in notes:
        print(f"note: {note}")
    return 0


def run(arguments: argparse.Namespace) -> int:
    from pytest_isolate.images import api
    from pytest_isolate.images.errors import ImageError

    command = arguments.images_command
    try:
        if command == "build":
            layers = api.resolve_layers(arguments.name, arguments.recipes, arguments.cache, progress=_say)
            print(f"{arguments.name}: {len(layers)} layer(s), topmost first:")
            print("\n".join(f"  {layer}" for layer in layers))
        elif command == "list":
            return _list(arguments)
        elif command == "rm":
            removed = api.remove_image(arguments.name, arguments.recipes, arguments.cache)
            print(f"{arguments.name}: removed {len(removed.removed)} layer(s), freed {_size(removed.freed)}"
                  + (f"; kept {len(removed.kept)} layer(s) other images use" if removed.kept else ""))  # fmt: skip
        elif command == "prune":
            pruned = api.prune(arguments.recipes, arguments.cache)
            print(f"removed {len(pruned.removed)} unused layer(s), freed {_size(pruned.freed)}; "
                  f"removed {len(pruned.stale)} leftover(s) of killed builds")  # fmt: skip
        elif command == "import":
            layers = api.import_image(arguments.name, arguments.file, arguments.recipes, arguments.cache, _say)
            print(f"{arguments.name}: imported {len(layers)} layer(s)")
    except ImageError as error:
        print(f"pytest-isolate images {command}: {error}", file=sys.stderr)
        return 1
    return 0


def _say(line: str) -> None:
    print(line, flush=True)
