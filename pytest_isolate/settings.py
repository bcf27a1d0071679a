"""The session's settings, read once from ini and command line by ``plugin.read_settings``.

Its own module so that the runtime can take them without importing the
pytest entry point (``plugin`` imports ``runtime`` lazily: no import circle).
"""

from __future__ import annotations

import dataclasses

from pytest_isolate.spec import Setting


@dataclasses.dataclass(frozen=True)
class Settings:
    isolate_all: bool
    defaults: dict[str, Setting]  # ini < command line, already merged and checked
    budget_strict: bool = False
    diff: bool = False
    diff_fail: tuple[str, ...] = ()
    keep: str = "none"  # --isolate-keep: none, failed or all
