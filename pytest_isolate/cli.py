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
    confined = hostinfo.confinement_facts()
    support = hostinfo.argument_support(facts, confined)
    document: dict[str, Any] = {
        "version": __version__,
        "kernel": facts["kernel"],
        "running_as_root": facts["root"],
        "storage": {"driver": facts["storage_driver"], "why": facts["storage_why"], "backing_filesystem": facts["root_filesystem"]},
        "cgroup": cgroups,
        "user_namespaces": userns,
        "confinement": confined,
        "arguments": {name: {"works": works, "why_not": why} for name, (works, why) in support.items()},
    }
    if as_json:
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    lines = [
        f"pytest-isolate {__version__}",
        f" Kernel Version: {facts['kernel']}",
        f" Running As Root: {_root_line(facts['root'], confined)}",
        f" Storage Driver: {facts['storage_driver'] or 'none'}",
        f"  Why: {facts['storage_why']}",
        f"  Backing Filesystem: {facts['root_filesystem']}",
        f" Cgroup Version: {cgroups['version'] or 'none found'}",
        f"  Mount: {cgroups['mount'] or '-'}",
        f"  Controllers: {' '.join(cgroups['controllers']) or '-'}",
        f"  Own Cgroup: {cgroups['cgroup'] or '-'}",
        f" User Namespaces: {'allowed' if userns['allowed'] else 'not allowed'} (max {userns['max']})",
        *_confinement_lines(confined),
        " Marker Arguments:",
    ]
    for name, (works, why) in support.items():
        answer = ("yes" + (f", {why}" if why else "")) if works else f"no: {why}"
        lines.append(f"  {name:9} {answer}")
    lines += _flag_lines(confined)
    print("\n".join(lines))
    return 0


def _root_line(root: bool, confined: dict[str, Any]) -> str:
    if not root:
        return f"no (uid {os.geteuid()})"
    missing = confined["missing_capabilities"]
    return "yes" + (f", without {', '.join('CAP_' + name for name in missing)}" if missing else "")


def _confinement_lines(confined: dict[str, Any]) -> list[str]:
    engine = confined["engine"]
    masked = confined["masked_proc"]
    cgroups = "yes" if confined["cgroup_writable"] else ("no (mounted read-only)" if confined["cgroup_read_only"] else "no")
    lines = [
        f" Container Engine: {engine + ' (' + confined['engine_evidence'] + ')' if confined['engine_evidence'] else 'none detected'}",
        f" Seccomp: {confined['seccomp']}",
        f" Masked /proc: {f'{len(masked)} paths ({_some(masked)})' if masked else 'none'}",
        f" AppArmor Profile: {confined['apparmor'] or 'none'}",
        f" AppArmor Userns: {confined['apparmor_userns']}",
        *(f"  {line}" for line in (confined["apparmor_userns_remedies"] or "").splitlines()),
        f" Cgroups Writable: {cgroups}",
        " Container Routes:",
    ]
    for route, answer in confined["routes"].items():
        chosen = " (used)" if route == confined["route"] else ""
        lines.append(f"  {route + chosen:22} {answer}")
    return lines


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")


def _flag_lines(confined: dict[str, Any]) -> list[str]:
    """The one complete set of flags, what each grants, then --privileged."""
    if not confined["flags"]:
        return []
    width = max(len(flag["flag"]) for flag in confined["flags"])
    lines = [" To Make Every Argument Work, Start This Container With:", f"  {confined['command_line']}"]
    for flag in confined["flags"]:
        lines.append(f"   {flag['flag']:{width}}  {flag['grants']} (for {flag['needed_for']})")
    lines.append(f"  or, granting far more: {confined['privileged']}")
    return lines


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
