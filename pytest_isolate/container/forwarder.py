"""``net=["127.0.0.1:5432"]``: host services reachable from inside, and nothing else.

The container's process opens a listening socket for each endpoint on its
own loopback and hands it to pytest over a Unix socket.  pytest accepts on
it here, in a thread that lives exactly as long as the test, connects to
the same address on the host, and copies bytes both ways.  The thread is
stopped and joined before the next container is forked.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading

_CHUNK = 1 << 16


class Forwarder:
    def __init__(self, listeners: list[socket.socket], endpoints: tuple[tuple[str, int], ...]) -> None:
        self._targets = {listener.fileno(): endpoint for listener, endpoint in zip(listeners, endpoints)}
        self._listeners = listeners
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="pytest-isolate-forwarder", daemon=True)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._finished: set[socket.socket] = set()  # sockets that sent end-of-file

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        os.write(self._wake_write, b"x")
        self._thread.join()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        for sock in [*self._listeners, *self._pairs]:
            sock.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_read, selectors.EVENT_READ, "stop")
        for listener in self._listeners:
            listener.setblocking(False)
            selector.register(listener, selectors.EVENT_READ, "accept")
        while True:
            for key, _ in selector.select():
                if key.data == "stop":
                    selector.close()
                    return
                if key.data == "accept":
                    self._accept(selector, key.fileobj)  # type: ignore[arg-type]
                else:
                    self._relay(selector, key.fileobj)  # type: ignore[arg-type]

    def _accept(self, selector: selectors.BaseSelector, listener: socket.socket) -> None:
        try:
            inside, _ = listener.accept()
        except BlockingIOError:
            return
        host, port = self._targets[listener.fileno()]
        try:
            outside = socket.create_connection((host, port), timeout=5)
        except OSError:
            inside.close()  # the container sees a closed connection, as it would see a refusal
            return
        for sock in (inside, outside):
            sock.setblocking(True)
            selector.register(sock, selectors.EVENT_READ, "relay")
        self._pairs[inside], self._pairs[outside] = outside, inside

    def _relay(self, selector: selectors.BaseSelector, source: socket.socket) -> None:
        target = self._pairs.get(source)
        if target is None:
            return
        try:
            data = source.recv(_CHUNK)
            if data:
                target.sendall(data)
                return
        except OSError:
            self._close_pair(selector, source, target)
            return
        # End of file from one side: pass it on (half-close), keep the
        # other direction open until it ends too, as a direct connection would.
        selector.unregister(source)
        self._finished.add(source)
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if target in self._finished:
            self._close_pair(selector, source, target)

    def _close_pair(self, selector: selectors.BaseSelector, *pair: socket.socket) -> None:
        for sock in pair:
            if sock not in self._finished:
                selector.unregister(sock)
            self._finished.discard(sock)
            self._pairs.pop(sock, None)
            sock.close()
