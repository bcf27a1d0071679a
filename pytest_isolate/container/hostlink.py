"""``net="private"``: a veth pair between the host and one container.

Each test gets a /30 from a private range (``isolate_net_range``): the host
end takes the first address, the container end the second.  A subnet is
held with an exclusive lock on a file named after it, so xdist workers and
parallel pytest runs never hand out the same one; the kernel drops the lock
when its holder dies, so a killed run leaks no addresses.  Forwarding is
switched off on the host end: the host is the whole world of the container.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import os
import time

from pytest_isolate.container import sysfiles
from pytest_isolate.errors import ContainerError

LOCK_DIR = "/run/pytest-isolate/net"


@dataclasses.dataclass
class HostLink:
    subnet: ipaddress.IPv4Network
    number: int
    lock_fd: int
    host_index: int | None = None

    @property
    def host_name(self) -> str:
        return link_name(self.subnet, "h")

    @property
    def peer_name(self) -> str:
        return link_name(self.subnet, "c")

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def container_address(self) -> str:
        return str(self.subnet.network_address + 2)

    def create(self, container_pid: int) -> None:
        """The pair, with its peer born inside the container's network namespace."""
        try:
            with _netlink() as ipr:
                ipr.link("add", ifname=self.host_name, kind="veth", peer={"ifname": self.peer_name, "net_ns_pid": container_pid})
                (self.host_index,) = ipr.link_lookup(ifname=self.host_name)
                ipr.addr("add", index=self.host_index, address=self.host_address, prefixlen=30)
                ipr.link("set", index=self.host_index, state="up")
            forwarding = f"/proc/sys/net/ipv4/conf/{self.host_name}/forwarding"
            # Already off where the namespace does not forward (a CI container's,
            # whose /proc/sys the engine mounts read-only): nothing to write.
            if (sysfiles.read(forwarding) or "").strip() != "0":
                sysfiles.write(forwarding, "0")
        except Exception as error:  # pyroute2 raises NetlinkError and OSError
            raise ContainerError(
                "create the container's private network link",
                f"veth {self.host_name} ({self.subnet}): {error}",
                "net=\"private\" needs root and the veth driver (modprobe veth)",
            ) from None

    def release(self) -> None:
        """Free the subnet.

        The link itself is not deleted here: deleting a network device waits
        for RCU grace periods (~20 ms).  Its peer lives in the container's
        network namespace, and the kernel deletes the pair when that
        namespace goes, in the background.  Until it has, ``allocate`` skips
        the subnet, and ``wait_for_links_gone`` waits for the last ones at
        the end of the session.
        """
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


_session_socket: object | None = None


class _netlink:
    """pytest's one netlink socket for veth links, opened at the first use.

    pyroute2's IPRoute starts no thread, so it is safe across fork; the
    container closes its copy with pytest's other descriptors.
    """

    def __enter__(self):  # type: ignore[no-untyped-def]
        global _session_socket
        if _session_socket is None:
            from pyroute2 import IPRoute

            _session_socket = IPRoute()
        return _session_socket

    def __exit__(self, *_: object) -> None:
        return None


def netlink_fd() -> int | None:
    return _session_socket.fileno() if _session_socket is not None else None  # type: ignore[attr-defined]


def link_name(subnet: ipaddress.IPv4Network, end: str) -> str:
    """Named after the subnet, not the range: links of different ranges never clash.

    The /30's number in the IPv4 space fits IFNAMSIZ: "iso" + up to 10 digits + end.
    """
    return f"iso{int(subnet.network_address) >> 2}{end}"


def allocate(network_range: str) -> HostLink:
    """The first free /30 of ``network_range``."""
    try:
        network = ipaddress.IPv4Network(network_range)
    except ValueError:
        raise ContainerError(
            "create the container's private network link",
            f"isolate_net_range = {network_range} is not an IPv4 network",
            "write it like 10.213.0.0/16",
        ) from None
    os.makedirs(LOCK_DIR, exist_ok=True)
    for number, subnet in enumerate(network.subnets(new_prefix=30)):
        if os.path.exists(f"/sys/class/net/{link_name(subnet, 'h')}"):
            continue  # the last test's link, still being deleted by the kernel
        fd = os.open(os.path.join(LOCK_DIR, str(subnet.network_address)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return HostLink(subnet=subnet, number=number, lock_fd=fd)
    raise ContainerError(
        "create the container's private network link",
        f"every /30 of isolate_net_range = {network_range} is in use",
        "give isolate_net_range a larger range",
    )


def wait_for_links_gone(names: set[str], seconds: float = 10.0) -> list[str]:
    """Wait (bounded) until the kernel has deleted these links; return the ones left."""
    deadline = time.monotonic() + seconds
    left = sorted(names)
    while left and time.monotonic() < deadline:
        left = [name for name in left if os.path.exists(f"/sys/class/net/{name}")]
        if left:
            time.sleep(0.02)
    return left

