"""The mount plan built from a host's mount table (data in, data out)."""

from __future__ import annotations

from pytest_isolate.container.mountinfo import MountEntry
from pytest_isolate.container.mountplan import MountOp, build_base_plan, host_mount_ops, with_overlays_only


def entry(mount_point: str, fstype: str, options: str = "rw") -> MountEntry:
    return MountEntry(mount_point, "/", fstype, "src", frozenset(options.split(",")), frozenset())


def test_host_mounts_get_overlays_kernel_filesystems_do_not(tmp_path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\n")
    entries = [
        entry("/", "ext4"),
        entry("/proc", "proc"),
        entry("/sys/fs/cgroup", "tmpfs"),
        entry("/dev/shm", "tmpfs"),
        entry(str(venv), "ext4"),
        entry(str(resolv), "ext4"),
        entry("/run/netns/x", "nsfs"),
        entry("/run/netns/x/sub", "ext4"),
    ]
    assert host_mount_ops(entries) == [
        MountOp("overlay", "/", source="/"),
        MountOp("copy_file", str(resolv), source=str(resolv)),
        MountOp("overlay", str(venv), source=str(venv)),
    ]


def test_read_only_host_mounts_are_bound_as_they_are(tmp_path) -> None:
    snaps = [tmp_path / f"snap{i}" for i in range(3)]
    for snap in snaps:
        snap.mkdir()
    entries = [entry("/", "ext4"), *(entry(str(snap), "squashfs", "ro,nodev,relatime") for snap in snaps[:2])]
    entries.append(entry(str(snaps[2]), "tmpfs"))
    ops = host_mount_ops(entries)
    assert ops == [
        MountOp("overlay", "/", source="/"),
        MountOp("readonly_mount", str(snaps[0]), source=str(snaps[0])),
        MountOp("readonly_mount", str(snaps[1]), source=str(snaps[1])),
        MountOp("overlay", str(snaps[2]), source=str(snaps[2])),
    ]
    assert ops[1].describe() == f"bind {snaps[0]} (a read-only host mount, as it is)"
    # A test granted CAP_SYS_ADMIN could remount a bind read-write: overlays for it.
    assert with_overlays_only(ops) == [MountOp("overlay", op.target, source=op.source) for op in ops]


def test_base_plan_order_and_description() -> None:
    plan = build_base_plan(disk=16 << 20, entries=[entry("/", "ext4")])
    plan.add_bind("/srv/data", "/data")
    plan.add_tmpfs("/scratch", size=1 << 20)
    assert plan.describe().splitlines() == [
        "overlay / (lower /, upper on tmpfs)",
        "tmpfs /dev",
        "bind /dev/null -> /dev/null",
        "bind /dev/zero -> /dev/zero",
        "bind /dev/full -> /dev/full",
        "bind /dev/random -> /dev/random",
        "bind /dev/urandom -> /dev/urandom",
        "bind /dev/tty -> /dev/tty",
        "devpts /dev/pts",
        "tmpfs /dev/shm",
        "symlink /dev/fd -> /proc/self/fd",
        "symlink /dev/stdin -> /proc/self/fd/0",
        "symlink /dev/stdout -> /proc/self/fd/1",
        "symlink /dev/stderr -> /proc/self/fd/2",
        "symlink /dev/ptmx -> pts/ptmx",
        "sysfs /sys (read-only)",
        "bind /srv/data -> /data (read-only)",
        "tmpfs /scratch",
    ]
