"""Ask a question in a throw-away forked child: what the kernel lets a process do, tried.

The probes (overlay, user namespaces, the routes, AppArmor's restriction)
each change the child for good (a namespace entered, a mount made), so they
run in a fork that answers on a pipe and exits.  One rule holds for all of
them: whatever happens, the child ends in ``os._exit`` and never returns into
pytest (one that did once ran a second copy of an xdist worker's loop).
"""

from __future__ import annotations

import os
from collections.abc import Callable

MAX_ANSWER = 64 << 10


def answer_from_child(question: Callable[[], bytes]) -> bytes:
    """``question()`` run in a forked child; b"" if it raised or died before answering."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            os.close(read_end)
            answer = b""
            try:
                answer = question()
            except BaseException:  # noqa: BLE001 - no answer is the answer
                pass
            os.write(write_end, answer[:MAX_ANSWER])
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    try:
        while len(data) < MAX_ANSWER and (chunk := os.read(read_end, 4096)):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return data
