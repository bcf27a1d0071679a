"""Where a fork-per-test runner's time goes, per test, on the big suite.

Runs bench.py's big-process suite once per configuration with
``timeline_plugin`` loaded, and prints medians per test of:

  parent before fork   pytest's own work from the start of the protocol to the fork
  fork -> child runs   the fork syscall and the child's first instructions
  child to setup       the child's work from the fork to the test's setup
                       (for --isolate: leaving pytest, namespaces, mounts,
                       hardening), its CPU time and page faults so far
  setup -> call        fixture setup, in the child
  call -> teardown end the test and its teardown, in the child
  after the child      from the child's last phase to the protocol's end in pytest
                       (reports back, the container's end)
  step: ...            --isolate only: the test process's CPU time and page
                       faults in each of its steps from the fork to setup
                       (leave pytest, join the container, limits and
                       privileges, say "ready", pytest's protocol to setup)
  faults in the child  minor page faults of the test process, fork to end
                       (each one a page copied on write or mapped)
  parent faults, CPU   pytest's own, over the whole protocol (a page it
                       writes while a child still shares it is copied too)
  total                the whole runtest protocol

and the whole run's wall time, CPU time, page faults and context switches
per test over a plain pytest run of the same suite (children included,
like ``/usr/bin/time -v``).  ``--strace`` adds the
syscall counts of one --isolate run of a few tests (``strace -c -f``).

    python benchmarks/breakdown.py
    python benchmarks/breakdown.py --selected 200 --heap-mb 300 --strace 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

CONFIGS = {
    "bare-fork": ["-p", "no:isolate", "-p", "bare_fork_plugin"],
    "forked": ["-p", "no:isolate", "--forked"],
    # The timeline's descriptor must reach the test process: without
    # --isolate-inherit-fds it leads to /dev/null there, as pytest's own do.
    "isolate": ["--isolate", "--isolate-inherit-fds"],
}


# --isolate's test process, fork to setup (timeline_plugin notes them): each
# row runs from the event before it (the fork, for the first) to its own.
ISOLATE_STEPS = {
    "  step: after the fork": "leave_start",
    "  step: leave pytest": "leave_end",
    "  step: join the container": "settle_start",
    "  step: limits, privileges": "settle_end",
    "  step: say ready": "protocol",
    "  step: pytest to setup": "setup",
}


def run(config: List[str], suite: bench.Suite, timeline: Path, extra: List[str]) -> Dict[str, float]:
    command = [sys.executable, "-m", "pytest", *bench.COMMON_ARGS, *suite.select_args,
               "-p", "timeline_plugin", *config, *extra, str(suite.directory)]
    env = bench.child_env()
    env["PYTEST_ISOLATE_TIMELINE"] = str(timeline)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=suite.directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0 or f"{suite.selected} passed" not in output:
        sys.exit(f"breakdown.py: {' '.join(config)} failed:\n{output}")
    return {
        "wall": wall, "utime": usage.ru_utime, "stime": usage.ru_stime, "minflt": usage.ru_minflt,
        "csw": usage.ru_nvcsw + usage.ru_nivcsw,
    }


def per_test(timeline: Path) -> Dict[str, List[float]]:
    """Split the events into tests (protocol_start .. protocol_end) and measure each."""
    events = [json.loads(line) for line in timeline.read_text().splitlines()]
    tests: List[List[dict]] = []
    for event in events:
        if event["event"] == "protocol_start" and not event["child"]:
            tests.append([])
        if tests:
            tests[-1].append(event)
    columns: Dict[str, List[float]] = {}

    def add(name: str, value: float) -> None:
        columns.setdefault(name, []).append(value)

    for test in tests:
        by = {}
        for event in test:
            by.setdefault(event["event"], event)  # the first of each kind
        if not {"protocol_start", "fork", "child_start", "setup", "call", "teardown_end", "protocol_end"} <= by.keys():
            continue
        ms = 1e-6
        add("parent before fork", (by["fork"]["before_ns"] - by["protocol_start"]["t_ns"]) * ms)
        add("fork -> child runs", (by["child_start"]["t_ns"] - by["child_start"]["parent_fork_ns"]) * ms)
        add("child to setup", (by["setup"]["t_ns"] - by["child_start"]["t_ns"]) * ms)
        add("  its CPU ms", (by["setup"]["utime"] + by["setup"]["stime"]) * 1000)
        add("  its page faults", by["setup"]["minflt"])
        add("setup -> call", (by["call"]["t_ns"] - by["setup"]["t_ns"]) * ms)
        add("call -> teardown end", (by["teardown_end"]["t_ns"] - by["call"]["t_ns"]) * ms)
        add("after the child", (by["protocol_end"]["t_ns"] - by["teardown_end"]["t_ns"]) * ms)
        add("faults in the child", by["teardown_end"]["minflt"])
        add("child CPU ms, fork to end", (by["teardown_end"]["utime"] + by["teardown_end"]["stime"]) * 1000)
        add("parent faults", by["protocol_end"]["minflt"] - by["protocol_start"]["minflt"])
        add("parent CPU ms", (by["protocol_end"]["utime"] + by["protocol_end"]["stime"]
                              - by["protocol_start"]["utime"] - by["protocol_start"]["stime"]) * 1000)
        add("total", (by["protocol_end"]["t_ns"] - by["protocol_start"]["t_ns"]) * ms)
        steps = [by.get(name) for name in ("child_start", *ISOLATE_STEPS.values())]
        if all(steps):  # --isolate: the test process's own steps to setup
            for label, start, end in zip(ISOLATE_STEPS, steps, steps[1:]):
                add(f"{label} CPU ms", (end["utime"] + end["stime"] - start["utime"] - start["stime"]) * 1000)
                add(f"{label} faults", end["minflt"] - start["minflt"])
    return columns


def strace_summary(suite: bench.Suite, tests: int, extra: List[str]) -> str:
    if shutil.which("strace") is None:
        return "strace not found"
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        command = ["strace", "-c", "-f", "-o", out.name, sys.executable, "-m", "pytest", *bench.COMMON_ARGS,
                   "--isolate", *extra, *[f"{suite.directory}/test_big_{i:04d}.py::test_{bench.SELECTED_WORD}_{i * 100}"
                                          for i in range(tests)]]
        subprocess.run(command, cwd=suite.directory, env=bench.child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        return Path(out.name).read_text()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collected", type=int, default=5000)
    parser.add_argument("--selected", type=int, default=500)
    parser.add_argument("--heap-mb", type=int, default=300)
    parser.add_argument("--only", action="append", default=[], help="configurations to run (bare-fork, forked, isolate)")
    parser.add_argument("--extra", default="", help="more pytest arguments for every run")
    parser.add_argument("--strace", type=int, default=0, metavar="N", help="also strace -c -f an --isolate run of N tests")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    names = args.only or [name for name in CONFIGS if name != "forked" or bench.forked_available()]
    extra = args.extra.split()
    results = {}
    plain: Dict[str, float] = {}
    bench.precompile([bench.Configuration("this interpreter", [])])
    with tempfile.TemporaryDirectory(prefix="pytest-isolate-breakdown-") as tmp:
        suite_dir = Path(tmp) / "suite"
        suite_dir.mkdir()
        suite = bench.write_big_suite(suite_dir, args.collected, args.selected, args.heap_mb)
        plain = run(["-p", "no:isolate"], suite, Path(tmp) / "plain.jsonl", extra)
        for name in names:
            timeline = Path(tmp) / f"{name}.jsonl"
            totals = run(CONFIGS[name], suite, timeline, extra)
            columns = per_test(timeline)
            results[name] = {
                "per_test_median": {key: statistics.median(values) for key, values in columns.items()},
                "run_per_test_over_plain": {key: (value - plain[key]) / suite.selected for key, value in totals.items()},
            }
        trace = strace_summary(suite, args.strace, extra) if args.strace else None
    print(f"\n{suite.description}; medians per test\n")
    keys = list(dict.fromkeys(key for name in names for key in results[name]["per_test_median"]))
    width = max(28, *(len(key) + 2 for key in keys))
    print(f"{'':<{width}}" + "".join(f"{name:>12}" for name in names))
    for key in keys:
        values = (results[name]["per_test_median"].get(key) for name in names)
        print(f"{key:<{width}}" + "".join("           -" if value is None else f"{value:>12.2f}" for value in values))
    print("\nwhole run, per test, over plain pytest (children included)")
    for key, label, scale in (("wall", "wall ms", 1000), ("utime", "user CPU ms", 1000), ("stime", "system CPU ms", 1000),
                              ("minflt", "minor faults", 1), ("csw", "context switches", 1)):
        print(f"{label:<{width}}" + "".join(f"{results[name]['run_per_test_over_plain'][key] * scale:>12.2f}" for name in names))
    if trace:
        print(f"\nstrace -c -f of --isolate over {args.strace} tests:\n{trace}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
