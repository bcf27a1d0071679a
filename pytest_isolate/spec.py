"""What a test's container looks like: the resolved, validated settings.

One precedence, implemented once in :func:`resolve_spec`, low to high:
built-in default < ini option < command-line option < ``isolated`` marker
(the closest marker wins per argument).

Every value is checked when it is read, and a bad one raises
:class:`SpecError`, which names where the value came from, the argument, the
value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from pytest_isolate.errors import SpecError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


class _Invalid(ValueError):
    """A value was refused; ``expected`` says what would have been accepted."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def parse_size(value: object) -> int:
    """Bytes from an int or a string with a binary suffix (M = MiB)."""
    expected = 'a size: bytes as an int, or a string such as "512K", "64M", "1.5G" or "256MiB"'
    if isinstance(value, bool):
        raise _Invalid(expected)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        number = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    else:
        raise _Invalid(expected)
    if number <= 0:
        raise _Invalid(expected + ", greater than 0")
    return number


def parse_cpu(value: object) -> float:
    """Cores as a float; CFS cannot enforce less than 1 ms per 100 ms period."""
    expected = "a number of cores from 0.01 up, such as 0.5 or 2"
    number = _parse_number(value, expected)
    if number < 0.01:
        raise _Invalid(expected)
    return number


def parse_pids(value: object) -> int:
    expected = "a whole number of processes from 1 up, such as 64"
    if isinstance(value, bool):
        raise _Invalid(expected)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise _Invalid(expected)
    return value


def parse_timeout(value: object) -> float:
    expected = "seconds of wall time greater than 0, such as 30 or 2.5"
    number = _parse_number(value, expected)
    if number <= 0:
        raise _Invalid(expected)
    return number


def parse_cpu_seconds(value: object) -> float:
    expected = "CPU seconds greater than 0, such as 1.5"
    number = _parse_number(value, expected)
    if number <= 0:
        raise _Invalid(expected)
    return number


def parse_net(value: object) -> bool:
    expected = "True (the host's network) or False (only the container's own loopback)"
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS or word == "host":
            return True
        if word in _FALSE_WORDS or word == "none":
            return False
    raise _Invalid(expected)


def parse_hostname(value: object) -> str:
    expected = "a host name of 1 to 63 letters, digits, '-' and '.'"
    if not isinstance(value, str) or not _HOSTNAME_RE.match(value):
        raise _Invalid(expected)
    return value


def parse_rootfs(value: object) -> str:
    expected = '"host" (an overlay snapshot of the host\'s own root)'
    if value != "host":
        raise _Invalid(expected)
    return value


def parse_caps(value: object) -> frozenset[str]:
    """Extra capabilities: names like "SYS_ADMIN" (or "CAP_SYS_ADMIN"), a list or comma-separated."""
    from pytest_isolate.container.hardening import CAPABILITIES

    expected = 'capability names to add to the default set, such as ["NET_ADMIN"] or "SYS_PTRACE,SYS_ADMIN"'
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value]
    else:
        raise _Invalid(expected)
    normal = frozenset(name.upper().removeprefix("CAP_") for name in names)
    if not normal <= CAPABILITIES.keys():
        raise _Invalid(expected)
    return normal


def _parse_number(value: object, expected: str) -> float:
    if isinstance(value, bool):
        raise _Invalid(expected)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _Invalid(expected) from None
    if not math.isfinite(number):
        raise _Invalid(expected)
    return number


@dataclasses.dataclass(frozen=True)
class IsolationSpec:
    """The container one test gets.  ``*_text`` keep the value as the user wrote it."""

    mem: int | None = None
    mem_text: str | None = None
    cpu: float | None = None
    pids: int | None = None
    timeout: float | None = None
    net: bool = False
    hostname: str = "isolated"
    rootfs: str = "host"
    disk: int = 1 << 30
    disk_text: str = "1G"
    caps: frozenset[str] = frozenset()  # added to the default capability set
    budget_mem: int | None = None
    budget_mem_text: str | None = None
    budget_cpu: float | None = None

    @property
    def has_limits(self) -> bool:
        return self.mem is not None or self.cpu is not None or self.pids is not None


# Argument name -> parser.  The order is the order of the marker's signature.
PARSERS: dict[str, Callable[[Any], Any]] = {
    "mem": parse_size,
    "cpu": parse_cpu,
    "pids": parse_pids,
    "timeout": parse_timeout,
    "net": parse_net,
    "hostname": parse_hostname,
    "rootfs": parse_rootfs,
    "disk": parse_size,
    "caps": parse_caps,
    "budget_mem": parse_size,
    "budget_cpu": parse_cpu_seconds,
}
ARGUMENTS = tuple(PARSERS)
MARKER_SIGNATURE = (
    "isolated(mem=None, cpu=None, pids=None, timeout=None, net=False, "
    'hostname="isolated", rootfs="host", disk="1G", caps=(), budget_mem=None, budget_cpu=None)'
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """A raw value and where it came from: ``"ini"``, ``"cli"`` or ``"marker"``."""

    value: object
    origin: str


def check_setting(argument: str, setting: Setting) -> None:
    """Validate one default (ini or command line) and raise SpecError if it is bad."""
    try:
        PARSERS[argument](setting.value)
    except _Invalid as invalid:
        raise SpecError(setting.origin, argument, setting.value, invalid.expected) from None


def resolve_spec(
    defaults: Mapping[str, Setting],
    marker_kwargs: Mapping[str, object],
    where: str,
) -> IsolationSpec:
    """Merge defaults and marker arguments into one checked IsolationSpec.

    ``where`` names the test for error messages.  Marker arguments win over
    ``defaults``, which already hold the ini < command-line order.
    """
    for name, value in marker_kwargs.items():
        if name not in PARSERS:
            raise SpecError("marker", name, value, "", where=where, unknown=True)
    merged: dict[str, Setting] = dict(defaults)
    for name, value in marker_kwargs.items():
        merged[name] = Setting(value, "marker")

    values: dict[str, Any] = {}
    for name, setting in merged.items():
        try:
            values[name] = PARSERS[name](setting.value)
        except _Invalid as invalid:
            raise SpecError(setting.origin, name, setting.value, invalid.expected, where=where) from None
    if "mem" in merged:
        values["mem_text"] = _as_written(merged["mem"].value)
    if "disk" in merged:
        values["disk_text"] = _as_written(merged["disk"].value)
    if "budget_mem" in merged:
        values["budget_mem_text"] = _as_written(merged["budget_mem"].value)
    return IsolationSpec(**values)


def _as_written(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def format_bytes(size: int) -> str:
    """Human units for reports: 67108864 -> '64.0 MiB'."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
