"""The container's side of its network.

A fresh network namespace has only ``lo``, and it is down.  One ioctl brings
it up (~0.4 ms); opening a pyroute2 netlink socket and its import cost far
more, so only the modes that need links, addresses, routes or qdiscs
(``net="private"``, ``net_rate=``) use pyroute2, and pytest imports it once
before forking so the test process finds it loaded.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH14x"  # struct ifreq: the name, then ifr_flags in the union
CONTAINER_LINK = "eth0"


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


def configure_link(peer_name: str, address: str, gateway: str, prefix: int) -> None:
    """The veth end pytest moved into our namespace: rename, address, up, default route."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=peer_name)
        ipr.link("set", index=index, ifname=CONTAINER_LINK)
        ipr.addr("add", index=index, address=address, prefixlen=prefix)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway)


def limit_rate(bits_per_second: int) -> None:
    """A token bucket on every interface of the namespace, loopback included."""
    from pyroute2 import IPRoute

    # burst: at least one full-size packet on loopback (64 KiB), and ~10 ms of traffic.
    burst = max(65536 + 1024, bits_per_second // 8 // 100)
    with IPRoute() as ipr:
        for link in ipr.get_links():
            ipr.tc("add", "tbf", index=link["index"], rate=f"{bits_per_second}bit", burst=burst, latency=200)


def open_listeners(endpoints: tuple[tuple[str, int], ...]) -> list[socket.socket]:
    """Listening sockets for forwarded host services, on the container's loopback."""
    listeners = []
    for host, port in endpoints:
        family = socket.AF_INET6 if host == "::1" else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1" if host == "localhost" else host, port))
        listener.listen(128)
        listeners.append(listener)
    return listeners


def hosts_file(hostname: str) -> str:
    """localhost resolves without the host's network (and the host's own names do not)."""
    return f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
