"""The output of isolated tests: kept inside the container's limits, and bounded for the host.

pytest captures a test's file descriptors 1 and 2 into temporary files of
its own, on the host's ``/tmp``.  A forked test inherits those files, so
without care everything it prints would grow the host's disk and, read back
for the report, pytest's memory, whatever ``mem=`` and ``disk=`` say.  So:

* pytest makes two memory files (``memfd_create``) per test, and the test
  process puts them in place of pytest's capture files (and of the saved
  copies of the real stdout and stderr, which a test could otherwise write
  to directly).  Their pages are charged to whoever writes them: the test's
  memory cgroup, so ``mem=`` bounds them;
* the test process cuts each captured section it reports to its head and
  tail, saying how much it left out (``cut``);
* after a crash, pytest reads only the head and tail of what the files still
  hold (``CaptureFiles.leftover``).

With ``-s`` (no capturing) the descriptors stay the terminal: output is live.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

# What one captured section keeps of a long output: its head and its tail.
KEEP_HEAD = 256 << 10
KEEP_TAIL = 256 << 10


def cut(text: str, head: int = KEEP_HEAD, tail: int = KEEP_TAIL) -> str:
    """``text``, or its head and tail with a line saying how much is left out."""
    if len(text) <= head + tail:
        return text
    left_out = len(text) - head - tail
    return f"{text[:head]}\n[... pytest-isolate cut {left_out} characters of output here ...]\n{text[-tail:]}"


@dataclasses.dataclass(frozen=True)
class CapturePlan:
    """pytest's capture descriptors, found once per session.

    ``out`` and ``err`` are the descriptors the test process must point at
    its memory files (pytest's capture file and the saved real stream of
    fd 1 and fd 2); ``null`` the ones that must lead nowhere (the saved real
    stdin, and the ``--log-file`` stream, which a test could fill or forge).
    """

    out: tuple[int, ...] = ()
    err: tuple[int, ...] = ()
    null: tuple[int, ...] = ()
    capturing: bool = False

    @classmethod
    def for_session(cls, config: pytest.Config) -> CapturePlan:
        out: list[int] = []
        err: list[int] = []
        null: list[int] = []
        capman = config.pluginmanager.getplugin("capturemanager")
        # pytest has no public view of its capture descriptors; its
        # FDCapture objects have kept these names since pytest 5.
        capturing: Any = getattr(capman, "_global_capturing", None)
        streams = (getattr(capturing, "out", None), getattr(capturing, "err", None))
        fd_mode = all(hasattr(capture, "targetfd_save") and hasattr(capture, "tmpfile") for capture in streams)
        if fd_mode:
            out += [1, capturing.out.tmpfile.fileno(), capturing.out.targetfd_save]
            err += [2, capturing.err.tmpfile.fileno(), capturing.err.targetfd_save]
            if capturing.in_ is not None and hasattr(capturing.in_, "targetfd_save"):
                null.append(capturing.in_.targetfd_save)
            err += _faulthandler_fds(config)
        null += _log_file_fds(config)
        return cls(tuple(out), tuple(err), tuple(null), fd_mode)

    def keep(self) -> tuple[int, ...]:
        return (0, 1, 2, *self.out, *self.err, *self.null)


class CaptureFiles:
    """One test's two memory files, made by pytest, written by the container."""

    def __init__(self, plan: CapturePlan, null_fd: int) -> None:
        self.plan = plan
        self.null_fd = null_fd
        self.out = os.memfd_create("pytest-isolate-stdout", os.MFD_CLOEXEC) if plan.capturing else -1
        self.err = os.memfd_create("pytest-isolate-stderr", os.MFD_CLOEXEC) if plan.capturing else -1

    def redirect(self) -> None:
        """In the test process, before the test's code runs."""
        for source, targets in ((self.out, self.plan.out), (self.err, self.plan.err), (self.null_fd, self.plan.null)):
            if source >= 0:
                for target in targets:
                    os.dup2(source, target, inheritable=target <= 2)

    def kept_fds(self) -> tuple[int, ...]:
        """The descriptors the test process keeps open after ``redirect``."""
        return tuple(self.plan.keep())

    def leftover(self) -> tuple[str, str]:
        """In pytest, after a crash: what the test wrote and never reported, head and tail."""
        return _read_bounded(self.out), _read_bounded(self.err)

    def close(self) -> None:
        for fd in (self.out, self.err):
            if fd >= 0:
                os.close(fd)
        self.out = self.err = -1


def _read_bounded(fd: int) -> str:
    if fd < 0:
        return ""
    size = os.fstat(fd).st_size
    if size <= KEEP_HEAD + KEEP_TAIL:
        return os.pread(fd, size, 0).decode("utf-8", "replace")
    head = os.pread(fd, KEEP_HEAD, 0).decode("utf-8", "replace")
    tail = os.pread(fd, KEEP_TAIL, size - KEEP_TAIL).decode("utf-8", "replace")
    return f"{head}\n[... pytest-isolate cut {size - KEEP_HEAD - KEEP_TAIL} bytes of output here ...]\n{tail}"


def _faulthandler_fds(config: pytest.Config) -> list[int]:
    """The stderr copy pytest's faulthandler writes crash tracebacks to: captured too."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
    except ImportError:
        return []
    fd = config.stash.get(fault_handler_stderr_fd_key, None)
    return [fd] if isinstance(fd, int) else []


def _log_file_fds(config: pytest.Config) -> list[int]:
    """--log-file's stream: isolated tests' records are in their reports, not in the host's file."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    stream = getattr(handler, "stream", None)
    if stream is None or getattr(handler, "baseFilename", os.devnull) == os.devnull:
        return []
    try:
        return [stream.fileno()]
    except (OSError, ValueError):
        return []
