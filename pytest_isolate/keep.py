"""``--isolate-keep``: keep the writable layer of isolated tests to look into afterwards.

Like Bazel's ``--sandbox_debug``: with ``failed`` (or ``all``) the container
keeps its writable layers open to the end, pytest copies what the test
added and changed into a directory of its own, and the test's report says
where.  The test's ``tmp_path`` (and anything else it made below pytest's
``pytest-of-{user}`` directory) is also copied back to the host at the path
the test saw, so the path in the traceback can be opened.

Kept layers live under ``{temproot}/pytest-isolate-keep-of-{user}/run-N``;
as pytest does with its base temp directories, the newest three runs are
kept and older ones removed when a run starts.  ``pytest-isolate kept
list`` shows them and ``pytest-isolate kept prune`` removes them.

What a container wrote is hostile: nothing is copied that is not a plain
file, directory or symlink (set-uid bits dropped, symlinks copied as links,
never followed), and nothing is written through a symlink.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import sys
import time
from typing import TYPE_CHECKING

import pytest

from pytest_isolate.container import fsdiff

if TYPE_CHECKING:
    from pytest_isolate.container.mountplan import MountPlan
    from pytest_isolate.outcome import ContainerResult

RUNS_KEPT = 3
RUN_VARIABLE = "PYTEST_ISOLATE_KEEP_RUN"  # the run directory, from the controller to xdist workers
PROPERTY = "isolate_kept"
SECTION = "pytest-isolate: kept"
_RUN_NAME = re.compile(r"^run-(\d+)$")
_RUN_DIR_KEY = pytest.StashKey[str]()


def keep_root() -> str:
    from pytest_isolate.tmpdirs import user_temp_dir

    return user_temp_dir("pytest-isolate-keep-of")


def _runs(root: str) -> list[tuple[int, str]]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)), os.path.join(root, name)) for name in names if (m := _RUN_NAME.match(name)))


def start_run(root: str | None = None) -> str:
    """A new numbered run directory; runs beyond the newest RUNS_KEPT are removed."""
    root = root or keep_root()
    os.makedirs(root, mode=0o700, exist_ok=True)
    while True:
        number = max((n for n, _ in _runs(root)), default=0) + 1
        path = os.path.join(root, f"run-{number}")
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue  # a parallel run took that number
    for _, old in _runs(root)[:-RUNS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def run_dir_for(config: pytest.Config) -> str:
    """The run directory: made by the controller (or the single process), inherited by xdist workers."""
    if hasattr(config, "workerinput") and os.environ.get(RUN_VARIABLE):
        return os.environ[RUN_VARIABLE]
    if _RUN_DIR_KEY not in config.stash:
        config.stash[_RUN_DIR_KEY] = start_run()
        os.environ[RUN_VARIABLE] = config.stash[_RUN_DIR_KEY]
    return config.stash[_RUN_DIR_KEY]


def test_dir(run_dir: str, nodeid: str) -> str:
    """A fresh directory for one test (an attempt of a rerun gets its own)."""
    base = os.path.join(run_dir, re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", nodeid).strip("_")[:150] or "test")
    path, number = base, 1
    while os.path.lexists(path):
        number += 1
        path = f"{base}-{number}"
    return path


# ----------------------------------------------------------------- copying


def copy_layers(stage: str, plan: MountPlan, destination: str) -> None:
    """The upper directories of the container's overlays, at their container paths under ``destination/files``."""
    files = os.path.join(destination, "files")
    os.makedirs(files, mode=0o700)
    for upper_name, target, _ in fsdiff.overlay_layers(plan):
        upper = os.path.join(stage, upper_name)
        if os.path.isdir(upper):
            copy_tree(upper, os.path.join(files, target.lstrip("/")), files)


def copy_tree(source: str, destination: str, confine: str) -> None:
    """Plain files, directories and symlinks of ``source`` into ``destination``, inside ``confine``.

    The source is read through directory descriptors, never following a
    symlink (``os.fwalk``, ``O_NOFOLLOW``): while pytest copies, the test's
    daemons may still be changing its layer, and a directory swapped for a
    symlink must not make pytest copy what the link points at on the host.
    The layer lives on a tmpfs of size ``disk``, which bounds what is copied.
    """
    for current, dirs, files, dirfd in os.fwalk(source, follow_symlinks=False):
        here = os.path.normpath(os.path.join(destination, os.path.relpath(current, source)))
        if not _inside(here, confine):
            continue
        os.makedirs(here, mode=0o700, exist_ok=True)
        for name in sorted(dirs + files):
            _copy_entry(dirfd, name, os.path.join(here, name))


def _copy_entry(dirfd: int, name: str, target: str) -> None:
    if os.path.lexists(target):
        return  # an earlier layer's entry (a directory), or copied before
    info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if stat.S_ISDIR(info.st_mode):
        os.mkdir(target, 0o700)
    elif stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(name, dir_fd=dirfd), target)
    elif stat.S_ISREG(info.st_mode):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return  # changed meanwhile (now a link or gone)
        with open(fd, "rb") as reader:
            if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
                return
            with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as writer:
                shutil.copyfileobj(reader, writer)
        os.chmod(target, stat.S_IMODE(info.st_mode) & 0o777)  # no set-uid, set-gid or sticky bits
    # Whiteouts (0/0 character devices), device nodes, fifos and sockets
    # are not copied: changes.txt lists the deletions.


