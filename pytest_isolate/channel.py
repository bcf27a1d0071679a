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

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, **fields}, default=repr).encode() + b"\n"
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view) :]


class ChannelReader:
    """Collects complete lines as they arrive; ``feed`` returns the new messages."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]
