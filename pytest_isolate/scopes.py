"""Fixtures set up once, where they belong.

Session-, package-, module- and class-scoped fixtures that an isolated test
uses are set up in the pytest process, outside any container, and reach
the test through the fork.  Only function-scoped fixtures (and the test)
run inside the container, and their teardown runs there too.

How: in the parent, the item is pushed onto pytest's SetupState with a
*restricted* setup that requests only its wider-scoped fixtures, then
popped again without running any finalizer.  The wider fixtures' values
and finalizers now live on their own nodes (session, module, ...), still on
the stack.  The child runs the normal protocol: SetupState pushes the item
again, the item's setup finds the wider fixtures cached, and the child's
teardown stops at the item's parent.  The parent then tears down towards
the next item, at the normal time.  A test with nothing to set up or tear
down here (no wider fixture, its collectors set up already, the next test
under the same ones: nearly every test) skips both phases in the parent,
pytest's capture and ``CallInfo`` included (``nothing_to_set_up``,
``nothing_to_tear_down``): about 70 page faults and 0.2 ms of pytest's
time per test.

Pushing the item (rather than requesting fixtures from outside the stack)
keeps pytest >= 9.1 from warning about ``getfixturevalue`` during teardown.
This leans on pytest internals (``_setupstate``, ``_request``,
``_fixtureinfo``), checked by the tests on the oldest and newest pytest.
"""

from __future__ import annotations

import pytest


def _wider_fixture_names(item: pytest.Item) -> list[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    names = []
    for name in getattr(item, "fixturenames", ()):
        definitions = info.name2fixturedefs.get(name)
        if definitions and definitions[-1].scope != "function":
            names.append(name)
    return names


def _needs_new_request(item: pytest.Item) -> bool:
    """A rerun's item: its fixture request was dropped after the last attempt (``release_request``)."""
    return hasattr(item, "_request") and not item._request  # type: ignore[attr-defined]


def setup_wider_fixtures(item: pytest.Item) -> None:
    """Set up the item's collectors and wider-scoped fixtures in this process."""
    state = item.session._setupstate
    if _needs_new_request(item):
        item._initrequest()  # type: ignore[attr-defined]  # a rerun, as runtestprotocol does
    request = getattr(item, "_request", None)

    def restricted_setup() -> None:
        if request:
            for name in _wider_fixture_names(item):
                request.getfixturevalue(name)

    item.setup = restricted_setup  # type: ignore[method-assign]
    try:
        state.setup(item)
    finally:
        del item.setup
        # The child pushes the item again and runs its real setup.
        state.stack.pop(item, None)


def nothing_to_set_up(item: pytest.Item) -> bool:
    """Whether ``setup_wider_fixtures`` would do nothing: the parent's capture and CallInfo are spared.

    So when the item's collectors are all set up already and none of them
    failed (pytest fails their whole subtree with the stored error), the
    item has no wider-scoped fixture, and its fixture request needs no
    rebuilding (a rerun's).  The same test as ``SetupState.setup`` makes.
    """
    state = item.session._setupstate
    if list(state.stack) != item.listchain()[:-1] or any(entry[1] for entry in state.stack.values()):
        return False
    return not _needs_new_request(item) and not _wider_fixture_names(item)


def nothing_to_tear_down(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether ``teardown_towards`` would stop at once: each node still set up is one ``nextitem`` needs.

    The same test as ``SetupState.teardown_exact`` makes before it tears anything down.
    """
    stack = list(item.session._setupstate.stack)
    needed = nextitem.listchain() if nextitem is not None else []
    return stack == needed[: len(stack)]


def teardown_towards(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """What pytest's own teardown phase does in the parent, for wider scopes."""
    item.session._setupstate.teardown_exact(nextitem)


def release_request(item: pytest.Item) -> None:
    """Drop the item's fixture request, as ``runtestprotocol`` does after a test."""
    if hasattr(item, "_request"):
        item._request = False  # type: ignore[attr-defined]
        item.funcargs = None  # type: ignore[attr-defined]
