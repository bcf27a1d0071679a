"""JSON lines from the container to the pytest process, over a pipe.

Each message is one line: ``{"kind": ..., ...}``.  No pickle: the parent
parses each line into a typed message (``messages.py``) and never executes
anything the child sent.

The reader is bounded before it buffers: a line may be at most
``MAX_LINE_BYTES`` long and one test may send at most ``MAX_TEST_BYTES``,
counted as the bytes arrive, so a container that floods the pipe costs
pytest at most that much memory, whatever its own limits are.  The test
process keeps within them by cutting captured output short itself
(``output.py``); only a container that lies reaches them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from pytest_isolate.messages import ProtocolViolation

MAX_LINE_BYTES = 16 << 20
MAX_TEST_BYTES = 64 << 20


class ChannelWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def try_send(self, kind: str, **fields: Any) -> None:
        """Send, unless pytest no longer reads (it ended the container already)."""
        try:
            self.send(kind, **fields)
        except OSError:  # EPIPE: pytest has what it needs and closed its end
            pass

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, **fields}, default=repr).encode() + b"\n"
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view) :]


class ChannelReader:
    """Collects complete lines as they arrive; ``feed`` yields the new decoded lines.

    Raises :class:`ProtocolViolation` for a line over the length cap, a test
    over its byte budget, or a line that is not JSON, after yielding the
    lines before it (they came first, and may say why the test failed).
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_total: int = MAX_TEST_BYTES) -> None:
        self._partial: list[bytes] = []  # pieces of a line still being received
        self._partial_size = 0
        self._total = 0
        self.max_line = max_line
        self.max_total = max_total

    def feed(self, data: bytes) -> Iterator[object]:
        self._total += len(data)
        if self._total > self.max_total:
            raise ProtocolViolation(f"it sent more than {_mib(self.max_total)} (the most one test may send)")
        # A report with megabytes of captured output arrives in many reads:
        # keep the pieces and join once, not once per read.
        if b"\n" not in data:
            self._partial.append(data)
            self._partial_size += len(data)
            self._check_length(self._partial_size)
            return
        head, *lines, tail = data.split(b"\n")
        self._check_length(self._partial_size + len(head))
        lines.insert(0, b"".join(self._partial) + head)
        self._partial = [tail] if tail else []
        self._partial_size = len(tail)
        self._check_length(self._partial_size)
        for line in lines:
            if not line:
                continue
            self._check_length(len(line))
            try:
                decoded = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: nested ten thousand deep
                raise ProtocolViolation(f"a line that is not JSON: {line[:60]!r}") from None
            yield decoded

    def _check_length(self, size: int) -> None:
        if size > self.max_line:
            raise ProtocolViolation(f"a line longer than {_mib(self.max_line)}")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"
