"""How much does pytest-isolate cost per test?

Runs one generated suite under several configurations and prints the median
wall time of each, per test, and over plain pytest:

  plain      pytest with the plugin switched off: the floor
  bare-fork  a fork per test and nothing else (bare_fork_plugin.py): the
             least any process-per-test design pays
  forked     pytest-forked's --forked, when it is installed: the peer
             (process isolation only, no container)
  isolate    --isolate: every test in its own container

Two suites:

  trivial    N trivial tests in a tiny pytest process (--tests, 200)
  big        a big pytest process: thousands of collected tests (--collected)
             of which a part is selected (--selected, by -k), and a conftest
             that holds a heap of Python objects (--heap-mb) the way a heavy
             import or a session fixture would

The tests do nothing, so the numbers are the framework's overhead, not the
tests'.  ``isolate overhead / bare-fork overhead`` says how much the
container costs on top of the process.

``--work-ms MS`` gives each trivial test MS ms of CPU work of its own:
whether ``-n 2`` scales is a question about suites whose tests do work, since
on trivial tests plain pytest's own ``-n 2`` is slower than serial.

``--mounts M`` runs everything in a private mount namespace of its own (the
script re-executes itself under ``unshare -m``) with M extra small tmpfs
mounts, the way a laptop with snaps has dozens: nothing reaches the host's
mount table, and the mounts vanish with the namespace.  ``--xdist`` adds
each configuration again with ``-n 2``.

    python benchmarks/bench.py
    python benchmarks/bench.py --suite big --repeat 3
    python benchmarks/bench.py --mounts 60 --tests 100
    python benchmarks/bench.py --xdist
    python benchmarks/bench.py --extra "isolate-mem=--isolate --isolate-mem=256M" --json out.json

Every run is a fresh ``python -m pytest`` subprocess, so interpreter start-up
and collection are in every number alike and cancel out of the overheads.
The plugin is byte-compiled for each interpreter first, as an installed one
is: under PYTHONDONTWRITEBYTECODE an editable install would compile every
module of the plugin again in every run (about 0.15 s here).
Standard library only; Python 3.9+.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

BENCH_DIR = Path(__file__).resolve().parent

# Always on: no cache files written into the suite, no stray plugins' state.
COMMON_ARGS = ["-q", "-p", "no:cacheprovider"]

# Environment variables that would change what pytest loads or runs.
SCRUBBED_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")

# Set in the re-executed benchmark: the private mount namespace is ready.
MOUNTS_READY_ENV = "PYTEST_ISOLATE_BENCH_MOUNTS_READY"

# The big suite's test names: selected ones match -k SELECTED_WORD.
SELECTED_WORD = "chosen"


@dataclasses.dataclass
class Configuration:
    name: str
    args: List[str]
    times: List[float] = dataclasses.field(default_factory=list)
    cpu_times: List[float] = dataclasses.field(default_factory=list)  # user + system, pytest and its children
    python: str = sys.executable  # another environment's interpreter: another version of the plugin

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times) if self.cpu_times else 0.0


def forked_available() -> bool:
    return importlib.util.find_spec("pytest_forked") is not None


def builtin_configurations(*, forked: bool) -> List[Configuration]:
    """The ones every run measures; the first is the reference for overheads."""
    configs = [
        Configuration("plain", ["-p", "no:isolate"]),
        Configuration("bare-fork", ["-p", "no:isolate", "-p", "bare_fork_plugin"]),
    ]
    if forked:
        configs.append(Configuration("forked", ["-p", "no:isolate", "--forked"]))
    configs.append(Configuration("isolate", ["--isolate"]))
    return configs


def xdist_configurations(serial: List[Configuration], workers: int) -> List[Configuration]:
    """The same configurations with ``-n workers``, named ``NAME -nW``."""
    return [
        Configuration(f"{config.name} -n{workers}", [*config.args, "-n", str(workers)], python=config.python)
        for config in serial
    ]


def network_configurations() -> List[Configuration]:
    """--network-modes: the per-test cost of each network mode (issue 4).

    The forwarded endpoint needs no server: the listener inside is made,
    handed over and torn down whether or not anything connects.
    """
    return [
        Configuration("net-host", ["--isolate", "--isolate-net=true"]),
        Configuration("net-private", ["--isolate", "--isolate-net=private"]),
        Configuration("net-forward", ["--isolate", "--isolate-net=127.0.0.1:5999"]),
        Configuration("net-rate", ["--isolate", "--isolate-net-rate=100mbit"]),
    ]


def parse_extra(spec: str) -> Configuration:
    """``NAME=ARGS`` from --extra, ARGS split like a shell would."""
    name, sep, args = spec.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=ARGS, got {spec!r}")
    return Configuration(name.strip(), shlex.split(args))


# ------------------------------------------------------------------ suites


@dataclasses.dataclass(frozen=True)
class Suite:
    """A generated suite: where it is, how many tests run, what selects them."""

    directory: Path
    selected: int  # tests that run (and must pass)
    collected: int
    select_args: List[str]
    description: str


# With --work-ms: each test burns this much CPU time of its own (its
# thread's clock, so waiting for a core does not count), as a real test's
# body does.
SPIN = """import time


