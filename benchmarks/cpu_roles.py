"""Whose CPU a test costs: the whole machine's CPU time per test, split by role, from perf samples.

``bench.py``'s CPU column is the whole machine's busy time; this script says
who spent it.  It runs each configuration once under ``perf record -a -g -e
cpu-clock`` (every CPU; a software clock, so it works in VMs without
hardware counters) and gives each sample to a role, from the process tree
that perf's fork and exec events draw:

  pytest            the pytest process, and under ``-n`` xdist's controller and workers
  test processes    forks of those that did not exec (each test's process,
                    and the forks it made), and whatever those exec
  preparer          the process that builds containers ahead (``isolate-prepare``)
  init              the containers' PID 1 (``isolate-init``)
  kernel threads    kworkers, ksoftirqd, RCU: namespace teardown, deferred frees
  other             anything else that ran: the machine must be otherwise idle

Then, per role, where its time went: user space (Python, for pytest and the
tests), page faults, process exit, fork, interrupts, and the other system
calls by name.  Figures are ms of CPU per test, session start-up included
(it cancels out against the plain run, as in ``bench.py``).

    python benchmarks/cpu_roles.py                      # 300 trivial tests: plain, bare-fork, isolate
    python benchmarks/cpu_roles.py --xdist              # the same with -n 2
    python benchmarks/cpu_roles.py --suite big --selected 300
    python benchmarks/cpu_roles.py --extra "isolate-net-host=--isolate --isolate-net=true"

Root only, on Linux, with ``perf`` installed (Debian: ``linux-perf``).
Sampling adds its own cost (about 10% here), the same in every
configuration; compare the configurations with each other, not with
``bench.py``'s times.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from pytest_isolate.container.init_program import COMM as INIT_NAME  # noqa: E402
from pytest_isolate.container.preparer import PROCESS_NAME as PREPARER_NAME  # noqa: E402

ROLES = ("pytest", "test processes", "preparer", "init", "kernel threads", "other")
KERNEL_THREAD_PREFIXES = ("kworker", "ksoftirqd", "rcu", "migration", "kthreadd", "kcompactd", "kswapd", "khugepaged")
SAMPLE_HZ = 4000

_HEADER = re.compile(r"^\s*(?P<comm>.*?)\s+(?P<pid>\d+)/(?P<tid>\d+)\s*$")
_FORK = re.compile(r"PERF_RECORD_FORK\((?P<pid>\d+):(?P<tid>\d+)\):\((?P<ppid>\d+):(?P<ptid>\d+)\)")
_COMM = re.compile(r"PERF_RECORD_COMM(?P<exec> exec)?: (?P<comm>.*):(?P<pid>\d+)/(?P<tid>\d+)$")
_SYSCALL = re.compile(r"^__(?:x64|arm64|ia32|se|do)_sys_(?P<name>\w+)$")


class ProcessTree:
    """Who forked whom and who exec'd what, from perf's task events."""

    def __init__(self) -> None:
        self.parent: Dict[int, int] = {}
        self.execed: Set[int] = set()  # processes that exec'd
        self.named: Dict[int, str] = {}  # pid -> its last comm, exec or PR_SET_NAME
        self.root: Optional[int] = None  # the first process that perf's child exec'd: pytest

    def event(self, line: str) -> None:
        fork = _FORK.search(line)
        if fork:
            if fork["pid"] != fork["ppid"]:  # a process, not a thread
                self.parent[int(fork["pid"])] = int(fork["ppid"])
            return
        comm = _COMM.search(line)
        if comm:
            pid = int(comm["pid"])
            if int(comm["tid"]) != pid:
                return  # a thread's name
            self.named[pid] = comm["comm"]
            if comm["exec"]:
                self.execed.add(pid)
                if self.root is None and pid in self.parent:
                    self.root = pid

    def role(self, pid: int, comm: str) -> str:
        if pid == 0:
            return "idle"
        name = self.named.get(pid, comm)
        if name == PREPARER_NAME:
            return "preparer"
        if name == INIT_NAME:
            return "init"
        chain = [pid]  # pid and its ancestors, up to pytest
        while chain[-1] in self.parent and chain[-1] != self.root:
            chain.append(self.parent[chain[-1]])
        if self.root is None or chain[-1] != self.root:
            return "kernel threads" if name.startswith(KERNEL_THREAD_PREFIXES) else "other"
        # Down from pytest: what it (or an xdist worker, a fresh interpreter
        # execnet started) exec'd is pytest's own work; what it forked
        # without exec is a test's process, with everything that one starts.
        for process in reversed(chain[:-1]):
            if process not in self.execed:
                return "test processes"
        return "pytest"


def where(frames: List[Tuple[str, bool]]) -> str:
    """What one sample was doing, from its call chain (leaf first; True: a kernel frame)."""
    kernel = [symbol for symbol, in_kernel in frames if in_kernel]
    if not kernel:
        return "user space"
    outer_first = list(reversed(kernel))
    names = set(kernel)
    if "do_exit" in names or "do_group_exit" in names:
        return "exit"
    if "kernel_clone" in names or "copy_process" in names:
        return "fork"
    for symbol in outer_first:
        if symbol in ("exc_page_fault", "asm_exc_page_fault"):
            return "page faults"
        if symbol.startswith(("asm_sysvec", "asm_common_interrupt", "irq_exit", "handle_softirqs", "__irq_exit_rcu")):
            return "interrupts"
        syscall = _SYSCALL.match(symbol)
        if syscall:
            return f"syscall {syscall['name']}"
        if symbol == "process_one_work":
            index = outer_first.index(symbol)
            return f"work {outer_first[index + 1]}" if index + 1 < len(outer_first) else "work"
    if "kthread" in names:  # a kernel thread's own loop: named by its function
        index = outer_first.index("kthread")
        return f"thread {outer_first[index + 1]}" if index + 1 < len(outer_first) else "thread"
    return f"kernel {kernel[0]}"


def profile(config: bench.Configuration, suite: bench.Suite, data: Path) -> None:
    command = ["perf", "record", "-q", "-a", "-g", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-o", str(data), "--",
               config.python, "-m", "pytest", *bench.COMMON_ARGS, *suite.select_args, *config.args, str(suite.directory)]
    done = subprocess.run(command, cwd=suite.directory, env=bench.child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0 or not re.search(rf"^\s*{suite.selected} passed\b", done.stdout, re.MULTILINE):
        sys.exit(f"cpu_roles.py: {config.name} failed (exit code {done.returncode}):\n{done.stdout[-4000:]}")


def attribute(data: Path) -> Dict[str, collections.Counter]:
    """Samples per role and per kind of work: {role: Counter(kind -> samples)}."""
    script = subprocess.run(["perf", "script", "-i", str(data), "--show-task-events", "-F", "comm,pid,tid,ip,sym,dso"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace")
    tree = ProcessTree()
    samples: List[Tuple[int, str, str]] = []  # (pid, comm, where)
    header: Optional[Tuple[int, str]] = None
    frames: List[Tuple[str, bool]] = []

    def flush() -> None:
        if header is not None:
            samples.append((header[0], header[1], where(frames)))

    for line in script.stdout.splitlines():
        if "PERF_RECORD_" in line:
            tree.event(line)
            continue
        if not line.strip():
            flush()
            header, frames = None, []
            continue
        if line.startswith(("\t", "        ")) and header is not None:
            parts = line.split(None, 1)
            if len(parts) == 2:
                symbol, _, dso = parts[1].rpartition(" (")
                frames.append((symbol.split("+")[0], dso.startswith("[kernel")))
            continue
        match = _HEADER.match(line)
        if match:
            flush()
            header, frames = (int(match["pid"]), match["comm"]), []
    flush()
    by_role: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for pid, comm, kind in samples:
        by_role[tree.role(pid, comm)][kind] += 1
    return by_role


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("trivial", "big"), default="trivial")
    parser.add_argument("--tests", type=int, default=300, help="trivial suite: tests (300)")
    parser.add_argument("--collected", type=int, default=5000, help="big suite: tests collected (5000)")
    parser.add_argument("--selected", type=int, default=300, help="big suite: tests run (300)")
    parser.add_argument("--heap-mb", type=int, default=300, help="big suite: the conftest's heap (300)")
    parser.add_argument("--xdist", action="store_true", help="run every configuration with -n 2")
    parser.add_argument("--extra", action="append", default=[], type=bench.parse_extra, metavar="NAME=ARGS",
                        help="another configuration; repeatable")
    parser.add_argument("--top", type=int, default=6, help="kinds of work shown per role (6)")
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        sys.exit("cpu_roles.py: perf not found (Debian: apt-get install linux-perf)")
    if os.geteuid() != 0:
        sys.exit("cpu_roles.py: run it as root (perf record -a, and --isolate's containers)")
    configs = bench.builtin_configurations(forked=False) + args.extra
    if args.xdist:
        configs = bench.xdist_configurations(configs, 2)
    bench.precompile(configs)
    results: Dict[str, Dict[str, collections.Counter]] = {}
    with tempfile.TemporaryDirectory(prefix="pytest-isolate-cpu-roles-") as tmp:
        suite_dir = Path(tmp) / "suite"
        suite_dir.mkdir()
        if args.suite == "big":
            suite = bench.write_big_suite(suite_dir, args.collected, args.selected, args.heap_mb)
        else:
            suite = bench.write_trivial_suite(suite_dir, args.tests)
        for config in configs:
            data = Path(tmp) / "perf.data"
            profile(config, suite, data)
            results[config.name] = attribute(data)
            print(f"  profiled {config.name}", file=sys.stderr, flush=True)
    ms = 1000.0 / SAMPLE_HZ / suite.selected  # ms of CPU per test, per sample
    names = [config.name for config in configs]
    width = 34
    print(f"\n{suite.description}; perf cpu-clock at {SAMPLE_HZ} Hz on every CPU; ms of CPU per test\n")
    print(f"{'role':<{width}}" + "".join(f"{name:>16}" for name in names))
    for role in ROLES:
        row = [sum(results[name].get(role, collections.Counter()).values()) * ms for name in names]
        if any(row):
            print(f"{role:<{width}}" + "".join(f"{value:>16.2f}" for value in row))
    busy = [sum(sum(counter.values()) for role, counter in results[name].items() if role != "idle") * ms for name in names]
    print(f"{'all busy CPU':<{width}}" + "".join(f"{value:>16.2f}" for value in busy))
    for role in ROLES:
        kinds = collections.Counter()
        for name in names:
            kinds.update(results[name].get(role, collections.Counter()))
        if not kinds:
            continue
        print(f"\n{role}, by kind of work")
        for kind, _ in kinds.most_common(args.top):
            row = [results[name].get(role, collections.Counter())[kind] * ms for name in names]
            print(f"  {kind:<{width - 2}}" + "".join(f"{value:>16.2f}" for value in row))


if __name__ == "__main__":
    main()
