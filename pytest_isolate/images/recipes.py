"""Recipes: TOML files that say how to build a base image, one layer per line of work.

A recipe is ``NAME.toml`` in a recipe directory::

    name = "debian-bookworm-tools"
    description = "what it is for"
    parent = "debian-bookworm"          # or a [base] table, never both
    [[steps]]
    run = "apt-get update && apt-get install -y procps"

``[base]`` (``tool = "mmdebstrap"``, ``suite``, ``variant``, ``include``,
optional ``mirror``) makes the bottom layer; each ``[[steps]]`` entry adds
one layer on top.  Directories are searched in order, the user's first and
the built-in ones last, so a user recipe may replace a built-in one of the
same name.  Unknown keys are errors: a typo must not silently build a
different image.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from pytest_isolate.images.errors import RecipeError, UnknownImageError

# The canonical built-in recipes live in the package so that an installed
# wheel has them; rootfs-images/ at the repository root links to them.
BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Debian package names (policy 5.6.1), optionally with =version or /release.
PACKAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9+.-]+([=/][A-Za-z0-9.+~:-]+)?$")
MMDEBSTRAP_VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important",
                       "debootstrap", "standard")  # fmt: skip
TOP_KEYS = ("name", "description", "base", "parent", "steps")
BASE_KEYS = ("tool", "suite", "variant", "include", "mirror")
MAX_DEPTH = 64


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    """The bottom layer: a Debian-like root made by mmdebstrap."""

    tool: str
    suite: str
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    mirror: str | None = None

    def describe(self) -> str:
        words = [self.tool, self.suite, self.variant] + [f"+{package}" for package in self.include]
        return " ".join(words)

    def canonical(self) -> dict[str, Any]:
        """What the layer's content depends on: ``include`` is a set, so it is sorted."""
        return {
            "tool": self.tool,
            "suite": self.suite,
            "variant": self.variant,
            "include": sorted(set(self.include)),
            "mirror": self.mirror,
        }


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    path: str
    text: str
    base: BaseSpec | None
    parent: str | None
    steps: tuple[str, ...]


def _parse_toml(text: str, path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            raise RecipeError(
                path, "reading TOML on Python < 3.11 needs the 'tomli' package: pip install tomli"
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(path, f"invalid TOML: {error}") from None


def _check_keys(path: str, table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise RecipeError(path, f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _string(path: str, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(path, f"{where} must be a non-empty string, got {value!r}")
    return value


def _parse_base(path: str, table: Any) -> BaseSpec:
    if not isinstance(table, dict):
        raise RecipeError(path, "[base] must be a table")
    _check_keys(path, table, BASE_KEYS, "[base]")
    tool = _string(path, table.get("tool"), "[base] tool")
    if tool != "mmdebstrap":
        raise RecipeError(path, f"[base] tool = {tool!r} is not supported; the only base tool is \"mmdebstrap\"")
    suite = _string(path, table.get("suite"), "[base] suite")
    variant = table.get("variant", "minbase")
    if variant not in MMDEBSTRAP_VARIANTS:
        raise RecipeError(path, f"[base] variant = {variant!r} is not one of {', '.join(MMDEBSTRAP_VARIANTS)}")
    include = table.get("include", [])
    if not isinstance(include, list) or not all(isinstance(p, str) and PACKAGE_PATTERN.match(p) for p in include):
        raise RecipeError(path, f"[base] include must be a list of Debian package names, got {include!r}")
    mirror = table.get("mirror")
    if mirror is not None:
        _string(path, mirror, "[base] mirror")
    return BaseSpec(tool=tool, suite=suite, variant=variant, include=tuple(include), mirror=mirror)


def _parse_steps(path: str, steps: Any) -> tuple[str, ...]:
    if not isinstance(steps, list):
        raise RecipeError(path, "steps must be an array of tables: [[steps]] run = \"...\"")
    commands = []
    for number, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            raise RecipeError(path, f"step {number} must be a table with a 'run' key")
        _check_keys(path, step, ("run",), f"step {number}")
        commands.append(_string(path, step.get("run"), f"step {number} run"))
    return tuple(commands)


def load_recipe(path: str) -> Recipe:
    """Read and validate one recipe file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(path, f"cannot read it: {error}") from None
    data = _parse_toml(text, path)
    _check_keys(path, data, TOP_KEYS, "the recipe")
    name = _string(path, data.get("name"), "name")
    stem = os.path.basename(path)[: -len(".toml")]
    if not NAME_PATTERN.match(name) or name != stem:
        raise RecipeError(
            path, f"name = {name!r} must match the file name ({stem!r}) and use only a-z, 0-9, '.', '_', '-'"
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise RecipeError(path, "description must be a string")
    if ("base" in data) == ("parent" in data):
        raise RecipeError(path, "give exactly one of a [base] table or parent = \"other-image\"")
    base = _parse_base(path, data["base"]) if "base" in data else None
    parent = _string(path, data["parent"], "parent") if "parent" in data else None
    if parent is not None and not NAME_PATTERN.match(parent):
        raise RecipeError(path, f"parent = {parent!r} is not an image name")
    steps = _parse_steps(path, data.get("steps", []))
    return Recipe(name, description, os.path.abspath(path), text, base, parent, steps)


def recipe_dirs(extra_dirs: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The search path: the user's directories in order, then the built-in one."""
    dirs = []
    for directory in extra_dirs:
        if not os.path.isdir(directory):
            raise RecipeError(directory, "this recipe directory does not exist (check the isolate_images setting)")
        dirs.append(os.path.abspath(directory))
    dirs.append(BUILTIN_DIR)
    return dirs


def find_recipe(name: str, dirs: list[str]) -> Recipe | None:
    for directory in dirs:
        path = os.path.join(directory, f"{name}.toml")
        if os.path.isfile(path):
            return load_recipe(path)
    return None


def recipe_chain(name: str, dirs: list[str], is_imported: Callable[[str], bool] = lambda name: False) -> list[Recipe]:
    """The recipe and its ancestors, bottom first.

    The chain ends at the recipe with ``[base]``, or at one whose parent is
    an imported image (``is_imported(parent)``): that image's layers go below.
    """
    chain: list[Recipe] = []
    current: str | None = name
    while current is not None:
        recipe = find_recipe(current, dirs)
        if recipe is None:
            if not chain:
                raise UnknownImageError(name, dirs, [])
            if is_imported(current):
                break
            raise RecipeError(
                chain[-1].path, f"parent {current!r} has no recipe in {', '.join(dirs)} and is not an imported image"
            )
        if any(seen.name == recipe.name for seen in chain) or len(chain) >= MAX_DEPTH:
            names = " -> ".join([r.name for r in chain] + [recipe.name])
            raise RecipeError(recipe.path, f"parents form a loop (or a chain over {MAX_DEPTH} deep): {names}")
        chain.append(recipe)
        current = recipe.parent
    chain.reverse()
    return chain
