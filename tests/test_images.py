"""Base images: recipes, the layer cache, real builds with mmdebstrap, imports.

The shipped images are built once per test session into a cache shared by
the xdist workers (their locks make one of them build, the other wait).
Set PYTEST_ISOLATE_CACHE to a directory that CI keeps between runs to skip
the ~30 s cold build.  Tests that break a cache work on a private one made
of hard links to the shared layers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest
from images_helpers import (
    add_entry,
    add_file,
    clone_cache,
    layer_blob,
    overlay_run,
    processes_mentioning,
    resolver_script,
    tar_directory,
    tree_listing,
    write_docker_save,
    write_oci_layout,
    write_recipe,
)

from pytest_isolate.images import (
    ArchiveError,
    ImageBuildError,
    ImageError,
    MissingToolError,
    NotBuiltError,
    RecipeError,
    import_image,
    list_images,
    prune,
    remove_image,
    resolve_layers,
)
from pytest_isolate.images.cache import LayerCache
from pytest_isolate.images.fsutil import mounts_below
from pytest_isolate.images.recipes import BUILTIN_DIR, load_recipe, recipe_chain, recipe_dirs

BUILDS = pytest.mark.requires("root", "overlay")
BUILT_LINE = re.compile(r"^\[\d+/\d+\] [\w.-]+: (?!.*built by another process).* \.\.\. \d+\.\d s$")


@dataclasses.dataclass
class Shipped:
    cache: str
    base: list[str]  # debian-bookworm's layers, topmost first
    tools: list[str]  # debian-bookworm-tools's layers


def _shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.environ.get("PYTEST_ISOLATE_CACHE"):
        return os.environ["PYTEST_ISOLATE_CACHE"]
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    return str(base / "image-cache")


@pytest.fixture(scope="session")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    from conftest import require

    for capability in ("root", "overlay", "mmdebstrap"):
        require(capability)
    cache = _shared_cache_dir(tmp_path_factory)
    tools = resolve_layers("debian-bookworm-tools", [], cache)
    base = resolve_layers("debian-bookworm", [], cache)
    return Shipped(cache, base, tools)


def _private(shipped: Shipped, tmp_path) -> str:  # type: ignore[no-untyped-def]
    return clone_cache(shipped.cache, str(tmp_path / "cache"), shipped.base)


def _no_leftovers(cache: str) -> None:
    layers = os.path.join(cache, "layers")
    assert [entry for entry in os.listdir(layers) if entry.startswith(".")] == []
    assert mounts_below(cache) == []


# -- recipes (no root needed) --------------------------------------------------


def test_builtin_recipes_load():
    chain = recipe_chain("debian-bookworm-tools", recipe_dirs())
    assert [recipe.name for recipe in chain] == ["debian-bookworm", "debian-bookworm-tools"]
    assert chain[0].base is not None and chain[0].base.describe() == "mmdebstrap bookworm minbase +python3"
    assert len(chain[1].steps) == 1 and "procps iproute2" in chain[1].steps[0]
    assert os.path.isfile(os.path.join(BUILTIN_DIR, "debian-bookworm.toml"))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('description = "x\n', "invalid TOML: "),
        ('parent = "debian-bookworm"\nsteps = [{ run = "true", shell = "bash" }]\n', "step 1 has unknown key(s) shell"),
        ('[base]\ntool = "mmdebstrap"\nsuit = "bookworm"\n', "[base] has unknown key(s) suit"),
        ('parent = "debian-bookworm"\n[base]\ntool = "mmdebstrap"\nsuite = "bookworm"\n', "exactly one of"),
        ('[base]\ntool = "debootstrap"\nsuite = "bookworm"\n', "the only base tool is \"mmdebstrap\""),
        ('[base]\ntool = "mmdebstrap"\nsuite = "bookworm"\ninclude = ["bad name"]\n', "[base] include must be"),
    ],
)
def test_invalid_recipe_names_the_file_and_the_problem(tmp_path, body, problem):
    path = write_recipe(str(tmp_path), "broken", body)
    with pytest.raises(RecipeError) as caught:
        resolve_layers("broken", [str(tmp_path)], str(tmp_path / "cache"))
    assert caught.value.path == path
    assert str(caught.value).startswith(f"recipe {path}: ")
    assert problem in str(caught.value)


def test_recipe_name_must_match_file_and_parents_must_not_loop(tmp_path):
    (tmp_path / "a.toml").write_text('name = "b"\nparent = "debian-bookworm"\n')
    with pytest.raises(RecipeError, match="must match the file name"):
        load_recipe(str(tmp_path / "a.toml"))
    write_recipe(str(tmp_path), "x", 'parent = "y"\n')
    write_recipe(str(tmp_path), "y", 'parent = "x"\n')
    with pytest.raises(RecipeError, match="parents form a loop"):
        recipe_chain("x", recipe_dirs([str(tmp_path)]))


def test_missing_mmdebstrap_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError, match=r"install mmdebstrap: apt-get install mmdebstrap"):
        resolve_layers("debian-bookworm", [], str(tmp_path / "cache"))


def test_a_directory_is_a_ready_rootfs(tmp_path):
    assert resolve_layers(str(tmp_path), [], str(tmp_path / "cache")) == [str(tmp_path)]
    with pytest.raises(ImageError, match="no such directory"):
        resolve_layers(str(tmp_path / "absent"), [], str(tmp_path / "cache"))


# -- real builds ---------------------------------------------------------------


@BUILDS
def test_shipped_images_mount_and_run(shipped: Shipped):
    assert len(shipped.base) == 1 and len(shipped.tools) == 2
    assert shipped.tools[1] == shipped.base[0]  # the tools image stacks on the base layer
    result = overlay_run(
        shipped.tools,
        "test ! -e etc/resolv.conf && test ! -e etc/hostname && test -x usr/bin/ps && "
        "chroot . python3 -c 'import ssl, sys; print(sys.version_info[:2])' && chroot . ip -V",
    )
    assert result.returncode == 0, result.stderr
    assert "(3, 11)" in result.stdout and "iproute2" in result.stdout


@BUILDS
def test_warm_resolve_is_a_silent_cache_hit(shipped: Shipped):
    lines: list[str] = []
    started = time.perf_counter()
    layers = resolve_layers("debian-bookworm-tools", [], shipped.cache, build_if_missing=False, progress=lines.append)
    elapsed = time.perf_counter() - started
    assert layers == shipped.tools and lines == []
    assert elapsed < 0.5


@BUILDS
def test_concurrent_builders_build_once(shipped: Shipped, tmp_path):
    cache = _private(shipped, tmp_path)
    recipes = str(tmp_path / "recipes")
    write_recipe(recipes, "racer", 'parent = "debian-bookworm"\n[[steps]]\nrun = "sleep 2; date +%s%N > /built-at"\n')
    builders = [subprocess.Popen(resolver_script("racer", recipes, cache), stdout=subprocess.PIPE, text=True)
                for _ in range(4)]  # fmt: skip
    outputs = [builder.communicate(timeout=300)[0] for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0, 0, 0], outputs
    built = [line for output in outputs for line in output.splitlines() if BUILT_LINE.match(line[len("PROGRESS "):])]
    assert len(built) == 1, outputs
    assert "[2/2] racer: step 1: sleep 2; date +%s%N > /built-at ... " in built[0]
    layers = {line for output in outputs for line in output.splitlines() if line.startswith("LAYERS ")}
    assert len(layers) == 1  # all four got the same layers
    assert json.loads(layers.pop()[len("LAYERS "):])[1] == os.path.join(cache, "layers", os.path.basename(
        os.path.dirname(shipped.base[0])), "rootfs")  # fmt: skip
    _no_leftovers(cache)


def _start_and_kill(command: list[str], cache: str, ready: str) -> None:
    """Start a build, SIGKILL it once ``ready`` (a path glob under the cache) exists, wait for its processes to die."""
    import glob

    builder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not glob.glob(os.path.join(cache, ready)):
        assert builder.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline, f"{ready} never appeared"
        time.sleep(0.05)
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    deadline = time.monotonic() + 20
    while processes_mentioning(cache) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(cache) == []


@BUILDS
@pytest.mark.parametrize("where", ["mmdebstrap", "step"])
def test_a_killed_build_publishes_nothing_and_the_next_run_rebuilds(shipped: Shipped, tmp_path, where):
    recipes = str(tmp_path / "recipes")
    if where == "mmdebstrap":
        cache = str(tmp_path / "cache")
        write_recipe(recipes, "victim", '[base]\ntool = "mmdebstrap"\nsuite = "bookworm"\nvariant = "minbase"\n')
        ready = "layers/.tmp-*/rootfs/usr/bin/dpkg"  # halfway: packages downloaded, being unpacked
    else:
        cache = _private(shipped, tmp_path)
        write_recipe(recipes, "victim", 'parent = "debian-bookworm"\n[[steps]]\nrun = "touch /started; sleep 3"\n')
        ready = "layers/.tmp-*/rootfs/started"
    _start_and_kill(resolver_script("victim", recipes, cache), cache, ready)

    assert mounts_below(cache) == []  # the build's mounts died with its namespace
    with pytest.raises(NotBuiltError, match=r"layer \d/\d is not in the cache"):
        resolve_layers("victim", [recipes], cache, build_if_missing=False)
    lines: list[str] = []
    layers = resolve_layers("victim", [recipes], cache, progress=lines.append)
    assert len([line for line in lines if BUILT_LINE.match(line)]) == 1, lines
    assert LayerCache(cache).check(os.path.basename(os.path.dirname(layers[0]))) is None
    _no_leftovers(cache)  # the killed build's directory was removed


@BUILDS
def test_a_failing_step_reports_step_command_and_output_and_publishes_nothing(shipped: Shipped, tmp_path):
    cache = _private(shipped, tmp_path)
    recipes = str(tmp_path / "recipes")
    command = "echo preparing\necho 'it broke: no such thing' >&2\nexit 3\necho never"
    write_recipe(recipes, "failing", f'parent = "debian-bookworm"\n[[steps]]\nrun = """{command}"""\n')
    with pytest.raises(ImageBuildError) as caught:
        resolve_layers("failing", [recipes], cache, progress=lambda line: None)
    error = caught.value
    assert (error.image, error.step, error.command, error.returncode) == ("failing", "step 1", command, 3)
    assert error.output_tail == ["+ echo preparing", "preparing", "+ echo it broke: no such thing",
                                 "it broke: no such thing", "+ exit 3"]  # fmt: skip
    assert str(error) == "\n".join([
        "building image 'failing' failed at step 1 (exit status 3):",
        "  $ echo preparing", "  $ echo 'it broke: no such thing' >&2", "  $ exit 3", "  $ echo never",
        "last 5 line(s) of its output:",
        "  | + echo preparing", "  | preparing", "  | + echo it broke: no such thing",
        "  | it broke: no such thing", "  | + exit 3",
        f"full output: {error.log}",
    ])  # fmt: skip
    assert error.log and os.path.isfile(error.log)
    assert sorted(os.listdir(os.path.join(cache, "layers"))) == [os.path.basename(os.path.dirname(shipped.base[0]))]
    _no_leftovers(cache)


@BUILDS
def test_an_unknown_package_fails_its_step_and_publishes_nothing(shipped: Shipped, tmp_path):
    cache = _private(shipped, tmp_path)
    recipes = str(tmp_path / "recipes")
    command = "apt-get update -q && apt-get install -y no-such-package-xyz"
    write_recipe(recipes, "nopkg", f'parent = "debian-bookworm"\n[[steps]]\nrun = "{command}"\n')
    with pytest.raises(ImageBuildError) as caught:
        resolve_layers("nopkg", [recipes], cache, progress=lambda line: None)
    error = caught.value
    assert (error.step, error.command, error.returncode) == ("step 1", command, 100)
    assert error.output_tail[-1] == "E: Unable to locate package no-such-package-xyz"
    assert str(error).startswith(f"building image 'nopkg' failed at step 1 (exit status 100): {command}\n")
    assert len(LayerCache(cache).layer_keys()) == 1
    _no_leftovers(cache)


@BUILDS
def test_a_failing_mmdebstrap_reports_its_command_and_publishes_nothing(shipped: Shipped, tmp_path):
    cache = str(tmp_path / "cache")
    recipes = str(tmp_path / "recipes")
    write_recipe(recipes, "nosuite", '[base]\ntool = "mmdebstrap"\nsuite = "no-such-suite"\n')
    with pytest.raises(ImageBuildError) as caught:
        resolve_layers("nosuite", [recipes], cache, progress=lambda line: None)
    error = caught.value
    assert error.step == "base (mmdebstrap)" and error.returncode != 0
    assert error.command.startswith("mmdebstrap --mode=root --format=directory --variant=minbase no-such-suite ")
    assert any("no-such-suite Release" in line for line in error.output_tail), error.output_tail
    assert error.output_tail[-1] == "E: mmdebstrap failed to run"
    assert os.listdir(os.path.join(cache, "layers")) == []
    _no_leftovers(cache)


def _remove_manifest(layer: str) -> None:
    os.unlink(os.path.join(layer, "manifest.json"))


def _delete_layer(layer: str) -> None:
    shutil.rmtree(layer)


def _manifest_of_another_key(layer: str) -> None:
    path = os.path.join(layer, "manifest.json")
    with open(path) as handle:
        document = json.load(handle)
    document["key"] = "0" * 64
    os.unlink(path)  # a new file: the shared cache's hard link stays intact
    with open(path, "w") as handle:
        json.dump(document, handle)


def _empty_rootfs(layer: str) -> None:
    rootfs = os.path.join(layer, "rootfs")
    for entry in os.listdir(rootfs):
        path = os.path.join(rootfs, entry)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


@BUILDS
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_remove_manifest, "is damaged: its manifest is missing or unreadable"),
        (_delete_layer, "is not in the cache"),
        (_manifest_of_another_key, "is damaged: its manifest does not match its key"),
        (_empty_rootfs, "is damaged: its rootfs changed after it was published"),
    ],
)
def test_a_damaged_layer_is_never_used_and_is_rebuilt(shipped: Shipped, tmp_path, damage, why):
    cache = _private(shipped, tmp_path)
    recipes = str(tmp_path / "recipes")
    write_recipe(recipes, "fragile", 'parent = "debian-bookworm"\n[[steps]]\nrun = "echo hello > /hello"\n')
    top = resolve_layers("fragile", [recipes], cache, progress=lambda line: None)[0]
    damage(os.path.dirname(top))
    with pytest.raises(NotBuiltError) as caught:
        resolve_layers("fragile", [recipes], cache, build_if_missing=False)
    assert str(caught.value) == (
        f"image 'fragile' is not built: layer 2/2 {why}; build it with: pytest-isolate images build fragile"
    )
    lines: list[str] = []
    assert resolve_layers("fragile", [recipes], cache, progress=lines.append)[0] == top
    assert [line for line in lines if BUILT_LINE.match(line)] != [], lines
    assert tree_listing([top])["hello"] == "f:hello"
    _no_leftovers(cache)


@BUILDS
def test_a_damaged_base_layer_is_detected(shipped: Shipped, tmp_path):
    cache = _private(shipped, tmp_path)
    _remove_manifest(os.path.dirname(LayerCache(cache).rootfs(os.path.basename(os.path.dirname(shipped.base[0])))))
    with pytest.raises(NotBuiltError, match="layer 1/2 is damaged: its manifest is missing"):
        resolve_layers("debian-bookworm-tools", [], cache, build_if_missing=False)


@BUILDS
def test_cli_lists_removes_and_prunes(shipped: Shipped, tmp_path):
    cache = _private(shipped, tmp_path)
    recipes = str(tmp_path / "recipes")
    write_recipe(recipes, "small", 'parent = "debian-bookworm"\n[[steps]]\nrun = "echo small > /small"\n')

    def cli(*args: str) -> str:
        command = [sys.executable, "-m", "pytest_isolate.cli", "images", "--cache", cache, "--recipes", recipes, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "[2/2] small: step 1: echo small > /small ... " in cli("build", "small")
    table = cli("list").splitlines()
    assert table[0].split() == ["NAME", "LAYERS", "SIZE", "BUILT", "KEY"]
    rows = {line.split()[0]: line for line in table[1:] if not line.startswith("note:")}
    date = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    assert re.fullmatch(rf"small +2/2 +[\d.]+ MiB +{date} +[0-9a-f]{{12}}", rows["small"])
    assert re.fullmatch(rf"debian-bookworm +1/1 +[\d.]+ MiB +{date} +[0-9a-f]{{12}}", rows["debian-bookworm"])
    assert re.fullmatch(r"debian-bookworm-tools +1/2 +[\d.]+ MiB +not built +[0-9a-f]{12}", rows["debian-bookworm-tools"])
    assert re.fullmatch(r"small: removed 1 layer\(s\), freed \d+ KiB; kept 1 layer\(s\) other images use\n",
                        cli("rm", "small"))  # fmt: skip
    assert list_images([recipes], cache)[-1].name == "small" and not list_images([recipes], cache)[-1].built
    os.mkdir(os.path.join(cache, "layers", ".tmp-" + "a" * 64 + "-x"))  # a killed build's leftover
    assert "removed 1 leftover(s) of killed builds" in cli("prune")
    _no_leftovers(cache)


@BUILDS
def test_remove_keeps_layers_other_images_use_and_prune_removes_orphans(shipped: Shipped, tmp_path):
    cache = _private(shipped, tmp_path)
    recipes = str(tmp_path / "recipes")
    write_recipe(recipes, "one", 'parent = "debian-bookworm"\n[[steps]]\nrun = "echo 1 > /one"\n')
    one = resolve_layers("one", [recipes], cache, progress=lambda line: None)
    removed = remove_image("one", [recipes], cache)
    assert removed.removed == [os.path.basename(os.path.dirname(one[0]))]
    assert removed.kept == [os.path.basename(os.path.dirname(one[1]))]
    write_recipe(recipes, "one", 'parent = "debian-bookworm"\n[[steps]]\nrun = "echo 2 > /one"\n')
    old = resolve_layers("one", [recipes], cache, progress=lambda line: None)[0]
    write_recipe(recipes, "one", 'parent = "debian-bookworm"\n[[steps]]\nrun = "echo 3 > /one"\n')
    new = resolve_layers("one", [recipes], cache, progress=lambda line: None)[0]
    pruned = prune([recipes], cache)
    assert pruned.removed == [os.path.basename(os.path.dirname(old))]
    assert os.path.isdir(new) and os.path.isdir(one[1])


# -- imports -------------------------------------------------------------------


@BUILDS
def test_import_rootfs_tarball(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=handmade\n")
    (tree / "bin").mkdir()
    (tree / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (tree / "bin" / "tool").chmod(0o4755)
    os.link(tree / "bin" / "tool", tree / "bin" / "tool-again")
    os.symlink("/etc/os-release", tree / "os-release")
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    archive = str(tmp_path / "rootfs.tar")
    tar_directory(str(tree), archive)
    cache = str(tmp_path / "cache")
    layers = import_image("handmade", archive, [], cache, progress=lambda line: None)
    assert len(layers) == 1
    rootfs = layers[0]
    assert stat.S_IMODE(os.stat(os.path.join(rootfs, "bin", "tool")).st_mode) == 0o4755
    assert os.stat(os.path.join(rootfs, "bin", "tool")).st_ino == os.stat(os.path.join(rootfs, "bin", "tool-again")).st_ino
    assert os.readlink(os.path.join(rootfs, "os-release")) == "/etc/os-release"
    assert os.stat(os.path.join(rootfs, "null")).st_rdev == os.makedev(1, 3)
    listing = tree_listing(layers)
    assert listing["etc/os-release"] == "f:ID=handmade" and listing["os-release"] == "l"
    assert resolve_layers("handmade", [], cache, build_if_missing=False) == layers
    assert [image.name for image in list_images([], cache) if image.kind == "import"] == ["handmade"]


def _two_oci_layers() -> list[bytes]:
    bottom = layer_blob([("d", "a"), ("f", "a/file", b"gone"), ("f", "a/keep", b"kept"), ("d", "dir"),
                         ("f", "dir/x", b"x"), ("f", "dir/y", b"y"), ("f", "top", b"1")])  # fmt: skip
    upper = layer_blob([("f", "a/.wh.file", b""), ("d", "dir"), ("f", "dir/.wh..wh..opq", b""), ("f", "dir/z", b"z"),
                        ("f", "top", b"2"), ("f", "new", b"new")])  # fmt: skip
    return [bottom, upper]


@BUILDS
@pytest.mark.parametrize("form", ["OCI layout directory", "OCI layout tar", "docker save tar"])
def test_import_layered_image_converts_whiteouts(tmp_path, form):
    layers_data = _two_oci_layers()
    layout = str(tmp_path / "layout")
    if form == "docker save tar":
        archive = str(tmp_path / "image.tar")
        write_docker_save(archive, layers_data)
    else:
        os.mkdir(layout)
        write_oci_layout(layout, layers_data)
        archive = layout
        if form == "OCI layout tar":
            archive = str(tmp_path / "layout.tar")
            tar_directory(layout, archive)
    cache = str(tmp_path / "cache")
    layers = import_image("layered", archive, [], cache, progress=lambda line: None)
    assert len(layers) == 2
    whiteout = os.lstat(os.path.join(layers[0], "a", "file"))
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(os.path.join(layers[0], "dir"), "trusted.overlay.opaque") == b"y"
    assert tree_listing(layers) == {
        "a": "d", "a/keep": "f:kept", "dir": "d", "dir/z": "f:z", "top": "f:2", "new": "f:new",
    }  # fmt: skip
    # Importing the same image again reuses its layers.
    assert import_image("layered-again", archive, [], cache, progress=lambda line: None) == layers


@BUILDS
def test_import_checks_oci_digests(tmp_path):
    layout = str(tmp_path / "layout")
    os.mkdir(layout)
    write_oci_layout(layout, _two_oci_layers())
    blobs = os.path.join(layout, "blobs", "sha256")
    index = json.loads(pathlib.Path(layout, "index.json").read_text())
    manifest = json.loads(pathlib.Path(blobs, index["manifests"][0]["digest"].split(":")[1]).read_text())
    victim = pathlib.Path(blobs, manifest["layers"][1]["digest"].split(":")[1])
    victim.write_bytes(layer_blob([("f", "evil", b"swapped")]))
    cache = str(tmp_path / "cache")
    with pytest.raises(ArchiveError, match="the file is damaged"):
        import_image("tampered", layout, [], cache, progress=lambda line: None)
    assert len(LayerCache(cache).layer_keys()) == 1  # the intact bottom layer only
    _no_leftovers(cache)


@BUILDS
@pytest.mark.parametrize(
    ("entries", "problem", "member"),
    [
        ([("f", "../escaped", b"x")], "'..' in a path would write outside the layer", "../escaped"),
        ([("f", "/tmp/escaped", b"x")], "absolute paths are not allowed", "/tmp/escaped"),
        ([("f", "ok/../../escaped", b"x")], "'..' in a path", "ok/../../escaped"),
        ([("l", "link", "OUTSIDE"), ("f", "link/escaped", b"x")], "its parent 'link' is a symlink", "link/escaped"),
        ([("h", "hard", "../../../etc/passwd")], "hard link to '../../../etc/passwd': '..' in a path", "hard"),
        ([("h", "hard", "etc/passwd")], "not an earlier entry of this layer", "hard"),
    ],
)
def test_path_traversal_is_refused(tmp_path, entries, problem, member):
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [(kind, name, *(e.replace("OUTSIDE", str(outside)) if isinstance(e, str) else e for e in extra))
               for kind, name, *extra in entries]  # fmt: skip
    archive = str(tmp_path / "evil.tar.gz")
    with open(archive, "wb") as handle:
        handle.write(layer_blob(entries))
    cache = str(tmp_path / "cache")
    with pytest.raises(ArchiveError) as caught:
        import_image("evil", archive, [], cache, progress=lambda line: None)
    assert caught.value.member == member
    assert str(caught.value).startswith(f"cannot import {archive}: entry {member!r}: ")
    assert problem in str(caught.value)
    assert os.listdir(outside) == [] and not os.path.exists(tmp_path / "escaped")
    assert LayerCache(cache).layer_keys() == []
    _no_leftovers(cache)


@BUILDS
def test_an_entry_replacing_a_symlink_does_not_write_through_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = str(tmp_path / "overwrite.tar.gz")
    with open(archive, "wb") as handle:
        handle.write(layer_blob([("l", "victim", str(outside / "target")), ("f", "victim", b"inside")]))
    layers = import_image("overwrite", archive, [], str(tmp_path / "cache"), progress=lambda line: None)
    assert pathlib.Path(layers[0], "victim").read_text() == "inside"
    assert os.listdir(outside) == []


@BUILDS
def test_a_recipe_can_build_on_an_imported_image(tmp_path):
    tree = tmp_path / "tree"
    for directory in ("bin", "proc", "dev", "sys", "etc"):
        (tree / directory).mkdir(parents=True)
    shutil.copy("/bin/busybox" if os.path.exists("/bin/busybox") else "/bin/dash", tree / "bin" / "sh")
    if not os.path.exists("/bin/busybox"):
        # dash needs its libraries: copy what ldd lists.
        for line in subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True, check=False).stdout.splitlines():
            path = next((word for word in line.split() if word.startswith("/")), None)
            if path:
                target = tree / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    archive = str(tmp_path / "tiny.tar")
    tar_directory(str(tree), archive)
    cache = str(tmp_path / "cache")
    import_image("tiny", archive, [], cache, progress=lambda line: None)
    recipes = str(tmp_path / "recipes")
    write_recipe(recipes, "tiny-plus", 'parent = "tiny"\n[[steps]]\nrun = "echo built > /etc/marker"\n')
    layers = resolve_layers("tiny-plus", [recipes], cache, progress=lambda line: None)
    assert len(layers) == 2
    assert tree_listing(layers)["etc/marker"] == "f:built"


def test_tar_entries_outside_helpers_are_plain(tmp_path):
    """The archive helpers themselves write what the tests say (guards the traversal test)."""
    archive = str(tmp_path / "x.tar")
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "../up", b"1")
        add_entry(tar, "s", tarfile.SYMTYPE, "/abs")
    with tarfile.open(archive) as tar:
        assert [(m.name, m.linkname) for m in tar] == [("../up", ""), ("s", "/abs")]


# -- the plugin: rootfs= -------------------------------------------------------


def test_isolated_test_runs_in_an_image(shipped: Shipped, pytester: pytest.Pytester) -> None:
    from helpers import run

    base_rootfs = shipped.base[-1]
    before = sorted(os.listdir(os.path.join(base_rootfs, "etc")))
    pytester.makepyfile(
        f"""
        import os, subprocess, sys
        from pytest_isolate import isolated

        @isolated(rootfs="debian-bookworm")
        def test_debian_inside():
            assert open("/etc/debian_version").read().startswith("12")
            image_python = subprocess.run(["python3", "-c", "import ssl, sys; print(sys.version_info[:2])"],
                                          capture_output=True, text=True)
            assert image_python.stdout.strip() == "(3, 11)", image_python
            assert os.path.isdir(sys.prefix)  # the test's own Python stays at its host path
            with open("/etc/written-in-the-image", "w") as handle:
                handle.write("discarded")
            assert os.getpid() == 2

        @isolated(rootfs="debian-bookworm-tools")
        def test_second_layer():
            assert subprocess.run(["ps", "-e"], capture_output=True, text=True).stdout.count("\\n") >= 2

        @isolated(rootfs={base_rootfs!r})
        def test_directory_as_rootfs():
            assert os.path.exists("/etc/debian_version")
        """
    )
    result = run(pytester, "-o", f"isolate_cache={shipped.cache}")
    result.assert_outcomes(passed=3)
    assert sorted(os.listdir(os.path.join(base_rootfs, "etc"))) == before


def test_unknown_image_is_a_clear_error(shipped: Shipped, pytester: pytest.Pytester) -> None:
    from helpers import failure_lines, run

    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(rootfs="no-such-image")
        def test_it():
            pass
        """
    )
    (line,) = failure_lines(run(pytester, "-o", f"isolate_cache={shipped.cache}"))
    # Found at collection, before any test runs (the shipped images are known by name).
    assert line.startswith(
        "ERROR test_unknown_image_is_a_clear_error.py - Failed: test_unknown_image_is_a_clear_error.py::test_it: "
        "@isolated(rootfs='no-such-image') is invalid: expected a recipe or an imported image: no image named "
        "'no-such-image'"
    ), line
    assert line.endswith("known images: debian-bookworm, debian-bookworm-tools"), line


def test_image_that_cannot_host_the_host_python_says_which_library(shipped: Shipped, pytester: pytest.Pytester) -> None:
    import subprocess
    import sys

    from helpers import failure_lines, run

    if subprocess.run([sys.executable, "-c", "import _tkinter"], capture_output=True).returncode != 0:
        pytest.skip("this host's Python has no working _tkinter to prove the point with")
    pytester.makepyfile(
        """
        import subprocess, sys
        from pytest_isolate import isolated

        @isolated(rootfs="debian-bookworm")
        def test_runs_the_host_python_again():
            # The forked test keeps its libraries; a new process of the host's
            # Python loads them from the image, which lacks Tk.
            result = subprocess.run([sys.executable, "-c", "import _tkinter"], capture_output=True, text=True)
            print(result.stderr)
            assert result.returncode == 0
        """
    )
    result = run(pytester, "-o", f"isolate_cache={shipped.cache}")
    assert len(failure_lines(result)) == 1
    result.stdout.fnmatch_lines(
        [
            "*- pytest-isolate -*",
            "the image 'debian-bookworm' lacks the shared library libtk8.6.so that a program of the host (such as "
            "its Python, run again) needs: add the package that ships it to the image's recipe (include = [...] or a step)",
        ]
    )
