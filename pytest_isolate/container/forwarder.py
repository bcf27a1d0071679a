"""``net=["127.0.0.1:5432"]``: host services reachable from inside, and nothing else.

The container's process opens a listening socket for each endpoint on its
own loopback and hands it to pytest over a Unix socket.  pytest accepts on
it here, in a thread that lives exactly as long as the test, connects to
the same address on the host, and copies bytes both ways.  The thread is
stopped and joined before the next container is forked.

The thread runs in the pytest process, so nothing the test or the host
service does may block it: every socket is non-blocking, the connect has a
deadline, each direction of a connection buffers at most ``BUFFER_BYTES``
(past that the thread stops reading from the sender, so TCP pushes back on
it, as a direct connection would), a test gets at most ``MAX_CONNECTIONS``
at once, and ``stop`` returns within ``STOP_SECONDS`` whatever the peers
do.  A host service that accepts but never reads stalls only the test that
writes to it; its ``timeout=`` ends it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import selectors
import socket
import threading
import time

_CHUNK = 1 << 16
BUFFER_BYTES = 1 << 18  # per direction and connection
MAX_CONNECTIONS = 256  # open at once, per test; more are closed at once
CONNECT_SECONDS = 5.0
STOP_SECONDS = 2.0


@dataclasses.dataclass(eq=False)
class _Link:
    """One forwarded connection: the container's side and the host service's."""

    inside: socket.socket
    outside: socket.socket
    deadline: float  # for the connect to the host service
    connected: bool = False
    to_outside: bytearray = dataclasses.field(default_factory=bytearray)
    to_inside: bytearray = dataclasses.field(default_factory=bytearray)
    inside_ended: bool = False  # end-of-file read from the container's side
    outside_ended: bool = False
    outside_shut: bool = False  # end-of-file passed on (half-close)
    inside_shut: bool = False

    @property
    def finished(self) -> bool:
        return self.inside_shut and self.outside_shut


class Forwarder:
    def __init__(self, listeners: list[socket.socket], endpoints: tuple[tuple[str, int], ...]) -> None:
        self._targets = {listener.fileno(): endpoint for listener, endpoint in zip(listeners, endpoints)}
        self._listeners = listeners
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="pytest-isolate-forwarder", daemon=True)
        self._selector = selectors.DefaultSelector()
        self._links: set[_Link] = set()
        self._registered: set[socket.socket] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End every forwarded connection; never blocks longer than STOP_SECONDS."""
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass
        self._thread.join(STOP_SECONDS)
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        for link in list(self._links):
            self._close(link)
        for listener in self._listeners:
            listener.close()
        self._selector.close()

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        self._selector.register(self._wake_read, selectors.EVENT_READ, "stop")
        for listener in self._listeners:
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, "accept")
        while True:
            for key, events in self._selector.select(self._next_timeout()):
                if key.data == "stop":
                    return
                if key.data == "accept":
                    self._accept(key.fileobj)  # type: ignore[arg-type]
                elif isinstance(key.data, _Link) and key.data in self._links:
                    self._step(key.data, key.fileobj, events)  # type: ignore[arg-type]
            self._expire_connects()

    def _next_timeout(self) -> float | None:
        pending = [link.deadline for link in self._links if not link.connected]
        return max(0.0, min(pending) - time.monotonic()) if pending else None

    def _expire_connects(self) -> None:
        now = time.monotonic()
        for link in [link for link in self._links if not link.connected and link.deadline <= now]:
            self._close(link)  # the container sees a closed connection, as after a refusal

    def _accept(self, listener: socket.socket) -> None:
        try:
            inside, _ = listener.accept()
        except OSError:
            return
        if len(self._links) >= MAX_CONNECTIONS:
            inside.close()
            return
        host, port = self._targets[listener.fileno()]
        inside.setblocking(False)
        try:
            outside = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            inside.close()
            return
        outside.setblocking(False)
        link = _Link(inside, outside, deadline=time.monotonic() + CONNECT_SECONDS)
        self._links.add(link)
        code = outside.connect_ex((host, port))
        if code == 0:
            link.connected = True
        elif code not in (errno.EINPROGRESS, errno.EAGAIN):
            self._close(link)
            return
        self._update(link)

    def _step(self, link: _Link, sock: socket.socket, events: int) -> None:
        try:
            if sock is link.outside and not link.connected:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code != 0:
                    raise OSError(code, os.strerror(code))
                link.connected = True
            else:
                if events & selectors.EVENT_WRITE:
                    self._flush(link, sock)
                if events & selectors.EVENT_READ:
                    self._receive(link, sock)
            self._pass_on_end_of_file(link)
        except OSError:
            self._close(link)
            return
        if link.finished:
            self._close(link)
        else:
            self._update(link)

    def _receive(self, link: _Link, sock: socket.socket) -> None:
        buffer = link.to_outside if sock is link.inside else link.to_inside
        try:
            data = sock.recv(min(_CHUNK, BUFFER_BYTES - len(buffer)))
        except BlockingIOError:
            return
        if data:
            buffer += data
        elif sock is link.inside:
            link.inside_ended = True
        else:
            link.outside_ended = True

    def _flush(self, link: _Link, sock: socket.socket) -> None:
        buffer = link.to_inside if sock is link.inside else link.to_outside
        try:
            sent = sock.send(buffer)
        except BlockingIOError:
            return
        del buffer[:sent]

    def _pass_on_end_of_file(self, link: _Link) -> None:
        """End of file from one side, once its bytes are through: half-close the other side."""
        if link.inside_ended and not link.to_outside and not link.outside_shut:
            link.outside_shut = True
            link.outside.shutdown(socket.SHUT_WR)
        if link.outside_ended and not link.to_inside and not link.inside_shut:
            link.inside_shut = True
            link.inside.shutdown(socket.SHUT_WR)

    def _update(self, link: _Link) -> None:
        """Watch each socket for what its link can do now (nothing read past a full buffer)."""
        inside = outside = 0
        if not link.connected:
            outside = selectors.EVENT_WRITE
        else:
            if not link.inside_ended and len(link.to_outside) < BUFFER_BYTES:
                inside |= selectors.EVENT_READ
            if not link.outside_ended and len(link.to_inside) < BUFFER_BYTES:
                outside |= selectors.EVENT_READ
            if link.to_inside:
                inside |= selectors.EVENT_WRITE
            if link.to_outside:
                outside |= selectors.EVENT_WRITE
        self._watch(link.inside, inside, link)
        self._watch(link.outside, outside, link)

    def _watch(self, sock: socket.socket, events: int, link: _Link) -> None:
        if sock in self._registered:
            if events:
                self._selector.modify(sock, events, link)
            else:
                self._selector.unregister(sock)
                self._registered.discard(sock)
        elif events:
            self._selector.register(sock, events, link)
            self._registered.add(sock)

    def _close(self, link: _Link) -> None:
        self._links.discard(link)
        for sock in (link.inside, link.outside):
            if sock in self._registered:
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError, OSError):
                    pass
                self._registered.discard(sock)
            sock.close()
