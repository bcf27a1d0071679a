"""Turn a recipe chain into layer requests, and build one layer.

The base layer is ``mmdebstrap`` into an empty directory, with a fixed
``SOURCE_DATE_EPOCH`` and without the host's ``/etc/resolv.conf`` and
``/etc/hostname`` (so two builds of one recipe give the same files).  Each
step is ``/bin/sh -c RUN`` chrooted into an overlay of the layers below,
whose upper directory becomes the new layer (see ``stepenv``).  Both run in
the sandbox of ``runner``; a failure raises :class:`ImageBuildError` and the
cache publishes nothing.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import platform
import shlex
import sys

from pytest_isolate.images import runner, tools
from pytest_isolate.images.cache import ROOTFS, LayerCache, LayerRequest, layer_key
from pytest_isolate.images.errors import ImageBuildError
from pytest_isolate.images.recipes import BaseSpec, Recipe

SOURCE_DATE_EPOCH = "0"
# Bump when the environment a step runs in changes in a way that can change its result.
STEP_RUNNER = "chroot-overlay-1"
# Host files mmdebstrap copies in that do not belong in an image.
HOST_FILES = ("etc/resolv.conf", "etc/hostname")
# overlayfs bookkeeping that only means something for the mount that wrote it;
# trusted.overlay.opaque is kept: it is how a layer hides a lower directory.
# (uuid: kernels since 6.6 tag an upper's root with the mount's identity.)
OVERLAY_PRIVATE_XATTRS = tuple(
    f"trusted.overlay.{name}" for name in ("origin", "impure", "nlink", "uuid")
)


def _short(command: str, width: int = 60) -> str:
    """One line for the progress log: a multi-line step's lines joined with "; "."""
    line = "; ".join(" ".join(part.split()) for part in command.splitlines() if part.strip())
    return line if len(line) <= width else line[: width - 1] + "…"


def plan_recipe_layers(chain: list[Recipe], cache: LayerCache, below: list[LayerRequest] | None = None) -> list[LayerRequest]:
    """The layers of the last recipe in ``chain`` (bottom first), on top of ``below`` (an imported parent)."""
    requests = list(below or [])
    for recipe in chain:
        if recipe.base is not None:
            content = {
                "base": recipe.base.canonical(),
                "tools": {"mmdebstrap": tools.mmdebstrap_version(cache.root)},
                "arch": platform.machine(),
                "source_date_epoch": SOURCE_DATE_EPOCH,
            }
            key = layer_key(None, content)
            fill = functools.partial(build_base, recipe.name, recipe.base, cache.log_path(key))
            requests.append(LayerRequest(key, None, recipe.name, "base", recipe.base.describe(), recipe.text, fill))
        for number, command in enumerate(recipe.steps, 1):
            parent = requests[-1].key if requests else None
            key = layer_key(parent, {"run": command, "runner": STEP_RUNNER})
            lowers = [request.key for request in reversed(requests)]
            fill = functools.partial(build_step, recipe.name, number, command, lowers, cache, cache.log_path(key))
            label = f"step {number}: {_short(command)}"
            requests.append(LayerRequest(key, parent, recipe.name, f"step {number}", label, recipe.text, fill))
    return requests


def build_base(image: str, base: BaseSpec, log_path: str, workdir: str) -> None:
    tools.require_root(f"building image {image!r}", f"pytest-isolate images build {image}")
    command = [tools.find_mmdebstrap(), "--mode=root", "--format=directory", f"--variant={base.variant}"]
    if base.include:
        command.append(f"--include={','.join(base.include)}")
    rootfs = os.path.join(workdir, ROOTFS)
    command += [base.suite, rootfs] + ([base.mirror] if base.mirror else [])
    shown = shlex.join(["mmdebstrap"] + command[1:])
    env = runner.build_env({"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})
    status, tail = runner.run_sandboxed(command, log_path, env, shown)
    if status != 0:
        raise ImageBuildError(image, "base (mmdebstrap)", shown, status, tail, log_path)
    for name in HOST_FILES:
        path = os.path.join(rootfs, name)
        if os.path.lexists(path):
            os.unlink(path)


def build_step(image: str, number: int, command: str, lowers: list[str], cache: LayerCache, log_path: str,
               workdir: str) -> None:  # fmt: skip
    """Run one step in an overlay of ``lowers`` (keys, topmost first); the upper becomes the layer."""
    tools.require_root(f"building image {image!r}", f"pytest-isolate images build {image}")
    upper, work, merged = (os.path.join(workdir, part) for part in (ROOTFS, "work", "merged"))
    for directory in (upper, work, merged):
        os.mkdir(directory, 0o755)
    spec = {
        "layers_dir": cache.layers,
        "lowers": [f"{key}/{ROOTFS}" for key in lowers],
        "upper": upper,
        "work": work,
        "merged": merged,
        "run": command,
        "env": runner.build_env({"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}),
    }
    helper = [sys.executable, "-m", "pytest_isolate.images.stepenv", json.dumps(spec)]
    # The helper is this interpreter: it needs our environment to import the package.
    status, tail = runner.run_sandboxed(helper, log_path, dict(os.environ), command)
    if status != 0:
        raise ImageBuildError(image, f"step {number}", command, status, tail, log_path)
    resolv = os.path.join(upper, "etc", "resolv.conf")
    if os.path.lexists(resolv):
        os.unlink(resolv)  # the host's copy that stepenv put there for apt
    strip_overlay_xattrs(upper)


def strip_overlay_xattrs(root: str) -> None:
    paths = [root]
    for current, dirs, files in os.walk(root):
        paths += [os.path.join(current, name) for name in dirs + files]
    for path in paths:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as error:
            if error.errno in (errno.ENOTSUP, errno.ENOENT):
                continue
            raise
        for name in names:
            if name in OVERLAY_PRIVATE_XATTRS:
                os.removexattr(path, name, follow_symlinks=False)