def _spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


"""


def write_trivial_suite(directory: Path, count: int, work_ms: float = 0) -> Suite:
    """``count`` separate test functions in one module.

    Separate functions rather than one parametrized test, so nothing in the
    numbers depends on how a plugin treats parametrization.  The empty
    pytest.ini pins the rootdir here, so no ini file above the temporary
    directory (or its addopts) can change the runs.
    """
    (directory / "pytest.ini").write_text("[pytest]\n")
    if work_ms:
        body = SPIN + "".join(f"def test_{i}():\n    _spin({work_ms / 1000!r})\n\n\n" for i in range(count))
        description = f"{count} tests of {work_ms:g} ms of CPU each"
    else:
        body = "".join(f"def test_{i}():\n    assert {i} == {i}\n\n\n" for i in range(count))
        description = f"{count} trivial tests"
    (directory / "test_trivial.py").write_text(body)
    return Suite(directory, count, count, [], description)


# A heap the way a heavy import or a session fixture leaves one: many small
# containers (dicts, lists, tuples) and strings, all tracked by the garbage
# collector, built once when pytest imports the conftest.
BIG_CONFTEST = '''\
import pytest

HEAP_MB = {heap_mb}


def _build_heap(megabytes):
    # About 1 KB per record: a dict, a list, a tuple and a few strings.
    heap = []
    for i in range(megabytes * 1024):
        heap.append({{
            "id": i,
            "name": "record-%d" % i,
            "tags": ["t%d" % (i % 97), "u%d" % (i % 89), "v%d" % (i % 83)],
            "point": (i * 0.5, i * 0.25),
            "payload": "x" * 700,
        }})
    return heap


HEAP = _build_heap(HEAP_MB)


@pytest.fixture(scope="session")
def heap():
    return HEAP
'''


def write_big_suite(directory: Path, collected: int, selected: int, heap_mb: int) -> Suite:
    """``collected`` tests in modules of 100, one in every ``collected/selected`` selected.

    The selected tests are spread over all modules (as ``-k`` picks tests
    of a real suite), and each takes the session fixture holding the heap.
    """
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "conftest.py").write_text(BIG_CONFTEST.format(heap_mb=heap_mb))
    every = max(1, collected // selected)
    chosen = 0
    per_module = 100
    for module in range((collected + per_module - 1) // per_module):
        lines = []
        for index in range(module * per_module, min(collected, (module + 1) * per_module)):
            if index % every == 0 and chosen < selected:
                chosen += 1
                # The heap holds heap_mb * 1024 records, numbered from 0 (none with --heap-mb 0).
                record = index % 1000
                expected = [record] if record < heap_mb * 1024 else []
                lines.append(
                    f"def test_{SELECTED_WORD}_{index}(heap):\n"
                    f"    assert [entry['id'] for entry in heap[{record}:{record + 1}]] == {expected}\n\n\n"
                )
            else:
                lines.append(f"def test_other_{index}():\n    assert {index} == {index}\n\n\n")
        (directory / f"test_big_{module:04d}.py").write_text("".join(lines))
    description = f"big process: {collected} tests collected, {chosen} selected, a {heap_mb} MB heap in conftest"
    return Suite(directory, chosen, collected, ["-k", SELECTED_WORD], description)


# ------------------------------------------------------------------ running


def child_env() -> Dict[str, str]:
    """The environment for every run: benchmarks/ importable, no pytest env knobs.

    Every configuration gets the same PYTHONPATH, not only bare-fork, so
    they differ in nothing but their arguments.
    """
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV and key != MOUNTS_READY_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    return env


def precompile(configs: List[Configuration]) -> None:
    """Byte-compile the plugin (and benchmarks/) for every interpreter, once, before any run.

    Users' installs have their .pyc files; an editable install under
    PYTHONDONTWRITEBYTECODE (CI images set it) would otherwise compile every
    module of the plugin in every run, and that is no cost of a test.
    """
    code = (
        "import compileall, os, sys, pytest_isolate; "
        "ok = compileall.compile_dir(os.path.dirname(pytest_isolate.__file__), quiet=1) "
        "and compileall.compile_dir(sys.argv[1], quiet=1, maxlevels=0); "
        "sys.exit(0 if ok else 1)"
    )
    env = {key: value for key, value in child_env().items() if key != "PYTHONDONTWRITEBYTECODE"}
    for python in sorted({config.python for config in configs}):
        done = subprocess.run([python, "-c", code, str(BENCH_DIR)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"bench.py: byte-compiling pytest_isolate for {python} failed:\n{done.stdout}{done.stderr}")


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: user, nice, system, irq, softirq).

    Not the run's own rusage: a container's init is reaped by the kernel
    (its parent ignores SIGCHLD) and a namespace's teardown runs in kernel
    workers, and neither is counted there.  So the machine must be
    otherwise idle while the benchmark runs.
    """
    with open("/proc/stat", encoding="ascii") as handle:
        fields = handle.readline().split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_once(config: Configuration, suite: Suite, timeout: float) -> float:
    """Wall seconds of one pytest run; exits with its output if it did not pass.

    The machine's busy CPU seconds meanwhile go to ``config.cpu_times``
    (see ``_machine_cpu``): they vary less than wall time does.
    """
    command = [config.python, "-m", "pytest", *COMMON_ARGS, *suite.select_args, *config.args, str(suite.directory)]
    cpu_before = _machine_cpu()
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=suite.directory, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        fail(config, command, f"timed out after {timeout:g}s", error.stdout or "")
    elapsed = time.perf_counter() - start
    config.cpu_times.append(_machine_cpu() - cpu_before)
    if result.returncode != 0:
        fail(config, command, f"exit code {result.returncode}", result.stdout)
    if not re.search(rf"^\s*{suite.selected} passed\b", result.stdout, re.MULTILINE):
        fail(config, command, f'no "{suite.selected} passed" line in the output', result.stdout)
    return elapsed


