"""What a user reads when a container ends badly, and the usage on every report."""

from __future__ import annotations

import dataclasses
import os
import re
import signal

import pytest

from pytest_isolate.container.cgroups import Usage
from pytest_isolate.container.fsdiff import Change
from pytest_isolate.messages import Coverage, Error, Message, Ready, RecordedWarning, Report
from pytest_isolate.spec import IsolationSpec, format_bytes

SECTION = "pytest-isolate"


# How long the machinery may take to start a container (namespaces, mounts,
# the handshake) before the test's code runs. timeout= covers the test, not
# this: a container starts in ~0.1 s on a host, but 2-5 s in an emulated VM
# or on a loaded CI runner, and timeout=1 must still mean one second of test.
START_LIMIT_SECONDS = 120.0


class IsolateBudgetWarning(pytest.PytestWarning):
    """A passing isolated test used more than its soft budget."""


@dataclasses.dataclass
class ContainerResult:
    """Everything the parent learnt from one container run, each message already parsed."""

    reports: list[Report] = dataclasses.field(default_factory=list)
    warnings: list[RecordedWarning] = dataclasses.field(default_factory=list)
    coverage: list[Coverage] = dataclasses.field(default_factory=list)
    error: Error | None = None  # the first error the container reported
    ready: Ready | None = None
    violation: str | None = None  # why the container's messages were refused, if they were
    leftover_output: tuple[str, str] = ("", "")  # after a crash: what the test wrote and never reported
    changes_note: str = ""  # why --isolate-diff's list is incomplete, if it is
    status: int | None = None  # the test process's wait status, from init
    timed_out: bool = False  # the test's code ran past timeout=
    start_timed_out: bool = False  # the container never got to run the test's code (START_LIMIT_SECONDS)
    usage: Usage | None = None
    wall_seconds: float = 0.0
    changes: list[Change] | None = None  # files the test touched, with --isolate-diff
    reported_cpu_seconds: float | None = None  # the test process's own rusage, at "done"
    limits_by: str | None = None  # "cgroup", "rlimit" (rootless fallback) or None (no limits)
    kept: str | None = None  # --isolate-keep: where the writable layer was copied
    usage_by: str = "cgroup"  # "rusage" where no cgroup measured the test (no limit asked, or none writable)
    reported_peak_rss: int | None = None  # the test process's own rusage, at "done"

    def add(self, message: Message) -> None:
        if isinstance(message, Report):
            self.reports.append(message)
        elif isinstance(message, RecordedWarning):
            self.warnings.append(message)
        elif isinstance(message, Coverage):
            self.coverage.append(message)
        elif isinstance(message, Ready):
            self.ready = message
        elif isinstance(message, Error) and self.error is None:
            self.error = message


def memory_limit(spec: IsolationSpec) -> str:
    return f"mem={spec.mem_text!r}" if isinstance(spec.mem_text, str) and not spec.mem_text.isdigit() else f"mem={spec.mem}"


def crash_message(spec: IsolationSpec, result: ContainerResult) -> str:
    """Why the test stopped without finishing, in one line (the ``-ra`` line)."""
    usage = result.usage or Usage()
    if result.violation is not None:
        return violation_message(result.violation)
    if result.timed_out:
        return f"isolated test exceeded timeout={spec.timeout:g}s; all its processes were killed"
    if result.start_timed_out:
        return (
            f"the isolated test's container did not start within {START_LIMIT_SECONDS:g}s "
            "(before the test's code ran); all its processes were killed"
        )
    if usage.oom_kills and spec.mem is not None:
        peak = format_bytes(usage.peak_memory) if usage.peak_memory is not None else "unknown"
        return f"isolated test was killed for exceeding the memory limit {memory_limit(spec)} (peak {peak})"
    error = result.error
    if error is not None:
        text = f"pytest-isolate could not {error.stage}: {error.reason.rstrip()}"
        return f"{text}\n{error.advice}" if error.advice else text
    status = result.status
    if status is not None and os.WIFSIGNALED(status):
        return f"isolated test died of signal {_signal_name(os.WTERMSIG(status))}"
    if status is not None and os.WIFEXITED(status):
        return f"isolated test process exited with code {os.WEXITSTATUS(status)} before it finished"
    return "isolated test ended without a report (its container was killed)"


