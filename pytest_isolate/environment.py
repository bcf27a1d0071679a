"""``env=``: which of pytest's environment variables an isolated test sees.

A policy is a base and changes to it, applied in order (the last match wins)::

    "default"                 every variable but those that look like credentials
    "all"                     every variable
    "none"                    only what Python and pytest need (PATH, HOME, LANG, LC_*, TZ,
                              TERM, TMPDIR, PYTHON*, PYTEST_*, COV_CORE_*, COVERAGE_*)
    ["PATH", "LC_*"]          "none" plus these names or patterns (* and ?, case-sensitive)
    ["-DATABASE_URL", "+GH_TOKEN"]   "default" without one, with another
    ["all", "-AWS_*"]         a base first, then changes (a bare name after a base: +NAME)

Planned in pytest (a decision per variable name, cached for the session) and
applied in the test process before any test code runs: ``os.environ``, the C
``environ`` the test's programs inherit, and the copy of pytest's original
environment that ``/proc/self/environ`` shows (the test process is a fork of
pytest, so the kernel still points it at pytest's strings).
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import os
import re

BASES = ("default", "all", "none")
ENV_EXPECTED = (
    '"default" (drop variables that look like credentials), "all", "none" (only what Python and pytest need), '
    'the names to pass such as ["PATH", "HOME", "LC_*"], or changes to a base such as '
    '["-DATABASE_URL", "+GITHUB_TOKEN"] or ["all", "-AWS_*"]'
)
_PATTERN = re.compile(r"^[A-Za-z_*?][A-Za-z0-9_*?]*$")  # a name, or a pattern with * and ?

# A word of the name (split on "_") that ends in one of these, e.g. GITHUB_TOKEN,
# PGPASSWORD, AWS_SECRET_ACCESS_KEY, SSH_AUTH_SOCK, but not TOKENIZERS_PARALLELISM
# or GIT_AUTHOR_NAME.
_CREDENTIAL_WORDS = re.compile(
    r"(?:^|_)[A-Z0-9]*(?:TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|APIKEY|API_KEY|PRIVATE_KEY|ACCESS_KEY|AUTH)S?(?:_|$)",
    re.IGNORECASE,
)
# Credentials, or the way to them, under names the rule above misses.
WELL_KNOWN_CREDENTIALS = frozenset(
    "AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_SECURITY_TOKEN "
    "GOOGLE_APPLICATION_CREDENTIALS SSH_AUTH_SOCK SSH_AGENT_PID GPG_AGENT_INFO KRB5CCNAME "
    "KUBECONFIG DOCKER_AUTH_CONFIG MYSQL_PWD NETRC VAULT_TOKEN".split()
)
ESSENTIAL = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "TMPDIR", "PYTHON*", "PYTEST_*", "COV_CORE_*", "COVERAGE_*")


def looks_like_credential(name: str) -> bool:
    return name in WELL_KNOWN_CREDENTIALS or _CREDENTIAL_WORDS.search(name) is not None


@dataclasses.dataclass(frozen=True)
class EnvPolicy:
    base: str = "default"
    rules: tuple[tuple[bool, str], ...] = ()  # (pass it, pattern), in order: the last match wins

    def passes(self, name: str) -> bool:
        if self.base == "all":
            keep = True
        elif self.base == "none":
            keep = any(fnmatch.fnmatchcase(name, p) for p in ESSENTIAL) and not looks_like_credential(name)
        else:
            keep = not looks_like_credential(name)
        for passed, pattern in self.rules:
            if fnmatch.fnmatchcase(name, pattern):
                keep = passed
        return keep

    @property
    def passes_everything(self) -> bool:
        return self.base == "all" and all(passed for passed, _ in self.rules)


def parse_policy(value: object) -> EnvPolicy:
    """An EnvPolicy from a marker, ini or command-line value; ValueError says what is accepted."""
    if isinstance(value, str):
        entries = [entry for entry in re.split(r"[,\s]+", value) if entry]
    elif isinstance(value, (list, tuple)) and all(isinstance(entry, str) for entry in value):
        entries = [entry.strip() for entry in value]
    else:
        raise ValueError(ENV_EXPECTED)
    if not entries:
        raise ValueError(ENV_EXPECTED + "; it is empty")
    base = entries.pop(0) if entries[0] in BASES else None
    names = [entry for entry in entries if not entry.startswith(("+", "-"))]
    changes = [entry for entry in entries if entry.startswith(("+", "-"))]
    if base is None and names and changes:
        raise ValueError(
            f"{ENV_EXPECTED}; {names[0]!r} (a name to pass) and {changes[0]!r} (a change to the default) are "
            f'mixed: put a base first, e.g. ["default", "{changes[0]}", "+{names[0]}"]'
        )
    if base is None:
        base = "none" if names else "default"
    # After a base, a bare name is a name to pass: "+NAME".
    rules = [(not entry.startswith("-"), entry[1:] if entry[:1] in ("+", "-") else entry) for entry in entries]
    for _, pattern in rules:
        if not _PATTERN.match(pattern):
            raise ValueError(f"{ENV_EXPECTED}; {pattern!r} is not a variable name or pattern")
    return EnvPolicy(base, tuple(rules))


@dataclasses.dataclass(frozen=True)
class EnvironmentPlan:
    """What the test process removes, and where pytest's original environment strings lie."""

    drop: tuple[str, ...]
    original_block: tuple[int, int] | None  # [start, end) addresses, to be zeroed

    def apply(self) -> None:
        """In the test process, before the test: no trace of the dropped variables."""
        for name in self.drop:
            os.environ.pop(name, None)  # unsetenv(3) too
        if self.original_block is None:
            return
        # setenv(3) gives each kept variable a copy of its own, so nothing in
        # environ points into the original block any more; then it is zeroed.
        for name, value in list(os.environ.items()):
            os.environ[name] = value
        start, end = self.original_block
        ctypes.memset(start, 0, end - start)