def fail(config: Configuration, command: List[str], why: str, output: object) -> None:
    """Stop the benchmark: a timing of a failing run would mean nothing."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    sys.exit(
        f"bench.py: configuration {config.name!r} failed: {why}\n"
        f"command: {shlex.join(command)}\n"
        f"--- output ---\n{output}--- end of output ---"
    )


def measure(configs: List[Configuration], suite: Suite, repeat: int, timeout: float) -> None:
    """Round-robin over the configurations, ``repeat`` rounds.

    Interleaving spreads slow drifts (a busy neighbour, a warming cache)
    over all configurations instead of charging them to whichever ran then.
    """
    for round_number in range(1, repeat + 1):
        for config in configs:
            elapsed = run_once(config, suite, timeout)
            config.times.append(elapsed)
            print(f"  round {round_number}/{repeat}  {config.name:<16} {elapsed:7.2f}s", file=sys.stderr)


def summarize(configs: List[Configuration], suite: Suite, extra_mounts: int, mount_table: int) -> dict:
    """The numbers the table and --json show, computed once.

    Overheads are against the plain run with the same number of workers:
    ``isolate -n2`` against ``plain -n2``.
    """
    count = suite.selected
    by_name_median = {config.name: config.median for config in configs}

    by_name_cpu = {config.name: config.cpu_median for config in configs}

    def reference(name: str) -> float:
        _, _, workers = name.partition(" ")
        return by_name_median.get(f"plain {workers}".strip(), by_name_median["plain"])

    def cpu_reference(name: str) -> float:
        _, _, workers = name.partition(" ")
        return by_name_cpu.get(f"plain {workers}".strip(), by_name_cpu["plain"])

    rows = [
        {
            "name": config.name,
            "args": config.args,
            "times_s": config.times,
            "median_s": config.median,
            "spread_s": max(config.times) - min(config.times),
            "per_test_ms": config.median / count * 1000,
            "overhead_ms_per_test": (config.median - reference(config.name)) / count * 1000,
            "cpu_s": config.cpu_times,
            "cpu_median_s": config.cpu_median,
            "cpu_overhead_ms_per_test": (config.cpu_median - cpu_reference(config.name)) / count * 1000,
        }
        for config in configs
    ]
    by_name = {row["name"]: row for row in rows}

    def ratio(over: str, under: str, key: str = "overhead_ms_per_test") -> Optional[float]:
        if over not in by_name or under not in by_name:
            return None
        low = by_name[under][key]
        # An overhead at or under zero is noise; a ratio over it is meaningless.
        return by_name[over][key] / low if low > 0 else None

    # Each isolate configuration (--compare-with ones too) against the bare
    # fork with as many workers.
    ratios = {
        f"{name} / {under}": ratio(name, under)
        for name in by_name
        if name.startswith("isolate")
        for under in (f"bare-fork {name.partition(' ')[2]}".strip(),)
    }
    ratios["isolate / forked"] = ratio("isolate", "forked")
    ratios["forked / bare-fork"] = ratio("forked", "bare-fork")
    cpu_ratios = {
        f"{name} / {under}": ratio(name, under, "cpu_overhead_ms_per_test")
        for name in by_name
        if name.startswith("isolate")
        for under in (f"bare-fork {name.partition(' ')[2]}".strip(),)
    }
    scaling = {
        name: by_name[f"{name} -n2"]["median_s"] / by_name[name]["median_s"]
        for name in by_name
        if f"{name} -n2" in by_name
    }
    return {
        "suite": suite.description,
        "tests": count,
        "collected": suite.collected,
        "extra_mounts": extra_mounts,
        "mount_table_lines": mount_table,
        "repeat": len(configs[0].times),
        "python": sys.version.split()[0],
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs",
        "configurations": rows,
        "overhead_ratios": {name: value for name, value in ratios.items() if value is not None},
        "cpu_overhead_ratios": {name: value for name, value in cpu_ratios.items() if value is not None},
        # The old key, kept for scripts that read it.
        "isolate_to_bare_fork_overhead_ratio": ratios.get("isolate / bare-fork"),
        "n2_over_serial": scaling,
    }


def _mount_count() -> int:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        return sum(1 for _ in handle)


def print_table(summary: dict) -> None:
    mounts = f", {summary['extra_mounts']} extra mounts" if summary["extra_mounts"] else ""
    print(f"\n{summary['suite']}{mounts} ({summary['mount_table_lines']} in the mount table); "
          f"median of {summary['repeat']} run(s); Python {summary['python']}, {summary['machine']}\n")
    print(f"{'configuration':<18} {'median s':>9} {'spread s':>9} {'ms/test':>9} {'overhead ms/test':>17}"
          f" {'CPU s':>7} {'CPU overhead ms/test':>21}")
    for row in summary["configurations"]:
        print(f"{row['name']:<18} {row['median_s']:>9.2f} {row['spread_s']:>9.2f} {row['per_test_ms']:>9.2f} "
              f"{row['overhead_ms_per_test']:>17.2f} {row['cpu_median_s']:>7.2f} {row['cpu_overhead_ms_per_test']:>21.2f}")
    print()
    names = {row["name"] for row in summary["configurations"]}
    if summary["isolate_to_bare_fork_overhead_ratio"] is None and {"isolate", "bare-fork"} <= names:
        print("isolate overhead / bare-fork overhead: n/a (bare-fork overhead not above zero)")
    for name, value in summary["overhead_ratios"].items():
        over, under = name.split(" / ")
        print(f"{over} overhead / {under} overhead: {value:.2f}x")
    for name, value in summary.get("cpu_overhead_ratios", {}).items():
        over, under = name.split(" / ")
        print(f"{over} CPU overhead / {under} CPU overhead: {value:.2f}x")
    for name, value in summary["n2_over_serial"].items():
        print(f"{name}: -n 2 wall time / serial wall time: {value:.2f}")


# ------------------------------------------------------------------ mounts


def reexec_with_mounts(argv: List[str]) -> None:
    """Run this script again in a private mount namespace (``unshare -m``).

    util-linux's unshare makes the new namespace's mounts private, so the
    tmpfs mounts made there never propagate to the host, and they vanish
    when the namespace's last process exits.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        sys.exit("bench.py: --mounts needs unshare(1) (util-linux)")
    env = dict(os.environ, **{MOUNTS_READY_ENV: "1"})
    command = [unshare, "--mount", "--propagation", "private", "--", sys.executable, str(Path(__file__).resolve()), *argv]
    sys.exit(subprocess.run(command, env=env).returncode)


