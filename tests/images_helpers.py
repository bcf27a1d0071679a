"""Helpers for tests/test_images.py: recipes, private caches, archives and real overlay mounts."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap

from pytest_isolate.images.cache import LayerCache


def write_recipe(directory: str, name: str, body: str) -> str:
    """A recipe file ``name.toml``; ``body`` is TOML after the name line."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.toml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f'name = "{name}"\n' + textwrap.dedent(body))
    return path


def clone_cache(shared: str, private: str, layer_dirs: list[str]) -> str:
    """A new cache holding hard-linked copies of published layers (cheap: no file is copied).

    Tests may delete files in the copy, or whole layers; they must never
    write into an existing file, which the shared cache shares.
    """
    cache = LayerCache(private)
    cache.create()
    for rootfs in layer_dirs:
        layer = os.path.dirname(rootfs)
        subprocess.run(["cp", "-al", layer, os.path.join(cache.layers, os.path.basename(layer))], check=True)
    memo = os.path.join(shared, "tools.json")
    if os.path.exists(memo):
        shutil.copy(memo, os.path.join(cache.root, "tools.json"))
    return cache.root


def resolver_script(name: str, recipes: str, cache: str) -> list[str]:
    """A command that resolves an image in a fresh process, printing progress and the layers."""
    code = (
        "import json, sys\n"
        "from pytest_isolate.images import resolve_layers\n"
        f"layers = resolve_layers({name!r}, [{recipes!r}], {cache!r}, progress=lambda line: print('PROGRESS', line, flush=True))\n"
        "print('LAYERS', json.dumps(layers), flush=True)\n"
    )
    return [sys.executable, "-c", code]


def overlay_run(layers: list[str], script: str) -> subprocess.CompletedProcess[str]:
    """Mount ``layers`` (topmost first) as a real overlay in a private mount namespace, run ``script`` in it.

    ``script`` runs with the merged tree as its working directory; a tmpfs
    upper makes a one-layer image mountable too.
    """
    setup = (
        "set -e; top=$(mktemp -d); mount -t tmpfs tmpfs \"$top\"; mkdir \"$top/u\" \"$top/w\" \"$top/m\"; "
        f"mount -t overlay overlay -o lowerdir={':'.join(layers)},upperdir=\"$top/u\",workdir=\"$top/w\" \"$top/m\"; "
        "cd \"$top/m\"; "
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup + script],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


_WALK = """
import json, os, stat
tree = {}
for current, dirs, files in os.walk("."):
    for name in dirs + files:
        path = os.path.join(current, name)[2:]
        info = os.lstat(path)
        kind = "d" if stat.S_ISDIR(info.st_mode) else "l" if stat.S_ISLNK(info.st_mode) else "f" if stat.S_ISREG(info.st_mode) else "c"
        if kind == "f" and info.st_size < 200:
            with open(path, "rb") as handle:
                kind += ":" + handle.read().decode(errors="replace").strip()
        tree[path] = kind
print(json.dumps(tree))
"""


def tree_listing(layers: list[str]) -> dict[str, str]:
    """Path -> type letter (f, d, l, c) of the merged view; small files get ':' and their text."""
    result = overlay_run(layers, f"{shlex.quote(sys.executable)} -c {shlex.quote(_WALK)}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1_700_000_000
    for field, value in fields.items():
        setattr(info, field, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def add_entry(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    tar.addfile(info)


def layer_blob(entries: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """A gzip tar layer from (kind, name, extra) entries: ("f", name, data), ("d", name), ("l", name, target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for kind, name, *extra in entries:
            if kind == "f":
                add_file(tar, name, extra[0])
            elif kind == "d":
                add_entry(tar, name, tarfile.DIRTYPE)
            elif kind == "l":
                add_entry(tar, name, tarfile.SYMTYPE, extra[0])
            elif kind == "h":
                add_entry(tar, name, tarfile.LNKTYPE, extra[0])
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_layout(directory: str, layers: list[bytes]) -> None:
    """A minimal OCI image layout: oci-layout, index.json, a manifest, a config and the layer blobs."""
    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data: bytes) -> str:
        digest = _digest(data)
        with open(os.path.join(blobs, digest.split(":")[1]), "wb") as handle:
            handle.write(data)
        return digest

    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    data = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], "digest": put(data), "size": len(data)}]}
    with open(os.path.join(directory, "index.json"), "w") as handle:
        json.dump(index, handle)
    with open(os.path.join(directory, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)


def write_docker_save(path: str, layers: list[bytes]) -> None:
    """A ``docker save`` archive in the classic format: <id>/layer.tar and manifest.json."""
    import gzip

    with tarfile.open(path, "w") as tar:
        names = []
        for number, layer in enumerate(layers):
            name = f"{number:064x}/layer.tar"
            add_file(tar, name, gzip.decompress(layer))
            names.append(name)
        add_file(tar, "config.json", b"{}")
        add_file(tar, "manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["t:1"], "Layers": names}]).encode())


def tar_directory(source: str, path: str) -> None:
    with tarfile.open(path, "w") as tar:
        tar.add(source, arcname=".")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (a killed build's survivors)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(f"{pid}: {shlex.quote(command)}")
    return found
