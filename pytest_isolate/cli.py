"""The ``pytest-isolate`` command: what this host gives the plugin."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pytest_isolate import __version__, hostinfo
from pytest_isolate.images import commands as images_commands


def info(as_json: bool) -> int:
    facts = hostinfo.summary_facts()
    cgroups = hostinfo.cgroup_facts()
    userns = hostinfo.user_namespaces()
    support = hostinfo.argument_support(facts)
    document: dict[str, Any] = {
        "version": __version__,
        "kernel": facts["kernel"],
        "running_as_root": facts["root"],
        "storage": {"driver": facts["storage_driver"], "backing_filesystem": facts["root_filesystem"]},
        "cgroup": cgroups,
        "user_namespaces": userns,
        "arguments": {name: {"works": works, "why_not": why} for name, (works, why) in support.items()},
    }
    if as_json:
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    lines = [
        f"pytest-isolate {__version__}",
        f" Kernel Version: {facts['kernel']}",
        f" Running As Root: {'yes' if facts['root'] else f'no (uid {os.geteuid()})'}",
        f" Storage Driver: {facts['storage_driver'] or 'none (no overlay filesystem)'}",
        f"  Backing Filesystem: {facts['root_filesystem']}",
        f" Cgroup Version: {cgroups['version'] or 'none found'}",
        f"  Mount: {cgroups['mount'] or '-'}",
        f"  Controllers: {' '.join(cgroups['controllers']) or '-'}",
        f"  Own Cgroup: {cgroups['cgroup'] or '-'}",
        f" User Namespaces: {'allowed' if userns['allowed'] else 'not allowed'} (max {userns['max']})",
        " Marker Arguments:",
    ]
    for name, (works, why) in support.items():
        answer = ("yes" + (f", {why}" if why else "")) if works else f"no: {why}"
        lines.append(f"  {name:9} {answer}")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-isolate", description="run pytest tests in throw-away containers")
    parser.add_argument("--version", action="version", version=f"pytest-isolate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info_parser = commands.add_parser("info", help="what this host gives the plugin (like docker info)")
    info_parser.add_argument("--json", action="store_true", help="print JSON for machines")
    images_commands.add_parser(commands)
    from pytest_isolate import plot

    plot.add_parser(commands)
    from pytest_isolate import keep

    keep.add_parser(commands)
    arguments = parser.parse_args(argv)
    if arguments.command == "info":
        return info(arguments.json)
    if arguments.command == "images":
        return images_commands.run(arguments)
    if arguments.command == "plot":
        return plot.run(arguments.reports, arguments.output, arguments.top)
    if arguments.command == "kept":
        return keep.run_command(arguments)
    parser.error(f"unknown command {arguments.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