def make_mounts(directory: Path, count: int, read_only: bool) -> List[Path]:
    """``count`` small tmpfs mounts under ``directory`` (call in the private namespace only)."""
    points = []
    for index in range(count):
        point = directory / f"m{index:03d}"
        point.mkdir()
        options = "size=1m,ro" if read_only else "size=1m"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"bench-mount-{index}", str(point)], check=True)
        points.append(point)
    return points


def remove_mounts(points: List[Path]) -> None:
    for point in reversed(points):
        subprocess.run(["umount", str(point)], check=False)


# ------------------------------------------------------------------ main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("trivial", "big"), default="trivial", help="which suite (trivial)")
    parser.add_argument("--tests", type=int, default=200, metavar="N", help="trivial suite: tests (200)")
    parser.add_argument("--work-ms", type=float, default=0, metavar="MS",
                        help="trivial suite: each test burns MS ms of CPU, as a real test's body does (0)")
    parser.add_argument("--collected", type=int, default=5000, metavar="N", help="big suite: tests collected (5000)")
    parser.add_argument("--selected", type=int, default=500, metavar="N", help="big suite: tests selected and run (500)")
    parser.add_argument("--heap-mb", type=int, default=300, metavar="MB", help="big suite: heap the conftest holds (300)")
    parser.add_argument("--mounts", type=int, default=0, metavar="M",
                        help="run in a private mount namespace with M extra small tmpfs mounts (0)")
    parser.add_argument("--read-only-mounts", action="store_true",
                        help="with --mounts: mount them read-only, as snaps' squashfs images are")
    parser.add_argument("--xdist", action="store_true", help="also run every built-in configuration with -n 2")
    parser.add_argument("--no-forked", action="store_true", help="leave pytest-forked out even where it is installed")
    parser.add_argument("--compare-with", action="append", default=[], metavar="LABEL=PYTHON",
                        help="also run --isolate with another environment's interpreter (another version of the "
                        "plugin), in the same rounds, as isolate@LABEL; repeatable")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these configurations (plain always runs); repeatable")
    parser.add_argument("--repeat", type=int, default=3, metavar="R", help="runs per configuration; the median counts (3)")
    parser.add_argument("--extra", type=parse_extra, action="append", default=[], metavar="NAME=ARGS",
                        help='another configuration, e.g. "isolate-mem=--isolate --isolate-mem=256M"; repeatable')
    parser.add_argument("--network-modes", action="store_true",
                        help="also measure net=True, net=\"private\", a forwarded endpoint and net_rate")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here as JSON")
    parser.add_argument("--timeout", type=float, default=600, metavar="S", help="give up on one run after S seconds (600)")
    args = parser.parse_args(argv)
    if min(args.tests, args.repeat, args.collected, args.selected) < 1 or args.mounts < 0 or args.heap_mb < 0:
        parser.error("--tests, --repeat, --collected and --selected must be at least 1; --mounts, --heap-mb at least 0")
    if args.selected > args.collected:
        parser.error("--selected cannot be more than --collected")
    if args.network_modes:
        args.extra = network_configurations() + args.extra
    return args


