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
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from pytest_isolate.environment import EnvPolicy, parse_policy
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


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """The container's network: its mode, and for "forward" the host endpoints."""

    mode: str = "none"  # "none" (own loopback), "host", "private" (veth) or "forward"
    endpoints: tuple[tuple[str, int], ...] = ()

    @property
    def own_namespace(self) -> bool:
        return self.mode != "host"


_LOOPBACK_HOSTS = ("localhost", "::1")
NET_EXPECTED = (
    'False (own loopback only), True or "host" (the host\'s network), "private" (a veth link to the host), '
    'or a list of host TCP endpoints such as ["127.0.0.1:5432", "localhost:6379"]'
)


def parse_net(value: object) -> NetSpec:
    if isinstance(value, bool):
        return NetSpec("host" if value else "none")
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS or word == "host":
            return NetSpec("host")
        if word in _FALSE_WORDS or word == "none":
            return NetSpec("none")
        if word == "private":
            return NetSpec("private")
        if ":" in word:  # from the ini file or command line: comma-separated endpoints
            return NetSpec("forward", tuple(_parse_endpoint(part) for part in word.split(",") if part.strip()))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return NetSpec("forward", tuple(_parse_endpoint(v) for v in value))
    raise _Invalid(NET_EXPECTED)


def _parse_endpoint(text: str) -> tuple[str, int]:
    host, _, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _Invalid(f"{NET_EXPECTED}; the port of {text!r} must be 1 to 65535")
    if not (host in _LOOPBACK_HOSTS or re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", host)):
        raise _Invalid(f"{NET_EXPECTED}; {text!r} is not on loopback (127.0.0.0/8, ::1 or localhost)")
    return host, int(port_text)


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)\s*$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000_000, "gbit": 1000_000_000}


def parse_rate(value: object) -> int:
    """Bits per second from tc-style text: "1mbit", "500kbit"."""
    expected = 'a bandwidth such as "1mbit", "500kbit" or "1gbit"'
    match = _RATE_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise _Invalid(expected)
    bits = int(float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])
    if bits < 8000:
        raise _Invalid(expected + ", of at least 8kbit")
    return bits


def _parse_flag(value: object, expected: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise _Invalid(expected)


def parse_user(value: object) -> bool:
    expected = "True (root inside maps to an unprivileged user outside) or False"
    return _parse_flag(value, expected)


def parse_inherit_fds(value: object) -> bool:
    expected = "True (the test keeps pytest's open files and sockets: for trusted tests only) or False"
    return _parse_flag(value, expected)


def parse_hostname(value: object) -> str:
    expected = "a host name of 1 to 63 letters, digits, '-' and '.'"
    if not isinstance(value, str) or not _HOSTNAME_RE.match(value):
        raise _Invalid(expected)
    return value


_IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def parse_rootfs(value: object) -> str:
    """"host", an image name (a recipe or an imported image), or a directory."""
    expected = (
        '"host" (an overlay snapshot of the host\'s own root), an image name from rootfs-images/ or '
        'isolate_images such as "debian-bookworm", or the path of a directory'
    )
    if not isinstance(value, str):
        raise _Invalid(expected)
    if value == "host" or _IMAGE_NAME.match(value):
        return value
    if "/" in value and os.path.isdir(value):
        return os.path.abspath(value)
    raise _Invalid(expected + ("; no such directory" if "/" in value else ""))


def parse_caps(value: object) -> frozenset[str]:
    """Extra capabilities: names like "SYS_ADMIN" (or "CAP_SYS_ADMIN"), a list or comma-separated."""
    from pytest_isolate.container.capabilities import CAPABILITIES

    expected = 'capability names to add to the default set, such as ["NET_ADMIN"] or "SYS_PTRACE,SYS_ADMIN"'
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value]
    else:
        raise _Invalid(expected)
    normal = frozenset(name.upper().removeprefix("CAP_") for name in names)
    unknown = sorted(normal - CAPABILITIES.keys())
    if unknown:
        raise _Invalid(
            f"{expected}; {', '.join(unknown)} {'is not a capability' if len(unknown) == 1 else 'are not capabilities'}: "
            f"the names are {', '.join(sorted(CAPABILITIES))}"
        )
    return normal


# ---- issue 10: the host's secrets (credential files, environment variables)


def parse_secrets(value: object) -> bool:
    expected = "True (the test sees the host's credential files) or False (hidden: the default)"
    return _parse_flag(value, expected)


def parse_env(value: object) -> EnvPolicy:
    try:
        return parse_policy(value)
    except ValueError as error:
        raise _Invalid(str(error)) from None


# ---- end of issue 10


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
    net: NetSpec = NetSpec()
    hostname: str = "isolated"
    rootfs: str = "host"
    disk: int = 1 << 30
    disk_text: str = "1G"
    caps: frozenset[str] = frozenset()  # added to the default capability set
    budget_mem: int | None = None
    budget_mem_text: str | None = None
    budget_cpu: float | None = None
    user: bool = False  # a user namespace: root inside is nobody (65534) outside
    net_rate: int | None = None  # bits per second, on every interface of the container
    net_rate_text: str | None = None
    inherit_fds: bool = False  # keep pytest's open descriptors (trusted tests only)
    secrets: bool = False  # show the host's credential files (hidden by default)
    env: EnvPolicy = EnvPolicy()  # which of pytest's environment variables the test sees

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
    "net_rate": parse_rate,
    "user": parse_user,
    "inherit_fds": parse_inherit_fds,
    "secrets": parse_secrets,
    "env": parse_env,
}
ARGUMENTS = tuple(PARSERS)
MARKER_SIGNATURE = (
    "isolated(mem=None, cpu=None, pids=None, timeout=None, net=False, "
    'hostname="isolated", rootfs="host", disk="1G", caps=(), budget_mem=None, budget_cpu=None, net_rate=None, user=False, '
    'inherit_fds=False, secrets=False, env="default")'
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
            raise SpecError("marker", name, value, "", where=where, unknown=True, accepted=ARGUMENTS)
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
    if "net_rate" in merged:
        values["net_rate_text"] = _as_written(merged["net_rate"].value)
        if not values.get("net", NetSpec()).own_namespace:
            setting = merged["net_rate"]
            raise SpecError(
                setting.origin, "net_rate", setting.value,
                "no net_rate with net=True: the host's interfaces are never touched; "
                'use net=False, "private" or a list of endpoints',
                where=where,
            )
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
