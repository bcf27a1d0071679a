"""What does one run of ``--isolate-repeat`` cost, next to a normal isolated test?

Times, round-robin, as fresh ``python -m pytest`` subprocesses:

  plain     N trivial tests, plugin off: the floor
  isolate   the same N tests with --isolate: N containers
  repeat    N/R trivial tests with --isolate --isolate-repeat=R: N containers too

and prints ms per test (or run) and the overhead over plain.  ``repeat``
and ``isolate`` start the same number of containers, so their overheads
should match: a repeated run is an ordinary isolated item.

    python benchmarks/repeat_cost.py                 # N=200, R=10, median of 3 rounds
    python benchmarks/repeat_cost.py --tests 100 --runs 5 --repeat 5

Standard library only; uses bench.py's suite writer and runner.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Configuration, run_once, write_suite  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200, metavar="N", help="containers per run (200)")
    parser.add_argument("--runs", type=int, default=10, metavar="R", help="--isolate-repeat=R (10); must divide N")
    parser.add_argument("--repeat", type=int, default=3, metavar="K", help="rounds; the median counts (3)")
    args = parser.parse_args()
    if args.tests % args.runs or args.runs < 1 or args.repeat < 1:
        parser.error("--runs must divide --tests, and both --runs and --repeat must be at least 1")
    configs = [
        (Configuration("plain", ["-p", "no:isolate"]), "all"),
        (Configuration("isolate", ["--isolate"]), "all"),
        (Configuration(f"repeat={args.runs}", ["--isolate", f"--isolate-repeat={args.runs}"]), "few"),
    ]
    with tempfile.TemporaryDirectory(prefix="pytest-isolate-repeat-bench-") as tmp:
        suites = {"all": Path(tmp) / "all", "few": Path(tmp) / "few"}
        for name, suite in suites.items():
            suite.mkdir()
            write_suite(suite, args.tests if name == "all" else args.tests // args.runs)
        for round_number in range(1, args.repeat + 1):
            for config, suite_name in configs:
                elapsed = run_once(config, suites[suite_name], args.tests, timeout=600)
                config.times.append(elapsed)
                print(f"  round {round_number}/{args.repeat}  {config.name:<10} {elapsed:7.2f}s", file=sys.stderr)
    plain = statistics.median(configs[0][0].times)
    print(f"\n{args.tests} containers per run ({args.tests // args.runs} tests x {args.runs} for repeat), "
          f"median of {args.repeat} round(s)\n")
    print(f"{'configuration':<14} {'median s':>9} {'ms/run':>8} {'overhead ms/run':>16}")
    for config, _ in configs:
        median = statistics.median(config.times)
        print(f"{config.name:<14} {median:>9.2f} {median / args.tests * 1000:>8.2f} "
              f"{(median - plain) / args.tests * 1000:>16.2f}")


if __name__ == "__main__":
    main()
