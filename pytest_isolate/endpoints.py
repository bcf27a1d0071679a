"""Host endpoints that wider-scoped fixtures expose to the isolated tests using them.

A session fixture that starts a server on an ephemeral port cannot be named
in a static ``net=["127.0.0.1:PORT"]``, and ``pytest_isolate_modify_spec``
runs before fixtures.  But session-, package-, module- and class-scoped
fixtures are set up in the pytest process before the container is made
(``scopes.py``), so the endpoints they register are known in time::

    @pytest.fixture(scope="session")
    def server(request):
        srv = start_server(port=0)
        pytest_isolate.expose(request, "127.0.0.1", srv.port)
        yield srv

Every isolated test that uses ``server`` (directly or through another
fixture) then gets the endpoint forwarded, as if its marker listed it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from pytest_isolate import forwarding

if TYPE_CHECKING:
    from pytest_isolate.spec import IsolationSpec

# fixture name -> the endpoints it exposed (while it is set up).
EXPOSED_KEY = pytest.StashKey[dict[str, list[tuple[str, int]]]]()


def expose(request: pytest.FixtureRequest, host: str, port: int) -> None:
    """Forward ``host:port`` (a loopback TCP endpoint) to the isolated tests that use this fixture.

    Call it from a session-, package-, module- or class-scoped fixture;
    the endpoint is withdrawn when the fixture is torn down.  Inside a
    container (a function-scoped fixture) it does nothing: the fixture's
    server then runs in the test's own network namespace and needs no
    forwarding.
    """
    from pytest_isolate.spec import _Invalid, _parse_endpoint

    if forwarding.inside_container:
        return
    if isinstance(port, bool) or not isinstance(port, int) or not isinstance(host, str):
        raise TypeError(f"pytest_isolate.expose(request, host, port) takes a host string and an int port, got {host!r}, {port!r}")
    try:
        endpoint = _parse_endpoint(f"{host}:{port}")
    except _Invalid:
        raise ValueError(
            f"pytest_isolate.expose() cannot forward {host}:{port}: only a loopback TCP endpoint "
            "(127.0.0.0/8, ::1 or localhost) with a port from 1 to 65535 can be forwarded"
        ) from None
    name = request.fixturename
    if name is None:
        raise ValueError("pytest_isolate.expose() must be called from a fixture, with that fixture's request")
    exposed = request.config.stash.setdefault(EXPOSED_KEY, {})
    exposed.setdefault(name, []).append(endpoint)

    def withdraw() -> None:
        endpoints = exposed.get(name, [])
        if endpoint in endpoints:
            endpoints.remove(endpoint)

    request.addfinalizer(withdraw)


def with_exposed(item: pytest.Item, spec: IsolationSpec) -> IsolationSpec:
    """``spec`` with the endpoints the item's fixtures exposed added to its network."""
    exposed = item.config.stash.get(EXPOSED_KEY, {})
    names = getattr(item, "fixturenames", ())
    wanted = [endpoint for name in names for endpoint in exposed.get(name, ())]
    if not wanted or spec.net.mode == "host":  # the host's network reaches them already
        return spec
    endpoints = tuple(dict.fromkeys(spec.net.endpoints + tuple(wanted)))
    mode = "forward" if spec.net.mode == "none" else spec.net.mode
    return dataclasses.replace(spec, net=dataclasses.replace(spec.net, mode=mode, endpoints=endpoints))
