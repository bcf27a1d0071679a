"""JSON lines from the container to the pytest process, over a pipe.

Each message is one line: ``{"kind": ..., ...}``.  No pickle: the parent
rebuilds reports through pytest's own ``pytest_report_from_serializable``
and never executes anything the child sent.
"""

from __future__ import annotations

import json
import os
from typing import Any


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
    """Collects complete lines as they arrive; ``feed`` returns the new messages."""

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of a line still being received

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        # A report with megabytes of captured output arrives in many reads:
        # keep the pieces and join once, not once per read.
        if b"\n" not in data:
            self._partial.append(data)
            return []
        head, *lines, tail = data.split(b"\n")
        lines.insert(0, b"".join(self._partial) + head)
        self._partial = [tail] if tail else []
        return [json.loads(line) for line in lines if line]
