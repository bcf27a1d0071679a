"""Values of the run's own options, checked when pytest starts.

The marker arguments and their ini/command-line defaults are checked by
``spec.py``.  This module checks the other options, so that a bad value is a
usage error naming the option, the value and what is accepted *before any
test runs*, never a traceback after the tests (or a failure of each test).

Each ``read_*`` function returns the parsed value, so that the code that
uses an option reads it through its check.
"""

from __future__ import annotations

import ipaddress
import os
import re

import pytest

from pytest_isolate.errors import SpecError

STORAGE_CHOICES = ("auto", "overlay", "fuse", "copy")
KEEP_CHOICES = ("none", "failed", "all")
REPORT_TOP_EXPECTED = "a whole number of tests from 1 up, such as 10"
THRESHOLD_EXPECTED = "a fraction of growth greater than 0, such as 0.2 (20%)"
MIN_CPU_EXPECTED = "CPU seconds from 0 up, such as 0.5"
NET_RANGE_EXPECTED = "an IPv4 network with room for at least one /30, such as 10.213.0.0/16"


def check_all(config: pytest.Config) -> None:
    """Every check of this module; raises SpecError for the first bad value."""
    read_storage(config)
    read_net_range(config)
    read_report_top(config)
    read_compare_threshold(config)
    read_compare_min_mem(config)
    read_compare_min_cpu(config)
    read_keep(config)
    prepare_json_path(config)


# The ini switches (type="bool"): pytest's own error for a bad value names
# neither the option nor what it takes.
SWITCHES = ("isolate", "isolate_budget_strict", "isolate_report", "isolate_prepare", "isolate_diff")
SWITCH_EXPECTED = "true or false (yes/no, on/off and 1/0 work too)"


def check_switches(config: pytest.Config) -> None:
    for name in SWITCHES:
        try:
            config.getini(name)
        except (ValueError, pytest.UsageError) as error:  # pytest 9 raises the latter
            quoted = re.search(r"'(.*)'", str(error))
            value = quoted.group(1) if quoted else str(error)
            raise pytest.UsageError(f"ini option {name} = {value} is invalid: expected {SWITCH_EXPECTED}") from None


def _ini(config: pytest.Config, name: str) -> str:
    return str(config.getini(f"isolate_{name}")).strip()


def read_storage(config: pytest.Config) -> str:
    value = _ini(config, "storage") or "auto"
    if value not in STORAGE_CHOICES:
        raise SpecError("ini", "storage", value, f"one of {', '.join(STORAGE_CHOICES)}")
    return value


def read_net_range(config: pytest.Config) -> str:
    value = _ini(config, "net_range")
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        raise SpecError("ini", "net_range", value, NET_RANGE_EXPECTED) from None
    if network.prefixlen > 30:
        raise SpecError("ini", "net_range", value, NET_RANGE_EXPECTED)
    return value


def read_report_top(config: pytest.Config) -> int:
    value = _ini(config, "report_top")
    if not value.isdigit() or int(value) < 1:
        raise SpecError("ini", "report_top", value, REPORT_TOP_EXPECTED)
    return int(value)


def _number(config: pytest.Config, name: str, expected: str, *, zero_ok: bool) -> float:
    value = _ini(config, name)
    try:
        number = float(value)
    except ValueError:
        raise SpecError("ini", name, value, expected) from None
    if not (number >= 0 if zero_ok else number > 0) or number == float("inf"):
        raise SpecError("ini", name, value, expected)
    return number


def read_compare_threshold(config: pytest.Config) -> float:
    return _number(config, "compare_threshold", THRESHOLD_EXPECTED, zero_ok=False)


def read_compare_min_cpu(config: pytest.Config) -> float:
    return _number(config, "compare_min_cpu", MIN_CPU_EXPECTED, zero_ok=True)


def read_compare_min_mem(config: pytest.Config) -> int:
    from pytest_isolate.spec import _Invalid, parse_size

    value = _ini(config, "compare_min_mem")
    try:
        return parse_size(value)
    except _Invalid as invalid:
        raise SpecError("ini", "compare_min_mem", value, invalid.expected) from None


def read_keep(config: pytest.Config) -> str:
    cli = config.getoption("isolate_keep")
    value = (cli if cli is not None else _ini(config, "keep") or "none").strip()
    if value not in KEEP_CHOICES:
        raise SpecError("cli" if cli is not None else "ini", "keep", value, f"one of {', '.join(KEEP_CHOICES)}")
    return value


def prepare_json_path(config: pytest.Config) -> str | None:
    """--isolate-json: the absolute path, its directory made now (as --junitxml does)."""
    path = config.getoption("isolate_json")
    if not path:
        return None
    absolute = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(absolute):
        raise SpecError("cli", "json", path, "the path of a file to write; this is a directory")
    directory = os.path.dirname(absolute)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
        raise SpecError("cli", "json", path, f"a file in a directory that can be made; {directory}: {reason}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SpecError("cli", "json", path, f"a file in a directory you may write; {directory} is not writable")
    return absolute


# ------------------------------------------------------------- image names

_KNOWN_IMAGES = pytest.StashKey[dict[str, "str | None"]]()


def image_problem(config: pytest.Config, name: str) -> str | None:
    """Why ``name`` (a ``rootfs`` value) names no image; None if it does (or is "host" or a path).

    Reads recipes and the cache's tags only: nothing is built here.  Asked
    once per name and session.
    """
    if name == "host" or "/" in name:
        return None
    known: dict[str, str | None] = config.stash.setdefault(_KNOWN_IMAGES, {})
    if name not in known:
        known[name] = _find_image(config, name)
    return known[name]


def _find_image(config: pytest.Config, name: str) -> str | None:
    from pytest_isolate.images.api import image_exists
    from pytest_isolate.images.errors import ImageError

    extra = [str(path) for path in config.getini("isolate_images")]
    cache = str(config.getini("isolate_cache")).strip() or None
    try:
        image_exists(name, extra, cache)
    except ImageError as error:
        return str(error)
    return None