class EnvironmentPlanner:
    """Made once per session in pytest: a decision per policy and name, kept."""

    def __init__(self) -> None:
        self._decisions: dict[EnvPolicy, dict[str, bool]] = {}
        self._hides_original: dict[EnvPolicy, bool] = {}
        self.original_block = original_environment_block()
        self.original_names = _original_names()

    def plan(self, policy: EnvPolicy) -> EnvironmentPlan | None:
        if policy.passes_everything:
            return None
        decisions = self._decisions.setdefault(policy, {})
        drop = []
        for name in os.environ:
            keep = decisions.get(name)
            if keep is None:
                keep = decisions[name] = policy.passes(name)
            if not keep:
                drop.append(name)
        # Zeroing the original block costs ~0.4 ms per test (every variable
        # copied anew): only when it holds a variable the test must not see.
        # The block never changes, so neither does the answer for a policy.
        hidden = self._hides_original.get(policy)
        if hidden is None:
            hidden = self._hides_original[policy] = any(not policy.passes(name) for name in self.original_names)
        if not drop and not hidden:
            return None
        return EnvironmentPlan(tuple(drop), self.original_block if hidden else None)


def original_environment_block() -> tuple[int, int] | None:
    """Where this process's environment strings from exec lie, if in writable memory of its own.

    ``/proc/self/stat`` fields 50 and 51 (env_start, env_end, proc(5)); the
    range must sit inside one private writable mapping (the main stack), or
    zeroing it could crash the test process: then it is left alone.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
        start, end = int(fields[47]), int(fields[48])
        with open("/proc/self/maps", encoding="ascii") as handle:
            for line in handle:
                addresses, perms = line.split()[:2]
                low, high = (int(part, 16) for part in addresses.split("-"))
                if low <= start < end <= high and perms.startswith("rw") and perms.endswith("p"):
                    return start, end
    except (OSError, ValueError, IndexError):
        pass
    return None


def _original_names() -> tuple[str, ...]:
    """The names in this process's environment block from exec (what /proc/self/environ shows)."""
    try:
        with open("/proc/self/environ", "rb") as handle:
            entries = handle.read().split(b"\0")
    except OSError:
        return tuple(os.environ)  # unknown: assume the block holds what the environment holds
    return tuple(os.fsdecode(entry.partition(b"=")[0]) for entry in entries if b"=" in entry)
