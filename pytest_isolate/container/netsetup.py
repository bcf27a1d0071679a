"""The network of one container, from pytest's side and from the container's.

``net=False`` needs nothing from pytest: the container unshares its network
namespace and brings up loopback itself.  ``net="private"`` and forwarded
endpoints need a conversation over a Unix socket pair:

* private: the container says "n" once its namespace exists; pytest creates
  the veth pair with the peer inside it and answers "g"; the container
  configures its end.
* forward: the container opens its listeners and sends their descriptors;
  pytest runs the forwarder until the test ends.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from pytest_isolate.container import forward_targets, hostlink, network
from pytest_isolate.container.forwarder import Forwarder
from pytest_isolate.errors import ContainerError

if TYPE_CHECKING:
    from pytest_isolate.spec import IsolationSpec

HANDSHAKE_SECONDS = 30.0
HOST_ADDR_VARIABLE = "ISOLATE_HOST_ADDR"
# Host ends of the links this session made: the kernel deletes them in the
# background, and the session waits for them at its end.
created: set[str] = set()


class ContainerNetwork:
    def __init__(self, spec: IsolationSpec, net_range: str) -> None:
        self.spec = spec
        if spec.net.mode == "private" or spec.net_rate is not None:
            import pyroute2  # noqa: F401  (once, here: the container then finds it loaded)
        self.link = hostlink.allocate(net_range) if spec.net.mode == "private" else None
        self.forwarder: Forwarder | None = None
        self.ours: socket.socket | None = None
        self.theirs: socket.socket | None = None
        if spec.net.mode == "private" or spec.net.endpoints:
            self.ours, self.theirs = socket.socketpair()
            # A test's timeout= covers its network's setup too.
            self.ours.settimeout(min(HANDSHAKE_SECONDS, spec.timeout or HANDSHAKE_SECONDS))

    # ----------------------------------------------------------- in pytest

    def after_fork(self, container_pid: int) -> None:
        """Talk to the new container until its network is ready (or it died)."""
        if self.theirs is not None:
            self.theirs.close()
            self.theirs = None
        if self.ours is None:
            return
        if self.link is not None:
            if self._receive(1) != b"n":
                return  # it failed before unsharing; its report says why
            self.link.create(container_pid)
            self.ours.sendall(b"g")
        if self.spec.net.endpoints:  # forwarded, also over a private link (a fixture's exposed server)
            count = len(self.spec.net.endpoints)
            try:
                _, fds, _, _ = socket.recv_fds(self.ours, 1, count)
            except (OSError, socket.timeout):
                return
            if len(fds) == count:
                listeners = [socket.socket(fileno=fd) for fd in fds]
                # Numeric addresses: check_host resolved the names already, so this never blocks on a lookup.
                self.forwarder = Forwarder(listeners, forward_targets.targets(self.spec.net.endpoints))
                self.forwarder.start()
            else:
                for fd in fds:
                    os.close(fd)

    def _receive(self, size: int) -> bytes:
        assert self.ours is not None
        try:
            return self.ours.recv(size)
        except (OSError, socket.timeout):
            return b""

    def close(self) -> None:
        """After the test: stop forwarding, delete the link, free the subnet."""
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None
        for sock in (self.ours, self.theirs):
            if sock is not None:
                sock.close()
        self.ours = self.theirs = None
        if self.link is not None:
            created.add(self.link.host_name)
            self.link.release()
            self.link = None

    # -------------------------------------------------- in the container

    def container_fds(self) -> tuple[int, ...]:
        """The descriptors the container keeps for this conversation."""
        return () if self.theirs is None else (self.theirs.fileno(),)

    def after_unshare(self) -> None:
        """Right after the container's network namespace exists."""
        if self.ours is not None:
            # pytest's end: its descriptor is closed already (the container
            # keeps only its own), so let go of the number without closing it.
            self.ours.detach()
            self.ours = None
        if self.link is not None:
            assert self.theirs is not None
            self.theirs.sendall(b"n")
            if self.theirs.recv(1) != b"g":
                raise ContainerError("create the container's private network link", "pytest did not create it")

    def configure_inside(self) -> None:
        """After the root is built: loopback, the link, listeners, the rate limit."""
        spec = self.spec
        network.bring_up_loopback()
        if self.link is not None:
            network.configure_link(self.link.peer_name, self.link.container_address, self.link.host_address, 30)
            os.environ[HOST_ADDR_VARIABLE] = self.link.host_address
        if spec.net.endpoints:
            assert self.theirs is not None
            listeners = network.open_listeners(spec.net.endpoints)
            socket.send_fds(self.theirs, [b"L"], [listener.fileno() for listener in listeners])
            for listener in listeners:
                listener.close()
        if spec.net_rate is not None:
            network.limit_rate(spec.net_rate)
        if self.theirs is not None:
            self.theirs.close()
            self.theirs = None
