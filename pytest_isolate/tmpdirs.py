"""Where pytest keeps ``tmp_path``, and which of its files are pytest's own bookkeeping.

pytest makes a test's ``tmp_path`` below ``{temproot}/pytest-of-{user}/``,
in a numbered base directory ``pytest-N`` with a ``.lock`` file, points
``pytest-current`` at it, and removes all but the newest three base
directories (renaming them to ``garbage-*`` first).  Inside a container all
of that lands in the writable layer: ``--isolate-diff`` leaves it out, and
``--isolate-keep`` copies only what the test itself made back to the host.
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile

from pytest_isolate.container.fsdiff import Change

_NUMBERED = re.compile(r"^pytest-\d+$")
_OWN_NAMES = ("pytest-current",)


def user_temp_dir(prefix: str) -> str:
    """``{prefix}-{user}`` in pytest's temporary root, as its tmp_path factory names its own."""
    temproot = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return os.path.join(os.path.realpath(temproot), f"{prefix}-{user}")


def temp_root() -> str:
    """pytest's ``pytest-of-{user}`` directory."""
    return user_temp_dir("pytest-of")


def given_basetemp(option: object) -> str | None:
    """``--basetemp`` (xdist gives each worker one), absolute."""
    value = getattr(option, "basetemp", None)
    return os.path.abspath(str(value)) if value else None


def is_bookkeeping(change: Change, root: str, basetemp: str | None = None) -> bool:
    """Whether ``change`` is pytest's tmp_path bookkeeping rather than what the test wrote."""
    path = change.path
    if basetemp is not None and path == basetemp:
        return True
    if path == root:
        return True
    if not path.startswith(root + "/"):
        return False
    if change.kind == "D":  # pytest's retention removing older base directories
        return True
    parts = path[len(root) + 1 :].split("/")
    if len(parts) == 1:
        return parts[0] in _OWN_NAMES or parts[0].startswith("garbage-") or bool(_NUMBERED.match(parts[0]))
    return len(parts) == 2 and parts[1] == ".lock" and bool(_NUMBERED.match(parts[0]))


def without_bookkeeping(changes: list[Change], basetemp: str | None = None) -> list[Change]:
    root = temp_root()
    return [change for change in changes if not is_bookkeeping(change, root, basetemp)]