def _inside(path: str, confine: str) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``confine`` or below it."""
    real, root = os.path.realpath(path), os.path.realpath(confine)
    return real == root or real.startswith(root + os.sep)


def publish_tmp_dirs(kept: str, roots: list[str]) -> list[str]:
    """Copy what the test made below pytest's temp roots back to the host, at the same paths.

    Only paths that do not exist on the host are written, below a root that
    is a real directory of the host, and never through a symlink.
    """
    published: list[str] = []
    files = os.path.join(kept, "files")
    for root in roots:
        source_root = os.path.join(files, root.lstrip("/"))
        if not os.path.isdir(source_root) or os.path.islink(source_root):
            continue
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        for current, dirs, _ in os.walk(source_root):
            host_dir = os.path.join(root, os.path.relpath(current, source_root))
            descend = []
            for name in sorted(dirs):
                source, host = os.path.join(current, name), os.path.normpath(os.path.join(host_dir, name))
                if os.path.islink(source) or name.startswith("garbage-"):
                    continue
                if not os.path.lexists(host):
                    copy_tree(source, host, root)
                    _drop_pytest_lock(host)
                    published.append(host)
                elif os.path.isdir(host) and not os.path.islink(host):
                    descend.append(name)
            dirs[:] = descend
    return published


def _drop_pytest_lock(path: str) -> None:
    lock = os.path.join(path, ".lock")
    if os.path.isfile(lock) and not os.path.islink(lock):
        os.remove(lock)  # pytest's own host-side retention may then remove the copy like any old base dir


# ---------------------------------------------------------- after the test


def finish(item: pytest.Item, result: ContainerResult, reports: list[pytest.TestReport], mode: str) -> None:
    """Keep or discard the copy ``result.kept`` made, and say where it is."""
    from pytest_isolate.tmpdirs import given_basetemp, temp_root

    failed = any(report.failed for report in reports)
    kept = result.kept
    if mode == "failed" and not failed:
        if kept is not None:
            shutil.rmtree(kept, ignore_errors=True)
        return
    target = next((r for r in reports if r.failed), None) or next((r for r in reports if r.when == "call"), None)
    if kept is None:
        if target is not None and failed:
            target.sections.append((SECTION, "nothing kept: the container ended before its writable layer could be copied"))
        return
    with open(os.path.join(kept, "changes.txt"), "w", encoding="utf-8") as handle:
        handle.writelines(f"{change}\n" for change in result.changes or ())
    roots = [temp_root()]
    basetemp = given_basetemp(item.config.option)
    if basetemp is not None:
        roots.append(os.path.dirname(basetemp))
    published = publish_tmp_dirs(kept, roots)
    lines = [f"the writable layer is kept in {kept}/files (changes.txt lists what was added, changed and deleted)"]
    lines += [f"copied back to the host: {path}" for path in published]
    if target is not None:
        target.sections.append((SECTION, "\n".join(lines)))
    for report in reports:
        report.user_properties.append((PROPERTY, kept))


class KeptSummary:
    """In the reporting process: one line at the end of the run, saying where kept layers are."""

    def __init__(self) -> None:
        self.kept: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.kept[report.nodeid] = str(value)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.kept:
            return
        run_dirs = sorted({os.path.dirname(path) for path in self.kept.values()})
        terminalreporter.write_sep(
            "-",
            f"pytest-isolate kept the writable layers of {len(self.kept)} test(s) in {', '.join(run_dirs)} "
            f"(the last {RUNS_KEPT} runs are kept; pytest-isolate kept prune removes them)",
        )


# ------------------------------------------------------------- the command


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kept = commands.add_parser("kept", help="list or remove the writable layers --isolate-keep kept")
    actions = kept.add_subparsers(dest="kept_command", required=True)
    actions.add_parser("list", help="the kept runs and their tests, newest last")
    prune = actions.add_parser("prune", help="remove kept runs")
    prune.add_argument("--keep", type=int, default=0, metavar="N", help="keep the newest N runs (default 0: remove all)")


def run_command(arguments: argparse.Namespace) -> int:
    root = keep_root()
    runs = _runs(root)
    if arguments.kept_command == "list":
        if not runs:
            print(f"nothing kept in {root}")
        for _, path in runs:
            tests = sorted(os.listdir(path))
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(path).st_mtime))
            print(f"{path}  {when}  {len(tests)} test(s)")
            for test in tests:
                print(f"  {test}")
        return 0
    if arguments.keep < 0:
        print("pytest-isolate kept prune: --keep must be 0 or more", file=sys.stderr)
        return 2
    removed = runs[: len(runs) - arguments.keep] if arguments.keep else runs
    for _, path in removed:
        shutil.rmtree(path, ignore_errors=True)
    print(f"removed {len(removed)} kept run(s) from {root}")
    return 0
