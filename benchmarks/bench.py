"""How much does pytest-isolate cost per test?

Runs one generated suite of trivial tests under several configurations and
prints the median wall time of each, per test, and over plain pytest:

  plain      pytest with the plugin switched off: the floor
  bare-fork  a fork per test and nothing else (bare_fork_plugin.py): the
             least any process-per-test design pays
  isolate    --isolate: every test in its own container

The tests do nothing, so the numbers are the framework's overhead, not the
tests'.  ``isolate overhead / bare-fork overhead`` says how much the
container costs on top of the process.

    python benchmarks/bench.py
    python benchmarks/bench.py --tests 50 --repeat 1
    python benchmarks/bench.py --extra "isolate-mem=--isolate --isolate-mem=256M" --json out.json

Every run is a fresh ``python -m pytest`` subprocess, so interpreter start-up
and collection are in every number alike and cancel out of the overheads.
Standard library only; Python 3.9+.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
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


@dataclasses.dataclass
class Configuration:
    name: str
    args: List[str]
    times: List[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def builtin_configurations() -> List[Configuration]:
    """The three every run measures; the first is the reference for overheads."""
    return [
        Configuration("plain", ["-p", "no:isolate"]),
        Configuration("bare-fork", ["-p", "no:isolate", "-p", "bare_fork_plugin"]),
        Configuration("isolate", ["--isolate"]),
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


def write_suite(directory: Path, count: int) -> None:
    """``count`` separate test functions in one module.

    Separate functions rather than one parametrized test, so nothing in the
    numbers depends on how a plugin treats parametrization.  The empty
    pytest.ini pins the rootdir here, so no ini file above the temporary
    directory (or its addopts) can change the runs.
    """
    (directory / "pytest.ini").write_text("[pytest]\n")
    body = "".join(f"def test_{i}():\n    assert {i} == {i}\n\n\n" for i in range(count))
    (directory / "test_trivial.py").write_text(body)


def child_env() -> Dict[str, str]:
    """The environment for every run: benchmarks/ importable, no pytest env knobs.

    Every configuration gets the same PYTHONPATH, not only bare-fork, so
    they differ in nothing but their arguments.
    """
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    return env


def run_once(config: Configuration, suite: Path, count: int, timeout: float) -> float:
    """Wall seconds of one pytest run; exits with its output if it did not pass."""
    command = [sys.executable, "-m", "pytest", *COMMON_ARGS, *config.args, str(suite)]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=suite, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        fail(config, command, f"timed out after {timeout:g}s", error.stdout or "")
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        fail(config, command, f"exit code {result.returncode}", result.stdout)
    if not re.search(rf"^\s*{count} passed\b", result.stdout, re.MULTILINE):
        fail(config, command, f'no "{count} passed" line in the output', result.stdout)
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


def measure(configs: List[Configuration], suite: Path, count: int, repeat: int, timeout: float) -> None:
    """Round-robin over the configurations, ``repeat`` rounds.

    Interleaving spreads slow drifts (a busy neighbour, a warming cache)
    over all configurations instead of charging them to whichever ran then.
    """
    for round_number in range(1, repeat + 1):
        for config in configs:
            elapsed = run_once(config, suite, count, timeout)
            config.times.append(elapsed)
            print(f"  round {round_number}/{repeat}  {config.name:<14} {elapsed:7.2f}s", file=sys.stderr)


def summarize(configs: List[Configuration], count: int) -> dict:
    """The numbers the table and --json show, computed once."""
    plain = configs[0].median
    rows = [
        {
            "name": config.name,
            "args": config.args,
            "times_s": config.times,
            "median_s": config.median,
            "per_test_ms": config.median / count * 1000,
            "overhead_ms_per_test": (config.median - plain) / count * 1000,
        }
        for config in configs
    ]
    by_name = {row["name"]: row for row in rows}
    bare = by_name["bare-fork"]["overhead_ms_per_test"]
    isolate = by_name["isolate"]["overhead_ms_per_test"]
    return {
        "tests": count,
        "repeat": len(configs[0].times),
        "python": sys.version.split()[0],
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs",
        "configurations": rows,
        # A bare-fork overhead at or under zero is noise; a ratio over it is meaningless.
        "isolate_to_bare_fork_overhead_ratio": isolate / bare if bare > 0 else None,
    }


def print_table(summary: dict) -> None:
    print(f"\n{summary['tests']} trivial tests, median of {summary['repeat']} run(s); "
          f"Python {summary['python']}, {summary['machine']}\n")
    print(f"{'configuration':<16} {'median s':>9} {'ms/test':>9} {'overhead ms/test':>17}")
    for row in summary["configurations"]:
        print(f"{row['name']:<16} {row['median_s']:>9.2f} {row['per_test_ms']:>9.2f} "
              f"{row['overhead_ms_per_test']:>17.2f}")
    ratio = summary["isolate_to_bare_fork_overhead_ratio"]
    shown = f"{ratio:.1f}x" if ratio is not None else "n/a (bare-fork overhead not above zero)"
    print(f"\nisolate overhead / bare-fork overhead: {shown}")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200, metavar="N", help="trivial tests in the suite (200)")
    parser.add_argument("--repeat", type=int, default=3, metavar="R", help="runs per configuration; the median counts (3)")
    parser.add_argument("--extra", type=parse_extra, action="append", default=[], metavar="NAME=ARGS",
                        help='another configuration, e.g. "isolate-mem=--isolate --isolate-mem=256M"; repeatable')
    parser.add_argument("--network-modes", action="store_true",
                        help="also measure net=True, net=\"private\", a forwarded endpoint and net_rate")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here as JSON")
    parser.add_argument("--timeout", type=float, default=600, metavar="S", help="give up on one run after S seconds (600)")
    args = parser.parse_args(argv)
    if args.tests < 1 or args.repeat < 1:
        parser.error("--tests and --repeat must be at least 1")
    if args.network_modes:
        args.extra = network_configurations() + args.extra
    names = [config.name for config in builtin_configurations() + args.extra]
    if len(set(names)) != len(names):
        parser.error(f"configuration names must be unique, got {names}")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    configs = builtin_configurations() + args.extra
    with tempfile.TemporaryDirectory(prefix="pytest-isolate-bench-") as tmp:
        suite = Path(tmp)
        write_suite(suite, args.tests)
        measure(configs, suite, args.tests, args.repeat, args.timeout)
    summary = summarize(configs, args.tests)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
