"""The lane's summary: per run, its exit code, time and junit counts, and the tests that failed.

Usage: summarize.py OUT_DIR "RUNS" BUILD_SECONDS VM_SECONDS QEMU_EXIT
Exits 1 when any run failed or did not finish (the VM killed, the job broken).
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET


def read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def junit(path: str) -> tuple[dict[str, int], list[str]]:
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    bad = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            counts["failed"] += 1
            bad.append(f"FAILED {name}")
        elif "error" in kinds:
            counts["error"] += 1
            bad.append(f"ERROR  {name}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, bad


def main() -> int:
    out, runs, build, vm, qemu = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5]
    ok = True
    print(f"\n=== VM lane: {out}")
    facts = read(os.path.join(out, "facts.txt"))
    if facts:
        print("\n".join(f"    {line}" for line in facts.splitlines()))
    boot = read(os.path.join(out, "boot-seconds"))
    print(f"    image {build} s, VM {vm} s (qemu exit {qemu}), job started {boot or 'never'} s after boot")
    if read(os.path.join(out, "install.rc")) != "0":
        print("    the tree under test did not install in the guest (see job.log)")
        ok = False
    for run in runs:
        rc = read(os.path.join(out, f"{run}.rc"))
        seconds = read(os.path.join(out, f"{run}.seconds")) or "?"
        xml = os.path.join(out, f"{run}.xml")
        if rc is None:
            print(f"--- {run}: did not finish (see job.log, console.log)")
            ok = False
            continue
        verdict = "passed" if rc == "0" else f"FAILED (exit {rc})"
        ok = ok and rc == "0"
        if os.path.exists(xml):
            counts, bad = junit(xml)
            tally = ", ".join(f"{n} {k}" for k, n in counts.items())
        else:
            tally, bad = "no junit report", []
        print(f"--- {run}: {verdict} in {seconds} s: {tally}  (log: {run}.log)")
        for line in bad:
            print(f"    {line}")
    print(f"=== VM lane {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
