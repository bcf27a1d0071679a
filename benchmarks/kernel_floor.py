"""What the kernel charges for each part of a container, apart from pytest and from us.

``bench.py`` times whole test runs; this script times the kernel's share
of one container, part by part, so that the floor under ``--isolate``'s
cost is a measurement and not a guess.  Each row forks C children that
each do one thing and exit, and the table shows, per child, over a bare
fork and exit (the first row):

  wall us   the median time from the fork to the child reaped
  CPU us    the whole machine's busy CPU time (``/proc/stat``) per child,
            measured after a pause that lets the kernel finish the work it
            defers (a network namespace is torn down in a kworker, a mount
            waits out an RCU grace period), so the machine must be idle

The rows: a mount namespace (with the host's mount table copied into it), UTS
and IPC namespaces, a network namespace, the same with loopback brought up,
a PID namespace with our init started in it (``launcher.spawn_init``), and
an overlay mounted in a mount namespace of the child's own (the host's
``/usr`` below a tmpfs upper, as each writable host mount gets one).

    python benchmarks/kernel_floor.py
    python benchmarks/kernel_floor.py --children 500 --rounds 5

Root only (it makes namespaces and mounts, all inside the children, which
take them with them).  Standard library and pytest_isolate only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List


def _container_package_only() -> None:
    """Load pytest_isolate's container modules without the package's ``__init__`` (which imports pytest).

    As the preparer does (``container/preparer_main.py``): the process that
    makes the namespaces stays small, so the fork in each row is as cheap as
    the preparer's own work is.
    """
    import importlib.util
    import types

    spec = importlib.util.find_spec("pytest_isolate")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("kernel_floor.py: pytest_isolate is not installed in this environment")
    package = types.ModuleType("pytest_isolate")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["pytest_isolate"] = package


_container_package_only()
from pytest_isolate.container import init_program, libc  # noqa: E402
from pytest_isolate.container.launcher import spawn_init, wait_until_running  # noqa: E402
from pytest_isolate.container.network import bring_up_loopback  # noqa: E402

SETTLE_SECONDS = 0.5  # for the kernel's deferred work to run before CPU time is read again


def busy_seconds() -> float:
    """Busy CPU time of the whole machine so far: user, nice, system, irq, softirq, steal."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _nothing() -> None:
    pass


def _unshare(flags: int) -> Callable[[], None]:
    return lambda: libc.unshare(flags)


def _network_with_loopback() -> None:
    libc.unshare(libc.CLONE_NEWNET)
    bring_up_loopback()


def _pid_namespace_with_init() -> None:
    libc.unshare(libc.CLONE_NEWPID)
    life_read, life_write = os.pipe()
    ready_read, ready_write = os.pipe()
    spawn_init(life_read, ready_write)
    os.close(ready_write)
    wait_until_running(ready_read, 10.0)
    # Exiting closes init's pipe: init exits, and the namespace ends with it.


def _tmpfs_in_own_mount_namespace(work: str) -> None:
    """A mount namespace of the child's own, with a tmpfs holding an overlay's three directories."""
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    libc.mount("tmpfs", work, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "size=1m")
    for name in ("upper", "work", "merged"):
        os.mkdir(os.path.join(work, name))


def _mount_namespace_only(work: str) -> Callable[[], None]:
    """The overlay row's baseline: the same namespace and tmpfs, without the overlay."""
    return lambda: _tmpfs_in_own_mount_namespace(work)


def _overlay(work: str) -> Callable[[], None]:
    def mount_one() -> None:
        _tmpfs_in_own_mount_namespace(work)
        options = f"lowerdir=/usr,upperdir={work}/upper,workdir={work}/work"
        libc.mount("overlay", os.path.join(work, "merged"), "overlay", 0, options)

    return mount_one


def measure(body: Callable[[], None], children: int) -> Dict[str, float]:
    """Median wall time and mean machine CPU time per child that runs ``body`` and exits."""
    walls = []
    busy_before = busy_seconds()
    for _ in range(children):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                body()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        walls.append(time.perf_counter() - started)
        if status != 0:
            sys.exit(f"kernel_floor.py: a child failed (status {status}); is this root, with namespaces allowed?")
    time.sleep(SETTLE_SECONDS)
    busy = busy_seconds() - busy_before
    # The pause's own share of the machine's background work is left in: an
    # idle machine spends well under 1% of its CPU, a few us per child here.
    return {"wall_us": statistics.median(walls) * 1e6, "cpu_us": busy / children * 1e6}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=300, metavar="C", help="children per row and round (300)")
    parser.add_argument("--rounds", type=int, default=3, metavar="R", help="rounds; the median counts (3)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("kernel_floor.py: run it as root (its children make namespaces and mounts)")
    init_program.executable()  # made once, as the preparer does: each child's init execs this copy
    with tempfile.TemporaryDirectory(prefix="kernel-floor-") as work:
        rows = {
            "fork and exit": _nothing,
            "+ mount namespace": _unshare(libc.CLONE_NEWNS),
            "+ UTS and IPC namespaces": _unshare(libc.CLONE_NEWUTS | libc.CLONE_NEWIPC),
            "+ network namespace": _unshare(libc.CLONE_NEWNET),
            "+ network namespace, lo up": _network_with_loopback,
            "+ PID namespace and init": _pid_namespace_with_init,
            "+ mount namespace, tmpfs": _mount_namespace_only(work),
            "+ mount namespace, tmpfs, overlay": _overlay(work),
        }
        results: Dict[str, List[Dict[str, float]]] = {name: [] for name in rows}
        for _ in range(args.rounds):  # round-robin: a slow moment of the machine hits every row
            for name, body in rows.items():
                results[name].append(measure(body, args.children))
        medians = {
            name: {key: statistics.median(run[key] for run in runs) for key in ("wall_us", "cpu_us")}
            for name, runs in results.items()
        }
    base = medians["fork and exit"]
    print(f"{args.children} children per row, median of {args.rounds} round(s); us per child")
    print("(the overlay's own cost is the last row over the one before it)\n")
    print(f"{'':36} {'wall us':>8} {'over fork':>10} {'CPU us':>8} {'over fork':>10}")
    for name, row in medians.items():
        print(
            f"{name:36} {row['wall_us']:>8.0f} {row['wall_us'] - base['wall_us']:>10.0f}"
            f" {row['cpu_us']:>8.0f} {row['cpu_us'] - base['cpu_us']:>10.0f}"
        )
    with_overlay, without = medians["+ mount namespace, tmpfs, overlay"], medians["+ mount namespace, tmpfs"]
    print(
        f"\none overlay: {with_overlay['wall_us'] - without['wall_us']:.0f} us of wall time, "
        f"{with_overlay['cpu_us'] - without['cpu_us']:.0f} us of CPU"
    )


if __name__ == "__main__":
    main()