def configurations(args: argparse.Namespace) -> List[Configuration]:
    serial = builtin_configurations(forked=forked_available() and not args.no_forked)
    if args.only:
        serial = [config for config in serial if config.name == "plain" or config.name in args.only]
    for spec in args.compare_with:
        label, sep, python = spec.partition("=")
        if not sep or not label or not python:
            sys.exit(f"bench.py: --compare-with expects LABEL=PYTHON, got {spec!r}")
        serial.append(Configuration(f"isolate@{label}", ["--isolate"], python=python))
    configs = serial + (xdist_configurations(serial, 2) if args.xdist else []) + args.extra
    names = [config.name for config in configs]
    if len(set(names)) != len(names):
        sys.exit(f"bench.py: configuration names must be unique, got {names}")
    return configs


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.mounts and os.environ.get(MOUNTS_READY_ENV) != "1":
        reexec_with_mounts(argv)  # never returns
    configs = configurations(args)
    precompile(configs)
    with tempfile.TemporaryDirectory(prefix="pytest-isolate-bench-") as tmp:
        root = Path(tmp)
        suite_dir = root / "suite"
        suite_dir.mkdir()
        if args.suite == "big":
            suite = write_big_suite(suite_dir, args.collected, args.selected, args.heap_mb)
        else:
            suite = write_trivial_suite(suite_dir, args.tests, args.work_ms)
        points: List[Path] = []
        if args.mounts:
            mounts_dir = root / "mounts"
            mounts_dir.mkdir()
            try:
                points = make_mounts(mounts_dir, args.mounts, args.read_only_mounts)
                mount_table = _mount_count()
                measure(configs, suite, args.repeat, args.timeout)
            finally:
                remove_mounts(points)
        else:
            mount_table = _mount_count()
            measure(configs, suite, args.repeat, args.timeout)
    summary = summarize(configs, suite, args.mounts, mount_table)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
