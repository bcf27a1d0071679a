"""What each host mount costs a container: the root's build and teardown, per mount.

Overlay does not cross mount points, so every file-holding host mount is
repeated in each container (``container/mountplan.py``): a read-only one
(a snap's squashfs) as a bind, a writable one as an overlay of its own.
This script measures that cost without pytest: in a private mount namespace
of its own (it re-executes itself under ``unshare -m``) it adds M small
tmpfs mounts, read-only or writable, and then builds, C times, the root the
plugin would build for a test (``rootfs.build_root`` on the session's mount
plan, in a forked child with a new mount namespace), and lets it go.

It prints, for each M, the median wall time of one container's life (fork,
build, exit, reaped) and the CPU time it cost (the child's, from rusage;
the mounts are torn down in the exiting child), and the CPU cost per mount
over the first M given (0 by default).  The preparer builds the next tests' roots while a test runs, so on
an idle core this cost is off the test's path; on a busy machine (``-n``
with as many workers as cores) it is not.

    python benchmarks/mount_cost.py                  # M = 0, 20, 60; both kinds
    python benchmarks/mount_cost.py --mounts 0 100 --containers 50

Root only (it mounts).  Standard library and pytest_isolate only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

READY_ENV = "PYTEST_ISOLATE_MOUNT_COST_READY"


def measure(mounts: int, read_only: bool, containers: int, work: str) -> Dict[str, float]:
    """Median ms per container (wall, CPU) with ``mounts`` extra host mounts."""
    from pytest_isolate.container import libc, rootfs
    from pytest_isolate.container.mountplan import build_base_plan

    points = []
    for index in range(mounts):
        point = os.path.join(work, f"{'ro' if read_only else 'rw'}{mounts}-{index:03d}")
        os.mkdir(point)
        libc.mount("tmpfs", point, "tmpfs", libc.MS_RDONLY if read_only else 0, "size=1m")
        points.append(point)
    disk = 64 << 20
    plan = build_base_plan(disk)
    stage = rootfs.ensure_stage_dir()
    walls, cpus = [], []
    try:
        for _ in range(containers):
            before = os.times()
            started = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                try:
                    libc.unshare(libc.CLONE_NEWNS)
                    rootfs.build_root(plan, stage, disk, proc=lambda target: None)
                finally:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            walls.append(time.perf_counter() - started)
            after = os.times()
            cpus.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
            if status != 0:
                sys.exit(f"mount_cost.py: building a root failed (status {status})")
    finally:
        for point in reversed(points):
            libc.umount2(point, 0)
            os.rmdir(point)
    return {"wall_ms": statistics.median(walls) * 1000, "cpu_ms": statistics.mean(cpus) * 1000}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mounts", type=int, nargs="+", default=[0, 20, 60], metavar="M")
    parser.add_argument("--containers", type=int, default=100, metavar="C")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("mount_cost.py: run it as root (it mounts, in a private mount namespace)")
    if os.environ.get(READY_ENV) != "1":
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("mount_cost.py: needs unshare(1) (util-linux)")
        command = [unshare, "--mount", "--propagation", "private", "--", sys.executable, os.path.abspath(__file__)]
        sys.exit(subprocess.run([*command, *(argv or sys.argv[1:])], env=dict(os.environ, **{READY_ENV: "1"})).returncode)
    with tempfile.TemporaryDirectory(prefix="mount-cost-") as work:
        print(f"{args.containers} containers per row; ms per container (wall: median, CPU: mean)\n")
        print(f"{'host mounts':>12} {'kind':>10} {'wall ms':>9} {'CPU ms':>8} {'CPU us/mount':>13}")
        for read_only in (True, False):
            base = None
            for mounts in args.mounts:
                row = measure(mounts, read_only, args.containers, work)
                base = row if base is None else base
                per_mount = (row["cpu_ms"] - base["cpu_ms"]) * 1000 / mounts if mounts else 0.0
                kind = "read-only" if read_only else "writable"
                print(f"{mounts:>12} {kind:>10} {row['wall_ms']:>9.2f} {row['cpu_ms']:>8.2f} {per_mount:>13.0f}")


if __name__ == "__main__":
    main()
