"""Where a forwarded endpoint connects on the host: a name is resolved once, in pytest, before the container.

``net=["localhost:PORT"]`` names a host service by name.  The forwarder's
thread must never resolve it: a lookup that falls through to DNS can block
for seconds, and one that failed there ended the thread, so the test saw a
bare ``ConnectionResetError``.  Instead the name is resolved when the
test's container is planned, once per session (the answer is cached), and
must give a loopback address; otherwise the test fails naming the endpoint.
Debian's minimal images (mmdebstrap's minbase) write no ``localhost`` line
to ``/etc/hosts``, so there the name does not resolve at all.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from pytest_isolate.errors import ContainerError


def targets(endpoints: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """The numeric loopback address and port each endpoint connects to; raises ContainerError naming a bad one."""
    return tuple(target(host, port) for host, port in endpoints)


def target(host: str, port: int) -> tuple[str, int]:
    if _is_address(host):
        return host, port
    address, reason, fix = _resolve(host)
    if address is None:
        raise ContainerError(f"forward {host}:{port} into the container", reason, f'{fix}, or name the address: net=["127.0.0.1:{port}"]')
    return address, port


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _resolve(host: str) -> tuple[str | None, str, str]:
    """(a loopback address of ``host``, "", "") or (None, why not, the fix); IPv4 first, as the forwarder connected before."""
    try:
        found = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as error:
        return (
            None,
            f"the host name {host!r} does not resolve on this host ({error.strerror})",
            f'add the line "127.0.0.1 {host}" to /etc/hosts (minimal Debian images have none)',
        )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    loopback = [address for address in addresses if ipaddress.ip_address(address).is_loopback]
    if not loopback:
        return (
            None,
            f"the host name {host!r} resolves to {', '.join(addresses)} on this host, "
            "not to a loopback address, and only loopback endpoints are forwarded",
            f"map {host} to 127.0.0.1 in /etc/hosts",
        )
    return sorted(loopback, key=lambda address: ":" in address)[0], "", ""
