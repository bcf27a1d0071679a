"""Run one build command in a throw-away mount and PID namespace, its output logged.

Every mount a build makes (mmdebstrap's ``/proc`` and ``/dev`` in the new
root, a step's overlay and binds) happens in a private mount namespace, and
every process it starts lives in a new PID namespace.  The chain

    this process --(PDEATHSIG KILL via setpriv)--> unshare --(--kill-child)--> PID 1 of the build

means that if the builder dies, even by SIGKILL, the build's PID 1 is
killed, the kernel kills the rest of its PID namespace, and its mounts vanish
with the mount namespace: nothing to unmount, no process writing into a
directory that the next builder deletes.  (PDEATHSIG fires when the *thread*
that started the command exits: call builds from a thread that outlives them.)
"""

from __future__ import annotations

import collections
import os
import subprocess

from pytest_isolate.images.tools import require_programs

TAIL_LINES = 20
SANDBOX = [
    "setpriv", "--pdeathsig", "KILL", "--",
    "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
]  # fmt: skip

# Proxy settings pass through (CI machines may need them); nothing else of
# the caller's environment reaches a build step.
PASSED_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def build_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    env.update({name: os.environ[name] for name in PASSED_ENV if name in os.environ})
    env.update(extra)
    return env


def run_sandboxed(command: list[str], log_path: str, env: dict[str, str], shown: str) -> tuple[int, list[str]]:
    """Run ``command`` in the sandbox; returns its exit status (-N for signal N) and its last output lines.

    ``shown`` is the command as the person wrote it (the recipe's step), for the log's first line.
    """
    require_programs("setpriv", "unshare")
    with open(log_path, "wb") as log:
        log.write(f"$ {shown}\n".encode())
        log.flush()
        header = log.tell()
        result = subprocess.run(
            SANDBOX + command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        )
    return result.returncode, tail(log_path, start=header)


def tail(path: str, lines: int = TAIL_LINES, start: int = 0) -> list[str]:
    """The last non-empty lines of a log file after byte ``start``."""
    with open(path, "rb") as handle:
        handle.seek(max(start, os.fstat(handle.fileno()).st_size - 64 * 1024))
        text = handle.read().decode("utf-8", "replace")
    last: collections.deque[str] = collections.deque(maxlen=lines)
    for line in text.splitlines():
        # Progress bars redraw with carriage returns: keep what was shown last.
        last.append(line.rsplit("\r", 1)[-1].rstrip())
    return [line for line in last if line]