def violation_message(reason: str) -> str:
    return f"the isolated test sent an invalid message: {reason}; its container was ended"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def limit_notes(spec: IsolationSpec, result: ContainerResult) -> list[str]:
    """Limits the test ran into, for the report of a test that failed anyway."""
    usage = result.usage or Usage()
    notes = []
    if usage.pids_limit_hits and spec.pids is not None:
        notes.append(
            f"the pids limit pids={spec.pids} was reached: the kernel refused "
            f"{usage.pids_limit_hits} fork/clone call(s) with EAGAIN"
        )
    if usage.oom_kills and spec.mem is not None:
        notes.append(
            f"the memory limit {memory_limit(spec)} was reached: the kernel OOM-killed "
            f"{usage.oom_kills} process(es)"
        )
    return notes


# What a failure looks like when a test wanted a network it did not have.
_NETWORK_FAILURES = (
    "ConnectionRefusedError",
    "Network is unreachable",
    "gaierror",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No address associated with hostname",
    "ConnectTimeout",
    "NewConnectionError",
)
NO_NETWORK_NOTE = (
    "this test ran without network (net=False: only its own loopback); "
    'allow a host service with net=["host:port"], or the host\'s network with net=True'
)


RUSAGE_MEASURE = (
    "rusage (no cgroup: peak RSS and CPU time of the test process and the children it waited for, "
    "not of daemons it left running)"
)

RLIMIT_GUARANTEE = (
    "rlimit (weaker than cgroups: mem as RLIMIT_AS bounds address space, not memory; "
    "pids as RLIMIT_NPROC; cpu is not enforced)"
)


# The loader's "error while loading shared libraries: X: cannot open ...",
# and dlopen's "X: cannot open ..." in an ImportError of an extension module.
_MISSING_LIBRARY = re.compile(r"([\w.+-]+\.so(?:\.[\w.]+)?): cannot open shared object file")
_OLD_LIBC = re.compile(r"version `(GLIBC_[\d.]+)' not found")


def image_library_note(image: str, text: str) -> str | None:
    """A failure that says the image cannot host a program the host can (the test's Python, re-run)."""
    missing = _MISSING_LIBRARY.search(text)
    if missing:
        return (
            f"the image {image!r} lacks the shared library {missing.group(1)} that a program of the host "
            "(such as its Python, run again) needs: add the package that ships it to the image's recipe "
            "(include = [...] or a step)"
        )
    old = _OLD_LIBC.search(text)
    if old:
        return (
            f"the image {image!r} has an older C library than the host's programs need ({old.group(1)}): "
            "build the image from a newer suite, or run the image's own python3"
        )
    return None


def looks_like_network_failure(longrepr_text: str) -> bool:
    return any(signature in longrepr_text for signature in _NETWORK_FAILURES)


def usage_properties(spec: IsolationSpec, result: ContainerResult) -> list[tuple[str, object]]:
    """``report.user_properties`` entries: junitxml shows them, xdist carries them."""
    usage = result.usage or Usage()
    candidates: list[tuple[str, object]] = [
        ("isolate_peak_memory_bytes", usage.peak_memory),
        ("isolate_cpu_seconds", None if usage.cpu_seconds is None else round(usage.cpu_seconds, 6)),
        ("isolate_throttled_seconds", None if usage.throttled_seconds is None else round(usage.throttled_seconds, 6)),
        ("isolate_wall_seconds", round(result.wall_seconds, 6)),
        ("isolate_mem_limit_bytes", spec.mem),
        ("isolate_cpu_limit", spec.cpu),
        ("isolate_budget_mem_bytes", spec.budget_mem),
        ("isolate_budget_cpu_seconds", spec.budget_cpu),
        ("isolate_limits_enforced_by", RLIMIT_GUARANTEE if result.limits_by == "rlimit" else result.limits_by),
        ("isolate_usage_measured_by", None if result.usage is None else RUSAGE_MEASURE if result.usage_by == "rusage" else result.usage_by),
    ]
    return [(name, value) for name, value in candidates if value is not None]


def budget_overruns(spec: IsolationSpec, usage: Usage | None) -> list[str]:
    """What a test used beyond its soft budgets, one sentence each."""
    if usage is None:
        return []
    overruns = []
    if spec.budget_mem is not None and usage.peak_memory is not None and usage.peak_memory > spec.budget_mem:
        written = f"{spec.budget_mem_text!r}" if spec.budget_mem_text and not spec.budget_mem_text.isdigit() else spec.budget_mem
        overruns.append(f"peak memory {format_bytes(usage.peak_memory)} is over budget_mem={written}")
    if spec.budget_cpu is not None and usage.cpu_seconds is not None and usage.cpu_seconds > spec.budget_cpu:
        overruns.append(f"CPU time {usage.cpu_seconds:.2f}s is over budget_cpu={spec.budget_cpu:g}s")
    return overruns
